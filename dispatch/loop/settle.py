"""Settlement: what an attempt's outcome means for its task, then carrying it out.

:func:`decide` is pure: from the outcome, the attempts made and the task's retry
policy it answers :class:`Done`, :class:`RetryIn` or :class:`Dead` (the shape of
tenacity's ``iter()``: decide, then drive). :class:`Settler` carries a decision
out: the record's transition, then the message's (deleted, hidden for the
backoff, or copied to the DLQ with the reason and deleted), then one
:class:`~dispatch.loop.observe.Settled` event for every observer.

A task whose cancel was requested while it ran (``dispatch cancel``,
:mod:`dispatch.loop.cancels`) settles ``cancelled`` whatever its outcome: never
retried, never dead-lettered, its message deleted. The request is known here
from the control item, or, when it came too late to be read, from the record
itself, which refuses the outcome's write (:func:`dispatch.store.state.cancelled_params`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from structlog.typing import FilteringBoundLogger

from dispatch.core.deadletter import DeadLetter, Reason
from dispatch.core.delivery import Delivery
from dispatch.core.envelope import Envelope, is_lean_task_id
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.core.record import Claim, Status, TaskRecord
from dispatch.core.retry import Retry
from dispatch.loop.admission import Reject
from dispatch.loop.cancels import Cancels
from dispatch.loop.join import JOIN_RETRY_S, Joiner
from dispatch.loop.observe import Observer, Settled, Skip, Verdict
from dispatch.loop.sqs import SqsActions
from dispatch.loop.transitions import Transitions

__all__ = ["CANCELLED_REASON", "Dead", "Decision", "Done", "RetryIn", "Settler", "decide"]

log = structlog.get_logger("dispatch.loop.settle")

_UNKNOWN_ERROR = ErrorInfo(type="Unknown", message="")
CANCELLED_REASON = Status.CANCELLED.value
"""What a cancelled child of a group tells the join: its callback dies ``dependency_failed``."""
_DEAD_REASONS = {
    OutcomeKind.PERMANENT: Reason.PERMANENT_ERROR,
    OutcomeKind.NOT_RETRYABLE: Reason.NOT_RETRYABLE,
}


@dataclass(frozen=True, slots=True)
class Done:
    """The task succeeded."""


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Run the task again in ``delay_s``; ``backpressure`` gives the attempt back."""

    delay_s: int
    backpressure: bool = False


@dataclass(frozen=True, slots=True)
class Dead:
    """No attempt is left, or none would help: dead-letter with ``reason``."""

    reason: Reason


Decision = Done | RetryIn | Dead


def decide(outcome: Outcome, *, attempts: int, retry: Retry) -> Decision:
    """What ``outcome`` of attempt number ``attempts`` means under ``retry``.

    Backpressure is the resource's fault, not the task's: its attempt is given
    back, and it waits the resource's Retry-After (or the policy's first step).
    """
    if outcome.succeeded:
        return Done()
    if outcome.kind is OutcomeKind.BACKPRESSURE:
        if outcome.retry_after_s is not None:
            return RetryIn(math.ceil(outcome.retry_after_s), backpressure=True)
        return RetryIn(retry.delay_s(1), backpressure=True)
    if outcome.kind is OutcomeKind.RETRYABLE and retry.has_attempts_left(attempts):
        return RetryIn(retry.delay_s(attempts))
    return Dead(_DEAD_REASONS.get(outcome.kind, Reason.MAX_ATTEMPTS))


