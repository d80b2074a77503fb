"""Micro-batch tasks on the dispatcher's side: gather items, run the handler once, settle each.

A task declared ``@task(batch_size=..., batch_window_s=...)`` takes a list. Each
item is still a task of its own (its message, task id, record, attempts,
retries, dead letter); only the handler call is shared. The dispatcher hands
every received item of such a task to the :class:`MicroBatcher` instead of
running it alone. Per task name, one batch is open at a time:

1. the first item opens it; it closes when it holds ``batch_size`` items, when
   ``batch_window_s`` has passed since that first item arrived, when the next
   item would take its payload past ``MAX_BATCH_PAYLOAD_BYTES`` (so it fits one
   Lambda invocation), or when the dispatcher stops receiving (``flush``);
2. every item is claimed in DynamoDB as a single task is; items the claim
   refuses (a duplicate delivery, a finished task) leave the batch;
3. a throttled resource gives the batch one permit: one token and one
   concurrency slot for the whole handler call; when none comes within the
   throttle's horizon, every item is deferred, its attempt given back;
4. the runner runs the handler once (``run_batch``), which answers one outcome
   per item; each item is settled on its own through the dispatcher's settle
   stage (success record + batched delete, retry after its own backoff, or its
   own dead letter with the reason).

The batcher composes the loop's own stages (claims, the throttle gate, the
runner, settlement); it reaches into none of their state.

Items wait in a batch as held messages, so the heartbeat extends their
visibility like any other's. Each item's own asyncio task waits here until its
item is settled; when the dispatcher releases unfinished work at a deadline,
those tasks are cancelled and give their messages back, and a batch never
settles an item that was given back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
from structlog.typing import FilteringBoundLogger

from dispatch.core import constants as c
from dispatch.core.context import BatchContext, TaskContext
from dispatch.core.delivery import Delivery
from dispatch.core.envelope import Envelope
from dispatch.core.outcome import Outcome, OutcomeKind
from dispatch.core.record import Claim
from dispatch.loop.claims import Claims
from dispatch.loop.gate import ThrottleGate
from dispatch.loop.holding import Holding
from dispatch.loop.observe import Observer
from dispatch.loop.settle import Settler
from dispatch.tasks.registry import BatchOptions, TaskSpec
from dispatch.throttle.limits import Permit, ResourceThrottle
from dispatch_workers.pool import TaskRunner

__all__ = ["MicroBatcher"]

log = structlog.get_logger("dispatch.loop.microbatch")


@dataclass(slots=True, eq=False)
class _Item:
    delivery: Delivery
    envelope: Envelope
    bound: FilteringBoundLogger
    done: asyncio.Future[None]  # set once settled; cancelled when the item was given back
    claim: Claim | None = None


@dataclass(slots=True, eq=False)
class _Batch:
    spec: TaskSpec
    options: BatchOptions
    items: list[_Item] = field(default_factory=list)
    payload_bytes: int = 0
    is_open: bool = True
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class MicroBatcher:
    """Per task name, the open batch of a dispatcher; runs and settles closed ones."""

    def __init__(
        self,
        *,
        claims: Claims,
        gate: ThrottleGate,
        runner: TaskRunner,
        settler: Settler,
        holding: Holding,
        observer: Observer,
    ) -> None:
        self._claims = claims
        self._gate = gate
        self._runner = runner
        self._settler = settler
        self._holding = holding
        self._observer = observer
        self._open: dict[str, _Batch] = {}
        self._runs: set[asyncio.Task[None]] = set()

    async def add(
        self, delivery: Delivery, envelope: Envelope, spec: TaskSpec, bound: FilteringBoundLogger
    ) -> None:
        """Put one admitted item in its task's open batch; return once it is settled
        (or was handed back: a refused claim, a deferral)."""
        if spec.batch is None:
            raise ValueError(f"task {spec.name!r} is not a batch task")
        size = delivery.size_bytes
        batch = self._open.get(spec.name)
        if batch is not None and batch.payload_bytes + size > c.MAX_BATCH_PAYLOAD_BYTES:
            self._close(batch)
            batch = None
        if batch is None:
            batch = self._open_batch(spec, spec.batch)
        item = _Item(delivery, envelope, bound, asyncio.get_running_loop().create_future())
        batch.items.append(item)
        batch.payload_bytes += size
        if len(batch.items) >= batch.options.size:
            self._close(batch)
        try:
            await item.done
        except asyncio.CancelledError:
            # Given back by the dispatcher (a deadline): an open batch forgets it; a
            # running one sees the cancelled future and never settles it.
            if batch.is_open:
                batch.items.remove(item)
            raise

    def flush(self) -> None:
        """Close every open batch now (the dispatcher stops receiving)."""
        for batch in list(self._open.values()):
            self._close(batch)

    async def aclose(self) -> None:
        """Stop what still runs: after the dispatcher finished, every item left was
        given back, so no outcome of a batch still running can be settled."""
        self.flush()
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

    def _open_batch(self, spec: TaskSpec, options: BatchOptions) -> _Batch:
        batch = _Batch(spec, options)
        self._open[spec.name] = batch
        run = asyncio.create_task(self._run(batch))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return batch

    def _close(self, batch: _Batch) -> None:
        batch.is_open = False
        if self._open.get(batch.spec.name) is batch:
            del self._open[batch.spec.name]
        batch.closed.set()

    # --- one batch -----------------------------------------------------------------

    async def _run(self, batch: _Batch) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.closed.wait(), timeout=batch.options.window_s)
            self._close(batch)
            items = [item for item in batch.items if not item.done.done()]
            if items:
                await self._claim_run_settle(batch.spec, items)
        except Exception:
            # Never crash the loop. The messages stay on the queue and come back after
            # their visibility timeout; the claims in DynamoDB keep them safe.
            log.exception("batch_handling_failed", task=batch.spec.name, items=len(batch.items))
        finally:
            for item in batch.items:
                _finish(item)

    async def _claim_run_settle(self, spec: TaskSpec, items: list[_Item]) -> None:
        claimed = await self._claim(spec, items)
        if not claimed:
            return
        throttle = None
        permit = None
        if spec.resource is not None:
            throttle = self._gate.throttle(spec.resource)
            permit = await self._acquire(throttle, claimed)
            if permit is None:
                return
        try:
            outcomes = await self._run_handler(spec, claimed)
        finally:
            if permit is not None:
                self._gate.release(permit)
        if throttle is not None:
            _feed_back(throttle, spec, outcomes)
        settles = zip(claimed, outcomes, strict=True)
        await asyncio.gather(*(self._settle(spec, item, outcome) for item, outcome in settles))

    async def _claim(self, spec: TaskSpec, items: list[_Item]) -> list[_Item]:
        """Claim every item; the ones that may run. An item given back while its claim
        was on the way gets the claim given back too, and so does every item of a
        batch stopped while its claims were on the way."""
        claiming = asyncio.gather(
            *(self._claims.claim(item.delivery, item.envelope, spec, item.bound) for item in items)
        )
        try:
            claims = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Stopped (a deadline) while the claims were on the way: they still land, so
            # wait for them and give back every attempt they started; none will run.
            with contextlib.suppress(Exception):
                await claiming
            await asyncio.gather(*(self._claims.give_back(item.delivery.receipt) for item in items))
            raise
        claimed: list[_Item] = []
        for item, claim in zip(items, claims, strict=True):
            if claim is None:  # acted on already: deleted as done, hidden while busy elsewhere
                _finish(item)
            elif item.done.cancelled():
                await self._claims.give_back(item.delivery.receipt)
            else:
                item.claim = claim
                claimed.append(item)
        return claimed

    async def _run_handler(self, spec: TaskSpec, items: list[_Item]) -> list[Outcome]:
        contexts = tuple(
            TaskContext(
                task_id=item.envelope.id,
                task=item.envelope.task,
                attempt=item.claim.record.attempts if item.claim else 1,
                max_attempts=spec.retry.max_attempts,
                enqueued_at=item.envelope.enqueued_at,
            )
            for item in items
        )
        self._observer.started(spec.name, len(items))
        log.debug("batch_started", task=spec.name, items=len(items))
        payloads = [item.envelope.args[0] for item in items]
        outcomes = await self._runner.run_batch(spec, payloads, BatchContext.of(contexts))
        if len(outcomes) != len(items):
            raise RuntimeError(
                f"the runner answered {len(outcomes)} outcomes for a batch of {len(items)}"
            )
        return outcomes

    async def _settle(self, spec: TaskSpec, item: _Item, outcome: Outcome) -> None:
        if item.done.done() or item.claim is None:
            return  # given back while the handler ran: its own task released it
        receipt = item.delivery.receipt
        self._holding.settling(receipt)
        self._claims.settling(receipt)
        record = item.claim.record
        bound = item.bound.bind(
            attempt=record.attempts, resource=spec.resource.name if spec.resource else None
        )
        try:
            await self._settler.settle(
                item.delivery,
                item.envelope,
                retry=spec.retry,
                claim=item.claim,
                outcome=outcome,
                bound=bound,
            )
        finally:
            _finish(item)

    # --- the throttle ---------------------------------------------------------------

    async def _acquire(self, throttle: ResourceThrottle, items: list[_Item]) -> Permit | None:
        """One permit for the whole batch; None when every item was deferred instead
        (its attempt given back, as for a single task the throttle cannot start)."""
        with self._gate.queued(throttle.resource.name, len(items)):
            permit, wait_s = await self._gate.acquire(throttle)
        if permit is None:
            await asyncio.gather(*(self._defer(throttle, item, wait_s) for item in items))
        return permit

    async def _defer(self, throttle: ResourceThrottle, item: _Item, wait_s: float) -> None:
        if item.done.done():
            return  # given back already
        await self._claims.give_back(item.delivery.receipt)
        await self._gate.defer(
            item.delivery, throttle, item.bound, reason="throttled", at_least_s=wait_s
        )
        _finish(item)


def _feed_back(throttle: ResourceThrottle, spec: TaskSpec, outcomes: list[Outcome]) -> None:
    """The batch was one start: one success, or one backpressure signal, for the resource."""
    if any(o.kind is OutcomeKind.BACKPRESSURE for o in outcomes):
        if throttle.on_backpressure():
            log.info(
                "resource_slowed",
                task=spec.name,
                resource=throttle.resource.name,
                effective_rate_per_s=throttle.effective_rate_per_s,
            )
    elif all(o.succeeded for o in outcomes):
        throttle.on_success()


def _finish(item: _Item) -> None:
    if not item.done.done():
        item.done.set_result(None)
