"""What each kind of request costs the embedded local AWS, in its CPU time.

The emulator serves requests on threads that share one GIL, so when it is busy
its throughput is one core divided by the CPU each request takes, whatever the
client does. This measures that cost for every request Dispatch and the baseline
send on the no-op path, one request at a time and with the request shapes
Dispatch really sends (its own request builders in :mod:`dispatch.store.state`), as
emulator CPU per request (``/proc``) and median round-trip time. With the request
counts per task it predicts the emulator CPU a task needs: the drain ceiling on
this machine, and the evidence of what limits a throughput figure.

It also measures the emulator's ceiling for the single claim: conditional
UpdateItems sent from several threads at once, as fast as it answers them. A
dispatcher that claims every task in its own request (``batch_claims=False``, or
an endpoint without PartiQL batches) cannot drain faster than that.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from bench import workload
from bench.cpu import process_cpu_s
from bench.stage import Stage
from dispatch.core.record import ClaimAsk
from dispatch.store import state, statements

__all__ = ["CLAIM_CEILING", "DRAIN_LABELS", "ENQUEUE_LABELS", "run_calibration"]

_BATCH: Final = 10
_RECORDS_PER_BATCH: Final = 25
_CEILING_THREADS: Final = 8
_CEILING_CLAIMS: Final = 400
CLAIM_CEILING: Final = "claim ceiling"
"""The key of ``{"per_s": ..., "threads": ..., "emulator_pct_of_one_core": ...}``."""

ENQUEUE_LABELS: Final = {
    "dynamodb.BatchWriteItem": "dynamodb.BatchWriteItem (25 queued records)",
    "sqs.SendMessageBatch": "sqs.SendMessageBatch (10)",
    "sqs.SendMessage": "sqs.SendMessage",
}
"""Request counted in the enqueue phase -> the calibrated request it stands for."""
DRAIN_LABELS: Final = {
    "sqs.ReceiveMessage": "sqs.ReceiveMessage (10)",
    "dynamodb.BatchExecuteStatement": "dynamodb.BatchExecuteStatement (10 claims)",
    "dynamodb.UpdateItem": "dynamodb.UpdateItem (claim, one by one)",
    "dynamodb.BatchWriteItem": "dynamodb.BatchWriteItem (25 succeeded records)",
    "sqs.DeleteMessageBatch": "sqs.DeleteMessageBatch (10)",
    "sqs.DeleteMessage": "sqs.DeleteMessage",
    "sqs.GetQueueAttributes": "sqs.GetQueueAttributes",
}
"""Request counted in the drain phase -> the calibrated request it stands for."""


def run_calibration(stage: Stage, *, rounds: int) -> dict[str, dict[str, float]]:
    """``{label: {"emulator_cpu_ms": ..., "wall_ms": ...}}``, ``rounds`` requests of each."""
    settings = stage.fresh("calibrate")
    sqs: Any = stage.admin.sqs
    dynamodb: Any = stage.admin.dynamodb
    url, table = settings.queue_url, settings.table
    out: dict[str, dict[str, float]] = {}

    def measure(label: str, calls: list[Callable[[], Any]]) -> list[Any]:
        answers, walls = [], []
        cpu_before = process_cpu_s(stage.aws.pid)
        for call in calls:
            started = time.perf_counter()
            answers.append(call())
            walls.append((time.perf_counter() - started) * 1000)
        cpu_after = process_cpu_s(stage.aws.pid)
        cpu_ms = (
            None
            if cpu_before is None or cpu_after is None
            else 1000 * (cpu_after - cpu_before) / len(calls)
        )
        out[label] = {
            "emulator_cpu_ms": round(cpu_ms, 3) if cpu_ms is not None else float("nan"),
            "wall_ms": round(statistics.median(walls), 3),
            "calls": len(calls),
        }
        return answers

    now = time.time()
    messages = workload.noop_messages(_RECORDS_PER_BATCH * rounds)
    envelopes = [m.envelope for m in messages]

    # Enqueue: queued records 25 at a time, messages 10 at a time, and one by one.
    measure(
        ENQUEUE_LABELS["dynamodb.BatchWriteItem"],
        [
            _batch_write(dynamodb, table, [state.queued_item(e, now) for e in chunk])
            for chunk in _chunks(envelopes, _RECORDS_PER_BATCH)
        ],
    )
    measure(
        ENQUEUE_LABELS["sqs.SendMessageBatch"],
        [_send_batch(sqs, url, [m.body for m in chunk]) for chunk in _chunks(messages, _BATCH)][
            :rounds
        ],
    )
    measure(
        ENQUEUE_LABELS["sqs.SendMessage"],
        [_send_one(sqs, url, m.body) for m in messages[:rounds]],
    )

    # Drain: receive 10, claim, succeeded records 25 at a time, delete 10 (and one by one).
    received = measure(DRAIN_LABELS["sqs.ReceiveMessage"], [_receive(sqs, url)] * rounds)
    receipts = [m["ReceiptHandle"] for answer in received for m in answer.get("Messages", [])]
    claimed = measure(
        DRAIN_LABELS["dynamodb.UpdateItem"],
        [_claim(dynamodb, table, e, now) for e in envelopes[:rounds]],
    )
    template = dict(claimed[0]["Attributes"])
    measure(
        DRAIN_LABELS["dynamodb.BatchExecuteStatement"],
        [
            _claim_batch(dynamodb, table, chunk, now)
            for chunk in _chunks(envelopes[-_BATCH * rounds :], _BATCH)
        ],
    )
    measure(
        DRAIN_LABELS["dynamodb.BatchWriteItem"],
        [
            _batch_write(
                dynamodb, table, [_succeeded_copy(template, now) for _ in range(_RECORDS_PER_BATCH)]
            )
            for _ in range(rounds)
        ],
    )
    batches = list(_chunks(receipts, _BATCH))
    measure(
        DRAIN_LABELS["sqs.DeleteMessageBatch"],
        [_delete_batch(sqs, url, chunk) for chunk in batches[: max(1, len(batches) // 2)]],
    )
    singles = [r for chunk in batches[max(1, len(batches) // 2) :] for r in chunk][:rounds]
    if singles:
        measure(DRAIN_LABELS["sqs.DeleteMessage"], [_delete_one(sqs, url, r) for r in singles])
    measure(DRAIN_LABELS["sqs.GetQueueAttributes"], [_attributes(sqs, url)] * rounds)

    # The claim ceiling: many claims at once, on records that are still queued.
    ceiling_claims = [
        _claim(dynamodb, table, e, now)
        for e in envelopes[rounds : rounds + min(_CEILING_CLAIMS, 5 * rounds)]
    ]
    cpu_before, started = process_cpu_s(stage.aws.pid), time.perf_counter()
    with ThreadPoolExecutor(_CEILING_THREADS, thread_name_prefix="bench-claims") as pool:
        list(pool.map(lambda call: call(), ceiling_claims))
    wall_s = time.perf_counter() - started
    cpu_after = process_cpu_s(stage.aws.pid)
    out[CLAIM_CEILING] = {
        "per_s": round(len(ceiling_claims) / wall_s, 1),
        "threads": _CEILING_THREADS,
        "calls": len(ceiling_claims),
        "emulator_pct_of_one_core": float("nan")
        if cpu_before is None or cpu_after is None
        else round(100 * (cpu_after - cpu_before) / wall_s, 1),
    }
    return out


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _batch_write(client: Any, table: str, items: list[dict[str, Any]]) -> Callable[[], Any]:
    requests = [{"PutRequest": {"Item": item}} for item in items]
    return lambda: client.batch_write_item(RequestItems={table: requests})


def _send_batch(client: Any, url: str, bodies: list[str]) -> Callable[[], Any]:
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    return lambda: client.send_message_batch(QueueUrl=url, Entries=entries)


def _send_one(client: Any, url: str, body: str) -> Callable[[], Any]:
    return lambda: client.send_message(QueueUrl=url, MessageBody=body)


def _receive(client: Any, url: str) -> Callable[[], Any]:
    return lambda: client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=_BATCH, VisibilityTimeout=600, WaitTimeSeconds=0
    )


def _claim(client: Any, table: str, envelope: Any, now: float) -> Callable[[], Any]:
    params = state.claim_params(
        table, envelope, message_id=uuid.uuid4().hex, now=now, timeout_s=60.0
    )
    return lambda: client.update_item(**params)


def _claim_batch(client: Any, table: str, envelopes: list[Any], now: float) -> Callable[[], Any]:
    entries = [
        statements.claim_statement(
            table,
            ClaimAsk(
                e,
                message_id=uuid.uuid4().hex,
                now=now,
                timeout_s=60.0,
                token=state.claim_token(e.id),
            ),
            old=None,
        ).entry()
        for e in envelopes
    ]
    sent = [{k: v for k, v in e.items() if k != statements.KEY_FIELD} for e in entries]
    return lambda: client.batch_execute_statement(Statements=sent)


def _succeeded_copy(claimed: dict[str, Any], now: float) -> dict[str, Any]:
    task_id = uuid.uuid4().hex
    item = dict(claimed)
    item.update(state.task_key(task_id))
    item["task_id"] = {"S": task_id}
    return state.succeeded_item(item, now=now, result=None)


def _delete_batch(client: Any, url: str, receipts: list[str]) -> Callable[[], Any]:
    entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
    return lambda: client.delete_message_batch(QueueUrl=url, Entries=entries)


def _delete_one(client: Any, url: str, receipt: str) -> Callable[[], Any]:
    return lambda: client.delete_message(QueueUrl=url, ReceiptHandle=receipt)


def _attributes(client: Any, url: str) -> Callable[[], Any]:
    return lambda: client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )
