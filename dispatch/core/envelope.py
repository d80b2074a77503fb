"""The message format on the wire (envelope version 1), its validation and size limits.

A message body is one JSON object (see docs/formats.md)::

    {"v": 1, "id": "9f0c...", "task": "charge", "args": [], "kwargs": {"order_id": "42"},
     "enqueued_at": 1767225600.125, "eta": 1767229200.0, "idempotency_key": "order-42"}

``eta``, ``idempotency_key`` and ``group`` appear only when set. Arguments are
JSON values; anything else is refused at enqueue time, naming the argument.
"""

from __future__ import annotations

import inspect
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dispatch.core import constants as c
from dispatch.core.errors import (
    EnqueueError,
    EnvelopeError,
    InvalidArgumentsError,
    PayloadTooLargeError,
)

__all__ = [
    "RESERVED_OPTIONS",
    "Envelope",
    "Message",
    "MessageOptions",
    "decode",
    "is_lean_task_id",
]

RESERVED_OPTIONS: Final = ("delay_s", "idempotency_key", "group")
_IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("6b3f7a52-8d0e-4c1f-9a57-0d1e2f3a4b5c")
_KNOWN_FIELDS: Final = frozenset(
    {"v", "id", "task", "args", "kwargs", "enqueued_at", "eta", "idempotency_key", "group"}
)


@dataclass(frozen=True, slots=True)
class MessageOptions:
    """Enqueue options: a delay, an idempotency key, a FIFO message group."""

    delay_s: float | None = None
    idempotency_key: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.delay_s is not None and not (
            isinstance(self.delay_s, int | float)
            and not isinstance(self.delay_s, bool)
            and math.isfinite(self.delay_s)
            and self.delay_s >= 0
        ):
            raise EnqueueError(f"delay_s={self.delay_s!r}: must be a finite number of seconds >= 0")
        if self.idempotency_key is not None and not (
            isinstance(self.idempotency_key, str) and 1 <= len(self.idempotency_key) <= 256
        ):
            raise EnqueueError(
                f"idempotency_key={self.idempotency_key!r}: must be a string of 1 to 256 characters"
            )
        if self.group is not None and not (
            isinstance(self.group, str) and 1 <= len(self.group) <= 128
        ):
            raise EnqueueError(f"group={self.group!r}: must be a string of 1 to 128 characters")

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> MessageOptions:
        """Options taken out of an ``enqueue(...)`` call's keywords."""
        return cls(
            delay_s=options.get("delay_s"),
            idempotency_key=options.get("idempotency_key"),
            group=options.get("group"),
        )


class TaskShape(Protocol):
    """What building a message needs of a declared task (a ``TaskSpec`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def signature(self) -> inspect.Signature: ...

    @property
    def track_state(self) -> bool: ...

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments: ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """One run of one task, as carried in a message body."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    enqueued_at: float = 0.0
    eta: float | None = None
    idempotency_key: str | None = None
    group: str | None = None

    def to_json(self) -> str:
        """The message body: compact JSON, keys in a stable order."""
        body: dict[str, Any] = {
            "v": c.ENVELOPE_VERSION,
            "id": self.id,
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "enqueued_at": self.enqueued_at,
        }
        if self.eta is not None:
            body["eta"] = self.eta
        if self.idempotency_key is not None:
            body["idempotency_key"] = self.idempotency_key
        if self.group is not None:
            body["group"] = self.group
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def seconds_until_due(self, now: float) -> float:
        """How long before the task may run (0 when it is due)."""
        return 0.0 if self.eta is None else max(0.0, self.eta - now)


