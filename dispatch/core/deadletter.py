"""The dead-letter format: the original body, verbatim, plus why it died.

A dead-lettered message keeps the exact body it had on the main queue (so a
redrive sends back byte-for-byte what the producer sent) and carries the failure
in message attributes:

- ``dispatch-reason``: a short code (see :class:`Reason`), for filtering;
- ``dispatch-task``: the task name, when known;
- ``dispatch-failure``: JSON with the reason, the error (type, message, short
  traceback), attempts, first and last failure time, the task id, the source
  queue and message id.

docs/formats.md documents the fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from dispatch.core import constants as c
from dispatch.core.delivery import Delivery
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import iso

__all__ = ["DeadLetter", "Reason", "parse_attributes"]

ATTR_REASON: Final = f"{c.DLQ_ATTR_PREFIX}reason"
ATTR_TASK: Final = f"{c.DLQ_ATTR_PREFIX}task"
ATTR_FAILURE: Final = f"{c.DLQ_ATTR_PREFIX}failure"


class Reason(StrEnum):
    """Why a message was dead-lettered."""

    MAX_ATTEMPTS = "max_attempts"  # every attempt failed
    PERMANENT_ERROR = "permanent_error"  # the handler raised PermanentError
    NOT_RETRYABLE = "not_retryable"  # the handler raised an exception outside retry_on
    MALFORMED = "malformed"  # the body is not a valid envelope
    UNKNOWN_TASK = "unknown_task"  # no handler registered under the task name
    BAD_ARGUMENTS = "bad_arguments"  # the arguments do not bind to the handler
    BAD_SIGNATURE = "bad_signature"  # signing is on and the message is not signed by us
    RECORD_EXPIRED = "record_expired"  # older than a record lives, and its record is gone


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message on its way to the dead-letter queue."""

    body: str
    reason: Reason
    error: ErrorInfo
    source_queue: str
    source_message_id: str
    dead_at: float
    task_id: str | None = None
    task: str | None = None
    attempts: int = 0
    first_failure_at: float | None = None
    last_failure_at: float | None = None
    receive_count: int | None = None
    carried: dict[str, dict[str, str]] = field(default_factory=dict)  # e.g. the signature

    @classmethod
    def of(
        cls,
        delivery: Delivery,
        *,
        reason: Reason,
        error: ErrorInfo,
        source_queue: str,
        dead_at: float,
        task_id: str | None = None,
        task: str | None = None,
        attempts: int = 0,
        first_failure_at: float | None = None,
        last_failure_at: float | None = None,
    ) -> DeadLetter:
        """The dead letter of one delivery: its body, id, receive count and signature."""
        return cls(
            body=delivery.body,
            reason=reason,
            error=error,
            source_queue=source_queue,
            source_message_id=delivery.message_id,
            dead_at=dead_at,
            task_id=task_id,
            task=task,
            attempts=attempts,
            first_failure_at=first_failure_at,
            last_failure_at=last_failure_at,
            receive_count=delivery.receive_count,
            carried=delivery.carried(),
        )

    def failure(self, *, with_traceback: bool = True) -> dict[str, Any]:
        """The ``dispatch-failure`` attribute's content."""
        error = self.error.to_dict()
        if not with_traceback:
            error.pop("traceback")
        data: dict[str, Any] = {
            "reason": self.reason.value,
            "error": error,
            "attempts": self.attempts,
            "task_id": self.task_id,
            "task": self.task,
            "first_failure_at": iso(self.first_failure_at) if self.first_failure_at else None,
            "last_failure_at": iso(self.last_failure_at) if self.last_failure_at else None,
            "dead_at": iso(self.dead_at),
            "source_queue": self.source_queue,
            "source_message_id": self.source_message_id,
            "receive_count": self.receive_count,
        }
        return {key: value for key, value in data.items() if value is not None}

    def attributes(self) -> dict[str, dict[str, str]]:
        """SendMessage MessageAttributes, trimmed so body + attributes fit SQS's limit."""
        room = c.SQS_MAX_MESSAGE_BYTES - len(self.body.encode("utf-8")) - 512
        attrs = {ATTR_REASON: _string(self.reason.value), **self.carried}
        if self.task:
            attrs[ATTR_TASK] = _string(_sanitize(self.task)[:256])
        for with_traceback in (True, False):
            encoded = _sanitize(json.dumps(self.failure(with_traceback=with_traceback)))
            if len(encoded.encode("utf-8")) <= room:
                attrs[ATTR_FAILURE] = _string(encoded)
                break
        return attrs

    def send_entry(self, entry_id: str) -> dict[str, Any]:
        """A SendMessageBatch entry for the dead-letter queue."""
        return {"Id": entry_id, "MessageBody": self.body, "MessageAttributes": self.attributes()}


def parse_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Read the failure back from a received dead-letter message's attributes.

    A message that SQS's own redrive policy moved (a poison message) has none of
    ours; it is reported as such.
    """
    raw = attributes.get(ATTR_FAILURE, {}).get("StringValue")
    if raw:
        data: dict[str, Any] = json.loads(raw)
        return data
    reason = attributes.get(ATTR_REASON, {}).get("StringValue")
    if reason:
        return {"reason": reason}
    return {"reason": "redrive_policy", "error": {"type": "", "message": "moved by SQS redrive"}}


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _sanitize(text: str) -> str:
    """Keep only the characters SQS allows in a message attribute."""
    return "".join(
        ch
        if ch in "\t\n\r"
        or "\x20" <= ch <= "\ud7ff"
        or "\ue000" <= ch <= "\ufffd"
        or ch >= "\U00010000"
        else "\ufffd"
        for ch in text
    )
