"""The pipeline of one delivery: admit → claim → gate → run → settle.

Each stage is an object with one owner of its state (admission, claims, the
throttle gate, the runner, settlement); the pipeline only passes a delivery from
one to the next. Micro-batch tasks leave it after admission for the
:class:`~dispatch.loop.microbatch.MicroBatcher`, which composes the same stages.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

import structlog
from structlog.typing import FilteringBoundLogger

from dispatch.core.context import TaskContext
from dispatch.core.delivery import Delivery
from dispatch.core.envelope import Envelope, is_lean_task_id
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.core.record import Claim
from dispatch.core.resource import Resource
from dispatch.loop.admission import Admitted, Postpone, admit
from dispatch.loop.cancels import Cancels
from dispatch.loop.claims import Claims
from dispatch.loop.gate import ThrottleGate
from dispatch.loop.holding import Holding
from dispatch.loop.microbatch import MicroBatcher
from dispatch.loop.observe import Observer, Skip
from dispatch.loop.pauses import PauseWatch
from dispatch.loop.settle import Settler
from dispatch.loop.sqs import SqsActions, hide_or_send_again
from dispatch.store.pauses import Pause
from dispatch.tasks.registry import Registry, TaskSpec
from dispatch.throttle.limits import Permit
from dispatch_workers.pool import TaskRunner, WorkerPool

__all__ = ["PAUSED_HIDE_S", "PAUSED_MAX_HIDE_S", "Pipeline"]

log = structlog.get_logger("dispatch.loop.pipeline")

PAUSED_HIDE_S = 10
"""A paused task's message is hidden this long the first time, twice that each time after."""
PAUSED_MAX_HIDE_S = 60
CANCELLED_OUTCOME = Outcome(
    kind=OutcomeKind.NOT_RETRYABLE,
    duration_s=0.0,
    error=ErrorInfo(type="TaskCancelled", message="cancelled while running (dispatch cancel)"),
)
"""What an interrupted attempt reports; its settlement sees the request and records
the task ``cancelled`` (never this failure)."""


