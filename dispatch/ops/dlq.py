"""The dead-letter queue, for operators: list, show, redrive, purge.

Redrive puts dead tasks back on the main queue with their attempts reset and a
note in their record (``redriven_at``, ``redrive_count``, ``redriven_from``). It
revives only what is dead: the reset is conditional on the record saying
``dead`` (or missing: it expired, and is written again), so a stale dead letter
(a second copy, or one left by an interrupted redrive) never runs a task that
has since succeeded. Such copies are reported, and the ones of finished tasks
(succeeded or cancelled) removed from the dead-letter queue.

It is safe to interrupt at any point: a message leaves the dead-letter queue
only after its copy is on the main queue. A record reset by this very dead
letter (``redriven_from``) and still ``queued`` is sent again by the next
redrive, since the interrupted one may not have sent it; the claim in DynamoDB
runs the task once if both copies arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.deadletter import ATTR_TASK, parse_attributes
from dispatch.core.envelope import decode, is_lean_task_id
from dispatch.core.errors import DispatchError, EnvelopeError
from dispatch.core.signing import ATTR_SIGNATURE
from dispatch.store import state
from dispatch.store.aws import aws_errors
from dispatch.store.codec import number
from dispatch.store.conditional import is_condition_failure, old_item

if TYPE_CHECKING:
    from dispatch.core.config import Settings
    from dispatch.store.aws import SyncClients

__all__ = [
    "DeadLetterEntry",
    "NotDead",
    "RedriveReport",
    "iter_dead_letters",
    "purge",
    "redrive",
    "release",
    "revive_params",
]

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


@dataclass(frozen=True, slots=True)
class NotDead:
    """A dead letter whose task is not dead any more: not redriven, and why."""

    entry: DeadLetterEntry
    status: str
    removed: bool  # the task finished: its stale dead letter left the DLQ

    @property
    def why(self) -> str:
        """One line for the operator."""
        if self.removed:
            return f"the task already {self.status}: a stale dead letter, removed from the DLQ"
        return (
            f"the task is {self.status} (revived by another dead letter or still "
            "retrying): left on the DLQ"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "message_id": self.entry.message_id,
            "task_id": self.entry.task_id,
            "task": self.entry.task,
            "status": self.status,
            "removed": self.removed,
            "why": self.why,
        }


@dataclass(slots=True)
class RedriveReport:
    """What a redrive did (or, dry, would do)."""

    redriven: list[DeadLetterEntry] = field(default_factory=list)
    skipped: int = 0  # left out by --task or --limit
    not_dead: list[NotDead] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "redriven": len(self.redriven),
            "skipped": self.skipped,
            "not_dead": [n.to_dict() for n in self.not_dead],
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
    reason: str | None = None,
    since: float | None = None,
) -> RedriveReport:
    """Move dead tasks back to the queue: optionally only those of one ``task``, dead for
    one ``reason``, dead-lettered at or after ``since`` (epoch seconds), at most
    ``limit``. Interrupted, it leaves every letter it did not move on the DLQ, and a
    record is revived only from ``dead`` (conditionally), so running it again moves
    what is left and never runs a task twice."""
    report = RedriveReport(dry_run=dry_run)
    kept: list[DeadLetterEntry] = []
    batch: list[DeadLetterEntry] = []
    revived: set[str | None] = set()  # dry run: the task ids a dead letter would revive

    def send(entries: list[DeadLetterEntry]) -> None:
        _redrive_batch(
            clients,
            settings,
            entries,
            report=report,
            kept=kept,
            revived=revived,
            progress=progress,
        )

    try:
        for entry in iter_dead_letters(clients, settings):
            if not _selected(entry, task=task, reason=reason, since=since) or (
                limit is not None and len(report.redriven) + len(batch) >= limit
            ):
                kept.append(entry)
                report.skipped += 1
                continue
            batch.append(entry)
            if len(batch) == c.SQS_MAX_BATCH_ENTRIES:
                send(batch)
                batch = []
        if batch:
            send(batch)
            batch = []
    finally:
        release(clients, settings, kept + batch)
    return report


def _selected(
    entry: DeadLetterEntry, *, task: str | None, reason: str | None, since: float | None
) -> bool:
    """Whether a dead letter matches the redrive's filters."""
    return (
        (task is None or entry.task == task)
        and (reason is None or entry.reason == reason)
        and (since is None or (entry.sent_at is not None and entry.sent_at >= since))
    )


def _redrive_batch(
    clients: SyncClients,
    settings: Settings,
    batch: list[DeadLetterEntry],
    *,
    report: RedriveReport,
    kept: list[DeadLetterEntry],
    revived: set[str | None],
    progress: Callable[[int], None] | None,
) -> None:
    """Revive the dead among ``batch`` (dry: say which would be, ``revived`` holding the
    task ids earlier batches would revive) and move them back."""
    if report.dry_run:
        revivable, not_dead = _would_revive(clients, settings, batch, revived=revived)
        kept.extend(batch)
    else:
        # Interrupted here, the whole batch is made visible again by the caller.
        revivable, not_dead = _revive(clients, settings, batch)
        _move(clients, settings, revivable, [n.entry for n in not_dead if n.removed])
        kept.extend(n.entry for n in not_dead if not n.removed)
    report.redriven.extend(revivable)
    report.not_dead.extend(not_dead)
    if progress:
        progress(len(batch))


def _tracked(entry: DeadLetterEntry) -> bool:
    """A task with a record (a lean task or a foreign body has none to check)."""
    return bool(entry.task_id) and not is_lean_task_id(entry.task_id or "")


