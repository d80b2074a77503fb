"""The message format on the wire (envelope version 1), its validation and size limits.

A message body is one JSON object (see docs/formats.md)::

    {"v": 1, "id": "9f0c...", "task": "charge", "args": [], "kwargs": {"order_id": "42"},
     "enqueued_at": 1767225600.125, "eta": 1767229200.0, "idempotency_key": "order-42"}

``eta``, ``idempotency_key``, ``group`` and ``key`` (the task's key, for per-key
limits: ``@task(key=...)``) appear only when set.

One set of rules holds on both sides of the queue (docs/bad-input.md): what
``Message.build`` refuses at enqueue, ``decode`` refuses on arrival (and the
dispatcher dead-letters it as ``malformed``). The strings that become DynamoDB
keys and attributes or SQS fields (``id``, ``task``, ``idempotency_key``,
``group``) must be valid Unicode of bounded length. Arguments must come back as
they were passed, in any language: JSON values, finite floats, integers within
64 bits, string keys, no lone surrogates, at most :data:`ARGUMENT_MAX_DEPTH`
lists and dicts deep.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import string
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
    "ARGUMENT_MAX_DEPTH",
    "RESERVED_OPTIONS",
    "Envelope",
    "Message",
    "MessageOptions",
    "decode",
    "is_lean_task_id",
    "key_problem",
]

RESERVED_OPTIONS: Final = ("delay_s", "idempotency_key", "group")
_IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("6b3f7a52-8d0e-4c1f-9a57-0d1e2f3a4b5c")
_KNOWN_FIELDS: Final = frozenset(
    {
        "v",
        "id",
        "task",
        "args",
        "kwargs",
        "enqueued_at",
        "eta",
        "idempotency_key",
        "group",
        "key",
        "join",
    }
)
# The envelope's strings and their longest length in characters. Each one is stored or
# sent (the record key ``task#<id>`` and attributes in DynamoDB, the MessageGroupId in
# SQS), so it must encode as UTF-8; 128 characters of at most 4 bytes each, with the key
# prefix, stay far inside DynamoDB's 2,048-byte partition key.
_TEXT_FIELDS: Final = {
    "id": 128,
    "task": 128,
    "idempotency_key": 256,
    "group": 128,
    "key": 128,
    "join": 128,
}
_GROUP_CHARS: Final = frozenset(string.ascii_letters + string.digits + string.punctuation)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# Characters SQS refuses in a message body although JSON may carry them raw.
_SQS_REFUSED: Final = ("\ufffe", "\uffff")

ARGUMENT_MAX_DEPTH: Final = 100
"""Lists and dicts nested deeper than this in one argument are refused: deeper than any
real document, shallow enough for every JSON parser to read back (Rust's serde_json
stops at 128 levels, and the envelope adds two), and a list that contains itself is
caught on the way."""
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_CONTAINERS: Final = (list, tuple, dict)
_Path = tuple[str | int, ...]


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
        for name in ("idempotency_key", "group"):
            value = getattr(self, name)
            problem = None if value is None else _text_problem(name, value)
            if problem is not None:
                raise EnqueueError(f"{name}={value!r:.80}: {problem}")

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

    def key_of(self, args: Iterable[Any], kwargs: dict[str, Any]) -> str | None: ...


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
    key: str | None = None  # the task's key (per-key limits), computed at enqueue
    join: str | None = None  # the group whose callback waits for this task (docs/formats.md)

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
        if self.key is not None:
            body["key"] = self.key
        if self.join is not None:
            body["join"] = self.join
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        for refused in _SQS_REFUSED:
            if refused in text:  # only ever inside a string, where the escape means the same
                text = text.replace(refused, f"\\u{ord(refused):04x}")
        return text

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
        problem = _arguments_problem(args, kwargs)
        if problem is not None:
            raise InvalidArgumentsError(f"task {spec.name!r}: {problem}", task=spec.name)
        try:
            spec.bind(args, kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"task {spec.name!r}: arguments do not fit {spec.name}{spec.signature}: {exc}",
                task=spec.name,
            ) from exc
        try:
            key = spec.key_of(args, kwargs)
        except ValueError as exc:
            raise InvalidArgumentsError(f"task {spec.name!r}: {exc}", task=spec.name) from exc
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
            key=key,
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


def key_problem(value: object) -> str | None:
    """Why ``value`` cannot be a task's key (``@task(key=...)``), or None when it can: a
    string of 1 to 128 ASCII letters, digits and punctuation (an SQS MessageGroupId)."""
    return _text_problem("key", value)


def _text_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be the envelope's string ``name``, or None when it can.

    The one rule for both sides: ``MessageOptions`` refuses such a value at enqueue,
    ``decode`` refuses a message carrying it.
    """
    max_chars = _TEXT_FIELDS[name]
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        return f"must be a string of 1 to {max_chars} characters"
    if not value.isascii() and _SURROGATE.search(value):
        return _not_unicode(value) + ", so it can be neither stored nor sent"
    if name in ("group", "key") and not _GROUP_CHARS.issuperset(value):
        return "may hold only ASCII letters, digits and punctuation (an SQS MessageGroupId)"
    return None


def _not_unicode(text: str) -> str:
    found = _SURROGATE.search(text)
    where = f"U+{ord(found.group()):04X} at position {found.start()}" if found else "?"
    return f"is not valid Unicode (a lone surrogate, {where})"


