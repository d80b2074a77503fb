"""Micro-batch tasks end to end over HTTP to the embedded local AWS: items gathered
into handler calls, each item settled on its own (success, retry, dead letter)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest

from dispatch import BatchFailures, PermanentError, Resource, Retry, current_task, task
from dispatch.core.config import Settings
from dispatch.core.context import BatchContext
from dispatch.core.deadletter import parse_attributes
from dispatch.local.lambda_endpoint import LocalFunction, LocalLambda
from dispatch.loop.dispatcher import Dispatcher
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.state import Status, SyncStateStore, TaskRecord
from dispatch.tasks.registry import Registry
from dispatch_workers import lambda_handler as worker_module
from tests.integration.conftest import drain, queue_counts, receive_all
from tests.integration.test_lambda import Topology

FAST = Retry(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0, jitter=False)
EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}


def records(clients: SyncClients, settings: Settings, ids: list[str]) -> list[TaskRecord]:
    """The task records of ``ids``, read as a user would."""
    store = SyncStateStore(clients.dynamodb, settings.table)
    found = [store.get(task_id) for task_id in ids]
    assert all(r is not None for r in found), "a task has no record"
    return [r for r in found if r is not None]


async def test_items_run_in_batches_of_the_size_each_item_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 10 items of a task with batch_size=4, when the dispatcher drains the queue,
    then the handler ran 3 times (4 + 4 + 2 items), every item exactly once, and each
    item's record says succeeded with its own result (the handler's list, in order)."""
    calls: list[list[int]] = []

    @task(registry=registry, batch_size=4, batch_window_s=2.0)
    def square(numbers: list[int]) -> list[int]:
        calls.append(list(numbers))
        return [n * n for n in numbers]

    ids = queue.enqueue_many([square.message(n) for n in range(10)])

    stats = await drain(aws_env, registry)

    assert sorted(len(call) for call in calls) == [2, 4, 4]
    assert sorted(n for call in calls for n in call) == list(range(10))
    assert stats.succeeded == 10 and stats.started == 10
    found = records(clients, aws_env, ids)
    assert [(r.status, r.attempts, r.result) for r in found] == [
        (Status.SUCCEEDED, 1, n * n) for n in range(10)
    ]
    assert queue_counts(clients, aws_env.queue_url) == EMPTY


