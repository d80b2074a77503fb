"""Admission: whether a delivery may run now, must wait for its eta, or can never run.

:func:`admit` only decides; it reads no clock and makes no call (``now`` is
given), so every rule is unit-tested without AWS. The pipeline carries out what
it answers: an :class:`Admitted` delivery goes on to its claim, a
:class:`Postpone` is sent again due later, a :class:`Reject` is dead-lettered
with its reason and never retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dispatch.core.deadletter import Reason
from dispatch.core.delivery import Delivery
from dispatch.core.envelope import Envelope, decode
from dispatch.core.errors import EnvelopeError
from dispatch.core.signing import verify
from dispatch.tasks.registry import Registry, TaskSpec, resolve

__all__ = ["Admitted", "Admission", "Postpone", "Reject", "admit"]

POSTPONE_FROM_S = 1.0
"""A delivery due this many seconds from now or later waits for its eta."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """The delivery runs: its envelope, the task that runs it and the task's key (for
    per-key limits; None for an unkeyed task)."""

    envelope: Envelope
    spec: TaskSpec
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Postpone:
    """The delivery is not due: send it again, ``delay_s`` from now."""

    envelope: Envelope
    delay_s: float


@dataclass(frozen=True, slots=True)
class Reject:
    """The delivery can never run: dead-letter it with ``reason``."""

    reason: Reason
    error: EnvelopeError
    envelope: Envelope | None = None

    @property
    def task_id(self) -> str | None:
        """The task the message names, when it could be read and is a storable id (the
        rejection is recorded under it)."""
        return self.envelope.id if self.envelope else self.error.task_id

    @property
    def task(self) -> str | None:
        """The task name the message carries, when it could be read."""
        return self.envelope.task if self.envelope else self.error.task


Admission = Admitted | Postpone | Reject


def admit(
    delivery: Delivery, *, registry: Registry, signing_keys: Sequence[str], now: float
) -> Admission:
    """Decide what to do with one delivery.

    Checked in this order: the signature (when keys are configured; nothing in an
    unsigned body is trusted, not even its task id), the envelope, the eta, then
    the task and its arguments (and a keyed task's key). The envelope check
    (:func:`decode`) is the producer's own rule: every string that becomes a record
    key or attribute must be storable and every argument must read back as written,
    so a message no claim could ever write is rejected here, once, as ``malformed``,
    instead of coming back forever.
    """
    if signing_keys:
        problem = verify(signing_keys, delivery.body, delivery.attributes)
        if problem is not None:
            return Reject(Reason.BAD_SIGNATURE, EnvelopeError(problem))
    try:
        envelope = decode(delivery.body)
    except EnvelopeError as exc:
        return Reject(Reason.MALFORMED, exc)
    due_in_s = envelope.seconds_until_due(now)
    if due_in_s >= POSTPONE_FROM_S:
        return Postpone(envelope, due_in_s)
    try:
        spec = resolve(envelope, registry)
        key = spec.key_of(envelope.args, envelope.kwargs)
    except EnvelopeError as exc:
        known = envelope.task in registry
        return Reject(Reason.BAD_ARGUMENTS if known else Reason.UNKNOWN_TASK, exc, envelope)
    except ValueError as exc:  # a keyed task whose arguments give no valid key
        error = EnvelopeError(
            f"task {envelope.task!r}: {exc}", task_id=envelope.id, task=envelope.task
        )
        return Reject(Reason.BAD_ARGUMENTS, error, envelope)
    return Admitted(envelope, spec, key)
