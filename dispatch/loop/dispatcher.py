"""The dispatcher: builds the loop's stages and runs them against one queue, DLQ and table.

One :class:`Dispatcher` receives messages (:mod:`~dispatch.loop.receiver`), holds
them (:mod:`~dispatch.loop.holding`, whose heartbeat extends their visibility),
and takes each through the pipeline (:mod:`~dispatch.loop.pipeline`): admit →
claim → throttle gate → run → settle. docs/architecture.md maps the stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from dispatch.core import constants as c
from dispatch.core.config import Settings, queue_name
from dispatch.core.delivery import Delivery
from dispatch.core.errors import ConfigurationError, DispatchError
from dispatch.loop.activity import TaskActivity
from dispatch.loop.claims import Claims
from dispatch.loop.gate import ThrottleGate
from dispatch.loop.groups import GroupLines
from dispatch.loop.holding import Holding
from dispatch.loop.join import Joiner
from dispatch.loop.key_owners import KeyOwners
from dispatch.loop.metrics import Metrics, metrics_from_env
from dispatch.loop.observe import ActivityObserver, MetricsObserver, Observers, StatsObserver
from dispatch.loop.options import DispatcherOptions, RunStats
from dispatch.loop.pauses import PauseWatch
from dispatch.loop.pipeline import Pipeline
from dispatch.loop.publish import Publisher
from dispatch.loop.receiver import Receiver
from dispatch.loop.schedule import PeriodicEnqueuer
from dispatch.loop.settle import Settler
from dispatch.loop.sqs import SqsBatchers
from dispatch.loop.transitions import RecordTransitions
from dispatch.store.aws import AsyncClients, aws_errors
from dispatch.tasks.registry import Registry, default_registry
from dispatch.throttle.limits import ThrottleSnapshot
from dispatch.throttle.shared import Coordinator
from dispatch_workers.pool import TaskRunner, WorkerPool

__all__ = ["Dispatcher", "DispatcherOptions", "RunStats"]

log = structlog.get_logger("dispatch.dispatcher")

UNHEALTHY_FINISH_S: Final = 10.0
"""A dispatcher whose worker pool lost threads to stuck handlers stops; its tasks in
flight get this long to finish (those waiting for a thread may never get one)."""


class Dispatcher:
    """Runs the receive → admit → claim → gate → run → settle loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        clients: AsyncClients,
        registry: Registry | None = None,
        runner: TaskRunner | None = None,
        options: DispatcherOptions | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.options = options = options or DispatcherOptions()
        self.registry = default_registry if registry is None else registry
        self.runner: TaskRunner = runner or WorkerPool(max_workers=options.max_in_flight)
        self._clients = clients
        self._clock = clock
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._releasing = False
        self._fatal: DispatchError | None = None  # why the run must end (a table gone, ...)
        self._finish_within: float | None = None  # a fatal stop bounds the finish
        self.last_work_at = clock()  # the last moment this dispatcher held a task
        self.receiving_ended = asyncio.Event()  # set once receiving stops, for whatever reason
        self.receive_ended_by: str | None = None  # "deadline" (for_s ran out), "empty", "stop"
        self._build_observers(settings, metrics)
        self._build_effects(settings, clients, options)
        self._build_pipeline(settings, options)
        self._build_around(settings, clients, options)

    def _build_observers(self, settings: Settings, metrics: Metrics | None) -> None:
        name = queue_name(settings.queue_url)
        metrics = metrics if metrics is not None else metrics_from_env(name)
        self._stats = StatsObserver(RunStats())
        self._activity = TaskActivity(clock=self._clock)
        self._metrics = MetricsObserver(metrics) if metrics is not None else None
        self._observers = Observers(self._stats, ActivityObserver(self._activity))
        if self._metrics is not None:
            self._observers.subscribe(self._metrics)

    def _build_effects(
        self, settings: Settings, clients: AsyncClients, options: DispatcherOptions
    ) -> None:
        """The stages that own AWS state: throttle coordination, SQS actions, records."""
        self._coordinator = Coordinator(
            clients.dynamodb, settings.table, lease_horizon_s=options.throttle_horizon_s / 2
        )
        # Every stage acts on SQS through the group lines, which see each delete.
        self._sqs = self._groups = GroupLines(
            SqsBatchers(
                clients.sqs,
                queue_url=settings.queue_url,
                dlq_url=settings.dlq_url,
                flush_s=options.flush_s,
            ),
            fifo=settings.is_fifo,
        )
        self._transitions = RecordTransitions(
            clients.dynamodb,
            settings.table,
            flush_s=options.flush_s,
            batch_claims=options.batch_claims,
        )
        self.joiner = Joiner(clients.dynamodb, clients.sqs, settings, clock=self._clock)
        self._receive_at_least = _whole_batch(options)
        self._holding = Holding(
            max_in_flight=options.max_in_flight,
            visibility_timeout_s=options.visibility_timeout_s,
            clock=self._clock,
        )

    def _build_pipeline(self, settings: Settings, options: DispatcherOptions) -> None:
        """Admission, claims, the throttle gate, the runner and settlement, in one pipeline."""
        clock, observers = self._clock, self._observers
        self._gate = gate = ThrottleGate(
            self._coordinator,
            horizon_s=options.throttle_horizon_s,
            observer=observers,
            sqs=self._sqs,
            stopping=self._stopping,
            clock=clock,
            shared_with_others=self._coordinator.shared_with_others,
            max_in_flight=options.max_in_flight,
        )
        if options.key_leases:
            aws, lines, ttl_s = self._clients.dynamodb, gate.keyed_lines, options.key_lease_ttl_s
            gate.key_owners = KeyOwners.of_queue(aws, settings, self.id, lines, ttl_s)
        self.pauses = PauseWatch.of_queue(self._clients.dynamodb, settings, options.pause_refresh_s)
        settler = Settler(
            transitions=self._transitions,
            sqs=self._sqs,
            observer=observers,
            queue_url=settings.queue_url,
            clock=clock,
            joiner=self.joiner,
            cancels=self.pauses.cancels,  # cancel requests ride on the pauses' read
        )
        claims = Claims(
            transitions=self._transitions,
            sqs=self._sqs,
            settler=settler,
            observer=observers,
            clock=clock,
        )
        self._pipeline = Pipeline(
            pauses=self.pauses,
            registry=self.registry,
            signing_keys=settings.signing_keys,
            runner=self.runner,
            claims=claims,
            gate=gate,
            settler=settler,
            sqs=self._sqs,
            holding=self._holding,
            observer=observers,
            clock=clock,
        )

    def _build_around(
        self, settings: Settings, clients: AsyncClients, options: DispatcherOptions
    ) -> None:
        """What feeds the pipeline (receives, periodic tasks) and what reports on it."""
        clock, observers, gate = self._clock, self._observers, self._gate
        self._receiver = Receiver(
            clients.sqs,
            queue_url=settings.queue_url,
            options=options,
            gate=gate,
            observer=observers,
            stopping=self._stopping,
            clock=clock,
        )
        self._publisher = Publisher(
            clients.dynamodb,
            table=settings.table,
            owner=self._coordinator.owner,
            snapshots=self.throttle_snapshots,
            lined_up=gate.lined_up,
            activity=self._activity,
            metrics=self._metrics,
            clock=clock,
            stuck_threads=lambda: self.runner.stuck_threads,
            busiest_keys=gate.busiest_keys,
        )
        self._periodic = PeriodicEnqueuer(self.registry, settings, clients, clock=clock)

    # --- control and views ----------------------------------------------------------

    @property
    def id(self) -> str:
        """This dispatcher's id in the table (shared throttle, key leases, status)."""
        return self._coordinator.owner

    @property
    def stats(self) -> RunStats:
        """What the current (or last) run did; updated while it runs."""
        return self._stats.stats

    def stop(self, *, finish_within_s: float | None = None) -> None:
        """Ask the loop to stop receiving; in-flight tasks finish and are settled.

        ``finish_within_s``: what still runs that long from now is released (visible
        again at once, its attempt given back) instead of waited for, as at a deadline.
        """
        if finish_within_s is not None:
            finish_by = self._clock() + max(0.0, finish_within_s)
            if self._finish_within is None or finish_by < self._finish_within:
                self._finish_within = finish_by
        self._stopping.set()

    def throttle_snapshots(self) -> tuple[ThrottleSnapshot, ...]:
        """Per resource: configured and effective rate, tokens, in flight vs cap, waits."""
        return self._coordinator.throttle.snapshots()

    async def flush_metrics(self) -> None:
        """Write the EMF documents now, not at the minute (nothing when metrics are off)."""
        await self._publisher.flush_metrics()

    @property
    def coordination_requests(self) -> int:
        """DynamoDB requests spent on the shared throttle so far."""
        return self._coordinator.requests

    async def check(self) -> None:
        """Fail fast, naming what is wrong, when the queue, DLQ or table is unusable."""
        sqs: Any = self._clients.sqs
        for name, url in (
            (c.ENV_QUEUE_URL, self.settings.queue_url),
            (c.ENV_DLQ_URL, self.settings.dlq_url),
        ):
            try:
                with aws_errors("GetQueueAttributes"):
                    await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            except ConfigurationError as exc:
                raise ConfigurationError(f"{name}={url}: {exc}", setting=name) from exc
        await self._transitions.store.check()

    # --- the run --------------------------------------------------------------------

    async def run(
        self,
        *,
        until_empty: bool = False,
        for_s: float | None = None,
        finish_by: float | None = None,
    ) -> RunStats:
        """Run until stopped, for ``for_s`` seconds, or (``until_empty``) until no
        message is visible, in flight or delayed and no task is running.

        Once receiving stops, tasks in flight finish and are settled. ``finish_by``
        (a time on this dispatcher's clock, e.g. a Lambda invocation's deadline less
        a margin) bounds that: whatever has not finished by then is released, its
        message visible again at once and its attempt given back, so nothing waits
        for a stale visibility timeout.
        """
        if not len(self.registry):
            raise ConfigurationError(
                f"no task is registered: set {c.ENV_TASKS} to the modules that declare your "
                "tasks; a dispatcher without them would dead-letter every message as "
                "unknown_task, so it does not start",
                setting=c.ENV_TASKS,
            )
        self._stats.stats = RunStats(started_at=self._clock())
        self.last_work_at = self._clock()
        deadline = None if for_s is None else self._clock() + for_s
        await self.pauses.refresh()  # a pause holds from the first message on
        background = [
            asyncio.create_task(self.pauses.refresh_forever()),
            asyncio.create_task(self._holding.heartbeat(self._sqs)),
            asyncio.create_task(self._publisher.publish_forever()),
            asyncio.create_task(self._publisher.flush_metrics_forever()),
        ]
        if self._periodic.has_schedules:
            await self._enqueue_periodic()
        background.append(asyncio.create_task(self._schedule_forever()))
        ended = False
        try:
            self.receive_ended_by = await self._receive_until_done(
                until_empty=until_empty, deadline=deadline
            )
            ended = True
        finally:
            if not ended:
                self._stopping.set()  # the receives still out give up at once
            self.receiving_ended.set()
            await self._wind_down(finish_by, background)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    async def _receive_until_done(self, *, until_empty: bool, deadline: float | None) -> str:
        """Receive until stopped, the deadline, or (``until_empty``) an empty queue; which."""
        receiver = self._receiver
        while not self._stopping.is_set():
            if deadline is not None and self._clock() >= deadline:
                return "deadline"
            room = min(c.SQS_MAX_BATCH_ENTRIES, self._holding.room() - sum(receiver.out.values()))
            if room >= self._receive_at_least and receiver.may_receive_more():
                idle = not receiver.out and not len(self._holding)
                linger_s = self._linger_left_s()
                if until_empty and idle and linger_s <= 0 and await self._queue_is_empty():
                    return "empty"
                wait_s = receiver.wait_s(
                    until_empty=until_empty, deadline=deadline, linger_s=linger_s
                )
                await receiver.start(room, wait_s, deadline=deadline)
            elif receiver.out:
                for delivery in await receiver.take():
                    self._spawn(delivery)
            else:
                await self._holding.wait_for_room()
        return "stop"

    async def _wind_down(
        self, finish_by: float | None, background: list[asyncio.Task[None]]
    ) -> None:
        for delivery in await self._receiver.last():
            self._spawn(delivery)
        self._pipeline.batches.flush()
        # Receiving has stopped: what still waits for the throttle is deferred
        # (its attempt given back) instead of starting late.
        self._stopping.set()
        await self._finish(finish_by)
        await self._pipeline.batches.aclose()
        await self._gate.aclose()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._publisher.retire()
        await self._publisher.flush_metrics()
        await self._flush()
        await self._coordinator.aclose()
        self.stats.finished_at = self._clock()

    async def _finish(self, finish_by: float | None) -> None:
        """Let the tasks in flight finish; release those still running at ``finish_by``."""
        if self._finish_within is not None:
            finish_by = min(finish_by or self._finish_within, self._finish_within)
        if not self._tasks:
            return
        timeout = None if finish_by is None else max(0.0, finish_by - self._clock())
        _, unfinished = await asyncio.wait(set(self._tasks), timeout=timeout)
        if unfinished:
            log.warning("releasing_unfinished_tasks", count=len(unfinished))
            self._releasing = True
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _flush(self) -> None:
        await self._transitions.flush()
        await self._sqs.flush()

    async def _queue_is_empty(self) -> bool:
        await self._flush()
        return await self._receiver.queue_is_empty()

    def _linger_left_s(self) -> float:
        """How much longer an until-empty run keeps receiving after its last task
        (``DispatcherOptions.linger_s``; 0 once it has waited that long)."""
        if self.options.linger_s <= 0:
            return 0.0
        if len(self._holding):  # tasks still held: the last task is not over yet
            self.last_work_at = self._clock()
        return max(0.0, self.last_work_at + self.options.linger_s - self._clock())

    def _spawn(self, delivery: Delivery) -> None:
        self.last_work_at = self._clock()
        self._holding.hold(delivery)
        self._groups.line_up(delivery)
        self._observers.held(len(self._holding))
        task = asyncio.create_task(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            async with self._groups.turn(delivery) as may_run:
                if may_run:
                    await self._pipeline.process(delivery)
                else:  # an earlier message of its FIFO group went back: so does this one
                    await self._pipeline.release(delivery)
        except asyncio.CancelledError:
            if self._releasing:
                await self._pipeline.release(delivery)
            raise
        except ConfigurationError as exc:
            # The table (or a queue) was deleted or became unusable while running: no
            # message can be claimed or settled, so the dispatcher stops, naming it
            # (exit status 3 from the CLI), instead of cycling every message through
            # failed claims. The message stays on the queue.
            self._stop_for(exc, message_id=delivery.message_id)
        except Exception:
            # Never crash the loop. The message stays on the queue and comes back
            # after its visibility timeout; the claim in DynamoDB keeps it safe.
            log.exception("message_handling_failed", message_id=delivery.message_id)
        finally:
            self._holding.drop(delivery.receipt)
            if not self.runner.healthy and self._fatal is None:
                self._stop_for(
                    DispatchError(
                        f"{self.runner.stuck_threads} sync handler thread(s) are stuck past "
                        "their tasks' timeouts, more than the worker pool replaces: stopping "
                        "so that a supervisor starts a fresh process (docs/reliability.md)"
                    ),
                    finish_within_s=UNHEALTHY_FINISH_S,
                )

    def _stop_for(
        self, error: DispatchError, *, finish_within_s: float | None = None, **context: Any
    ) -> None:
        """End the run because of ``error`` (raised once the run has wound down):
        receiving stops, tasks in flight finish (within ``finish_within_s``)."""
        if self._fatal is None:
            log.error("dispatcher_stopping", error=str(error), **context)
            self._fatal = error
            if finish_within_s is not None:
                self._finish_within = self._clock() + finish_within_s
        self._stopping.set()

    # --- periodic tasks -------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        if not self._periodic.has_schedules:
            return
        while True:
            await asyncio.sleep(self._periodic.seconds_to_next_fire())
            await self._enqueue_periodic()

    async def _enqueue_periodic(self) -> None:
        try:
            await self._periodic.tick()
        except DispatchError as exc:
            log.error("periodic_enqueue_failed", error=str(exc))


def _whole_batch(options: DispatcherOptions) -> int:
    """Receive whole batches: while the dispatcher holds work, a receive waits for room
    for ten (or half of ``max_in_flight``) instead of asking for one or two."""
    return max(1, min(c.SQS_MAX_BATCH_ENTRIES, options.max_in_flight // 2))
