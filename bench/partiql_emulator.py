"""The embedded local AWS's CPU cost per BatchExecuteStatement statement, by table size.

    .venv/bin/python -m bench.partiql_emulator                  # 1,000 and 100,000 items
    .venv/bin/python -m bench.partiql_emulator --sizes 1000 --stock

dispatch.local.partiql runs each statement of a batch on one item, looked up by its
key, so its cost should not grow with the table. For each table size this starts
from an emptied emulator, fills a table with that many task-like items
(BatchWriteItem, outside the measurement), then runs rounds of ``--batches``
BatchExecuteStatement requests of 25 statements each, every statement a
compare-and-set on a random item::

    UPDATE "t" SET "n"=?, "owner"=? WHERE "pk"=? AND "n"=?

(the client tracks each item's ``n``, so every statement succeeds). It reads the
emulator process's CPU time (user + system, from /proc) before and after each
round; the figure is the median over ``--rounds`` rounds of CPU milliseconds per
statement, HTTP and serialisation included. A warm-up round comes first and is
not counted. The client's median latency per request is printed beside it.

``--stock`` measures stock moto 5.2.5 too (``LocalAWS.start(patch_moto=False)``,
whose BatchExecuteStatement copies every table for every statement): give it small
sizes and few batches, e.g. ``--sizes 1000 --batches 2 --rounds 3``.

Linux only (reads /proc). ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.cpu import process_cpu_s
from dispatch.local.emulator import LocalAWS

TABLE = "bench-partiql"
STATEMENTS_PER_BATCH = 25
CAS = f'UPDATE "{TABLE}" SET "n"=?, "owner"=? WHERE "pk"=? AND "n"=?'  # noqa: S608 - PartiQL


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000", help="table sizes (1000,100000)")
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds per size (5)")
    parser.add_argument(
        "--batches",
        type=int,
        default=20,
        help="25-statement requests per round (20: /proc counts CPU in 10 ms ticks)",
    )
    parser.add_argument("--stock", action="store_true", help="also measure stock moto")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    emulators = ["patched", "stock"] if args.stock else ["patched"]

    results: dict[str, dict[str, dict[str, float]]] = {}
    for emulator in emulators:
        with LocalAWS.start(patch_moto=emulator == "patched") as aws:
            client = aws.client("dynamodb")
            results[emulator] = {}
            for size in sizes:
                aws.reset()
                counters = _fill(client, size)
                figures = measure(aws.pid, client, counters, args.rounds, args.batches)
                results[emulator][str(size)] = figures
                print(
                    f"  {emulator:>7} {size:>9,} items {figures['cpu_ms_per_statement']:8.3f} ms "
                    f"CPU per statement, {figures['latency_ms_per_request']:8.2f} ms per request",
                    file=sys.stderr,
                )

    print(f"\nBatchExecuteStatement, {STATEMENTS_PER_BATCH} CAS updates per request")
    print(f"(emulator CPU, median of {args.rounds} rounds of {args.batches} requests)\n")
    print("| emulator | items | CPU ms per statement | ms per request (client) |")
    print("|---|---:|---:|---:|")
    for emulator, by_size in results.items():
        for size_key, figures in by_size.items():
            print(
                f"| {emulator} | {int(size_key):,} | {figures['cpu_ms_per_statement']:.3f} "
                f"| {figures['latency_ms_per_request']:.2f} |"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "unit": "emulator CPU ms per statement; client ms per request (medians)",
            "statements_per_request": STATEMENTS_PER_BATCH,
            "rounds": args.rounds,
            "requests_per_round": args.batches,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def measure(
    pid: int, client: Any, counters: dict[str, int], rounds: int, batches: int
) -> dict[str, float]:
    """Median emulator CPU ms per statement and median client ms per request."""
    rng = random.Random(7)  # a fixed seed: the same items every run
    keys = list(counters)
    cpu_ms: list[float] = []
    latencies: list[float] = []
    for n in range(rounds + 1):  # round 0 warms up (first parse, connection)
        before = _cpu(pid)
        for _ in range(batches):
            # Distinct items in one batch: a second statement on one item is a DuplicateItem.
            chosen = rng.sample(keys, STATEMENTS_PER_BATCH)
            statements = [_cas(pk, counters) for pk in chosen]
            started = time.perf_counter()
            responses = client.batch_execute_statement(Statements=statements)["Responses"]
            if n:
                latencies.append((time.perf_counter() - started) * 1000)
            failed = [r for r in responses if "Error" in r]
            if failed:
                raise SystemExit(f"a statement failed: {failed[0]}")
        if n:
            cpu_ms.append((_cpu(pid) - before) * 1000 / (batches * STATEMENTS_PER_BATCH))
    return {
        "cpu_ms_per_statement": round(statistics.median(cpu_ms), 4),
        "latency_ms_per_request": round(statistics.median(latencies), 3),
    }


def _cas(pk: str, counters: dict[str, int]) -> dict[str, Any]:
    seen = counters[pk]
    counters[pk] = seen + 1
    return {
        "Statement": CAS,
        "Parameters": [{"N": str(seen + 1)}, {"S": "bench"}, {"S": pk}, {"N": str(seen)}],
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def _fill(client: Any, size: int) -> dict[str, int]:
    """Create the table with ``size`` task-like items; return each key's counter."""
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    keys = [f"task#{i:08d}" for i in range(size)]
    for start in range(0, size, 25):
        items = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": pk},
                        "n": {"N": "0"},
                        "status": {"S": "queued"},
                        "task": {"S": "bench.noop"},
                        "enqueued_at": {"N": "1800000000.123456"},
                        "payload": {"S": "x" * 200},
                    }
                }
            }
            for pk in keys[start : start + 25]
        ]
        client.batch_write_item(RequestItems={TABLE: items})
    return dict.fromkeys(keys, 0)


def _cpu(pid: int) -> float:
    used = process_cpu_s(pid)
    if used is None:
        raise SystemExit("bench/partiql_emulator.py reads /proc: it runs on Linux only")
    return used


if __name__ == "__main__":
    sys.exit(main())
