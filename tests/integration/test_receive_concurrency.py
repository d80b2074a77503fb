"""Receives out at once: more while the queue fills whole batches, one when it does not.

Every test runs the dispatcher over HTTP against the embedded local AWS and watches
its ReceiveMessage calls from the client's own events: a call is out from the
moment it is sent until its answer is back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from dispatch import task
from dispatch.core.config import Settings
from dispatch.core.errors import ConfigurationError
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import AsyncClients, async_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import queue_counts


class ReceivesOut:
    """How many ReceiveMessage calls are out at once, and the most there ever were."""

    def __init__(self, clients: AsyncClients) -> None:
        self.now = 0
        self.most = 0
        self.sent = 0
        events = clients.sqs.meta.events
        events.register("before-send.sqs.ReceiveMessage", self._sent)
        events.register("response-received.sqs.ReceiveMessage", self._back)

    def _sent(self, **_: Any) -> None:
        self.now += 1
        self.sent += 1
        self.most = max(self.most, self.now)

    def _back(self, **_: Any) -> None:
        self.now -= 1


async def run_watched(
    settings: Settings, registry: Registry, options: DispatcherOptions, **run: Any
) -> tuple[RunStats, ReceivesOut]:
    async with async_clients(settings) as aio:
        watch = ReceivesOut(aio)
        dispatcher = Dispatcher(settings, clients=aio, registry=registry, options=options)
        try:
            stats = await dispatcher.run(**run)
        finally:
            await dispatcher.runner.aclose()
    return stats, watch


def noop_task(registry: Registry, ran: Counter[str]) -> Any:
    @task(registry=registry, track_state=False)
    async def noop(n: int) -> None:
        ran[str(n)] += 1

    return noop


async def test_a_deep_queue_has_several_receives_out_and_every_task_runs_once(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given 300 tasks queued, when one dispatcher drains them with the default options,
    then more than one receive was out at a time (never more than receive_concurrency),
    and every task ran exactly once."""
    ran: Counter[str] = Counter()
    noop = noop_task(registry, ran)
    queue.enqueue_many([noop.message(n) for n in range(300)])

    stats, watch = await run_watched(aws_env, registry, DispatcherOptions(), until_empty=True)

    assert 2 <= watch.most <= DispatcherOptions().receive_concurrency
    assert stats.succeeded == 300
    assert ran == Counter({str(n): 1 for n in range(300)})


async def test_receive_concurrency_1_keeps_one_receive_out(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given 100 tasks queued, when a dispatcher with receive_concurrency=1 drains them,
    then no two receives were ever out at once and every task ran."""
    ran: Counter[str] = Counter()
    noop = noop_task(registry, ran)
    queue.enqueue_many([noop.message(n) for n in range(100)])

    stats, watch = await run_watched(
        aws_env, registry, DispatcherOptions(receive_concurrency=1), until_empty=True
    )

    assert watch.most == 1
    assert stats.succeeded == 100 and len(ran) == 100


@pytest.mark.parametrize("wait_time_s", [1, 0])
async def test_an_idle_queue_costs_about_one_receive_a_second(
    aws_env: Settings, registry: Registry, wait_time_s: int
) -> None:
    """Given an empty queue, when a dispatcher waits on it for 3 s, with 1 s long polls
    or with short polls (wait_time_s=0), then only one receive is ever out and it sends
    about one a second, the last second before the run's end included (a short poll
    that finds nothing is followed by a pause, not by the next poll)."""
    noop_task(registry, Counter())

    started = time.monotonic()
    options = DispatcherOptions(wait_time_s=wait_time_s)
    _, watch = await run_watched(aws_env, registry, options, for_s=3)
    elapsed_s = time.monotonic() - started

    assert watch.most == 1
    assert 2 <= watch.sent <= elapsed_s + 1


async def test_a_run_that_ends_with_receives_out_handles_what_they_bring(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given 400 tasks queued and a run limited to 1 s, when the run ends while receives
    are out, then nothing is left hidden on the queue: each task either ran (its record
    says succeeded) or is visible again at once, and none ran twice."""
    ran: Counter[str] = Counter()

    @task(registry=registry)
    async def slowish(n: int) -> None:
        ran[str(n)] += 1
        await asyncio.sleep(0.01)

    ids = queue.enqueue_many([slowish.message(n) for n in range(400)])

    stats, watch = await run_watched(aws_env, registry, DispatcherOptions(), for_s=1)

    assert watch.most >= 2
    counts = queue_counts(clients, aws_env.queue_url)
    assert counts["in_flight"] == 0
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    succeeded = [i for i in ids if (r := store.get(i)) is not None and r.status is Status.SUCCEEDED]
    assert len(succeeded) == stats.succeeded == len(ran)
    assert counts["visible"] == 400 - len(succeeded)
    assert set(ran.values()) == {1}


@pytest.mark.parametrize("value", [0, -1, 11])
def test_receive_concurrency_out_of_range_is_refused_by_name(value: int) -> None:
    """Given receive_concurrency outside 1 to 10, when options are built, then a
    ConfigurationError names the option, the value and the range."""
    with pytest.raises(ConfigurationError, match=rf"receive_concurrency={value}: must be 1 to 10"):
        DispatcherOptions(receive_concurrency=value)
