"""The embedded local AWS's CPU cost per DynamoDB request (Dispatch's shapes), patched and stock.

    .venv/bin/python bench/emulator_dynamodb.py                  # both, side by side
    .venv/bin/python bench/emulator_dynamodb.py --only patched   # one emulator only

For each of Dispatch's UpdateItem shapes (the request parameters come from
dispatch.store.state and the expressions of dispatch.throttle.shared) it runs rounds of
``--calls`` sequential requests from one boto3 client and reads the emulator
process's CPU time (user + system, from /proc) before and after each round: the
figure is the median over ``--rounds`` rounds of CPU milliseconds per request,
everything the emulator does for it included (HTTP, parsing, the update,
serialising the answer). A warm-up round comes first and is not counted. The
client's median round-trip latency is printed beside it.

The shapes:

* ``claim``: claim_params on a task whose ``queued`` record exists (BatchWriteItem,
  as enqueue writes it), the dispatcher's usual claim;
* ``claim-new``: the same claim on a task without a record (the item is created);
* ``success``: succeeded_params on a claimed task (the result kept);
* ``bucket-lease``: SharedBucket's lease, conditional on the ``updated_at`` it saw;
* ``slot-lease``: SharedSlots' lease of a slot (nested map path ``#h.#me``);

and, to price claims made ten at a time instead of one by one (docs/performance.md,
"What limits each figure"), three batched shapes, each one request for ten tasks
whose ``queued`` records exist:

* ``get-10``: BatchGetItem of the ten records, strongly consistent (reading the
  records a batched claim would decide on);
* ``put-10``: BatchWriteItem of ten records (as enqueue and success write them);
* ``transact-10``: TransactWriteItems of ten conditional Puts, each the claimed
  record, conditional on the record read (the one way to make ten conditional
  writes in one request). moto copies every table a transaction touches, so this
  shape's cost grows with the table: measure it with few calls, e.g.
  ``--shapes transact-10 --calls 10 --rounds 3``.

The figure is per request; a batched shape's cost per task is a tenth of it.

Linux only (reads /proc). ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.cpu import process_cpu_s
from dispatch.core.envelope import Envelope
from dispatch.local.emulator import LocalAWS
from dispatch.store import state

TABLE = "bench-state"
SHAPES = (
    "claim",
    "claim-new",
    "success",
    "bucket-lease",
    "slot-lease",
    "get-10",
    "put-10",
    "transact-10",
)
BUCKET_NAMES = {  # dispatch.throttle.shared._BUCKET_NAMES
    "#tokens": "tokens",
    "#updated": "updated_at",
    "#rate": "rate",
    "#capacity": "capacity",
}
Call = Callable[[], None]


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("patched", "stock"), help="measure one emulator")
    parser.add_argument("--rounds", type=int, default=9, help="counted rounds per shape (9)")
    parser.add_argument(
        "--calls",
        type=int,
        default=100,
        help="requests per round (100: /proc counts CPU in 10 ms ticks, 0.1 ms per request)",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    emulators = [args.only] if args.only else ["stock", "patched"]

    results: dict[str, dict[str, dict[str, float]]] = {}
    for emulator in emulators:
        with LocalAWS.start(patch_moto=emulator == "patched") as aws:
            client = aws.client("dynamodb")
            results[emulator] = {}
            for shape in shapes:
                aws.reset()
                _create_table(client)
                figures = measure(aws.pid, _shape(client, shape), args.rounds, args.calls)
                results[emulator][shape] = figures
                print(
                    f"  {emulator:>7} {shape:<13} {figures['cpu_ms']:7.2f} ms CPU, "
                    f"{figures['latency_ms']:7.2f} ms round trip",
                    file=sys.stderr,
                )

    print_table(results, shapes, rounds=args.rounds, calls=args.calls)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "unit": "ms per request (median over rounds)",
            "rounds": args.rounds,
            "calls_per_round": args.calls,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


# --- measurement ----------------------------------------------------------------------------
def measure(
    pid: int, rounds_of: Callable[[int], Iterator[Call]], rounds: int, calls: int
) -> dict[str, float]:
    """Median emulator CPU ms and median client latency ms per request."""
    cpu_ms: list[float] = []
    latencies: list[float] = []
    for n in range(rounds + 1):  # round 0 warms up (first parse, connection)
        batch = list(rounds_of(calls))  # the set-up runs here, outside the window
        before = _cpu(pid)
        for call in batch:
            started = time.perf_counter()
            call()
            if n:
                latencies.append((time.perf_counter() - started) * 1000)
        if n:
            cpu_ms.append((_cpu(pid) - before) * 1000 / calls)
    return {
        "cpu_ms": round(statistics.median(cpu_ms), 3),
        "latency_ms": round(statistics.median(latencies), 3),
    }


def _cpu(pid: int) -> float:
    used = process_cpu_s(pid)
    if used is None:
        raise SystemExit("bench/emulator_dynamodb.py reads /proc: it runs on Linux only")
    return used


# --- the shapes -------------------------------------------------------------------------------
def _shape(client: Any, shape: str) -> Callable[[int], Iterator[Call]]:
    """A factory: given n, do the set-up for n requests and return them, ready to send."""
    return {
        "claim": lambda n: _claims(client, n, queued=True),
        "claim-new": lambda n: _claims(client, n, queued=False),
        "success": lambda n: _successes(client, n),
        "bucket-lease": lambda n: _bucket_leases(client, n),
        "slot-lease": lambda n: _slot_leases(client, n),
        "get-10": lambda n: _batched(client, n, _get_ten),
        "put-10": lambda n: _batched(client, n, _put_ten),
        "transact-10": lambda n: _batched(client, n, _transact_ten),
    }[shape]


def _envelopes(n: int) -> list[Envelope]:
    return [Envelope(id=uuid.uuid4().hex, task="bench.noop") for _ in range(n)]


def _enqueue(client: Any, envelopes: list[Envelope], now: float) -> None:
    for start in range(0, len(envelopes), 25):
        chunk = envelopes[start : start + 25]
        items = [{"PutRequest": {"Item": state.queued_item(e, now)}} for e in chunk]
        client.batch_write_item(RequestItems={TABLE: items})


def _claims(client: Any, n: int, *, queued: bool) -> Iterator[Call]:
    now = time.time()
    envelopes = _envelopes(n)
    if queued:
        _enqueue(client, envelopes, now)
    for envelope in envelopes:
        params = state.claim_params(
            TABLE, envelope, message_id=uuid.uuid4().hex, now=now, timeout_s=30.0
        )
        yield functools.partial(_update, client, params)


def _successes(client: Any, n: int) -> Iterator[Call]:
    now = time.time()
    envelopes = _envelopes(n)
    _enqueue(client, envelopes, now)
    message_id = uuid.uuid4().hex
    for envelope in envelopes:
        client.update_item(
            **state.claim_params(TABLE, envelope, message_id=message_id, now=now, timeout_s=30.0)
        )
    for envelope in envelopes:
        params = state.succeeded_params(
            TABLE, envelope.id, message_id=message_id, now=now + 0.01, result={"n": 1}
        )
        yield functools.partial(_update, client, params)


def _bucket_leases(client: Any, n: int) -> Iterator[Call]:
    # SharedBucket._try_lease: each lease is conditional on the updated_at it last
    # saw, so each request's :seen is the previous request's :now.
    key = {"pk": {"S": f"bucket#{uuid.uuid4().hex[:8]}"}}
    now = time.time()
    seen = _lease_values(now, tokens=5.0)
    client.update_item(**_bucket_params(key, seen, "attribute_not_exists(pk)", {}))
    for i in range(n):
        values = _lease_values(now + (i + 1) * 0.001, tokens=4.0)
        condition_values = {":seen": seen[":now"]}
        params = _bucket_params(key, values, "#updated = :seen", condition_values)
        seen = values
        yield functools.partial(_update, client, params)


def _lease_values(now: float, *, tokens: float) -> dict[str, Any]:
    return {
        ":tokens": {"N": str(tokens)},
        ":now": {"N": f"{now:.6f}"},
        ":rate": {"N": "10"},
        ":capacity": {"N": "20"},
        ":ttl": {"N": str(int(now) + 3600)},
    }


def _bucket_params(
    key: dict[str, Any], values: dict[str, Any], condition: str, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "TableName": TABLE,
        "Key": key,
        "UpdateExpression": (
            "SET #tokens = :tokens, #updated = :now, #rate = :rate, "
            "#capacity = :capacity, expires_at = :ttl"
        ),
        "ConditionExpression": condition,
        "ExpressionAttributeNames": BUCKET_NAMES,
        "ExpressionAttributeValues": {**values, **extra},
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def _slot_leases(client: Any, n: int) -> Iterator[Call]:
    # SharedSlots._acquire: take k slots under the cap, under this dispatcher's entry
    # in the holders map (created first, as SharedSlots._create does).
    key = {"pk": {"S": f"slots#{uuid.uuid4().hex[:8]}"}}
    client.update_item(
        TableName=TABLE,
        Key=key,
        UpdateExpression="SET held = :zero, #h = :empty, #w = :empty",
        ConditionExpression="attribute_not_exists(held)",
        ExpressionAttributeNames={"#h": "holders", "#w": "waiters"},
        ExpressionAttributeValues={":zero": {"N": "0"}, ":empty": {"M": {}}},
    )
    now = time.time()
    for i in range(n):
        params = {
            "TableName": TABLE,
            "Key": key,
            "UpdateExpression": (
                "SET held = if_not_exists(held, :zero) + :k, #h.#me = :entry, expires_at = :ttl"
            ),
            "ConditionExpression": "(attribute_not_exists(held) AND :k <= :cap) OR held <= :room",
            "ExpressionAttributeNames": {"#h": "holders", "#me": f"dispatcher-{i % 4}"},
            "ExpressionAttributeValues": {
                ":zero": {"N": "0"},
                ":k": {"N": "1"},
                ":cap": {"N": "1000000"},
                ":room": {"N": "999999"},
                ":entry": {"M": {"n": {"N": str(i + 1)}, "until": {"N": f"{now + 30:.3f}"}}},
                ":ttl": {"N": str(int(now) + 3600)},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        yield functools.partial(_update, client, params)


def _update(client: Any, params: dict[str, Any]) -> None:
    client.update_item(**params)


def _batched(
    client: Any, n: int, send: Callable[[Any, list[Envelope], float], None]
) -> Iterator[Call]:
    """n requests, each for ten tasks whose queued records exist."""
    now = time.time()
    for _ in range(n):
        envelopes = _envelopes(10)
        _enqueue(client, envelopes, now)
        yield functools.partial(send, client, envelopes, now)


def _get_ten(client: Any, envelopes: list[Envelope], now: float) -> None:
    keys = [state.task_key(e.id) for e in envelopes]
    client.batch_get_item(RequestItems={TABLE: {"Keys": keys, "ConsistentRead": True}})


def _put_ten(client: Any, envelopes: list[Envelope], now: float) -> None:
    items = [{"PutRequest": {"Item": state.queued_item(e, now)}} for e in envelopes]
    client.batch_write_item(RequestItems={TABLE: items})


def _transact_ten(client: Any, envelopes: list[Envelope], now: float) -> None:
    puts = []
    for envelope in envelopes:
        queued = state.queued_item(envelope, now)
        claimed = {
            **queued,
            "status": {"S": "running"},
            "attempts": {"N": "1"},
            "message_id": {"S": uuid.uuid4().hex},
            "started_at": queued["updated_at"],
            "lease_until": {"N": f"{now + 60:.3f}"},
        }
        puts.append(
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": claimed,
                    "ConditionExpression": "#s = :seen AND attempts = :a AND updated_at = :u",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {
                        ":seen": {"S": "queued"},
                        ":a": {"N": "0"},
                        ":u": queued["updated_at"],
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
    client.transact_write_items(TransactItems=puts)


# --- plumbing ---------------------------------------------------------------------------------
def _create_table(client: Any) -> None:
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def print_table(
    results: dict[str, dict[str, dict[str, float]]], shapes: list[str], *, rounds: int, calls: int
) -> None:
    """One row per shape: CPU ms per request for each emulator, and stock / patched."""
    print(
        f"Local AWS CPU per DynamoDB request, moto 5.2.5 stock vs + dispatch.local patches "
        f"(median of {rounds} rounds x {calls} requests; ms)"
    )
    columns = [f"{name} CPU" for name in results] + [f"{name} RTT" for name in results]
    both = "stock" in results and "patched" in results
    header = ["shape", *columns] + (["CPU stock/patched"] if both else [])
    print("  ".join(f"{h:>18}" for h in header))
    for shape in shapes:
        cells = [f"{shape:>18}"]
        cells += [f"{results[name][shape]['cpu_ms']:>18.2f}" for name in results]
        cells += [f"{results[name][shape]['latency_ms']:>18.2f}" for name in results]
        if both:
            patched = results["patched"][shape]["cpu_ms"]
            ratio = results["stock"][shape]["cpu_ms"] / patched if patched > 0 else float("inf")
            cells.append(f"{ratio:>17.1f}x")
        print("  ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
