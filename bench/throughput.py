"""Dispatch end to end: ``enqueue_many`` N no-op tasks, then drain them with one dispatcher.

The dispatcher runs in this process with its in-process worker pool and default
options, exactly as ``dispatch run --until-empty`` would; the emulator runs in its
own. Requests are counted by :class:`dispatch.store.aws.RequestCounter` attached to the
queue's clients (enqueue) and the dispatcher's (drain), and billed by
:class:`bench.billing.BillingMeter` on the same clients.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench import workload
from bench.billing import BillingMeter, Usage
from bench.cpu import Utilisation
from bench.depth import call_cost_ms
from bench.stage import Stage
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, async_clients

__all__ = ["Phase", "Run", "drain", "enqueue", "requests_by_action", "run_dispatch"]


def requests_by_action(counter: RequestCounter) -> dict[str, int]:
    """The counter's figures keyed ``"service.Action"``."""
    return {f"{s}.{a}": n for (s, a), n in sorted(counter.snapshot().items())}


@dataclass(frozen=True, slots=True)
class Phase:
    """One timed phase (enqueue or drain): how long, how many done, what it sent."""

    seconds: float
    done: int
    requests: dict[str, int]
    usage: Usage
    cpu: Utilisation

    @property
    def per_s(self) -> float:
        """Tasks per second."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "seconds": round(self.seconds, 3),
            "done": self.done,
            "tasks_per_s": round(self.per_s, 1),
            "requests": self.requests,
            "usage": self.usage.to_json(),
            "cpu": self.cpu.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Run:
    """One producer + consumer run of N tasks (Dispatch or the baseline)."""

    kind: str  # "dispatch" (full state tracking) | "lean" (track_state=False) | "baseline"
    tasks: int
    enqueue: Phase
    drain: Phase
    duplicates: int = 0
    peak_in_flight: int = 0
    call_cost_ms: dict[str, dict[str, float]] | None = None
    """The local AWS's per-call cost with the queue empty and with every task queued."""

    @property
    def complete(self) -> bool:
        """Every task enqueued was run (once)."""
        return self.enqueue.done == self.tasks and self.drain.done == self.tasks

    @property
    def requests(self) -> dict[str, int]:
        """Requests of both phases, by action."""
        out = dict(self.enqueue.requests)
        for name, n in self.drain.requests.items():
            out[name] = out.get(name, 0) + n
        return dict(sorted(out.items()))

    @property
    def usage(self) -> Usage:
        """Billable units of both phases."""
        return self.enqueue.usage + self.drain.usage

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "kind": self.kind,
            "tasks": self.tasks,
            "complete": self.complete,
            "duplicates": self.duplicates,
            "peak_in_flight": self.peak_in_flight,
            "call_cost_ms": self.call_cost_ms,
            "enqueue": self.enqueue.to_json(),
            "drain": self.drain.to_json(),
        }


def run_dispatch(
    stage: Stage,
    tasks: int,
    *,
    name: str,
    timeout_s: float,
    probe_rounds: int = 0,
    lean: bool = False,
) -> Run:
    """Fresh resources, ``enqueue_many`` of ``tasks`` no-ops, one dispatcher drains them.

    With ``probe_rounds``, the local AWS's per-call cost is measured (uncounted,
    untimed) with every task queued and on an empty queue, before the drain.
    ``lean``: the no-op declared ``track_state=False`` (no task record).
    """
    settings = stage.fresh(name)
    produced = enqueue(stage, settings, tasks, lean=lean)
    cost = call_cost_ms(stage, settings, rounds=probe_rounds) if probe_rounds else None
    drained, stats = drain(stage, settings, tasks, timeout_s=timeout_s)
    return Run(
        kind="lean" if lean else "dispatch",
        tasks=tasks,
        enqueue=produced,
        drain=drained,
        duplicates=stats.duplicates,
        peak_in_flight=stats.peak_in_flight,
        call_cost_ms=cost,
    )


def enqueue(stage: Stage, settings: Settings, tasks: int, *, lean: bool = False) -> Phase:
    """One ``Queue.enqueue_many`` call with ``tasks`` no-op messages (built beforehand)."""
    counter, meter = RequestCounter(), BillingMeter()
    queue = Queue(settings, counter=counter)
    clients = queue.sync_clients()
    meter.attach(clients.sqs)
    meter.attach(clients.dynamodb)
    messages = workload.noop_messages(tasks, lean=lean)
    before = stage.cpu()
    started = time.perf_counter()
    ids = queue.enqueue_many(messages)
    seconds = time.perf_counter() - started
    cpu = Utilisation.between(before, stage.cpu())
    return Phase(
        seconds=seconds,
        done=len(ids),
        requests=requests_by_action(counter),
        usage=meter.snapshot(),
        cpu=cpu,
    )


def drain(
    stage: Stage,
    settings: Settings,
    tasks: int,
    *,
    timeout_s: float,
    options: DispatcherOptions | None = None,
) -> tuple[Phase, RunStats]:
    """Run one dispatcher until it has run ``tasks`` tasks (or the queue is empty, or
    ``timeout_s``); its phase and stats.

    Like the baseline, which stops once it has handled as many messages as were
    sent, the dispatcher is stopped once ``tasks`` have succeeded, rather than left
    to find out that the queue is empty (a long poll of ``drain_wait_time_s`` and a
    GetQueueAttributes): the drain's time is the tasks' and their settlement's (the
    run flushes its batched deletes and records before it returns), on both sides.
    """
    counter, meter = RequestCounter(), BillingMeter()
    before = stage.cpu()
    stats = asyncio.run(
        _drain(settings, counter, meter, tasks=tasks, timeout_s=timeout_s, options=options)
    )
    cpu = Utilisation.between(before, stage.cpu())
    phase = Phase(
        seconds=stats.wall_s,
        done=min(tasks, stats.succeeded),
        requests=requests_by_action(counter),
        usage=meter.snapshot(),
        cpu=cpu,
    )
    return phase, stats


async def _drain(
    settings: Settings,
    counter: RequestCounter,
    meter: BillingMeter,
    *,
    tasks: int,
    timeout_s: float,
    options: DispatcherOptions | None,
) -> RunStats:
    async with async_clients(settings, counter=counter) as clients:
        meter.attach(clients.sqs)
        meter.attach(clients.dynamodb)
        dispatcher = Dispatcher(
            settings, clients=clients, registry=workload.registry, options=options
        )
        watch = asyncio.create_task(_stop_after(dispatcher, tasks))
        try:
            return await dispatcher.run(until_empty=True, for_s=timeout_s)
        finally:
            watch.cancel()
            await dispatcher.runner.aclose()


async def _stop_after(dispatcher: Dispatcher, tasks: int) -> None:
    """Stop ``dispatcher`` once ``tasks`` tasks have succeeded (checked every 5 ms)."""
    while dispatcher.stats.succeeded < tasks:  # noqa: ASYNC110 - a counter, no event to await
        await asyncio.sleep(0.005)
    dispatcher.stop()