def _arguments_problem(args: Iterable[Any], kwargs: Mapping[Any, Any]) -> str | None:
    """What in the arguments would not reach the handler as passed, naming the argument
    and the place inside it; None when all is well."""
    for i, value in enumerate(args):
        found = _value_problem(value)
        if found is not None:
            return _describe(f"positional argument {i}", *found)
    for key, value in kwargs.items():
        if not isinstance(key, str) or (not key.isascii() and _SURROGATE.search(key)):
            return f"keyword argument name {key!r:.80} is not a valid Unicode string"
        found = _value_problem(value)
        if found is not None:
            return _describe(f"argument {key!r}", *found)
    return None


def _value_problem(value: object) -> tuple[_Path, str] | None:
    """The first thing in ``value`` that cannot travel as JSON and come back equal, with
    its path; None when there is none.

    Iterative (an explicit stack) and each node is visited once, so a value nested
    10,000 deep is refused, never a RecursionError, and an ordinary one costs little.
    """
    stack: list[tuple[object, _Path]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if not isinstance(item, _CONTAINERS):
            problem = _scalar_problem(item)
        elif len(path) >= ARGUMENT_MAX_DEPTH:
            problem = f"is nested more than {ARGUMENT_MAX_DEPTH} lists or dicts deep"
            problem += " (or contains itself)"
        elif isinstance(item, dict):
            problem = _keys_problem(item)
            stack.extend((child, (*path, key)) for key, child in item.items())
        else:
            problem = None
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        if problem is not None:
            return path, problem
    return None


def _scalar_problem(item: object) -> str | None:
    if isinstance(item, str):
        unicode = item.isascii() or not _SURROGATE.search(item)
        return None if unicode else _not_unicode(item) + ": it cannot be encoded as UTF-8"
    if item is None or isinstance(item, bool):
        return None
    if isinstance(item, int):
        if _INT64_MIN <= item <= _INT64_MAX:
            return None
        return (
            "is an integer outside the signed 64-bit range (-2**63 to 2**63 - 1) that other "
            "languages read back; pass it as a string"
        )
    if isinstance(item, float):
        return None if math.isfinite(item) else f"is {item!r}: JSON has no NaN or infinity"
    return (
        f"is not JSON-serialisable (a {type(item).__qualname__}); pass plain "
        "str/int/float/bool/None/list/dict values"
    )


def _keys_problem(mapping: dict[Any, Any]) -> str | None:
    for key in mapping:
        if not isinstance(key, str):
            return (
                f"has the key {key!r:.80}, not a string: JSON would make it one and the "
                "handler would get another dict than was passed; use string keys"
            )
        if not key.isascii() and _SURROGATE.search(key):
            return f"has a key that {_not_unicode(key)}: it cannot be encoded as UTF-8"
    return None


def _describe(label: str, path: _Path, reason: str) -> str:
    if not path:
        return f"{label} {reason}"
    steps = [f"[{step!r}]" for step in path]
    if len(steps) > 8:
        steps = [*steps[:4], f"...({len(steps) - 6} more)...", *steps[-2:]]
    return f"{label} at {''.join(steps)} {reason}"


def decode(body: str) -> Envelope:
    """Parse a message body into an Envelope; EnvelopeError says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnvelopeError(f"body is JSON but not an object (got {type(data).__name__})")
    # Carried in the error only when they could be stored: the dispatcher marks the
    # record under this id, and writes the name into it and into the dead letter.
    task_id = data.get("id") if _text_problem("id", data.get("id")) is None else None
    task = data.get("task") if _text_problem("task", data.get("task")) is None else None
    version = data.get("v")
    if isinstance(version, bool) or version != c.ENVELOPE_VERSION:
        raise EnvelopeError(
            f"envelope version {version!r} is not supported (this dispatcher reads "
            f"version {c.ENVELOPE_VERSION}); missing 'v' means the message was not "
            "written by Dispatch",
            task_id=task_id,
            task=task,
        )
    problems = _problems(data)
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
        key=data.get("key"),
        join=data.get("join"),
    )


def _problems(data: dict[str, Any]) -> list[str]:
    """Everything wrong with a version-1 envelope's fields, in one list."""
    problems = []
    for name in ("id", "task"):
        problem = _text_problem(name, data.get(name))
        if problem is not None:
            problems.append(f"{name!r} {problem}")
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list):
        problems.append("'args' must be a list")
    if not isinstance(kwargs, dict):
        problems.append("'kwargs' must be an object")
    if isinstance(args, list) and isinstance(kwargs, dict):
        problem = _arguments_problem(args, kwargs)
        if problem is not None:
            problems.append(problem)
    if not _is_number(data.get("enqueued_at", 0.0)):
        problems.append("'enqueued_at' must be a number (seconds since the epoch)")
    if data.get("eta") is not None and not _is_number(data["eta"]):
        problems.append("'eta' must be a number (seconds since the epoch)")
    for name in ("idempotency_key", "group", "key", "join"):
        problem = None if data.get(name) is None else _text_problem(name, data[name])
        if problem is not None:
            problems.append(f"{name!r} {problem}")
    unknown = sorted(set(data) - _KNOWN_FIELDS)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}")
    return problems


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (hundreds of digits)
        return False
