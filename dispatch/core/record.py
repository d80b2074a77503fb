"""A task's record as Dispatch reads it: its status, attempts, timings and last error.

The data of one DynamoDB task item (docs/formats.md), and the answer a claim
gives; :mod:`dispatch.store.state` reads and writes them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from boto3.dynamodb.types import TypeDeserializer

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.outcome import ErrorInfo

__all__ = [
    "LISTED_STATUSES",
    "Claim",
    "ClaimAsk",
    "ClaimStatus",
    "Status",
    "TaskRecord",
    "iso",
    "listed_value",
    "listed_while_running",
]

_DESERIALIZER: Final = TypeDeserializer()


class Status(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a task never leaves."""
        return self in (Status.SUCCEEDED, Status.DEAD, Status.CANCELLED)

    @property
    def is_listed(self) -> bool:
        """True for the states the listing indexes hold (:data:`LISTED_STATUSES`)."""
        return self in LISTED_STATUSES


LISTED_STATUSES: Final = frozenset({Status.RUNNING, Status.RETRYING, Status.DEAD, Status.CANCELLED})
"""The states a record carries ``listed`` in, so the sparse listing indexes hold it.

``queued`` (the backlog, which the queue's depth counts) and ``succeeded`` (the
history, which the metrics count) hold most records at any moment; leaving them out
keeps a successful task at two index writes per index (docs/performance.md, "Listing").
"""


def listed_while_running(timeout_s: float) -> bool:
    """Whether a claim for an attempt of up to ``timeout_s`` puts the record in the
    listing indexes as running (:data:`~dispatch.core.constants.LIST_RUNNING_OVER_S`);
    otherwise the claim takes it out of them, if it was in (retrying)."""
    return timeout_s > c.LIST_RUNNING_OVER_S


def listed_value(status: Status, at: float) -> str:
    """The ``listed`` attribute of a record that entered ``status`` at ``at``: the status,
    then the time zero-padded to sort as text (``dead#1796036400.125``)."""
    return f"{status.value}#{at:014.3f}"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task record as stored (times are seconds since the epoch, UTC)."""

    task_id: str
    task: str
    status: Status
    attempts: int = 0
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    first_failure_at: float | None = None
    last_failure_at: float | None = None
    next_attempt_at: float | None = None
    lease_until: float | None = None
    message_id: str | None = None
    idempotency_key: str | None = None
    last_error: ErrorInfo | None = None
    dead_reason: str | None = None
    result: Any = None
    pending_send: bool = False
    claim_token: str | None = None
    cancel_requested_by: str | None = None  # ``dispatch cancel`` of a running task: who
    cancel_requested_at: float | None = None  # and when (the record's ``cancel_requested``)

    @property
    def cancel_requested(self) -> bool:
        """True when a cancel of this task was requested while it ran."""
        return self.cancel_requested_at is not None

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> TaskRecord:
        """Build from a DynamoDB item (attribute-value form)."""
        data = {key: _DESERIALIZER.deserialize(value) for key, value in item.items()}

        def number(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value is not None else None

        error = data.get("last_error")
        result = data.get("result")
        request = data.get("cancel_requested")
        request = request if isinstance(request, dict) else {}
        return cls(
            task_id=str(data.get("task_id", str(data[c.TABLE_HASH_KEY])[len(c.TASK_KEY_PREFIX) :])),
            task=str(data.get("task", "")),
            status=Status(str(data.get("status", Status.QUEUED))),
            attempts=int(data.get("attempts", 0)),
            created_at=number("created_at"),
            updated_at=number("updated_at"),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            first_failure_at=number("first_failure_at"),
            last_failure_at=number("last_failure_at"),
            next_attempt_at=number("next_attempt_at"),
            lease_until=number("lease_until"),
            message_id=data.get("message_id"),
            idempotency_key=data.get("idempotency_key"),
            last_error=ErrorInfo.from_dict(dict(error)) if isinstance(error, dict) else None,
            dead_reason=data.get("dead_reason"),
            result=json.loads(result) if isinstance(result, str) else None,
            pending_send=bool(data.get("pending_send", False)),
            claim_token=data.get("claim_token"),
            cancel_requested_by=str(request["by"]) if "by" in request else None,
            cancel_requested_at=float(request["at"]) if "at" in request else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with ISO-8601 UTC times (what ``dispatch status`` prints)."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task": self.task,
            "status": self.status.value,
            "attempts": self.attempts,
        }
        for name in (
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "first_failure_at",
            "last_failure_at",
            "next_attempt_at",
            "lease_until",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = iso(value)
        for name in ("message_id", "idempotency_key", "dead_reason"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.last_error is not None:
            out["last_error"] = self.last_error.to_dict()
        if self.result is not None:
            out["result"] = self.result
        if self.cancel_requested_at is not None:
            out["cancel_requested"] = {
                "by": self.cancel_requested_by or "",
                "at": iso(self.cancel_requested_at),
            }
        return out


class ClaimStatus(StrEnum):
    """What a claim on a delivered message found."""

    CLAIMED = "claimed"  # run it: this delivery owns the attempt
    DONE = "done"  # already succeeded or cancelled: delete the message, do not run
    DEAD = "dead"  # already dead-lettered: delete (re-send to the DLQ if this message owned it)
    BUSY = "busy"  # running elsewhere under a live lease: hide until the lease ends
    DUPLICATE = "duplicate"  # another message owns this task: delete this one
    EXHAUSTED = "exhausted"  # max_attempts spent, the last without an outcome: dead-letter
    NO_RECORD = "no_record"  # an old message whose record expired: dead-letter, never run


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: what to do with the delivery, and the record."""

    status: ClaimStatus
    record: TaskRecord
    item: dict[str, Any] = field(default_factory=dict)  # the record as stored (claimed only)


@dataclass(frozen=True, slots=True)
class ClaimAsk:
    """What a claim asks: start an attempt of ``envelope``'s task for this delivery.

    ``token`` is a hash of this receive's receipt handle (a repeat of the same claim
    knows the attempt as its own); no attempt beyond ``max_attempts`` starts; with
    ``require_record`` a missing record is not a first sight (it expired).
    """

    envelope: Envelope
    message_id: str
    now: float
    timeout_s: float
    token: str | None = None
    max_attempts: int | None = None
    require_record: bool = False


def iso(epoch_s: float) -> str:
    """An epoch time as ISO-8601 UTC with milliseconds and a Z."""
    moment = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