async def test_the_window_flushes_a_partial_batch(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 3 items of a task with batch_size=50 and a 0.5 s window, when a dispatcher
    runs (it would never see 50), then the handler runs once with the 3 items, about
    the window after the first arrived, and all succeed."""
    calls: list[tuple[float, list[str]]] = []

    @task(registry=registry, batch_size=50, batch_window_s=0.5)
    async def index_docs(docs: list[str]) -> None:
        calls.append((time.monotonic(), list(docs)))

    ids = queue.enqueue_many([index_docs.message(d) for d in ("a", "b", "c")])
    started = time.monotonic()

    stats = await drain(aws_env, registry)

    ((at, docs),) = calls
    assert sorted(docs) == ["a", "b", "c"]
    assert at - started >= 0.5
    assert stats.succeeded == 3
    assert [r.status for r in records(clients, aws_env, ids)] == [Status.SUCCEEDED] * 3


async def test_items_waiting_past_the_visibility_timeout_are_not_delivered_again(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a window (4 s) twice the dispatcher's visibility timeout (2 s), when items
    wait in their batch, then the heartbeat keeps them hidden: the handler sees each
    item once, in one call, and no delivery is a duplicate."""
    calls: list[list[str]] = []

    @task(registry=registry, batch_size=50, batch_window_s=4.0)
    def index_docs(docs: list[str]) -> None:
        calls.append(sorted(docs))

    ids = queue.enqueue_many([index_docs.message(d) for d in ("a", "b", "c")])

    stats = await drain(aws_env, registry, visibility_timeout_s=2)

    assert calls == [["a", "b", "c"]]
    assert (stats.received, stats.duplicates, stats.succeeded) == (3, 0, 3)
    assert [(r.status, r.attempts) for r in records(clients, aws_env, ids)] == [
        (Status.SUCCEEDED, 1)
    ] * 3


async def test_one_failing_item_is_retried_alone_and_the_others_not_rerun(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a batch where one item fails on its first attempt (BatchFailures by index),
    when the dispatcher drains the queue, then that item alone is retried (a second
    handler call with only it) and succeeds; the others ran once, with attempt 1."""
    calls: list[list[str]] = []
    contexts: list[type] = []  # checked below: an assert in the handler would only retry

    @task(registry=registry, batch_size=10, batch_window_s=1.0, retry=FAST)
    def index_docs(docs: list[str]) -> list[str]:
        calls.append(list(docs))
        contexts.append(type(current_task()))
        context = cast(BatchContext, current_task())
        failing = {
            i: ConnectionError(f"search node refused {doc}")
            for i, (doc, item) in enumerate(zip(docs, context.items, strict=True))
            if doc == "flaky" and item.attempt == 1
        }
        if failing:
            raise BatchFailures(failing, results=[f"indexed {d}" for d in docs])
        return [f"indexed {d}" for d in docs]

    names = ["a", "flaky", "b", "c"]
    ids = queue.enqueue_many([index_docs.message(name) for name in names])

    stats = await drain(aws_env, registry)

    assert contexts == [BatchContext, BatchContext]
    assert sorted(calls[0]) == sorted(names) and calls[1:] == [["flaky"]]
    assert (stats.succeeded, stats.retried, stats.dead) == (4, 1, 0)
    found = dict(zip(names, records(clients, aws_env, ids), strict=True))
    assert (found["flaky"].status, found["flaky"].attempts) == (Status.SUCCEEDED, 2)
    assert found["flaky"].last_error is not None
    assert found["flaky"].last_error.summary() == "ConnectionError: search node refused flaky"
    for name in ("a", "b", "c"):
        assert (found[name].status, found[name].attempts) == (Status.SUCCEEDED, 1)
        assert found[name].result == f"indexed {name}"
    assert queue_counts(clients, aws_env.queue_url) == EMPTY


async def test_one_permanently_failing_item_is_dead_lettered_alone_with_its_reason(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a batch where the handler names one item (by task id) with PermanentError,
    then only that item is dead-lettered, at once, its letter carrying the reason and
    the error; the others succeed."""

    @task(registry=registry, batch_size=10, batch_window_s=1.0, retry=FAST)
    def index_docs(docs: list[str]) -> None:
        ids = current_task().task_ids  # type: ignore[attr-defined]
        bad = {
            ids[i]: PermanentError(f"{doc} was deleted")
            for i, doc in enumerate(docs)
            if doc == "gone"
        }
        if bad:
            raise BatchFailures(bad)

    names = ["a", "gone", "b"]
    ids = queue.enqueue_many([index_docs.message(name) for name in names])

    stats = await drain(aws_env, registry)

    assert (stats.succeeded, stats.dead, stats.retried) == (2, 1, 0)
    found = records(clients, aws_env, ids)
    assert [(r.status, r.attempts) for r in found] == [
        (Status.SUCCEEDED, 1),
        (Status.DEAD, 1),
        (Status.SUCCEEDED, 1),
    ]
    assert found[1].dead_reason == "permanent_error"
    (letter,) = receive_all(clients, aws_env.dlq_url)
    failure = parse_attributes(letter["MessageAttributes"])
    assert failure["reason"] == "permanent_error" and failure["task_id"] == ids[1]
    assert failure["error"]["type"] == "PermanentError"
    assert failure["error"]["message"] == "gone was deleted"
    assert queue_counts(clients, aws_env.queue_url) == EMPTY


async def test_a_handler_that_raises_fails_every_item_of_that_attempt(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a batch handler that raises on its first call, then every item of that
    batch failed that attempt (retrying, its error recorded) and succeeds on the
    next: each item ran twice and ends with 2 attempts."""
    runs: list[str] = []

    @task(registry=registry, batch_size=10, batch_window_s=1.5, retry=FAST)
    async def index_docs(docs: list[str]) -> None:
        runs.extend(docs)
        if current_task().attempt == 1:
            raise RuntimeError("index is read-only")

    ids = queue.enqueue_many([index_docs.message(name) for name in ("a", "b", "c")])

    stats = await drain(aws_env, registry)

    assert sorted(runs) == ["a", "a", "b", "b", "c", "c"]
    assert (stats.retried, stats.succeeded, stats.dead) == (3, 3, 0)
    found = records(clients, aws_env, ids)
    assert [(r.status, r.attempts) for r in found] == [(Status.SUCCEEDED, 2)] * 3
    assert all(
        r.last_error is not None and r.last_error.summary() == "RuntimeError: index is read-only"
        for r in found
    )


async def test_a_throttled_resource_counts_a_batch_as_one_start(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a batch task on a resource with a concurrency cap of 1, when 10 items are
    drained with batch_size=5, then a batch of 5 runs under the cap (a batch takes one
    slot, not five), never two handler calls at once, and every item runs once."""
    search = Resource("search-cluster", rate_per_s=50, burst=5, max_concurrency=1)
    running = 0
    peak = 0
    sizes: list[int] = []
    lock = threading.Lock()

    @task(registry=registry, resource=search, batch_size=5, batch_window_s=2.0)
    def index_docs(docs: list[int]) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            sizes.append(len(docs))
        time.sleep(0.2)
        with lock:
            running -= 1

    ids = queue.enqueue_many([index_docs.message(n) for n in range(10)])

    stats = await drain(aws_env, registry)

    assert max(sizes) == 5 and sum(sizes) == 10 and peak == 1
    assert stats.succeeded == 10
    assert [r.status for r in records(clients, aws_env, ids)] == [Status.SUCCEEDED] * 10


async def test_stopping_runs_a_partial_batch_at_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given items waiting in a batch with a long window, when the dispatcher's run ends
    (for_s), then the partial batch runs at once and is settled: nothing waits for the
    window, nothing is lost."""
    calls: list[list[str]] = []

    @task(registry=registry, batch_size=50, batch_window_s=20.0)
    def index_docs(docs: list[str]) -> None:
        calls.append(sorted(docs))

    ids = queue.enqueue_many([index_docs.message(d) for d in ("a", "b")])
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(aws_env, clients=aio, registry=registry)
        started = time.monotonic()
        stats = await dispatcher.run(for_s=2)
        await dispatcher.runner.aclose()

    assert time.monotonic() - started < 10
    assert calls == [["a", "b"]] and stats.succeeded == 2
    assert [r.status for r in records(clients, aws_env, ids)] == [Status.SUCCEEDED] * 2
    assert queue_counts(clients, aws_env.queue_url) == EMPTY


async def test_a_batch_that_cannot_finish_by_the_deadline_is_released(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a batch still running at the dispatcher's finish_by deadline, then every
    item is released (visible again at once, its attempt given back) and the next run
    completes them all as attempt 1."""
    attempts: list[tuple[int, ...]] = []
    contexts: list[type] = []  # checked below: an assert in the handler would only retry

    @task(registry=registry, batch_size=10, batch_window_s=0.2, timeout_s=60)
    async def slow(docs: list[str]) -> None:
        contexts.append(type(current_task()))
        context = cast(BatchContext, current_task())
        attempts.append(tuple(item.attempt for item in context.items))
        if len(attempts) == 1:
            await asyncio.sleep(60)

    ids = queue.enqueue_many([slow.message(d) for d in ("a", "b", "c")])
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(aws_env, clients=aio, registry=registry)
        started = time.monotonic()
        stats = await dispatcher.run(for_s=1.5, finish_by=time.time() + 2.5)
        await dispatcher.runner.aclose()

    assert time.monotonic() - started < 10
    assert stats.released == 3 and stats.succeeded == 0
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 3
    assert [(r.status, r.attempts) for r in records(clients, aws_env, ids)] == [
        (Status.RETRYING, 0)
    ] * 3

    stats = await drain(aws_env, registry)

    assert stats.succeeded == 3
    assert set(contexts) == {BatchContext}
    assert attempts[0] == (1, 1, 1) and all(set(a) == {1} for a in attempts[1:])
    assert sum(len(a) for a in attempts[1:]) == 3


async def test_batch_and_single_tasks_share_a_dispatcher(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given items of two batch tasks and plain tasks on one queue, each batch holds
    only its own task's items and the plain tasks run one by one."""
    seen: dict[str, list[list[Any]]] = {"words": [], "numbers": []}
    singles: list[int] = []

    @task(registry=registry, batch_size=10, batch_window_s=1.0)
    def words(items: list[str]) -> None:
        seen["words"].append(items)

    @task(registry=registry, batch_size=10, batch_window_s=1.0)
    def numbers(items: list[int]) -> None:
        seen["numbers"].append(items)

    @task(registry=registry)
    def single(n: int) -> int:
        singles.append(n)
        return n

    ids = queue.enqueue_many(
        [words.message(w) for w in ("x", "y")]
        + [numbers.message(n) for n in (1, 2, 3)]
        + [single.message(9)]
    )

    stats = await drain(aws_env, registry)

    assert sorted(w for call in seen["words"] for w in call) == ["x", "y"]
    assert sorted(n for call in seen["numbers"] for n in call) == [1, 2, 3]
    assert all(isinstance(w, str) for call in seen["words"] for w in call)
    assert singles == [9] and stats.succeeded == 6
    assert [r.status for r in records(clients, aws_env, ids)] == [Status.SUCCEEDED] * 6


# --- the Lambda topology --------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint() -> Iterator[LocalLambda]:
    """One loopback Lambda Invoke endpoint for these tests."""
    with LocalLambda.start() as lam:
        yield lam


@pytest.fixture
def topology(
    aws_env: Settings, registry: Registry, endpoint: LocalLambda, monkeypatch: pytest.MonkeyPatch
) -> Topology:
    """A worker and a dispatcher function on this test's queue and table (as in
    test_lambda.py)."""
    suffix = uuid.uuid4().hex[:8]
    topo = Topology(aws_env, registry, endpoint, f"worker-{suffix}", f"dispatcher-{suffix}")
    endpoint.register(
        LocalFunction(
            topo.worker,
            worker_module.make_handler(registry=registry, task_modules=()),
            timeout_s=10,
        )
    )
    topo.serve_dispatcher(topo.options())
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", endpoint.endpoint_url)
    return topo


def test_batch_tasks_run_on_the_worker_function_and_settle_per_item(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """Given 7 items of a batch task (size 5) on the Lambda topology, one failing once
    and one failing for good, when the schedule invokes the dispatcher function, then
    the handler runs on the worker function once per batch (one Invoke each), the
    flaky item alone is retried and succeeds, the doomed one alone is dead-lettered
    with its reason, and the others succeed with their results."""
    calls: list[list[str]] = []
    contexts: list[type] = []  # checked below: an assert in the handler would only retry

    @task(registry=topology.registry, batch_size=5, batch_window_s=0.5, retry=FAST, timeout_s=5)
    def index_docs(docs: list[str]) -> list[str]:
        calls.append(list(docs))
        contexts.append(type(current_task()))
        context = cast(BatchContext, current_task())
        failures: dict[int | str, BaseException] = {}
        for i, (doc, item) in enumerate(zip(docs, context.items, strict=True)):
            if doc == "flaky" and item.attempt == 1:
                failures[i] = ConnectionError("search node busy")
            elif doc == "doomed":
                failures[item.task_id] = PermanentError("document deleted")
        if failures:
            raise BatchFailures(failures, results=[doc.upper() for doc in docs])
        return [doc.upper() for doc in docs]

    names = ["a", "b", "flaky", "c", "doomed", "d", "e"]
    ids = queue.enqueue_many([index_docs.message(name) for name in names])

    summary = topology.invoke_dispatcher()

    assert (summary["succeeded"], summary["retried"], summary["dead"]) == (6, 1, 1)
    assert contexts and set(contexts) == {BatchContext}
    assert sorted(doc for call in calls for doc in call) == sorted([*names, "flaky"])
    assert calls[-1] == ["flaky"]
    worker_calls = [i for i in topology.endpoint.invocations if i.function == topology.worker]
    assert len(worker_calls) == len(calls) and all(i.status == 200 for i in worker_calls)
    found = dict(zip(names, records(clients, topology.settings, ids), strict=True))
    assert (found["flaky"].status, found["flaky"].attempts, found["flaky"].result) == (
        Status.SUCCEEDED,
        2,
        "FLAKY",
    )
    assert (found["doomed"].status, found["doomed"].dead_reason) == (Status.DEAD, "permanent_error")
    for name in ("a", "b", "c", "d", "e"):
        assert (found[name].status, found[name].attempts, found[name].result) == (
            Status.SUCCEEDED,
            1,
            name.upper(),
        )
    (letter,) = receive_all(clients, topology.settings.dlq_url)
    assert parse_attributes(letter["MessageAttributes"])["task_id"] == ids[4]
    assert queue_counts(clients, topology.settings.queue_url) == EMPTY
