"""The dead-letter queue, for operators: list, show, redrive, purge.

Redrive puts dead tasks back on the main queue with their attempts reset and a
note in their record (``redriven_at``, ``redrive_count``). It is safe to
interrupt at any point: a message leaves the dead-letter queue only after its
copy is on the main queue, so an interruption can at worst leave a task on both
queues, and the claim in DynamoDB runs it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from dispatch.core import constants as c
from dispatch.core.deadletter import ATTR_TASK, parse_attributes
from dispatch.core.envelope import decode, is_lean_task_id
from dispatch.core.errors import DispatchError, EnvelopeError
from dispatch.core.signing import ATTR_SIGNATURE
from dispatch.store import state
from dispatch.store.aws import aws_errors
from dispatch.store.codec import number

if TYPE_CHECKING:
    from dispatch.core.config import Settings
    from dispatch.store.aws import SyncClients

__all__ = ["DeadLetterEntry", "RedriveReport", "iter_dead_letters", "purge", "redrive", "release"]

_HOLD_S: Final = 120  # how long a listed message stays hidden while the command works


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One message on the dead-letter queue and why it is there."""

    message_id: str
    receipt: str
    body: str
    task_id: str | None
    task: str | None
    reason: str
    failure: dict[str, Any]
    sent_at: float | None
    signature: str | None = None

    def carried(self) -> dict[str, Any]:
        """MessageAttributes the redriven copy keeps (its signature)."""
        if self.signature is None:
            return {}
        return {
            "MessageAttributes": {
                ATTR_SIGNATURE: {"DataType": "String", "StringValue": self.signature}
            }
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> DeadLetterEntry:
        """Read a received DLQ message."""
        attributes = message.get("MessageAttributes", {})
        failure = parse_attributes(attributes)
        task_id = failure.get("task_id")
        task = attributes.get(ATTR_TASK, {}).get("StringValue") or failure.get("task")
        if task_id is None:
            try:
                envelope = decode(message["Body"])
                task_id, task = envelope.id, envelope.task
            except EnvelopeError:
                pass
        sent = message.get("Attributes", {}).get("SentTimestamp")
        return cls(
            message_id=message["MessageId"],
            receipt=message["ReceiptHandle"],
            body=message["Body"],
            task_id=task_id,
            task=task,
            reason=str(failure.get("reason", "")),
            failure=failure,
            sent_at=int(sent) / 1000 if sent else None,
            signature=attributes.get(ATTR_SIGNATURE, {}).get("StringValue"),
        )

    def to_dict(self, *, with_body: bool = False) -> dict[str, Any]:
        """JSON-ready form (the body only when asked)."""
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "task_id": self.task_id,
            "task": self.task,
            "reason": self.reason,
            "error": self.failure.get("error", {}),
            "attempts": self.failure.get("attempts"),
            "dead_at": self.failure.get("dead_at"),
        }
        if with_body:
            data["body"] = self.body
            data["failure"] = self.failure
        return data


def iter_dead_letters(
    clients: SyncClients, settings: Settings, *, limit: int | None = None
) -> Iterator[DeadLetterEntry]:
    """Every message on the dead-letter queue (up to ``limit``), hidden while iterated.

    The caller must :func:`release` what it does not delete.
    """
    seen = 0
    while limit is None or seen < limit:
        want = c.SQS_MAX_BATCH_ENTRIES if limit is None else min(10, limit - seen)
        with aws_errors("ReceiveMessage"):
            answer = clients.sqs.receive_message(
                QueueUrl=settings.dlq_url,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=0,
                VisibilityTimeout=_HOLD_S,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
            )
        messages = answer.get("Messages", [])
        if not messages:
            return
        for message in messages:
            seen += 1
            yield DeadLetterEntry.from_message(dict(message))


