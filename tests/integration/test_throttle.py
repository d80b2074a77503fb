"""The throttle in the loop, over HTTP to the emulator: rate, cap, sharing, backpressure."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from dispatch import Backpressure, Resource, current_task, task
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, SyncClients, async_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import dispatch_cli, drain

# Timing-sensitive (start windows against a bucket's bound) or CPU-heavy (a browser):
# `make test` (--dist loadgroup) runs these modules on one worker, never side by side.
pytestmark = pytest.mark.xdist_group("timing")

# Handlers record their start a little after the permit was granted; this much
# scheduling jitter (30 ms) is allowed when checking starts against the bucket's bound.
JITTER_S = 0.03


def max_in_any_window(times: list[float], rate: float) -> float:
    """The largest excess of starts over rate * (window + jitter) across every window."""
    ordered = sorted(times)
    worst = 0.0
    for i, start in enumerate(ordered):
        for j in range(i, len(ordered)):
            worst = max(worst, (j - i + 1) - rate * (ordered[j] - start + JITTER_S))
    return worst


async def test_rate_and_burst_hold_and_waiting_spends_no_attempt(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 25 tasks on a resource of 10/s with a burst of 3, when drained, then in no
    window do more than rate * window + burst start, the run takes at least
    (25 - 3) / 10 s, and every task succeeded on its first attempt."""
    api = Resource("partner-api", rate_per_s=10, burst=3)
    starts: list[float] = []
    attempts: list[int] = []  # checked below: an assert in the handler would only retry

    @task(registry=registry, resource=api)
    async def call(n: int) -> None:
        starts.append(time.time())
        attempts.append(current_task().attempt)

    ids = queue.enqueue_many([call.message(n) for n in range(25)])
    stats = await drain(aws_env, registry)

    assert stats.succeeded == 25
    assert attempts == [1] * 25
    assert max_in_any_window(starts, 10) <= 3
    assert max(starts) - min(starts) >= (25 - 3) / 10 - 0.05
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    assert {store.get(i).attempts for i in ids} == {1}  # type: ignore[union-attr]


