"""Claims: the one owner of which received message holds which task's attempt.

A claim is a conditional write on the task's record that starts an attempt for
one delivery (a lean task, id ``lean-...``, has no record: its attempt is the
message's receive count). A claim refused is acted on here: a finished task's
delivery is deleted, a dead one's dead-lettered from its record if this message
never got its copy, a task running elsewhere hidden until its lease runs out. A
claim whose record carries a cancel request (``dispatch cancel`` reached a running
attempt whose dispatcher then stopped or died) settles the task ``cancelled``
instead of running it.
Every attempt claimed is then either settled or given back, exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from dispatch.core import constants as c
from dispatch.core.deadletter import Reason
from dispatch.core.delivery import Delivery
from dispatch.core.envelope import Envelope, is_lean_task_id
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import Claim, ClaimAsk, ClaimStatus, Status
from dispatch.loop.join import JOIN_RETRY_S
from dispatch.loop.observe import Observer, Skip
from dispatch.loop.settle import CANCELLED_REASON, Settler
from dispatch.loop.sqs import SqsActions
from dispatch.loop.transitions import Transitions
from dispatch.store import state
from dispatch.tasks.registry import TaskSpec

__all__ = ["Claims", "outlived_its_record"]


def outlived_its_record(envelope: Envelope, now: float) -> bool:
    """Whether the message is older than a record lives: its record, if it is missing,
    expired (every tracked task gets its record at enqueue), so its claim must find
    one. A foreign message without an enqueue time is taken at its word."""
    return envelope.enqueued_at > 0 and now - envelope.enqueued_at > c.RECORD_TTL_S


class Claims:
    """Claims attempts for deliveries and gives back the ones that will not run."""

    def __init__(
        self,
        *,
        transitions: Transitions,
        sqs: SqsActions,
        settler: Settler,
        observer: Observer,
        clock: Callable[[], float],
    ) -> None:
        self._transitions = transitions
        self._sqs = sqs
        self._settler = settler
        self._observer = observer
        self._clock = clock
        self._claimed: dict[str, tuple[str, str, int]] = {}  # receipt -> task id, message, attempt

    def holds(self, receipt: str) -> bool:
        """Whether this dispatcher holds a claimed, unsettled attempt for the message."""
        return receipt in self._claimed

    async def claim(
        self, delivery: Delivery, envelope: Envelope, spec: TaskSpec, bound: FilteringBoundLogger
    ) -> Claim | None:
        """Claim the attempt; None (after acting on it) when it must not run.

        The claim carries a token of this receive, so that a claim the AWS call retry
        sent twice (its first answer lost) is recognised as this delivery's own.
        """
        if is_lean_task_id(envelope.id):
            return state.lean_claim(
                envelope,
                receive_count=delivery.receive_count,
                max_attempts=spec.retry.max_attempts,
                now=self._clock(),
            )
        now = self._clock()
        claim = await self._transitions.claim(
            ClaimAsk(
                envelope,
                message_id=delivery.message_id,
                now=now,
                timeout_s=spec.timeout_s,
                token=state.claim_token(delivery.receipt),
                max_attempts=spec.retry.max_attempts,
                require_record=outlived_its_record(envelope, now),
            )
        )
        if claim.status is ClaimStatus.CLAIMED and claim.record.cancel_requested:
            bound.info("task_cancel_found_at_claim")
            await self._settler.cancel(delivery, envelope, bound)
            return None
        if claim.status is ClaimStatus.CLAIMED:
            self._claimed[delivery.receipt] = (
                envelope.id,
                delivery.message_id,
                claim.record.attempts,
            )
            return claim
        if claim.status is ClaimStatus.EXHAUSTED:
            await self._exhausted(delivery, envelope, spec, claim, bound)
        elif claim.status is ClaimStatus.NO_RECORD:
            await self._record_expired(delivery, envelope, bound)
        else:
            await self._refused(delivery, envelope, claim, bound)
        return None

    async def _exhausted(
        self,
        delivery: Delivery,
        envelope: Envelope,
        spec: TaskSpec,
        claim: Claim,
        bound: FilteringBoundLogger,
    ) -> None:
        """Every attempt was started and the last never reported how it ended: no
        attempt beyond ``max_attempts`` starts; the task is dead-lettered, saying so."""
        record, now = claim.record, self._clock()
        before = (
            f"; the failure before it: {record.last_error.summary()}" if record.last_error else ""
        )
        error = ErrorInfo(
            type="AttemptsExhausted",
            message=(
                f"attempt {record.attempts} of {spec.retry.max_attempts} started and never "
                "reported an outcome (its dispatcher stopped mid-attempt, or the handler "
                f"escaped it); no attempt beyond max_attempts is started{before}"
            ),
        )
        await self._transitions.exhausted(
            envelope.id, now=now, max_attempts=spec.retry.max_attempts, error=error
        )
        await self._settler.dead_letter_task(
            delivery,
            envelope,
            reason=Reason.MAX_ATTEMPTS,
            error=error,
            record=record,
            now=now,
            bound=bound,
        )

    async def _record_expired(
        self, delivery: Delivery, envelope: Envelope, bound: FilteringBoundLogger
    ) -> None:
        """An old message whose record is gone: whether the task was cancelled or already
        succeeded is unknown, so it is not run; dead-lettered, for an operator to redrive."""
        now = self._clock()
        age_days = (now - envelope.enqueued_at) / 86_400
        error = ErrorInfo(
            type="RecordExpired",
            message=(
                f"task enqueued {age_days:.1f} days ago has no record (records live "
                f"{c.RECORD_TTL_S // 86_400} days after the task is due): it may have been "
                "cancelled or already run, so it is not run; `dispatch dlq redrive` runs it"
            ),
        )
        await self._transitions.rejected(
            envelope.id, envelope.task, now=now, reason=Reason.RECORD_EXPIRED.value, error=error
        )
        await self._settler.dead_letter_task(
            delivery,
            envelope,
            reason=Reason.RECORD_EXPIRED,
            error=error,
            record=state.missing_record(envelope),
            now=now,
            bound=bound,
        )

    async def _refused(
        self, delivery: Delivery, envelope: Envelope, claim: Claim, bound: FilteringBoundLogger
    ) -> None:
        record = claim.record
        if claim.status in (ClaimStatus.DONE, ClaimStatus.DUPLICATE):
            bound.info("duplicate_delivery", status=record.status.value, claim=claim.status.value)
            self._observer.skipped(Skip.DUPLICATE)
            # A success whose join may not have been made (its dispatcher died between
            # the record and the delete): the join is made again, counting nothing twice.
            # A cancelled child can never succeed: its group's callback dies with it.
            done = record.status is Status.SUCCEEDED
            final = done or record.status is Status.CANCELLED
            if final and not await self._settler.joined(
                envelope, succeeded=done, reason=CANCELLED_REASON
            ):
                await self._sqs.hide(delivery.receipt, JOIN_RETRY_S)
                return
            await self._sqs.delete(delivery.receipt)
        elif claim.status is ClaimStatus.DEAD:
            if record.message_id == delivery.message_id:
                await self._settler.dead_letter_from_record(delivery, envelope, record)
            else:
                self._observer.skipped(Skip.DUPLICATE)
                await self._sqs.delete(delivery.receipt)
        else:  # BUSY: another delivery runs it
            hide_s = math.ceil((record.lease_until or self._clock()) - self._clock()) + 1
            bound.info("task_busy_elsewhere", hide_s=hide_s)
            self._observer.skipped(Skip.DEFERRED)
            await self._sqs.hide(delivery.receipt, hide_s)

    def settling(self, receipt: str) -> None:
        """The claimed attempt ran: its settlement, not a give-back, ends it."""
        self._claimed.pop(receipt, None)

    async def give_back(self, receipt: str, *, at_deadline: bool = False) -> bool:
        """Give a claimed attempt back without running it; False when there was none
        (a lean task, or one given back or settled already).

        A task deferred before its first attempt goes back to ``queued``; one released
        at a deadline goes back to ``retrying``.
        """
        claimed = self._claimed.pop(receipt, None)
        if claimed is None:
            return False
        task_id, message_id, attempts = claimed
        await self._transitions.give_back(
            task_id,
            message_id=message_id,
            now=self._clock(),
            first_attempt=attempts == 1 and not at_deadline,
        )
        return True