def release(clients: SyncClients, settings: Settings, entries: list[DeadLetterEntry]) -> None:
    """Make listed messages visible again on the dead-letter queue."""
    for start in range(0, len(entries), c.SQS_MAX_BATCH_ENTRIES):
        batch = entries[start : start + c.SQS_MAX_BATCH_ENTRIES]
        with aws_errors("ChangeMessageVisibilityBatch"):
            clients.sqs.change_message_visibility_batch(
                QueueUrl=settings.dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": e.receipt, "VisibilityTimeout": 0}
                    for i, e in enumerate(batch)
                ],
            )


@dataclass(slots=True)
class RedriveReport:
    """What a redrive did (or, dry, would do)."""

    redriven: list[DeadLetterEntry] = field(default_factory=list)
    skipped: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "redriven": len(self.redriven),
            "skipped": self.skipped,
            "dry_run": self.dry_run,
            "tasks": [e.to_dict() for e in self.redriven],
        }


def redrive(
    clients: SyncClients,
    settings: Settings,
    *,
    task: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RedriveReport:
    """Move dead tasks (optionally of one ``task``, at most ``limit``) back to the queue."""
    report = RedriveReport(dry_run=dry_run)
    kept: list[DeadLetterEntry] = []
    batch: list[DeadLetterEntry] = []
    try:
        for entry in iter_dead_letters(clients, settings):
            if (task is not None and entry.task != task) or (
                limit is not None and len(report.redriven) + len(batch) >= limit
            ):
                kept.append(entry)
                report.skipped += 1
                continue
            if dry_run:
                kept.append(entry)
                report.redriven.append(entry)
                continue
            batch.append(entry)
            if len(batch) == c.SQS_MAX_BATCH_ENTRIES:
                _move(clients, settings, batch)
                report.redriven.extend(batch)
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            _move(clients, settings, batch)
            report.redriven.extend(batch)
            if progress:
                progress(len(batch))
            batch = []
    finally:
        release(clients, settings, kept + batch)
    return report


def _move(clients: SyncClients, settings: Settings, batch: list[DeadLetterEntry]) -> None:
    """Reset the records, send the bodies to the main queue, then delete from the DLQ."""
    now = time.time()
    for entry in batch:
        if entry.task_id and not is_lean_task_id(entry.task_id):  # a lean task has no record
            with aws_errors("UpdateItem"):
                clients.dynamodb.update_item(**_reset_params(settings.table, entry.task_id, now))
    with aws_errors("SendMessageBatch"):
        entries: list[Any] = [
            {"Id": str(i), "MessageBody": e.body, **e.carried()} for i, e in enumerate(batch)
        ]
        sent = clients.sqs.send_message_batch(QueueUrl=settings.queue_url, Entries=entries)
    failed = {f["Id"] for f in sent.get("Failed", [])}
    moved = [e for i, e in enumerate(batch) if str(i) not in failed]
    if moved:
        with aws_errors("DeleteMessageBatch"):
            clients.sqs.delete_message_batch(
                QueueUrl=settings.dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": e.receipt} for i, e in enumerate(moved)],
            )
    if failed:
        raise DispatchError(
            f"{len(failed)} message(s) could not be sent back to the queue; they stay on the "
            "dead-letter queue: run the redrive again"
        )


def _reset_params(table: str, task_id: str, now: float) -> dict[str, Any]:
    return {
        "TableName": table,
        "Key": state.task_key(task_id),
        "UpdateExpression": (
            "SET #s = :queued, attempts = :zero, redriven_at = :now, updated_at = :now, "
            "redrive_count = if_not_exists(redrive_count, :zero) + :one "
            "REMOVE dead_reason, finished_at, lease_until, next_attempt_at"
        ),
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":queued": {"S": state.Status.QUEUED.value},
            ":zero": number(0),
            ":one": number(1),
            ":now": number(now),
        },
    }


def purge(clients: SyncClients, settings: Settings) -> None:
    """Delete every message on the dead-letter queue (SQS PurgeQueue)."""
    with aws_errors("PurgeQueue"):
        clients.sqs.purge_queue(QueueUrl=settings.dlq_url)