@dataclass(frozen=True, slots=True)
class Message:
    """An envelope ready to send, with its options; built by ``Task.message(...)``."""

    envelope: Envelope
    body: str
    delay_s: float = 0.0

    @property
    def task_id(self) -> str:
        """The id the task will be known by (``dispatch.status(task_id)``)."""
        return self.envelope.id

    @property
    def size_bytes(self) -> int:
        """Bytes SQS counts for this message."""
        return len(self.body.encode("utf-8"))

    @classmethod
    def build(
        cls,
        spec: TaskShape,
        args: Iterable[Any],
        kwargs: dict[str, Any],
        options: MessageOptions,
        *,
        now: float | None = None,
    ) -> Message:
        """Check the arguments against the handler and the size against SQS; build the body."""
        args = tuple(args)
        _check_json(spec.name, args, kwargs)
        try:
            spec.bind(args, kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"task {spec.name!r}: arguments do not fit {spec.name}{spec.signature}: {exc}",
                task=spec.name,
            ) from exc
        enqueued_at = time.time() if now is None else now
        delay_s = float(options.delay_s or 0.0)
        if options.idempotency_key is not None:
            task_id = uuid.uuid5(
                _IDEMPOTENCY_NAMESPACE, f"{spec.name}\0{options.idempotency_key}"
            ).hex
        else:
            task_id = uuid.uuid4().hex
        if not spec.track_state:
            task_id = f"{c.LEAN_TASK_ID_PREFIX}{task_id}"
        envelope = Envelope(
            id=task_id,
            task=spec.name,
            args=args,
            kwargs=kwargs,
            enqueued_at=round(enqueued_at, 3),
            eta=round(enqueued_at + delay_s, 3) if delay_s > c.SQS_MAX_DELAY_S else None,
            idempotency_key=options.idempotency_key,
            group=options.group,
        )
        body = envelope.to_json()
        message = cls(envelope=envelope, body=body, delay_s=delay_s)
        if message.size_bytes > c.MAX_ENVELOPE_BYTES:
            raise PayloadTooLargeError(
                task=spec.name, size_bytes=message.size_bytes, limit_bytes=c.MAX_ENVELOPE_BYTES
            )
        return message

    def sqs_delay_seconds(self) -> int:
        """DelaySeconds for SendMessage: SQS allows 900 at most; ``eta`` covers the rest."""
        return min(c.SQS_MAX_DELAY_S, math.ceil(self.delay_s))


def is_lean_task_id(task_id: str) -> bool:
    """True for the id of a lean task (``@task(track_state=False)``): no record is kept."""
    return task_id.startswith(c.LEAN_TASK_ID_PREFIX)


def _check_json(task: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    named = [(f"positional argument {i}", value) for i, value in enumerate(args)]
    named += [(f"argument {key!r}", {key: value}) for key, value in kwargs.items()]
    for label, value in named:
        try:
            # As the body will be written: raw UTF-8, so a lone surrogate is caught here.
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentsError(
                f"task {task!r}: {label} is not JSON-serialisable ({exc}); pass plain "
                "str/int/float/bool/None/list/dict values",
                task=task,
            ) from exc


def decode(body: str) -> Envelope:
    """Parse a message body into an Envelope; EnvelopeError says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnvelopeError(f"body is JSON but not an object (got {type(data).__name__})")
    task_id = data.get("id") if isinstance(data.get("id"), str) else None
    task = data.get("task") if isinstance(data.get("task"), str) else None
    version = data.get("v")
    if isinstance(version, bool) or version != c.ENVELOPE_VERSION:
        raise EnvelopeError(
            f"envelope version {version!r} is not supported (this dispatcher reads "
            f"version {c.ENVELOPE_VERSION}); missing 'v' means the message was not "
            "written by Dispatch",
            task_id=task_id,
            task=task,
        )
    problems = _problems(data, task_id, task)
    if problems or task_id is None or task is None:
        raise EnvelopeError("invalid envelope: " + "; ".join(problems), task_id=task_id, task=task)
    enqueued_at = data.get("enqueued_at", 0.0)
    eta = data.get("eta")
    return Envelope(
        id=task_id,
        task=task,
        args=tuple(data.get("args", [])),
        kwargs=data.get("kwargs", {}),
        enqueued_at=float(enqueued_at),
        eta=float(eta) if eta is not None else None,
        idempotency_key=data.get("idempotency_key"),
        group=data.get("group"),
    )


def _problems(data: dict[str, Any], task_id: str | None, task: str | None) -> list[str]:
    """Everything wrong with a version-1 envelope's fields, in one list."""
    problems = []
    if not task_id or len(task_id) > 128:
        problems.append("'id' must be a non-empty string of at most 128 characters")
    if not task:
        problems.append("'task' must be a non-empty string")
    if not isinstance(data.get("args", []), list):
        problems.append("'args' must be a list")
    if not isinstance(data.get("kwargs", {}), dict):
        problems.append("'kwargs' must be an object")
    if not _is_number(data.get("enqueued_at", 0.0)):
        problems.append("'enqueued_at' must be a number (seconds since the epoch)")
    if data.get("eta") is not None and not _is_number(data["eta"]):
        problems.append("'eta' must be a number (seconds since the epoch)")
    for key in ("idempotency_key", "group"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(f"{key!r} must be a string")
    unknown = sorted(set(data) - _KNOWN_FIELDS)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}")
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