class Settler:
    """Carries out settlements and dead letters for one queue."""

    def __init__(
        self,
        *,
        transitions: Transitions,
        sqs: SqsActions,
        observer: Observer,
        queue_url: str,
        clock: Callable[[], float],
        joiner: Joiner | None = None,
        cancels: Cancels | None = None,
    ) -> None:
        self.joiner = joiner  # groups and chains: None when the table has none to join
        self.cancels = cancels  # cancel requests: None when nothing reads them
        self._transitions = transitions
        self._sqs = sqs
        self._observer = observer
        self._queue_url = queue_url
        self._clock = clock

    async def settle(
        self,
        delivery: Delivery,
        envelope: Envelope,
        *,
        retry: Retry,
        claim: Claim,
        outcome: Outcome,
        bound: FilteringBoundLogger,
    ) -> None:
        """Settle one attempt's outcome (a lean task has no record to write)."""
        record = claim.record
        decision = decide(outcome, attempts=record.attempts, retry=retry)
        tracked = not is_lean_task_id(envelope.id)
        now = self._clock()
        if tracked and self.cancels is not None and self.cancels.requested(envelope.id):
            await self.cancel(delivery, envelope, bound)
            return
        if isinstance(decision, Done):
            if tracked:
                written = await self._transitions.succeeded(
                    claim, message_id=delivery.message_id, now=now, result=outcome.result
                )
                if written is False and await self._refused(delivery, envelope, bound, "done"):
                    return
            self._observer.settled(Settled(envelope.task, Verdict.SUCCEEDED))
            bound.debug("task_succeeded", duration_s=round(outcome.duration_s, 4))
            if tracked and not await self.joined(envelope, succeeded=True):
                await self._sqs.hide(delivery.receipt, JOIN_RETRY_S)
                return  # the claim finds it succeeded and joins again
            await self._sqs.delete(delivery.receipt)
        elif isinstance(decision, RetryIn):
            await self._retry(
                delivery,
                envelope,
                decision=decision,
                outcome=outcome,
                tracked=tracked,
                bound=bound,
            )
        else:
            await self._die(
                delivery,
                envelope,
                record=record,
                reason=decision.reason,
                outcome=outcome,
                tracked=tracked,
                bound=bound,
            )

    async def _retry(
        self,
        delivery: Delivery,
        envelope: Envelope,
        *,
        decision: RetryIn,
        outcome: Outcome,
        tracked: bool,
        bound: FilteringBoundLogger,
    ) -> None:
        error = outcome.error or _UNKNOWN_ERROR
        now = self._clock()
        if tracked:
            written = await self._transitions.retrying(
                envelope.id,
                message_id=delivery.message_id,
                now=now,
                error=error,
                next_attempt_at=now + decision.delay_s,
                refund_attempt=decision.backpressure,
            )
            if written is False and await self._refused(delivery, envelope, bound, "retrying"):
                return
        verdict = Verdict.BACKPRESSURE if decision.backpressure else Verdict.RETRIED
        self._observer.settled(Settled(envelope.task, verdict))
        event = "task_backpressure" if decision.backpressure else "task_retry"
        bound.info(event, delay_s=decision.delay_s, error=error.summary())
        await self._sqs.hide(delivery.receipt, decision.delay_s)

    async def _die(
        self,
        delivery: Delivery,
        envelope: Envelope,
        *,
        record: TaskRecord,
        reason: Reason,
        outcome: Outcome,
        tracked: bool,
        bound: FilteringBoundLogger,
    ) -> None:
        error = outcome.error or _UNKNOWN_ERROR
        now = self._clock()
        if tracked:
            written = await self._transitions.dead(
                envelope.id,
                message_id=delivery.message_id,
                now=now,
                error=error,
                reason=reason.value,
            )
            if written is False and await self._refused(delivery, envelope, bound, "dead"):
                return
        await self.dead_letter_task(
            delivery, envelope, reason=reason, error=error, record=record, now=now, bound=bound
        )

    async def cancel(
        self, delivery: Delivery, envelope: Envelope, bound: FilteringBoundLogger
    ) -> None:
        """End the claimed attempt ``cancelled`` (a cancel was requested): never retried
        nor dead-lettered; a group's callback dies as ``dependency_failed``."""
        written = await self._transitions.cancelled(
            envelope.id, message_id=delivery.message_id, now=self._clock()
        )
        if written is False:
            bound.warning("settled_after_losing_claim", outcome="cancelled")
        await self._cancelled(delivery, envelope, bound)

    async def _refused(
        self, delivery: Delivery, envelope: Envelope, bound: FilteringBoundLogger, outcome: str
    ) -> bool:
        """The record refused this attempt's outcome: a cancel requested after the last
        read of the control item makes it ``cancelled`` instead (True: settled here);
        otherwise another delivery owns the task (logged; the caller goes on)."""
        cancelled = await self._transitions.cancelled(
            envelope.id, message_id=delivery.message_id, now=self._clock(), requested_only=True
        )
        if cancelled:
            await self._cancelled(delivery, envelope, bound)
            return True
        bound.warning("settled_after_losing_claim", outcome=outcome)
        return False

    async def _cancelled(
        self, delivery: Delivery, envelope: Envelope, bound: FilteringBoundLogger
    ) -> None:
        self._observer.settled(Settled(envelope.task, Verdict.CANCELLED))
        bound.info("task_cancelled")
        if not await self.joined(envelope, reason=CANCELLED_REASON):
            await self._sqs.hide(delivery.receipt, JOIN_RETRY_S)
            return  # the claim finds it cancelled and joins again
        await self._sqs.delete(delivery.receipt)
        if self.cancels is not None:
            await self.cancels.done(envelope.id)

    async def dead_letter_task(
        self,
        delivery: Delivery,
        envelope: Envelope,
        *,
        reason: Reason,
        error: ErrorInfo,
        record: TaskRecord,
        now: float,
        bound: FilteringBoundLogger,
    ) -> None:
        """Copy a task's message to the DLQ with ``reason`` and its record's attempts,
        log it, then delete it (its record already says dead)."""
        letter = DeadLetter.of(
            delivery,
            reason=reason,
            error=error,
            source_queue=self._queue_url,
            dead_at=now,
            task_id=envelope.id,
            task=envelope.task,
            attempts=record.attempts,
            first_failure_at=record.first_failure_at or now,
            last_failure_at=now,
        )
        bound.warning(
            "task_dead", reason=reason.value, attempts=record.attempts, error=error.summary()
        )
        if not await self.joined(envelope, reason=reason.value):
            await self._sqs.hide(delivery.receipt, JOIN_RETRY_S)
            return  # the claim finds it dead, owned by this message, and comes back here
        await self.dead_letter(letter, delivery.receipt)

    async def dead_letter_from_record(
        self, delivery: Delivery, envelope: Envelope, record: TaskRecord
    ) -> None:
        """This message's last settlement stopped between the record and the dead-letter
        copy: make the copy now, from the record."""
        known = {member.value for member in Reason}
        dead_reason = record.dead_reason or ""
        reason = Reason(dead_reason) if dead_reason in known else Reason.MAX_ATTEMPTS
        letter = DeadLetter.of(
            delivery,
            reason=reason,
            error=record.last_error or _UNKNOWN_ERROR,
            source_queue=self._queue_url,
            dead_at=record.finished_at or self._clock(),
            task_id=envelope.id,
            task=envelope.task,
            attempts=record.attempts,
            first_failure_at=record.first_failure_at,
            last_failure_at=record.last_failure_at,
        )
        if not await self.joined(envelope, reason=reason.value):
            await self._sqs.hide(delivery.receipt, JOIN_RETRY_S)
            return
        await self.dead_letter(letter, delivery.receipt)

    async def joined(
        self, envelope: Envelope, *, succeeded: bool = False, reason: str = ""
    ) -> bool:
        """Tell the group ``envelope`` is a child of (if any) that it succeeded or died;
        False when that could not be written (keep the message: it comes back)."""
        if envelope.join is None or self.joiner is None or is_lean_task_id(envelope.id):
            return True
        if succeeded:
            return await self.joiner.succeeded(envelope)
        return await self.joiner.died(envelope, reason)

    async def reject(self, delivery: Delivery, rejection: Reject) -> None:
        """Dead-letter a message that can never run, with the reason; never retried."""
        now = self._clock()
        task_id, task, reason = rejection.task_id, rejection.task, rejection.reason
        error = ErrorInfo(type=type(rejection.error).__name__, message=rejection.error.reason)
        if task_id and not is_lean_task_id(task_id):
            await self._transitions.rejected(
                task_id, task, now=now, reason=reason.value, error=error
            )
        # A group's child or a chain's step that can never run kills what waits on it.
        envelope = rejection.envelope
        if envelope is not None and not await self.joined(envelope, reason=reason.value):
            await self._sqs.hide(delivery.receipt, JOIN_RETRY_S)
            return
        log.warning(
            "message_rejected",
            reason=reason.value,
            detail=rejection.error.reason,
            message_id=delivery.message_id,
            task_id=task_id,
            task=task,
        )
        self._observer.skipped(Skip.REJECTED)
        letter = DeadLetter.of(
            delivery,
            reason=reason,
            error=error,
            source_queue=self._queue_url,
            dead_at=now,
            task_id=task_id,
            task=task,
            first_failure_at=now,
            last_failure_at=now,
        )
        await self.dead_letter(letter, delivery.receipt)

    async def dead_letter(self, letter: DeadLetter, receipt: str) -> None:
        """Copy to the DLQ, then delete; a copy that failed keeps the message."""
        if not await self._sqs.dead_letter(letter):
            return
        self._observer.settled(Settled(letter.task, Verdict.DEAD, letter.reason))
        await self._sqs.delete(receipt)