async def test_concurrency_cap_is_never_exceeded(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given 12 tasks of 0.2 s on a resource capped at 3, when drained, then never more
    than 3 run at once, and the cap is used (3 at once is reached)."""
    pool = Resource("pg-pool", max_concurrency=3)
    running = 0
    peak = 0

    @task(registry=registry, resource=pool)
    async def query(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.2)
        running -= 1

    queue.enqueue_many([query.message(n) for n in range(12)])
    stats = await drain(aws_env, registry)

    assert stats.succeeded == 12
    assert peak == 3


async def test_two_dispatchers_share_one_rate_and_one_cap(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given two dispatchers draining one queue of 40 tasks on a resource of 8/s, burst 2,
    cap 2, when both run at once and both hold messages for it, then together they stay
    within the global rate and cap (coordinated through DynamoDB) and every task ran once.
    (How the work splits between them depends on timing: a holder gives back its extra
    slots about a second after it learns another dispatcher waits.)"""
    api = Resource("shared-api", rate_per_s=8, burst=2, max_concurrency=2)
    starts: list[float] = []
    running = 0
    peak = 0

    @task(registry=registry, resource=api)
    async def call(n: int) -> None:
        nonlocal running, peak
        starts.append(time.time())
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    queue.enqueue_many([call.message(n) for n in range(40)])
    # A one-second horizon: each dispatcher holds only what it can start within 1 s,
    # so the other one gets messages too.
    first, second = await asyncio.gather(
        drain(aws_env, registry, throttle_horizon_s=1.0),
        drain(aws_env, registry, throttle_horizon_s=1.0),
    )

    assert first.succeeded + second.succeeded == 40
    assert first.received > 0 and second.received > 0  # both contended for the resource
    assert peak <= 2
    assert max_in_any_window(starts, 8) <= 2


async def test_a_saturated_resource_does_not_block_other_tasks(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 30 tasks on a resource of 0.5/s and 30 unthrottled tasks behind them, when
    the dispatcher runs for 4 s, then every unthrottled task ran, the slow resource
    started no more than its rate allows, and its waiting tasks were deferred with no
    attempt spent."""
    slow = Resource("slow-partner", rate_per_s=0.5, burst=1)
    done: list[str] = []

    @task(registry=registry, resource=slow)
    def partner(n: int) -> None:
        done.append("slow")

    @task(registry=registry)
    def local(n: int) -> None:
        done.append("fast")

    slow_ids = queue.enqueue_many([partner.message(n) for n in range(30)])
    queue.enqueue_many([local.message(n) for n in range(30)])

    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env, clients=aio, registry=registry, options=DispatcherOptions(max_in_flight=16)
        )
        stats = await dispatcher.run(for_s=4)
        await dispatcher.runner.aclose()

    assert done.count("fast") == 30
    assert 1 <= done.count("slow") <= 1 + 0.5 * 4 + 1
    assert stats.deferred >= 20
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    waiting = [store.get(i) for i in slow_ids]
    assert sum(1 for r in waiting if r and r.status is Status.QUEUED and r.attempts == 0) >= 25


async def test_backpressure_slows_the_resource_and_keeps_the_attempt(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a handler whose backend answers "overloaded" once, when drained, then the
    resource's effective rate drops below its configured rate, and the task is retried
    and succeeds without spending an attempt."""
    backend = Resource("flaky-backend", rate_per_s=20, burst=5)
    calls = 0

    @task(registry=registry, resource=backend)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Backpressure("503 from backend", retry_after_s=1)
        return "ok"

    task_id = queue.enqueue(fetch.message())
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(aws_env, clients=aio, registry=registry)
        stats = await dispatcher.run(until_empty=True)
        (snapshot,) = dispatcher.throttle_snapshots()
        await dispatcher.runner.aclose()

    assert stats.backpressure == 1 and stats.succeeded == 1
    assert snapshot.backpressure_signals == 1
    assert snapshot.effective_rate_per_s is not None and snapshot.effective_rate_per_s < 20
    record = SyncStateStore(clients.dynamodb, aws_env.table).get(task_id)
    assert record is not None and (record.status, record.attempts) == (Status.SUCCEEDED, 1)


async def test_slots_of_a_crashed_dispatcher_come_back_when_its_lease_expires(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a dispatcher that died holding every slot of a resource (its lease expired a
    minute ago), when another dispatcher needs the resource, then it takes those slots
    back and the tasks run."""
    pool = Resource("crash-pool", max_concurrency=2)
    expired = time.time() - 60
    clients.dynamodb.put_item(
        TableName=aws_env.table,
        Item={
            "pk": {"S": f"{c.SLOTS_KEY_PREFIX}crash-pool"},
            "held": {"N": "2"},
            "holders": {
                "M": {"dead-dispatcher": {"M": {"n": {"N": "2"}, "until": {"N": str(expired)}}}}
            },
        },
    )
    ran: list[int] = []

    @task(registry=registry, resource=pool)
    def work(n: int) -> None:
        ran.append(n)

    queue.enqueue_many([work.message(n) for n in range(4)])
    stats = await drain(aws_env, registry)

    assert stats.succeeded == 4 and sorted(ran) == [0, 1, 2, 3]
    item = clients.dynamodb.get_item(
        TableName=aws_env.table, Key={"pk": {"S": f"{c.SLOTS_KEY_PREFIX}crash-pool"}}
    )
    assert "dead-dispatcher" not in item["Item"]["holders"]["M"]
    assert float(item["Item"]["held"]["N"]) == 0


async def test_status_shows_each_resource_across_dispatchers(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a dispatcher that ran tasks on a throttled resource, when a user runs
    `dispatch status --json`, then the resource is listed with its configured rate,
    its cap, the tasks started, the waits, and the shared bucket's tokens."""
    api = Resource("status-api", rate_per_s=20, burst=2, max_concurrency=3)

    @task(registry=registry, resource=api)
    def call(n: int) -> None: ...

    queue.enqueue_many([call.message(n) for n in range(8)])
    await drain(aws_env, registry)

    shown = dispatch_cli("status", "--json")

    assert shown.returncode == 0, shown.stderr
    (resource,) = json.loads(shown.stdout)["resources"]
    assert resource["name"] == "status-api"
    assert (resource["configured_rate_per_s"], resource["max_concurrency"]) == (20, 3)
    assert resource["started"] == 8 and resource["dispatchers"] == 1
    assert resource["waits"] >= 1 and resource["wait_total_s"] > 0
    assert resource["tokens"] is not None and resource["in_flight"] == 0


async def test_a_slot_frees_when_the_handler_returns_not_when_it_is_settled(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given tasks on a resource capped at 1 and settlements batched for up to 2 s,
    when drained, then each task after the first starts while the task before it is
    still waiting for its settlement (its record still `running`): the slot went back
    when the handler returned, so the cap limits the resource, not the bookkeeping."""
    pool = Resource("one-connection", max_concurrency=1)
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    seen: list[Status | None] = []  # None: no record (checked below, not in the handler)
    previous: list[str] = []

    @task(registry=registry, resource=pool)
    def use(n: int) -> None:
        if previous:
            record = store.get(previous[-1])
            seen.append(None if record is None else record.status)
        previous.append(current_task().task_id)

    queue.enqueue_many([use.message(n) for n in range(3)])
    stats = await drain(aws_env, registry, flush_s=2.0)

    assert stats.succeeded == 3
    assert seen == [Status.RUNNING, Status.RUNNING]


async def test_a_deep_backlog_is_not_received_and_deferred_over_and_over(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given 300 tasks on a resource of 1/s (a backlog of minutes), when a dispatcher
    runs for 4 s, then it starts about 4 + burst of them and receives at most a
    dozen times: once every receive brings only backlog, receives slow down (up to
    one a second) instead of receiving and deferring the backlog as fast as SQS
    answers."""
    slow = Resource("slow-partner", rate_per_s=1, burst=2)

    @task(registry=registry, resource=slow)
    def call(n: int) -> None:
        pass

    queue.enqueue_many([call.message(n) for n in range(300)])
    counter = RequestCounter()
    stats = await _run_for(aws_env, registry, seconds=4, counter=counter)

    receives = counter.snapshot().get(("sqs", "ReceiveMessage"), 0)
    assert 2 <= stats.started <= 4 + 2 + 1
    assert receives <= 12, receives


async def test_a_burst_of_one_and_a_cap_of_one_still_runs_every_task(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a resource allowing one call at a time, 5/s, with no burst (burst 1),
    when six tasks are drained, then all six run: a token leased from the shared
    bucket is valid when its lease's answer arrives, not already too late to use."""
    one = Resource("one-at-a-time", rate_per_s=5, burst=1, max_concurrency=1)

    @task(registry=registry, resource=one)
    def call(n: int) -> None:
        pass

    queue.enqueue_many([call.message(n) for n in range(6)])
    stats = await drain(aws_env, registry)

    assert stats.succeeded == 6


async def test_status_says_how_long_a_backlog_takes_to_drain(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given 60 tasks queued for a resource of 2/s and a dispatcher that ran for 2 s
    (and, stopping, made the messages it had deferred visible again), when a user runs
    `dispatch status --json`, then the resource shows every task not yet started as
    its backlog (all the queue's messages are its own) and the time that takes to
    drain at 2/s: "am I throttled, and for how long?"."""
    partner = Resource("drain-partner", rate_per_s=2, burst=1)

    @task(registry=registry, resource=partner)
    def call(n: int) -> None: ...

    queue.enqueue_many([call.message(n) for n in range(60)])
    stats = await _run_for(aws_env, registry, seconds=2)

    shown = dispatch_cli("status", "--json")

    assert shown.returncode == 0, shown.stderr
    (resource,) = json.loads(shown.stdout)["resources"]
    assert resource["queue_share"] == 1.0
    assert resource["backlog"] == 60 - stats.succeeded
    assert resource["drain_s"] == round((60 - stats.succeeded) / 2, 1)


async def _run_for(
    aws_env: Settings, registry: Registry, *, seconds: float, counter: RequestCounter | None = None
) -> RunStats:
    """Run one dispatcher (1 s long polls) for ``seconds``; what it did."""
    async with async_clients(aws_env, counter=counter) as aio:
        dispatcher = Dispatcher(
            aws_env, clients=aio, registry=registry, options=DispatcherOptions(wait_time_s=1)
        )
        try:
            return await dispatcher.run(for_s=seconds)
        finally:
            await dispatcher.runner.aclose()
