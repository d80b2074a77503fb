"""The Lambda topology, run locally over real HTTP.

Schedule event → dispatcher handler → Lambda Invoke (aiobotocore, over HTTP) to
the loopback endpoint → worker handler → outcomes settled in SQS and DynamoDB on
the embedded local AWS. No AWS client is faked: the endpoint speaks Lambda's
Invoke REST API and the emulator SQS's and DynamoDB's.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from dispatch import Backpressure, PermanentError, Retry, current_task
from dispatch.aws_lambda.handler import (
    DISPATCHER_GRANTS,
    LambdaOptions,
    PermissionGuard,
    apply_resource_limits,
    make_handler,
    plan_invocation,
    should_scale_out,
)
from dispatch.aws_lambda.slots import Leases, acquire_params, lease_key
from dispatch.core.config import Settings
from dispatch.core.errors import ConfigurationError
from dispatch.core.outcome import OutcomeKind
from dispatch.local.lambda_endpoint import LocalContext, LocalFunction, LocalLambda, function_arn
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry, task
from dispatch.throttle.limits import Resource, ThrottleSnapshot
from dispatch_workers import lambda_handler as worker_module
from dispatch_workers.lambda_handler import TaskCall, decode_outcomes, encode_request
from dispatch_workers.lambda_invoker import (
    INVOKE_MAX_REQUEST_BYTES,
    MAX_CALL_BYTES,
    InvokerOptions,
    LambdaInvoker,
    outcome_for_function_error,
)
from tests.integration.conftest import queue_counts, receive_all, wait_until

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
QUICK = Retry(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0)


def schedule_event() -> dict[str, Any]:
    """The canned EventBridge scheduled event."""
    data: dict[str, Any] = json.loads((EVENTS / "schedule.json").read_text())
    return data


def lambda_context(timeout_s: float, **overrides: Any) -> LocalContext:
    """A context from the canned Lambda context data, with a real deadline."""
    data = json.loads((EVENTS / "context.json").read_text())
    return LocalContext.from_dict(data, timeout_s=timeout_s, **overrides)


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def endpoint() -> Iterator[LocalLambda]:
    """One loopback Lambda Invoke endpoint for the run; tests register their functions."""
    with LocalLambda.start() as lam:
        yield lam


@dataclass
class Topology:
    """One test's functions on the endpoint, wired to its queue and table."""

    settings: Settings
    registry: Registry
    endpoint: LocalLambda
    worker: str
    dispatcher: str
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def options(self, **changes: Any) -> LambdaOptions:
        """The function settings the template would give, with changes."""
        base = LambdaOptions(
            worker_function=f"{self.worker}:live",
            worker_timeout_s=10.0,
            lambda_endpoint_url=self.endpoint.endpoint_url,
            settle_margin_s=1.0,
            release_margin_s=1.0,
            drain_wait_s=1,
        )
        return replace(base, **changes)

    def serve_dispatcher(self, options: LambdaOptions, *, timeout_s: float = 30.0) -> None:
        """(Re)register the dispatcher function with these settings; its summaries are kept."""
        handler = make_handler(registry=self.registry, options=options)

        def recorded(event: Any, context: Any) -> dict[str, Any]:
            summary = handler(event, context)
            self.summaries.append(summary)
            return summary

        self.endpoint.register(LocalFunction(self.dispatcher, recorded, timeout_s=timeout_s))

    def invoke_dispatcher(self, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """What EventBridge does, but waiting for the answer (RequestResponse)."""
        client = boto3.client(
            "lambda",
            endpoint_url=self.endpoint.endpoint_url,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=60),
        )
        answer = client.invoke(
            FunctionName=function_arn(self.dispatcher, qualifier="live"),
            Payload=json.dumps(event if event is not None else schedule_event()),
        )
        assert "FunctionError" not in answer, answer["Payload"].read()
        result: dict[str, Any] = json.loads(answer["Payload"].read())
        return result


@pytest.fixture
def topology(
    aws_env: Settings, registry: Registry, endpoint: LocalLambda, monkeypatch: pytest.MonkeyPatch
) -> Topology:
    """A worker and a dispatcher function for this test, on its own queue and table."""
    suffix = uuid.uuid4().hex[:8]
    topo = Topology(aws_env, registry, endpoint, f"worker-{suffix}", f"dispatcher-{suffix}")
    endpoint.register(
        LocalFunction(
            topo.worker,
            worker_module.make_handler(registry=registry, task_modules=()),
            timeout_s=10,
        )
    )
    scale_out = function_arn(topo.dispatcher, qualifier="live")
    topo.serve_dispatcher(topo.options(scale_out_function=scale_out))
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", endpoint.endpoint_url)
    return topo


def declare(registry: Registry) -> dict[str, Any]:
    """The test tasks: one of each way an attempt can end."""

    @task(registry=registry, retry=QUICK, timeout_s=5)
    def double(n: int) -> int:
        return 2 * n

    @task(registry=registry, retry=QUICK, timeout_s=5)
    async def flaky(n: int) -> int:
        if current_task().attempt == 1:
            raise ConnectionError(f"first attempt of {n} fails")
        return n

    @task(registry=registry, retry=QUICK, timeout_s=5)
    def doomed() -> None:
        raise PermanentError("never")

    @task(registry=registry, retry=QUICK, timeout_s=10)
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @task(registry=registry, retry=QUICK, timeout_s=5)
    def overloaded() -> None:
        raise Backpressure("busy", retry_after_s=1)

    return {"double": double, "flaky": flaky, "doomed": doomed, "slow": slow}


