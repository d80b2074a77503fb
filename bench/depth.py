"""The local AWS's cost per call at the queue's current depth.

Figures at 20,000 tasks mean something only if the emulator serves a call as fast
with 20,000 messages queued as with none (stock moto does not: its SQS cost grows
with depth). Each round is what a dispatcher does per batch, on the queue being
measured, through uncounted clients, leaving it as it was: on an empty queue
SendMessageBatch of 10, ReceiveMessage of 10, DeleteMessageBatch of those; on a
full one ReceiveMessage of 10 (the oldest tasks), DeleteMessageBatch, and the same
bodies sent back. GetQueueAttributes (the one call that still counts the whole
queue) and a GetItem on the table are timed beside them. Medians, in ms, with
the rounds alternating between the queue being measured and an empty one made
beside it, so that a busy machine slows both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from bench import workload
from bench.stage import Stage
from dispatch.core.config import Settings
from dispatch.store import state

__all__ = ["CALLS", "call_cost_ms"]

CALLS: Final = (
    "receive_10",
    "delete_batch_10",
    "send_batch_10",
    "receive_plus_delete",
    "get_queue_attributes",
    "get_item",
)
_BATCH: Final = 10
_MAX_RECEIVES: Final = 20


def call_cost_ms(stage: Stage, settings: Settings, *, rounds: int) -> dict[str, dict[str, float]]:
    """Median ms of each call on an empty queue and on the task queue as it stands.

    The rounds alternate between the two queues (an empty one is made beside the
    task queue for this), so both medians are taken under the same conditions.
    """
    sqs: Any = stage.admin.sqs
    empty_url = sqs.create_queue(QueueName=f"{_queue_name(settings.queue_url)}-empty")["QueueUrl"]
    depth = stage.queue_depth(settings)["visible"]
    samples: dict[str, dict[str, list[float]]] = {
        "depth_0": {name: [] for name in CALLS},
        f"depth_{depth}": {name: [] for name in CALLS},
    }
    try:
        for _ in range(rounds):
            _round(stage, settings, empty_url, samples["depth_0"], empty=True)
            _round(stage, settings, settings.queue_url, samples[f"depth_{depth}"], empty=False)
    finally:
        sqs.delete_queue(QueueUrl=empty_url)
    return {
        key: {name: round(statistics.median(v), 3) for name, v in calls.items() if v}
        for key, calls in samples.items()
    }


def _round(
    stage: Stage, settings: Settings, url: str, samples: dict[str, list[float]], *, empty: bool
) -> None:
    """One round that leaves the queue's depth as it was."""
    sqs: Any = stage.admin.sqs
    dynamodb: Any = stage.admin.dynamodb

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        samples[name].append((time.perf_counter() - started) * 1000)

    if empty:
        with timed("send_batch_10"):
            _send(sqs, url, [m.body for m in workload.noop_messages(_BATCH)])
    with timed("receive_10"):
        received = _receive(sqs, url)
    with timed("delete_batch_10"):
        _delete(sqs, url, received)
    if not empty:
        with timed("send_batch_10"):
            _send(sqs, url, [m["Body"] for m in received])
    samples["receive_plus_delete"].append(
        samples["receive_10"][-1] + samples["delete_batch_10"][-1]
    )
    with timed("get_queue_attributes"):
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    with timed("get_item"):
        dynamodb.get_item(
            TableName=settings.table, Key=state.task_key("absent"), ConsistentRead=True
        )


def _queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _send(sqs: Any, url: str, bodies: list[str]) -> None:
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    sqs.send_message_batch(QueueUrl=url, Entries=entries)


def _receive(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Ten messages (a few receives if the emulator hands out fewer at once)."""
    received: list[dict[str, Any]] = []
    for _ in range(_MAX_RECEIVES):
        answer = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=_BATCH - len(received), WaitTimeSeconds=0
        )
        received.extend(answer.get("Messages", []))
        if len(received) >= _BATCH:
            break
    return received


def _delete(sqs: Any, url: str, messages: list[dict[str, Any]]) -> None:
    if messages:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)
