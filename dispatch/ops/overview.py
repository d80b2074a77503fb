"""What ``dispatch status`` shows: the whole picture of a queue, its dispatchers and tasks.

One task's record is :func:`dispatch.status` instead.

Four sources, each read once: the queues' SQS attributes (depth), the live
dispatchers' published reports (throttle state and the age of the oldest message
they received, :mod:`dispatch.throttle.status`), the shared throttle items, and a
bounded Scan of the task records (counts by status). ``dispatch top`` reads the
same, minus the Scan.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dispatch.core import constants as c
from dispatch.ops.pausing import list_pauses
from dispatch.store.aws import aws_errors
from dispatch.store.pauses import Pause
from dispatch.store.state import Status
from dispatch.throttle.status import (
    DispatcherReport,
    ResourceStatus,
    combine_resources,
    read_dispatchers,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

    from dispatch.core.config import Settings
    from dispatch.store.aws import SyncClients

__all__ = [
    "OldestMessage",
    "Overview",
    "QueueDepth",
    "TaskCounts",
    "count_tasks",
    "oldest_message",
    "overview",
    "queue_depth",
    "stuck_threads",
]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """A queue's approximate message counts (SQS attributes)."""

    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        """Every message on the queue, whatever its state."""
        return self.visible + self.in_flight + self.delayed

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return asdict(self)


def queue_depth(client: SQSClient, url: str) -> QueueDepth:
    """Visible, in-flight and delayed counts of the queue at ``url``."""
    with aws_errors("GetQueueAttributes"):
        answer = client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
    counts = answer.get("Attributes", {})
    return QueueDepth(
        visible=int(counts.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(counts.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(counts.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


@dataclass(frozen=True, slots=True)
class OldestMessage:
    """How old the oldest message is, and where that figure comes from.

    ``source`` is ``dispatchers`` (the oldest message any live dispatcher received
    in its last publishing window, aged at the moment it was received), ``empty``
    (the queue holds no message: 0) or ``unknown`` (messages are queued but no live
    dispatcher received one lately; ``age_s`` is None). docs/operations.md has why.
    """

    age_s: float | None
    source: str
    dispatchers: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def oldest_message(queue: QueueDepth, reports: list[DispatcherReport]) -> OldestMessage:
    """The oldest message's age from what live dispatchers saw; 0 on an empty queue."""
    if queue.total == 0:
        return OldestMessage(age_s=0.0, source="empty")
    ages = [
        float(r.activity["oldest_message_age_s"])
        for r in reports
        if r.activity.get("oldest_message_age_s") is not None
    ]
    if not ages:
        return OldestMessage(age_s=None, source="unknown")
    return OldestMessage(age_s=max(ages), source="dispatchers", dispatchers=len(ages))


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """Task records by status, from a Scan that reads at most ``max_scan`` items.

    ``complete`` is False when the Scan stopped at the budget before the end of the
    table: the counts are then lower bounds ("at least").
    """

    counts: dict[str, int]
    scanned: int
    complete: bool
    max_scan: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def count_tasks(client: DynamoDBClient, table: str, *, max_scan: int) -> TaskCounts:
    """Count task records by status, reading at most ``max_scan`` table items.

    One paginated Scan, projecting the status only, filtered to ``task#`` items
    (bucket, slot, dispatcher, lease and schedule items are read but not counted:
    a Scan's budget counts every item it reads).
    """
    if max_scan < 1:
        raise ValueError(f"max_scan={max_scan}: must be >= 1")
    counts: Counter[str] = Counter({s.value: 0 for s in Status})
    params: dict[str, Any] = {
        "TableName": table,
        "ProjectionExpression": "#s",
        "FilterExpression": "begins_with(#pk, :prefix)",
        "ExpressionAttributeNames": {"#s": "status", "#pk": c.TABLE_HASH_KEY},
        "ExpressionAttributeValues": {":prefix": {"S": c.TASK_KEY_PREFIX}},
    }
    scanned = 0
    while True:
        with aws_errors("Scan"):
            answer = client.scan(**params, Limit=max_scan - scanned)
        scanned += int(answer.get("ScannedCount", 0))
        for item in answer.get("Items", []):
            if "status" in item:
                counts[str(item["status"]["S"])] += 1
        last_key = answer.get("LastEvaluatedKey")
        if not last_key:
            return TaskCounts(dict(counts), scanned=scanned, complete=True, max_scan=max_scan)
        params["ExclusiveStartKey"] = last_key
        if scanned >= max_scan:
            break
    # At the budget with a key to go on from: DynamoDB also returns one when the
    # table ended exactly there, so look one item further to tell the two apart.
    with aws_errors("Scan"):
        probe = client.scan(
            TableName=table,
            Limit=1,
            ExclusiveStartKey=last_key,
            ProjectionExpression="#pk",
            ExpressionAttributeNames={"#pk": c.TABLE_HASH_KEY},
        )
    more = int(probe.get("ScannedCount", 0)) > 0
    return TaskCounts(dict(counts), scanned=scanned, complete=not more, max_scan=max_scan)


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything ``dispatch status`` shows (docs/operations.md has the JSON shape)."""

    queue: QueueDepth
    dlq: QueueDepth
    oldest_message: OldestMessage
    tasks: TaskCounts | None  # None: not counted (max_scan 0)
    resources: list[ResourceStatus]
    dispatchers: int
    stuck_threads: int = 0
    paused: list[Pause] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "queue": self.queue.to_dict(),
            "dlq": self.dlq.to_dict(),
            "oldest_message": self.oldest_message.to_dict(),
            "tasks": None if self.tasks is None else self.tasks.to_dict(),
            "resources": [r.to_dict() for r in self.resources],
            "dispatchers": self.dispatchers,
            "stuck_threads": self.stuck_threads,
            "paused": [p.to_dict() for p in self.paused],
        }


def stuck_threads(reports: list[DispatcherReport]) -> int:
    """Sync handler threads still running after their attempts ended, over the live
    dispatchers (each publishes its own count)."""
    return sum(int(r.activity.get("stuck_threads", 0)) for r in reports)


def overview(
    clients: SyncClients, settings: Settings, *, max_scan: int, now: float | None = None
) -> Overview:
    """Queue and DLQ depth, oldest message age, task counts (``max_scan`` 0: skipped),
    and every resource's throttle state across live dispatchers."""
    now = time.time() if now is None else now
    queue = queue_depth(clients.sqs, settings.queue_url)
    dlq = queue_depth(clients.sqs, settings.dlq_url)
    reports = read_dispatchers(clients.dynamodb, settings.table, now=now)
    return Overview(
        queue=queue,
        dlq=dlq,
        oldest_message=oldest_message(queue, reports),
        tasks=(
            count_tasks(clients.dynamodb, settings.table, max_scan=max_scan) if max_scan else None
        ),
        resources=combine_resources(
            clients.dynamodb, settings.table, reports, queued=queue.visible + queue.delayed
        ),
        dispatchers=sum(1 for r in reports if r.live),
        stuck_threads=stuck_threads(reports),
        paused=list_pauses(clients.dynamodb, settings).all(),
    )