def records(clients: SyncClients, settings: Settings, ids: list[str]) -> list[Any]:
    """The task records of ``ids``, read as a user would."""
    store = SyncStateStore(clients.dynamodb, settings.table)
    return [store.get(task_id) for task_id in ids]


DECLARED_OPERATIONS = {f"{g.service}.{op}" for g in DISPATCHER_GRANTS for op in g.operations}


# --- the whole topology ----------------------------------------------------------------------
def test_schedule_event_runs_tasks_on_the_worker_and_settles_them(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """Given successes, a transient failure and a permanent one on the queue, when the
    schedule's event invokes the dispatcher function, then each task ran on the worker
    function through Invoke, in micro-batches, and is settled: records succeeded or
    dead, the dead letter carries the reason, the queue is empty. Every request the
    dispatcher sent is one DISPATCHER_GRANTS declares, and the claims went in batches
    (the probe and at least one batch of claims passed the permission guard)."""
    tasks = declare(topology.registry)
    ids = queue.enqueue_many(
        [tasks["double"].message(n=i) for i in range(20)]
        + [tasks["flaky"].message(n=7), tasks["doomed"].message()]
    )

    summary = topology.invoke_dispatcher()

    assert summary["outcome"] == "ran"
    assert (summary["succeeded"], summary["retried"], summary["dead"]) == (21, 1, 1)
    assert summary["worker_invocations"] < 21  # micro-batches, not one call per task
    statuses = [r.status for r in records(clients, topology.settings, ids)]
    assert statuses == [Status.SUCCEEDED] * 21 + [Status.DEAD]
    (letter,) = receive_all(clients, topology.settings.dlq_url)
    assert letter["MessageAttributes"]["dispatch-reason"]["StringValue"] == "permanent_error"
    assert queue_counts(clients, topology.settings.queue_url) == {
        "visible": 0,
        "in_flight": 0,
        "delayed": 0,
    }
    worker_calls = [i for i in topology.endpoint.invocations if i.function == topology.worker]
    assert worker_calls and all(i.status == 200 and i.qualifier == "live" for i in worker_calls)
    assert set(summary["requests"]) <= DECLARED_OPERATIONS
    assert summary["requests"]["dynamodb.BatchExecuteStatement"] >= 2


def test_responsive_mode_wakes_a_dispatcher_and_its_promise_spares_the_next_wake(
    topology: Topology, clients: SyncClients
) -> None:
    """Given the responsive mode (a dispatcher that lingers 15 s after its last task, and
    a producer with DISPATCH_WAKE_FUNCTION), when a task is enqueued on an idle queue
    with no tick at all, then the producer wakes the dispatcher function and the task
    runs within seconds; a second task enqueued while the woken dispatcher lingers is
    picked up by it: the producer reads its promise and wakes nothing (one wake, one
    dispatcher invocation in all)."""
    tasks = declare(topology.registry)
    topology.serve_dispatcher(topology.options(linger_s=15.0))
    wake = function_arn(topology.dispatcher, qualifier="live")
    queue = Queue(replace(topology.settings, wake_function=wake))
    store = SyncStateStore(clients.dynamodb, topology.settings.table)

    def succeeded(task_id: str) -> bool:
        found = store.get(task_id)
        return found is not None and found.status is Status.SUCCEEDED

    try:
        started = time.monotonic()
        first = queue.enqueue(tasks["double"].message(n=1))
        wait_until(lambda: succeeded(first), what="the woken dispatcher to run the first task")
        first_pickup_s = time.monotonic() - started
        assert queue.waker is not None
        waker = queue.waker
        wait_until(waker.due, what="the producer's quiet period after its wake to pass")
        second = queue.enqueue(tasks["double"].message(n=2))
        wait_until(lambda: succeeded(second), what="the lingering dispatcher to run the second")
    finally:
        queue.close()
        assert topology.endpoint.wait_idle(timeout_s=60)

    assert waker.wakes == 1
    dispatchers = [i for i in topology.endpoint.invocations if i.function == topology.dispatcher]
    assert len(dispatchers) == 1 and dispatchers[0].invocation_type == "Event"
    (summary,) = topology.summaries
    assert summary["woken"] is True and summary["succeeded"] == 2
    assert first_pickup_s < 10, first_pickup_s


def test_a_run_whose_time_is_up_hands_over_to_the_next_at_once(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """Given a backlog bigger than one run can take before its receiving time is up
    (2 s of receiving, two tasks at a time), when the scheduled tick's run stops
    receiving with messages still visible, then it gives its slot back and invokes the
    next dispatcher itself, which takes the slot at once (not lease_busy, though the
    first still finishes what it holds) and goes on; the chain drains the backlog with
    no other tick, and the run that empties the queue hands over to nobody."""
    tasks = declare(topology.registry)
    topology.serve_dispatcher(
        topology.options(
            max_in_flight=2,
            scale_out_function=function_arn(topology.dispatcher, qualifier="live"),
        ),
        timeout_s=14.0,  # receives for 14 - 1 - 1 - 10 (the longest task) = 2 s
    )
    ids = queue.enqueue_many([tasks["slow"].message(seconds=0.3) for _ in range(24)])
    store = SyncStateStore(clients.dynamodb, topology.settings.table)

    first = topology.invoke_dispatcher()

    assert first.get("handed_over") is True, first
    assert 0 < first["succeeded"] < len(ids)
    wait_until(
        lambda: all((r := store.get(i)) is not None and r.status is Status.SUCCEEDED for i in ids),
        what="the handed-over runs to drain the backlog",
        timeout_s=60,
    )
    assert topology.endpoint.wait_idle(timeout_s=30)
    later = topology.summaries[1:]
    assert later and all("handed_over_by" in s for s in later), later
    assert [s["outcome"] for s in later] == ["ran"] * len(later)
    assert "handed_over" not in later[-1]  # it emptied the queue
    assert sum(s["succeeded"] for s in topology.summaries) == len(ids)


def test_example_app_runs_through_the_lambda_topology(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """The example application's tasks (dispatch/local/example/app.py: a sync receipt, an async
    charge that fails once, a refund that cannot be made) end where the demo says
    they do, when run by the dispatcher function and the worker function."""
    from dispatch.local.example import app

    registry = topology.registry
    for spec in (app.send_receipt, app.charge, app.refund):
        registry.register(spec.spec)
    ids = queue.enqueue_many(
        [app.send_receipt.message(order_id=str(n), email=f"b{n}@example.com") for n in range(5)]
        + [app.charge.message(order_id="10", amount_cents=500)]  # fails once, then succeeds
        + [app.refund.message(order_id="13")]
    )

    summary = topology.invoke_dispatcher()

    assert (summary["succeeded"], summary["retried"], summary["dead"]) == (6, 1, 1)
    found = records(clients, topology.settings, ids)
    assert [r.status for r in found] == [Status.SUCCEEDED] * 6 + [Status.DEAD]
    assert found[5].attempts == 2
    assert found[6].dead_reason == "permanent_error"


def test_idle_invocation_returns_at_once_after_one_request(topology: Topology) -> None:
    """Given an empty queue, an invocation sends one GetQueueAttributes and returns
    well within a couple of seconds, taking no lease and invoking no worker."""
    declare(topology.registry)
    started = time.perf_counter()

    summary = topology.invoke_dispatcher()

    elapsed = time.perf_counter() - started
    assert summary["outcome"] == "idle"
    assert summary["requests"] == {"sqs.GetQueueAttributes": 1}
    assert elapsed < 2.0
    print(f"idle invocation: {summary['requests']} in {elapsed * 1000:.0f} ms")


def test_too_many_requests_is_backpressure_and_spends_no_attempt(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """Given a worker with reserved concurrency 1 and four tasks invoked at once,
    Lambda's TooManyRequestsException answers are backpressure: the tasks are
    retried later and every one succeeds with its attempt count still 1."""
    tasks = declare(topology.registry)
    topology.endpoint.set_reserved_concurrency(topology.worker, 1)
    topology.serve_dispatcher(topology.options(batch_size=1, invoke_concurrency=4))
    ids = queue.enqueue_many([tasks["slow"].message(seconds=0.3) for _ in range(4)])

    summary = topology.invoke_dispatcher()

    assert summary["worker_throttled"] >= 1
    assert summary["backpressure"] >= 1
    assert summary["succeeded"] == 4
    refused = [i for i in topology.endpoint.invocations if i.function == topology.worker]
    assert any(i.status == 429 and i.error == "TooManyRequestsException" for i in refused)
    assert [(r.status, r.attempts) for r in records(clients, topology.settings, ids)] == [
        (Status.SUCCEEDED, 1)
    ] * 4


def test_work_that_cannot_finish_by_the_deadline_is_released(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """Given an attempt still running when the invocation's deadline (less the
    release margin) comes, it is released: the message is visible again at once and
    the attempt is given back, so the next invocation starts it without waiting for
    a stale visibility timeout."""
    tasks = declare(topology.registry)
    # The dispatcher is told attempts end within 0.5 s; this one takes 8 s.
    topology.serve_dispatcher(topology.options(worker_timeout_s=0.5), timeout_s=5)
    (task_id,) = queue.enqueue_many([tasks["slow"].message(seconds=8)])
    started = time.perf_counter()

    summary = topology.invoke_dispatcher()

    assert time.perf_counter() - started < 5.0
    assert summary["released"] == 1
    (record,) = records(clients, topology.settings, [task_id])
    assert (record.status, record.attempts) == (Status.RETRYING, 0)
    assert queue_counts(clients, topology.settings.queue_url)["visible"] == 1


def test_lease_caps_concurrent_dispatchers(topology: Topology, queue: Queue) -> None:
    """Given a lease cap of 1 and a backlog that stays visible for seconds (the dispatcher
    holds one task at a time), two invocations at once: one runs the loop, the other
    finds the lease held and returns without receiving anything (not "idle": the
    queue still has visible messages when it looks)."""
    tasks = declare(topology.registry)
    queue.enqueue_many([tasks["slow"].message(seconds=0.5) for _ in range(4)])
    handler = make_handler(registry=topology.registry, options=topology.options(max_in_flight=1))

    async def both() -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                handler.invoke(schedule_event(), lambda_context(30)),  # type: ignore[attr-defined]
                handler.invoke(schedule_event(), lambda_context(30)),  # type: ignore[attr-defined]
            )
        )

    outcomes = sorted(s["outcome"] for s in asyncio.run(both()))

    assert outcomes == ["lease_busy", "ran"]


def test_a_backlog_starts_another_dispatcher_up_to_the_cap(
    topology: Topology, queue: Queue, clients: SyncClients
) -> None:
    """Given a backlog one dispatcher cannot hold (max 2 in flight) and an idle
    throttle, the dispatcher starts one more invocation of itself (InvocationType
    Event); it takes the second lease slot and works the same queue; every task
    runs exactly once."""
    tasks = declare(topology.registry)
    options = topology.options(
        lease_cap=2,
        max_in_flight=2,
        scale_out_after_s=0.3,
        scale_out_function=function_arn(topology.dispatcher, qualifier="live"),
    )
    topology.serve_dispatcher(options)
    ids = queue.enqueue_many([tasks["slow"].message(seconds=0.4) for _ in range(14)])

    first = topology.invoke_dispatcher()
    assert topology.endpoint.wait_idle(timeout_s=20)

    assert first.get("scaled_out") is True
    started = [
        i
        for i in topology.endpoint.invocations
        if i.function == topology.dispatcher and i.invocation_type == "Event"
    ]
    assert started and started[0].status == 202
    ran = [s for s in topology.summaries if s["outcome"] == "ran"]
    assert len(ran) == 2
    assert {s["lease_slot"] for s in ran} == {0, 1}
    assert sum(s["succeeded"] for s in ran) == 14
    assert all(r.attempts == 1 for r in records(clients, topology.settings, ids))


# --- the invoker against the endpoint ----------------------------------------------------------
@pytest.fixture
async def lambda_client(endpoint: LocalLambda) -> AsyncIterator[Any]:
    """An aiobotocore Lambda client on the endpoint, without retries (as the dispatcher's)."""
    config = AioConfig(retries={"total_max_attempts": 1}, read_timeout=30)
    async with get_session().create_client(
        "lambda",
        endpoint_url=endpoint.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - the endpoint ignores credentials
        config=config,
    ) as client:
        yield client


def _serve(endpoint: LocalLambda, handler: Callable[[Any, Any], Any], **limits: Any) -> str:
    name = f"fn-{uuid.uuid4().hex[:8]}"
    endpoint.register(LocalFunction(name, handler, **limits))
    return name


def _context(n: int = 1) -> Any:
    from dispatch.core.context import TaskContext

    return TaskContext(task_id=f"t{n}", task="x", attempt=1, max_attempts=3, enqueued_at=0.0)


async def test_invoke_outcomes_map_to_retry_decisions(
    endpoint: LocalLambda, lambda_client: Any, registry: Registry
) -> None:
    """Each way an Invoke ends becomes the right outcome: a handler's own failure
    reported by the worker (handled) keeps its kind; a crashed worker (Unhandled) and
    a function timeout are retryable; a missing function is backpressure (a
    deployment problem spends no attempt)."""
    tasks = declare(registry)

    def crash(event: Any, context: Any) -> Any:
        raise RuntimeError("worker bug")

    def hang(event: Any, context: Any) -> Any:
        time.sleep(2)

    worker = _serve(endpoint, worker_module.make_handler(registry=registry, task_modules=()))
    crashing = _serve(endpoint, crash)
    hanging = _serve(endpoint, hang, timeout_s=0.3)
    spec = tasks["doomed"].spec
    options = InvokerOptions(batch_size=1)

    handled = await LambdaInvoker(lambda_client, function_name=worker, options=options).run(
        spec, (), {}, _context()
    )
    crashed = await LambdaInvoker(lambda_client, function_name=crashing, options=options).run(
        spec, (), {}, _context()
    )
    timed_out = await LambdaInvoker(lambda_client, function_name=hanging, options=options).run(
        spec, (), {}, _context()
    )
    missing = await LambdaInvoker(lambda_client, function_name="nope", options=options).run(
        spec, (), {}, _context()
    )

    assert handled.kind is OutcomeKind.PERMANENT
    assert handled.error is not None and handled.error.type == "PermanentError"
    assert crashed.kind is OutcomeKind.RETRYABLE
    assert crashed.error is not None and crashed.error.type == "RuntimeError"
    assert "worker bug" in crashed.error.message
    assert timed_out.kind is OutcomeKind.RETRYABLE
    assert timed_out.error is not None and timed_out.error.type == "TaskTimeoutError"
    assert missing.kind is OutcomeKind.BACKPRESSURE
    assert missing.error is not None and missing.error.type == "ResourceNotFoundException"


async def test_throttled_invoke_is_backpressure_with_a_retry_hint(
    endpoint: LocalLambda, lambda_client: Any, registry: Registry
) -> None:
    """TooManyRequestsException (reserved concurrency exhausted) is backpressure with
    a retry hint, counted as a throttle; nothing ran."""
    tasks = declare(registry)
    ran: list[Any] = []
    name = _serve(endpoint, lambda event, context: ran.append(event), reserved_concurrency=0)
    invoker = LambdaInvoker(lambda_client, function_name=name, options=InvokerOptions(batch_size=1))

    outcome = await invoker.run(tasks["double"].spec, (), {"n": 1}, _context())

    assert outcome.kind is OutcomeKind.BACKPRESSURE
    assert outcome.retry_after_s == 1.0
    assert invoker.stats.throttled == 1
    assert ran == []


async def test_short_tasks_share_invocations_and_long_ones_do_not(
    endpoint: LocalLambda, lambda_client: Any, registry: Registry
) -> None:
    """Given 25 short attempts started together, they go out in micro-batches of up to
    10 (3 invocations); attempts longer than batch_max_timeout_s go alone."""
    tasks = declare(registry)
    worker = _serve(endpoint, worker_module.make_handler(registry=registry, task_modules=()))
    invoker = LambdaInvoker(lambda_client, function_name=worker)
    double, slow = tasks["double"].spec, tasks["slow"].spec

    short = await asyncio.gather(
        *(invoker.run(double, (), {"n": i}, _context(i)) for i in range(25))
    )
    batched = invoker.stats.invocations
    # One invoker for the long attempts (timeout 10 s, over its 7 s line; double's 5 s is
    # under it), with a batch window wide enough to pack them had they been batchable.
    alone = LambdaInvoker(
        lambda_client,
        function_name=worker,
        options=InvokerOptions(batch_max_timeout_s=7.0, batch_window_s=0.5),
    )
    long = await asyncio.gather(
        *(alone.run(slow, (), {"seconds": 0.01}, _context(i)) for i in range(4))
    )
    short_on_it = await asyncio.gather(
        *(alone.run(double, (), {"n": i}, _context(i)) for i in range(4))
    )
    await invoker.aclose()
    await alone.aclose()

    assert [o.result for o in short] == [2 * i for i in range(25)]
    assert batched == 3
    assert invoker.stats.attempts_per_invocation == pytest.approx(25 / 3)
    assert all(o.succeeded for o in long)
    assert [o.result for o in short_on_it] == [0, 2, 4, 6]
    # 4 long attempts, one invocation each; then the 4 short ones share one
    assert alone.stats.invocations == 4 + 1
    assert alone.stats.attempts == 8


async def test_payloads_over_the_invoke_limit_are_split_or_refused(
    endpoint: LocalLambda, lambda_client: Any, registry: Registry
) -> None:
    """A batch over Lambda's 6 MB request limit is split (here the endpoint's 413
    tells, as the invoker was allowed 12 MB); a single attempt over it can never be
    delivered and is not retryable; the invoker refuses such an attempt itself,
    without a call, when it knows the limit."""
    tasks = declare(registry)
    worker = _serve(endpoint, worker_module.make_handler(registry=registry, task_modules=()))
    echo = tasks["double"].spec  # doubles a string: "ab" * 2
    generous = LambdaInvoker(
        lambda_client,
        function_name=worker,
        options=InvokerOptions(max_request_bytes=12 * 1024 * 1024, batch_window_s=0.05),
    )
    four_mb = "x" * (4 * 1024 * 1024)

    pair = await asyncio.gather(
        *(generous.run(echo, (), {"n": four_mb}, _context(i)) for i in range(2))
    )
    too_big = await generous.run(echo, (), {"n": "y" * (7 * 1024 * 1024)}, _context())
    careful = LambdaInvoker(lambda_client, function_name=worker)
    refused = await careful.run(echo, (), {"n": "z" * (7 * 1024 * 1024)}, _context())

    # Both were delivered and ran on the worker: it refused their 8 MB results (over
    # MAX_RESULT_BYTES), which therefore never travel back: failed for good, not retried.
    assert [o.kind for o in pair] == [OutcomeKind.PERMANENT] * 2, [o.error for o in pair]
    assert all(o.error is not None and o.error.type == "ResultTooLargeError" for o in pair)
    assert all(o.result is None for o in pair)
    assert generous.stats.splits >= 1
    assert too_big.kind is OutcomeKind.NOT_RETRYABLE
    assert refused.kind is OutcomeKind.NOT_RETRYABLE
    assert refused.error is not None and refused.error.type == "PayloadTooLargeError"
    assert careful.stats.invocations == 0


def test_every_enqueueable_message_fits_one_invocation() -> None:
    """The largest message the queue accepts, with its invocation overhead, is below
    the 6 MB Invoke limit: enqueue's own size check is the early, clear error for a
    task that could never be delivered."""
    assert MAX_CALL_BYTES < INVOKE_MAX_REQUEST_BYTES
    call = TaskCall(task="t" * 128, args=(), kwargs={"p": "é" * 10}, context=_context())
    assert len(encode_request([call])) < 1024


# --- the endpoint itself ------------------------------------------------------------------------
def test_endpoint_speaks_the_invoke_api_to_the_stock_client(endpoint: LocalLambda) -> None:
    """boto3's own Lambda client works against the endpoint: RequestResponse with a
    log tail, aliases and qualifiers, Event (202), DryRun (204), and Lambda's errors
    (404 unknown function or alias, 400 not JSON, Unhandled function errors, the
    response size limit)."""

    def boom(event: Any, context: Any) -> Any:
        raise ValueError("bad input")

    echo = _serve(endpoint, lambda event, context: {"event": event, "fn": context.function_name})
    failing = _serve(endpoint, boom)
    huge = _serve(endpoint, lambda event, context: "x" * (7 * 1024 * 1024))
    client = boto3.client(
        "lambda",
        endpoint_url=endpoint.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",  # its own: the test must not lean on another's env
        aws_secret_access_key="testing",  # noqa: S106 - the emulator takes any key
        config=Config(retries={"total_max_attempts": 1}),
    )

    answer = client.invoke(FunctionName=echo, Payload=b'{"a": 1}', LogType="Tail")
    aliased = client.invoke(FunctionName=function_arn(echo), Qualifier="live", Payload=b"{}")
    event = client.invoke(FunctionName=f"{echo}:live", InvocationType="Event", Payload=b"{}")
    dry = client.invoke(FunctionName=echo, InvocationType="DryRun")
    crashed = client.invoke(FunctionName=failing, Payload=b"{}")
    oversized = client.invoke(FunctionName=huge, Payload=b"{}")

    assert answer["StatusCode"] == 200
    assert json.loads(answer["Payload"].read()) == {"event": {"a": 1}, "fn": echo}
    assert "REPORT RequestId" in __import__("base64").b64decode(answer["LogResult"]).decode()
    assert aliased["ExecutedVersion"] == "1"
    assert (event["StatusCode"], dry["StatusCode"]) == (202, 204)
    assert crashed["FunctionError"] == "Unhandled"
    assert json.loads(crashed["Payload"].read())["errorType"] == "ValueError"
    assert json.loads(oversized["Payload"].read())["errorType"] == "Function.ResponseSizeTooLarge"
    for kwargs, code in (
        ({"FunctionName": "no-such-function"}, "ResourceNotFoundException"),
        ({"FunctionName": f"{echo}:no-such-alias"}, "ResourceNotFoundException"),
        ({"FunctionName": echo, "Payload": b"not json"}, "InvalidRequestContentException"),
    ):
        with pytest.raises(ClientError) as refused:
            client.invoke(**kwargs)
        assert refused.value.response["Error"]["Code"] == code


# --- leases ----------------------------------------------------------------------------------
async def test_lease_slots_cap_holders_and_expire_by_themselves(
    aws_env: Settings, aio_clients: Any
) -> None:
    """With a cap of 2, two holders get slots and a third does not; once a lease's
    `until` has passed, another dispatcher takes the slot without anyone releasing
    it; the old holder's release then reports the lease as lost."""
    now = time.time()
    leases = Leases(
        aio_clients.dynamodb, aws_env.table, queue_url=aws_env.queue_url, cap=2, clock=lambda: now
    )
    first = await leases.acquire(holder="a", until=now + 60)
    second = await leases.acquire(holder="b", until=now + 60)
    third = await leases.acquire(holder="c", until=now + 60)
    later = Leases(
        aio_clients.dynamodb,
        aws_env.table,
        queue_url=aws_env.queue_url,
        cap=2,
        clock=lambda: now + 61,
    )
    taken_over = await later.acquire(holder="d", until=now + 120)

    assert first is not None and second is not None
    assert {first.slot, second.slot} == {0, 1}
    assert third is None
    assert taken_over is not None
    lost = first if taken_over.slot == first.slot else second
    assert await leases.release(lost) is False
    assert await later.release(taken_over) is True


def test_lease_item_shape() -> None:
    """A slot is `lease#<queue name>#<slot>`, taken only if absent or ended, with a TTL."""
    params = acquire_params("t", "q-tasks", 1, holder="req-1", until=100.5, now=40.0)

    assert params["Item"]["pk"] == {"S": lease_key("q-tasks", 1)} == {"S": "lease#q-tasks#1"}
    assert params["ConditionExpression"] == "attribute_not_exists(#pk) OR #until < :now"
    assert int(params["Item"]["expires_at"]["N"]) > 100.5


# --- permissions, import time, the worker's isolation ---------------------------------------------
def test_guard_refuses_an_operation_outside_the_grants_before_sending(
    aws_env: Settings, counter: Any
) -> None:
    """A request the grants do not declare fails before it is sent, locally as it
    would in AWS, naming what to declare; declared ones go through."""
    from dispatch.store.aws import sync_clients

    clients = sync_clients(aws_env, counter=counter)
    guard = PermissionGuard(
        DISPATCHER_GRANTS, {aws_env.queue_url: "TaskQueue", aws_env.dlq_url: "DeadLetterQueue"}
    )
    guard.attach(clients.sqs)

    clients.sqs.get_queue_attributes(QueueUrl=aws_env.queue_url, AttributeNames=["All"])
    with pytest.raises(ConfigurationError, match=r"sqs:PurgeQueue .*DISPATCHER_GRANTS"):
        clients.sqs.purge_queue(QueueUrl=aws_env.queue_url)
    with pytest.raises(ConfigurationError, match="ReceiveMessage"):
        clients.sqs.receive_message(QueueUrl=aws_env.dlq_url)

    assert counter.snapshot() == {("sqs", "GetQueueAttributes"): 1}


def test_guard_reads_the_table_each_statement_of_a_batch_names(aws_env: Settings) -> None:
    """A batch of PartiQL statements is allowed on the state table and refused, before
    it is sent, when any statement names another table."""
    from dispatch.store.aws import sync_clients

    clients = sync_clients(aws_env)
    guard = PermissionGuard(DISPATCHER_GRANTS, {aws_env.table: "StateTable"})
    guard.attach(clients.dynamodb)

    def update(table: str) -> dict[str, Any]:
        return {
            "Statement": 'UPDATE "' + table + '" SET "n"=? WHERE "pk"=?',  # noqa: S608
            "Parameters": [{"N": "1"}, {"S": "guard#1"}],
        }

    answer = clients.dynamodb.batch_execute_statement(Statements=[update(aws_env.table)])
    assert answer["Responses"][0]["Error"]["Code"] == "ConditionalCheckFailed"  # no such item
    with pytest.raises(ConfigurationError, match="BatchExecuteStatement on someone-elses-table"):
        clients.dynamodb.batch_execute_statement(
            Statements=[update(aws_env.table), update("someone-elses-table")]
        )


def _run_python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(  # noqa: S603 - this interpreter, our own probe
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


SPY = """
import json, socket
import botocore.session, aiobotocore.session
made, connects = [], []
def spy(original, label):
    def create_client(self, *args, **kwargs):
        made.append(label)
        return original(self, *args, **kwargs)
    return create_client
botocore.session.Session.create_client = spy(botocore.session.Session.create_client, "boto")
aio = aiobotocore.session.AioSession
aio.create_client = spy(aio.create_client, "aio")
real_connect = socket.socket.connect
def connect(self, address):
    connects.append(str(address))
    return real_connect(self, address)
socket.socket.connect = connect
"""


def test_importing_either_handler_creates_no_client_and_opens_no_connection() -> None:
    """Importing dispatch.aws_lambda.handler and dispatch_workers.lambda_handler (a cold start)
    creates no AWS client and opens no network connection."""
    code = SPY + (
        "import dispatch.aws_lambda.handler, dispatch_workers.lambda_handler\n"
        "print(json.dumps({'clients': made, 'connects': connects}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    assert json.loads(_run_python(code, env)) == {"clients": [], "connects": []}


def test_worker_runs_tasks_with_no_aws_environment_at_all() -> None:
    """The worker function, in a process with no AWS variable, region or credentials,
    runs the example app's tasks and reports their outcomes, creating no client: it
    never touches SQS or DynamoDB."""
    request = {
        "v": 1,
        "tasks": [
            TaskCall(
                "send_receipt", (), {"order_id": "1", "email": "a@b.c"}, _context(1)
            ).to_dict(),
            TaskCall("charge", (), {"order_id": "1", "amount_cents": 5}, _context(2)).to_dict(),
            TaskCall("refund", (), {"order_id": "13"}, _context(3)).to_dict(),
            TaskCall("no_such_task", (), {}, _context(4)).to_dict(),
        ],
    }
    code = SPY + (
        "import dispatch_workers.lambda_handler as w\n"
        f"answer = w.handler({request!r}, None)\n"
        "print(json.dumps({'clients': made, 'connects': connects, 'answer': answer}))"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DISPATCH_TASKS": "dispatch.local.example.app",
        "HOME": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }

    seen = json.loads(_run_python(code, env))

    outcomes = decode_outcomes(seen["answer"], 4)
    assert [o.kind for o in outcomes] == [
        OutcomeKind.SUCCEEDED,
        OutcomeKind.SUCCEEDED,
        OutcomeKind.PERMANENT,
        OutcomeKind.RETRYABLE,
    ]
    assert outcomes[3].error is not None and outcomes[3].error.type == "UnknownTaskError"
    assert (seen["clients"], seen["connects"]) == ([], [])


# --- `dispatch dev --lambda` ----------------------------------------------------------------------
def test_dev_runs_the_lambda_topology_until_stopped(registry: Registry) -> None:
    """`run_dev(lambda_mode=True)` boots its own emulator and Invoke endpoint, fires the
    schedule at once, and the dispatcher function runs enqueued example tasks through
    the worker function; setting `stop` ends it cleanly."""
    from dispatch.local.dev import run_dev
    from dispatch.local.example import app

    stop = threading.Event()
    done: dict[str, Any] = {}

    def on_ready(dev: Any) -> None:
        settings = Settings.from_env(dev.env)
        ids = Queue(settings).enqueue_many(
            [app.send_receipt.message(order_id=str(n), email="x@y.z") for n in range(5)]
        )

        def watch() -> None:
            store = SyncStateStore(
                boto3.client(
                    "dynamodb",
                    endpoint_url=dev.env["AWS_ENDPOINT_URL"],
                    region_name=dev.env["AWS_REGION"],
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",  # noqa: S106 - the emulator's placeholder
                ),
                settings.table,
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                statuses = [store.get(i).status for i in ids]  # type: ignore[union-attr]
                if all(s is Status.SUCCEEDED for s in statuses):
                    done["statuses"] = statuses
                    break
                time.sleep(0.2)
            stop.set()

        threading.Thread(target=watch, daemon=True).start()

    for spec in (app.send_receipt,):
        registry.register(spec.spec)
    from rich.console import Console

    summary = run_dev(
        lambda_mode=True,
        tasks="dispatch.local.example.app",
        registry=registry,
        stop=stop,
        on_ready=on_ready,
        console=Console(quiet=True),
    )

    assert done["statuses"] == [Status.SUCCEEDED] * 5
    assert summary.ticks == 1
    assert any(key.endswith("-worker 200") for key in summary.invocations)


def test_dev_responsive_mode_wakes_the_dispatcher_from_another_terminal(
    registry: Registry,
) -> None:
    """`dispatch dev --mode responsive`: the exports it prints name the wake target and
    the Lambda endpoint, the dispatcher function lingers the template's
    DISPATCH_LINGER_S, and a producer using those exports on an idle queue (one tick an
    hour: only the first, at once) wakes the dispatcher function, which runs the task."""
    from rich.console import Console

    from dispatch.core import constants as c
    from dispatch.local.dev import run_dev, template_linger_s
    from dispatch.local.example import app

    stop = threading.Event()
    seen: dict[str, Any] = {}

    def on_ready(dev: Any) -> None:
        seen["env"] = dict(dev.env)

        def produce() -> None:
            queue = Queue(Settings.from_env(dev.env))
            try:
                task_id = queue.enqueue(app.send_receipt.message(order_id="1", email="x@y.z"))
                seen["wakes"] = queue.waker.wakes if queue.waker is not None else None
                store = SyncStateStore(queue.sync_clients().dynamodb, queue.settings.table)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    record = store.get(task_id)
                    if record is not None and record.status is Status.SUCCEEDED:
                        seen["succeeded"] = True
                        break
                    time.sleep(0.1)
            finally:
                queue.close()
                stop.set()

        threading.Thread(target=produce, daemon=True).start()

    registry.register(app.send_receipt.spec)
    printed = Console(record=True, width=400, file=io.StringIO())
    summary = run_dev(
        lambda_mode=True,
        mode="responsive",
        tasks="dispatch.local.example.app",
        schedule="rate(1 hour)",
        registry=registry,
        stop=stop,
        on_ready=on_ready,
        console=printed,
    )

    output = printed.export_text()
    env = seen["env"]
    assert f"export {c.ENV_WAKE_FUNCTION}={env[c.ENV_WAKE_FUNCTION]}" in output
    assert f"export AWS_ENDPOINT_URL_LAMBDA={env['AWS_ENDPOINT_URL_LAMBDA']}" in output
    assert env["DISPATCH_LINGER_S"] == f"{template_linger_s():g}" != "0"
    assert seen.get("succeeded") is True
    assert seen["wakes"] == 1
    assert summary.ticks == 1
    dispatcher_runs = sum(n for key, n in summary.invocations.items() if "-dispatcher " in key)
    assert dispatcher_runs == 2, summary.invocations  # the tick and the wake


# --- pure logic ----------------------------------------------------------------------------
def test_plan_stops_receiving_in_time_for_the_longest_attempt() -> None:
    """Receiving stops when the longest attempt, the throttle's horizon and the
    margins still fit before the deadline; release comes just before it."""
    options = LambdaOptions(settle_margin_s=3.0, release_margin_s=2.0)
    plan = plan_invocation(
        now=1000.0, remaining_s=300.0, longest_task_s=60.0, throttle_horizon_s=5.0, options=options
    )

    assert plan.deadline == 1300.0
    assert plan.receive_for_s == 300.0 - 2.0 - 3.0 - 60.0 - 5.0
    assert plan.finish_by == 1298.0
    too_short = plan_invocation(
        now=0.0, remaining_s=30.0, longest_task_s=60.0, throttle_horizon_s=0.0, options=options
    )
    assert too_short.receive_for_s == 0.0


def _snapshot(**changes: Any) -> ThrottleSnapshot:
    values: dict[str, Any] = {
        "name": "db",
        "configured_rate_per_s": 10.0,
        "effective_rate_per_s": 10.0,
        "tokens": 1.0,
        "in_flight": 1,
        "max_concurrency": 5,
        "peak_in_flight": 1,
        "started": 1,
        "waits": 0,
        "wait_total_s": 0.0,
        "backpressure_signals": 0,
    }
    return ThrottleSnapshot(**{**values, **changes})


def test_scale_out_only_when_full_and_the_throttle_has_room() -> None:
    """Another dispatcher helps only when this one is full and no resource is at its
    cap, slowed down, deferring or pushing back."""
    from dispatch.loop.dispatcher import RunStats

    full = RunStats(peak_in_flight=4)
    assert should_scale_out(stats=full, snapshots=[_snapshot()], max_in_flight=4)
    assert not should_scale_out(stats=RunStats(peak_in_flight=3), snapshots=[], max_in_flight=4)
    assert not should_scale_out(
        stats=RunStats(peak_in_flight=4, deferred=1), snapshots=[], max_in_flight=4
    )
    assert not should_scale_out(stats=full, snapshots=[_snapshot(in_flight=5)], max_in_flight=4)
    assert not should_scale_out(
        stats=full, snapshots=[_snapshot(effective_rate_per_s=5.0)], max_in_flight=4
    )


def test_resource_limits_override_the_code_per_deployment(registry: Registry) -> None:
    """DISPATCH_RESOURCE_LIMITS changes a resource's rate and cap without touching the
    code (a new rate gets its default burst); an unknown resource or field is refused."""
    db = Resource("orders-db", rate_per_s=50, burst=10, max_concurrency=20)

    @task(registry=registry, resource=db)
    def charge() -> None: ...

    limited = apply_resource_limits(
        registry, {"orders-db": {"rate_per_s": 5, "max_concurrency": 2}}
    )
    resource = limited.get("charge").resource

    assert resource is not None
    assert (resource.rate_per_s, resource.burst, resource.max_concurrency) == (5.0, 5, 2)
    assert registry.get("charge").resource == db  # the original is untouched
    with pytest.raises(ConfigurationError, match="no task uses: orders-dB"):
        apply_resource_limits(registry, {"orders-dB": {"rate_per_s": 1}})
    with pytest.raises(ConfigurationError, match="unknown field"):
        apply_resource_limits(registry, {"orders-db": {"rate": 1}})


def test_function_settings_come_from_the_environment() -> None:
    """LambdaOptions reads the variables the template sets, and names a bad one."""
    options = LambdaOptions.from_env(
        {
            "DISPATCH_WORKER_FUNCTION": "arn:aws:lambda:us-east-1:1:function:w:live",
            "DISPATCH_LEASE_CAP": "3",
            "DISPATCH_BATCH_SIZE": "1",
            "DISPATCH_RESOURCE_LIMITS": '{"db": {"rate_per_s": 2}}',
            "AWS_LAMBDA_FUNCTION_NAME": "dispatch-dispatcher",
        }
    )

    assert (options.lease_cap, options.batch_size, options.emit_metrics) == (3, 1, True)
    assert options.resource_limits == {"db": {"rate_per_s": 2}}
    with pytest.raises(ConfigurationError, match="DISPATCH_LEASE_CAP"):
        LambdaOptions.from_env({"DISPATCH_LEASE_CAP": "many"})
    with pytest.raises(ConfigurationError, match="DISPATCH_RESOURCE_LIMITS"):
        LambdaOptions.from_env({"DISPATCH_RESOURCE_LIMITS": "[1]"})


def test_function_errors_tell_a_timeout_from_a_crash() -> None:
    """Lambda's timeout answers (old and new wording) are task timeouts; any other
    function error keeps its type, message and stack."""
    new = (
        b'{"errorType": "Sandbox.Timedout",'
        b' "errorMessage": "RequestId: 1 Error: Task timed out after 3.00 seconds"}'
    )
    old = b'{"errorMessage": "2026-11-30T12:00:00.000Z 1 Task timed out after 3.00 seconds"}'
    crash = b'{"errorType": "KeyError", "errorMessage": "\'x\'", "stackTrace": ["  File a\\n"]}'

    assert outcome_for_function_error("Unhandled", new).error.type == "TaskTimeoutError"  # type: ignore[union-attr]
    assert outcome_for_function_error("Unhandled", old).error.type == "TaskTimeoutError"  # type: ignore[union-attr]
    crashed = outcome_for_function_error("Unhandled", crash)
    assert crashed.kind is OutcomeKind.RETRYABLE
    assert crashed.error is not None
    assert (crashed.error.type, crashed.error.traceback) == ("KeyError", "  File a\n")
    garbage = outcome_for_function_error("Handled", b"\xff not json")
    assert garbage.error is not None and garbage.error.type == "FunctionHandledError"
