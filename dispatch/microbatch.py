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
   path (success record + batched delete, retry after its own backoff, or its
   own dead letter with the reason).

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
from typing import TYPE_CHECKING, Any

import structlog

from dispatch import constants as c
from dispatch import state
from dispatch.context import BatchContext, TaskContext
from dispatch.envelope import Envelope
from dispatch.registry import BatchOptions, TaskSpec
from dispatch.throttle import Permit, ResourceThrottle
from workers.outcome import Outcome, OutcomeKind

if TYPE_CHECKING:
    from dispatch.dispatcher import Dispatcher

__all__ = ["MicroBatcher"]

log = structlog.get_logger("dispatch.microbatch")


@dataclass(slots=True, eq=False)
class _Item:
    message: dict[str, Any]
    envelope: Envelope
    bound: Any
    done: asyncio.Future[None]  # set once settled; cancelled when the item was given back
    claim: state.Claim | None = None

    @property
    def receipt(self) -> str:
        return str(self.message["ReceiptHandle"])


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

    def __init__(self, host: Dispatcher) -> None:
        self._host = host
        self._open: dict[str, _Batch] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self.handler_calls = 0

    async def add(
        self, message: dict[str, Any], envelope: Envelope, spec: TaskSpec, bound: Any
    ) -> None:
        """Put one admitted item in its task's open batch; return once it is settled
        (or was handed back: a refused claim, a deferral)."""
        if spec.batch is None:
            raise ValueError(f"task {spec.name!r} is not a batch task")
        size = len(str(message["Body"]).encode("utf-8"))
        batch = self._open.get(spec.name)
        if batch is not None and batch.payload_bytes + size > c.MAX_BATCH_PAYLOAD_BYTES:
            self._close(batch)
            batch = None
        if batch is None:
            batch = _Batch(spec, spec.batch)
            self._open[spec.name] = batch
            run = asyncio.create_task(self._run(batch))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
        item = _Item(message, envelope, bound, asyncio.get_running_loop().create_future())
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
                if not item.done.done():
                    item.done.set_result(None)

    async def _claim_run_settle(self, spec: TaskSpec, items: list[_Item]) -> None:
        host = self._host
        claims = await asyncio.gather(
            *(host._claim(item.message, item.envelope, spec, item.bound) for item in items)
        )
        claimed: list[_Item] = []
        for item, claim in zip(items, claims, strict=True):
            if claim is None:  # acted on already: deleted as done, hidden while busy elsewhere
                _finish(item)
            elif item.done.cancelled():
                await self._give_back_claim(item, claim)
            else:
                item.claim = claim
                claimed.append(item)
        if not claimed:
            return
        throttle = None
        permit = None
        if spec.resource is not None:
            throttle = host._coordinator.for_resource(spec.resource)
            permit = await self._acquire(throttle, claimed)
            if permit is None:
                return
        try:
            outcomes = await self._run_handler(spec, claimed)
        finally:
            if permit is not None:
                host._release_permit(permit)
        if throttle is not None:
            _feed_back(throttle, spec, outcomes)
        settles = zip(claimed, outcomes, strict=True)
        await asyncio.gather(*(self._settle(spec, item, outcome) for item, outcome in settles))

    async def _run_handler(self, spec: TaskSpec, items: list[_Item]) -> list[Outcome]:
        host = self._host
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
        host.stats.started += len(items)
        for item in items:
            host._count(item.envelope.task, "Dispatched")
        self.handler_calls += 1
        log.debug("batch_started", task=spec.name, items=len(items))
        payloads = [item.envelope.args[0] for item in items]
        outcomes = await host.runner.run_batch(spec, payloads, BatchContext.of(contexts))
        if len(outcomes) != len(items):
            raise RuntimeError(
                f"the runner answered {len(outcomes)} outcomes for a batch of {len(items)}"
            )
        return outcomes

    async def _settle(self, spec: TaskSpec, item: _Item, outcome: Outcome) -> None:
        host = self._host
        if item.done.done() or item.claim is None:
            return  # given back while the handler ran: its own task released it
        held = host._held.get(item.receipt)
        if held is not None:
            held.settling = True
            host._slot_freed.set()
        host._claimed.pop(item.receipt, None)
        record = item.claim.record
        bound = item.bound.bind(
            attempt=record.attempts, resource=spec.resource.name if spec.resource else None
        )
        try:
            await host._settle(
                message=item.message,
                envelope=item.envelope,
                spec=spec,
                record=record,
                item=item.claim.item,
                outcome=outcome,
                bound=bound,
            )
        finally:
            _finish(item)

    async def _give_back_claim(self, item: _Item, claim: state.Claim) -> None:
        """An item given back while its claim was on the way: release the claim, unless
        the item's own release already did."""
        if self._host._claimed.pop(item.receipt, None) is not None:
            await self._host._unclaim(
                item.message, item.envelope.id, first_attempt=claim.record.attempts == 1
            )

    # --- the throttle ---------------------------------------------------------------

    async def _acquire(self, throttle: ResourceThrottle, items: list[_Item]) -> Permit | None:
        """One permit for the whole batch; None when every item was deferred instead
        (its attempt given back, as for a single task the throttle cannot start)."""
        host = self._host
        name = throttle.resource.name
        host._waiting[name] += len(items)
        try:
            permit, wait_s = await host._wait_for_permit(throttle)
        finally:
            host._waiting[name] -= len(items)
        if permit is None:
            await asyncio.gather(*(self._defer(item, wait_s) for item in items))
        return permit

    async def _defer(self, item: _Item, wait_s: float) -> None:
        if item.done.done():
            return  # given back already
        claim = item.claim
        await self._host._unclaim(
            item.message,
            item.envelope.id,
            first_attempt=claim is not None and claim.record.attempts == 1,
        )
        await self._host._defer(item.message, wait_s, item.bound, reason="throttled")
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