class Pipeline:
    """Takes one delivery through the stages, to its settlement or its hand-back."""

    def __init__(
        self,
        *,
        registry: Registry,
        signing_keys: Sequence[str],
        runner: TaskRunner,
        claims: Claims,
        gate: ThrottleGate,
        settler: Settler,
        sqs: SqsActions,
        holding: Holding,
        observer: Observer,
        clock: Callable[[], float],
        pauses: PauseWatch | None = None,
    ) -> None:
        self.registry = registry
        self.pauses = pauses
        self.cancels: Cancels | None = settler.cancels  # what cancel requests reach
        self.runner = runner
        self.claims = claims
        self.gate = gate
        self.settler = settler
        self.holding = holding
        self._signing_keys = signing_keys
        self._sqs = sqs
        self._observer = observer
        self._clock = clock
        self.batches = MicroBatcher(
            claims=claims,
            gate=gate,
            runner=runner,
            settler=settler,
            holding=holding,
            observer=observer,
        )

    async def process(self, delivery: Delivery) -> None:
        """Take one delivery from its admission to its settlement (or hand-back)."""
        admission = admit(
            delivery, registry=self.registry, signing_keys=self._signing_keys, now=self._clock()
        )
        if isinstance(admission, Postpone):
            await self._postpone(delivery, admission)
            return
        if not isinstance(admission, Admitted):
            await self.settler.reject(delivery, admission)
            return
        envelope, spec = admission.envelope, admission.spec
        bound = log.bind(task_id=envelope.id, task=envelope.task, message_id=delivery.message_id)
        pause = self.pauses.of(spec) if self.pauses is not None else None
        if pause is not None:
            await self._paused(delivery, pause, bound)
            return
        self.gate.admitted(spec.resource)
        if spec.batch is not None:
            await self.batches.add(delivery, envelope, spec, bound)
        elif spec.resource is None:
            claim = await self.claims.claim(delivery, envelope, spec, bound)
            if claim is not None:
                await self.run(delivery, envelope, spec, claim, bound)
        else:
            await self._throttled(delivery, envelope, spec, spec.resource, bound, key=admission.key)

    async def _paused(self, delivery: Delivery, pause: Pause, bound: FilteringBoundLogger) -> None:
        """A paused task waits on the queue, unclaimed (no attempt spent): hidden 10 s,
        then longer each time it comes back (up to a minute), so a long pause costs a
        receive a minute per message, and a resume reaches it within that minute."""
        received = max(1, delivery.receive_count or 1)
        delay_s = min(PAUSED_MAX_HIDE_S, PAUSED_HIDE_S * 2 ** min(received - 1, 6))
        self._observer.skipped(Skip.DEFERRED)
        bound.debug("task_paused", paused=pause.kind, name=pause.name, delay_s=delay_s)
        await hide_or_send_again(self._sqs, delivery, delay_s)

    async def _throttled(
        self,
        delivery: Delivery,
        envelope: Envelope,
        spec: TaskSpec,
        resource: Resource,
        bound: FilteringBoundLogger,
        *,
        key: str | None = None,
    ) -> None:
        """The throttled order: check the backlog (no write), claim, then take the
        permit right before running, so the resource sees starts exactly as the
        throttle granted them, not spread by the claim's latency. A keyed task
        (``@task(key=...)``) waits in its key's line, inside its key's limits."""
        throttle = self.gate.throttle(resource)
        self.gate.arrived(resource.name, delivery.message_id)
        keyed = key is not None
        backlog_s = await self.gate.elsewhere_s(throttle, key)  # its key owned elsewhere
        if backlog_s is None:
            backlog_s = self.gate.backlog_delay_s(throttle, key)
        if backlog_s is not None:
            at_least_s = backlog_s if keyed else 0.0
            if keyed:
                # Its fate is known: the place it held goes to the next receive at once
                # (not after the batched hide), which may bring other keys' messages.
                self.holding.settling(delivery.receipt)
            await self.gate.defer(
                delivery, throttle, bound, reason="backlog", at_least_s=at_least_s, keyed=keyed
            )
            return
        with self.gate.queued(resource.name, key=key):
            claim = await self.claims.claim(delivery, envelope, spec, bound)
            if claim is None:
                return
            permit, wait_s = await self.gate.acquire(throttle, key)
            if permit is None:
                await self.gate.defer(
                    delivery, throttle, bound, reason="throttled", at_least_s=wait_s, keyed=keyed
                )
        if permit is None:
            # Throttled is not failed: the attempt the claim counted is given back.
            await self.claims.give_back(delivery.receipt)
            return
        outcome = await self.run(delivery, envelope, spec, claim, bound, permit=permit)
        if outcome.succeeded:
            throttle.on_success()
        elif outcome.kind is OutcomeKind.BACKPRESSURE and throttle.on_backpressure():
            bound.info("resource_slowed", effective_rate_per_s=throttle.effective_rate_per_s)

    async def run(
        self,
        delivery: Delivery,
        envelope: Envelope,
        spec: TaskSpec,
        claim: Claim,
        bound: FilteringBoundLogger,
        *,
        permit: Permit | None = None,
    ) -> Outcome:
        """Run the claimed attempt and settle it; the permit goes back as soon as the
        handler returns, not after the (batched) settlement: the resource is free."""
        record = claim.record
        bound = bound.bind(
            attempt=record.attempts, resource=spec.resource.name if spec.resource else None
        )
        context = TaskContext(
            task_id=envelope.id,
            task=envelope.task,
            attempt=record.attempts,
            max_attempts=spec.retry.max_attempts,
            enqueued_at=envelope.enqueued_at,
        )
        self._observer.started(envelope.task)
        try:
            with self._observer.running(envelope.task):
                outcome = await self._attempt(spec, envelope, context)
        finally:
            if permit is not None:
                self.gate.release(permit)
        self.holding.settling(delivery.receipt)
        self.claims.settling(delivery.receipt)
        await self.settler.settle(
            delivery, envelope, retry=spec.retry, claim=claim, outcome=outcome, bound=bound
        )
        return outcome

    async def _attempt(self, spec: TaskSpec, envelope: Envelope, context: TaskContext) -> Outcome:
        """Run the attempt where a cancel request can reach it: an async handler in this
        process is interrupted (its CancelledError is the cancel, not a failure); any
        other sees ``current_task().cancel_requested`` (a sync one) or nothing (a
        Lambda worker), and its settlement records the cancel whatever it reports."""
        run = self.runner.run(spec, envelope.args, envelope.kwargs, context)
        if self.cancels is None or is_lean_task_id(envelope.id):
            return await run
        interruptible = spec.is_async and isinstance(self.runner, WorkerPool)
        task = asyncio.current_task() if interruptible else None
        with self.cancels.running(envelope.id, context, task=task) as attempt:
            try:
                return await run
            except asyncio.CancelledError:
                if not attempt.absorb():
                    raise
                return CANCELLED_OUTCOME

    async def _postpone(self, delivery: Delivery, postpone: Postpone) -> None:
        """A delay longer than SQS's 15 minutes: send the message again, due later."""
        if await self._sqs.send_again(delivery, math.ceil(postpone.delay_s)):
            self._observer.skipped(Skip.POSTPONED)
            await self._sqs.delete(delivery.receipt)
        else:
            log.error("postpone_failed", task_id=postpone.envelope.id)

    async def release(self, delivery: Delivery) -> None:
        """Give back a message this dispatcher cannot finish: attempt refunded, visible now."""
        await self.claims.give_back(delivery.receipt, at_deadline=True)
        self._observer.skipped(Skip.RELEASED)
        await self._sqs.hide(delivery.receipt, 0)