def _revive(
    clients: SyncClients, settings: Settings, batch: list[DeadLetterEntry]
) -> tuple[list[DeadLetterEntry], list[NotDead]]:
    """Reset the record of each dead task (conditionally); the rest are not dead."""
    now = time.time()
    revived: list[DeadLetterEntry] = []
    not_dead: list[NotDead] = []
    for entry in batch:
        if not _tracked(entry):
            revived.append(entry)
            continue
        with aws_errors("UpdateItem"):
            try:
                clients.dynamodb.update_item(**revive_params(settings.table, entry, now))
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise
                not_dead.append(_not_dead(entry, old_item(exc)))
                continue
        revived.append(entry)
    return revived, not_dead


def _would_revive(
    clients: SyncClients,
    settings: Settings,
    batch: list[DeadLetterEntry],
    *,
    revived: set[str | None],
) -> tuple[list[DeadLetterEntry], list[NotDead]]:
    """What :func:`_revive` would do, from the records as they are (one BatchGetItem):
    a second dead letter of a task another one would revive (``revived``) would find it
    queued."""
    tracked = [e for e in batch if _tracked(e)]
    items: dict[str, dict[str, Any]] = {}
    if tracked:
        keys = list({e.task_id: state.task_key(e.task_id or "") for e in tracked}.values())
        with aws_errors("BatchGetItem"):
            answer = clients.dynamodb.batch_get_item(
                RequestItems={settings.table: {"Keys": keys, "ConsistentRead": True}}
            )
        for found in answer.get("Responses", {}).get(settings.table, []):
            items[str(found["task_id"]["S"])] = dict(found)
    revivable: list[DeadLetterEntry] = []
    not_dead: list[NotDead] = []
    for entry in batch:
        item = items.get(entry.task_id or "")
        if _tracked(entry) and entry.task_id in revived:
            not_dead.append(NotDead(entry=entry, status=state.Status.QUEUED.value, removed=False))
        elif not _tracked(entry) or item is None or _revivable(item, entry):
            revivable.append(entry)
            revived.add(entry.task_id)
        else:
            not_dead.append(_not_dead(entry, item))
    return revivable, not_dead


def _revivable(item: dict[str, Any], entry: DeadLetterEntry) -> bool:
    """The condition of :func:`revive_params`, on a record read."""
    status = item.get("status", {}).get("S")
    from_here = item.get("redriven_from", {}).get("S") == entry.message_id
    return bool(
        status == state.Status.DEAD.value or (status == state.Status.QUEUED.value and from_here)
    )


def _not_dead(entry: DeadLetterEntry, item: dict[str, Any] | None) -> NotDead:
    status = (item or {}).get("status", {}).get("S", "unknown")
    finished = status in (state.Status.SUCCEEDED.value, state.Status.CANCELLED.value)
    return NotDead(entry=entry, status=status, removed=finished)


def _move(
    clients: SyncClients,
    settings: Settings,
    batch: list[DeadLetterEntry],
    stale: list[DeadLetterEntry],
) -> None:
    """Send the revived bodies to the main queue, then delete them (and the stale dead
    letters of finished tasks) from the DLQ."""
    failed: set[str] = set()
    if batch:
        with aws_errors("SendMessageBatch"):
            entries: list[Any] = [
                {"Id": str(i), "MessageBody": e.body, **e.carried()} for i, e in enumerate(batch)
            ]
            sent = clients.sqs.send_message_batch(QueueUrl=settings.queue_url, Entries=entries)
        failed = {f["Id"] for f in sent.get("Failed", [])}
    moved = [e for i, e in enumerate(batch) if str(i) not in failed] + stale
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


def revive_params(table: str, entry: DeadLetterEntry, now: float) -> dict[str, Any]:
    """UpdateItem: a dead task (or one whose record expired) is queued again, its
    attempts reset; or one this very dead letter revived before is queued still (an
    interrupted redrive may not have sent it). Anything else is not dead: refused."""
    return {
        "TableName": table,
        "Key": state.task_key(entry.task_id or ""),
        "UpdateExpression": (
            "SET #s = :queued, attempts = :zero, redriven_at = :now, updated_at = :now, "
            "redriven_from = :from, task_id = :id, task = if_not_exists(task, :task), "
            "created_at = if_not_exists(created_at, :now), expires_at = :ttl, "
            "redrive_count = if_not_exists(redrive_count, :zero) + :one "
            "REMOVE dead_reason, finished_at, lease_until, next_attempt_at, "
            f"{c.LISTED_ATTRIBUTE}"  # queued records are not listed
        ),
        "ConditionExpression": (
            "attribute_not_exists(pk) OR #s = :dead OR (#s = :queued AND redriven_from = :from)"
        ),
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":queued": {"S": state.Status.QUEUED.value},
            ":dead": {"S": state.Status.DEAD.value},
            ":from": {"S": entry.message_id},
            ":id": {"S": entry.task_id or ""},
            ":task": {"S": entry.task or c.UNNAMED_TASK},  # a GSI key: never empty
            ":zero": number(0),
            ":one": number(1),
            ":now": number(now),
            ":ttl": number(state.record_ttl(now)),
        },
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def purge(clients: SyncClients, settings: Settings) -> None:
    """Delete every message on the dead-letter queue (SQS PurgeQueue)."""
    with aws_errors("PurgeQueue"):
        clients.sqs.purge_queue(QueueUrl=settings.dlq_url)
