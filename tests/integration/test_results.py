"""Results you can wait for, end to end over HTTP to the embedded local AWS: ``submit``,
``TaskHandle.result``/``result_async`` while a real dispatcher runs, their errors, the
result size limit, ``store_result=False``, ``dispatch.handle`` and the reads a wait costs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import dispatch
from dispatch import (
    EnqueueError,
    ResultTimeoutError,
    Retry,
    TaskCancelledError,
    TaskFailedError,
    TaskHandle,
    TaskNotFoundError,
    task,
)
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.producer.enqueue import Queue
from dispatch.producer.handle import FIRST_PAUSE_S
from dispatch.producer.status import cancel
from dispatch.store.aws import RequestCounter, SyncClients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import WAIT_S, drain, queue_counts

TWO_ATTEMPTS = Retry(max_attempts=2, base_delay_s=1.0, max_delay_s=1.0, jitter=False)
SLOW_TASK_S = 3.0  # how long the handler of the bounded-reads test works


async def test_result_waits_while_the_dispatcher_runs_and_returns_the_value(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a submitted async task and a sync one, when a waiter calls result() (in a
    thread) while a dispatcher drains the queue, then it returns the async handler's
    awaited value, the sync one returns its value, and the statuses moved on."""

    @task(registry=registry)
    async def charge(order_id: str, amount_cents: int) -> dict[str, Any]:
        return {"order_id": order_id, "charged": amount_cents}

    @task(registry=registry)
    def shout(word: str) -> str:
        return word.upper()

    receipt = charge.submit(order_id="42", amount_cents=500)
    loud = shout.with_options(group="g").submit(word="hi")
    assert isinstance(receipt, TaskHandle) and isinstance(receipt.id, str)
    assert receipt.status() == "queued"

    value, _ = await asyncio.gather(
        asyncio.to_thread(receipt.result, timeout_s=WAIT_S), drain(aws_env, registry)
    )

    assert value == {"order_id": "42", "charged": 500}
    assert loud.result(timeout_s=5) == "HI"
    assert (receipt.status(), loud.status()) == ("succeeded", "succeeded")


async def test_result_async_waits_without_blocking_the_loop(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a task submitted with submit_async, when result_async() is awaited in the
    same event loop as the dispatcher, then both make progress and it returns the value."""

    @task(registry=registry)
    async def add(a: int, b: int) -> int:
        return a + b

    try:
        handle = await add.submit_async(2, 3)
        value, stats = await asyncio.gather(
            handle.result_async(timeout_s=WAIT_S), drain(aws_env, registry)
        )
        assert (value, stats.succeeded) == (5, 1)
        assert await handle.status_async() == "succeeded"
    finally:
        await queue.aclose()


async def test_a_dead_task_raises_task_failed_error_with_the_dead_letters_details(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a task that fails both its attempts, when drained, then result() raises
    TaskFailedError carrying the reason, the error type and message, and the attempts,
    and its message names the task id and what happened."""

    @task(registry=registry, retry=TWO_ATTEMPTS)
    def doomed(n: int) -> int:
        raise ValueError(f"bad n={n}")

    handle = doomed.submit(n=7)
    await drain(aws_env, registry)

    with pytest.raises(TaskFailedError) as caught:
        handle.result(timeout_s=5)

    failed = caught.value
    assert (failed.task_id, failed.task, failed.reason, failed.attempts) == (
        handle.id,
        "doomed",
        "max_attempts",
        2,
    )
    assert (failed.error_type, failed.error_message) == ("ValueError", "bad n=7")
    assert "ValueError" in failed.traceback
    assert str(failed) == (
        f"task {handle.id} (doomed) failed: dead-lettered as max_attempts after 2 "
        "attempt(s); last error ValueError: bad n=7"
    )
    assert handle.status() == "dead"


def test_a_cancelled_task_raises_task_cancelled_error(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a delayed task that is cancelled before it runs, when result() is called,
    then it raises TaskCancelledError naming the task at once (no waiting)."""

    @task(registry=registry)
    def later() -> str:
        return "never"

    handle = later.with_options(delay_s=60).submit()
    cancel(clients.dynamodb, aws_env.table, handle.id)

    started = time.monotonic()
    with pytest.raises(TaskCancelledError, match=rf"task {handle.id} \(later\) was cancelled"):
        handle.result(timeout_s=WAIT_S)

    assert time.monotonic() - started < WAIT_S / 2
    assert handle.status() == "cancelled"


def test_an_unfinished_task_raises_result_timeout_error_after_timeout_s(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a task no dispatcher runs, when result(timeout_s=0.5) is called, then it
    raises ResultTimeoutError after about 0.5 s, naming the task and its status, having
    read the record a handful of times (the pause doubles from 50 ms)."""

    @task(registry=registry)
    def idle() -> None: ...

    counter = RequestCounter()
    waiter = Queue(aws_env, counter=counter)
    handle = TaskHandle(idle.submit().id, queue=waiter)
    try:
        started = time.monotonic()
        with pytest.raises(ResultTimeoutError) as caught:
            handle.result(timeout_s=0.5)
        elapsed = time.monotonic() - started
    finally:
        waiter.close()

    assert 0.5 <= elapsed < 2.0
    assert (caught.value.task_id, caught.value.status) == (handle.id, "queued")
    assert f"task {handle.id} did not finish within 0.5 s (it is queued" in str(caught.value)
    reads = counter.snapshot()
    assert set(reads) == {("dynamodb", "GetItem")}
    assert 3 <= reads[("dynamodb", "GetItem")] <= 5  # at 0, 0.05, 0.15, 0.35 and 0.5 s


async def test_a_result_over_the_limit_or_not_json_dead_letters_the_task_after_one_attempt(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given tasks allowed two attempts whose handlers return one byte over
    MAX_RESULT_BYTES, 5,000 bytes, or a set, when drained, then each is dead after ONE
    attempt (its handler ran exactly once: its work is done, a retry would do it again)
    as permanent_error, whatever its retry policy allows, and result() raises
    TaskFailedError naming ResultTooLargeError with the size and the limit, or
    ResultNotSerializableError with the type."""
    runs = {"report": 0, "huge": 0, "tags": 0}

    @task(registry=registry, retry=TWO_ATTEMPTS)
    def report() -> str:
        runs["report"] += 1
        return "x" * (c.MAX_RESULT_BYTES - 1)  # with its quotes: the limit + 1

    @task(registry=registry, retry=TWO_ATTEMPTS)
    def huge() -> str:
        runs["huge"] += 1
        return "x" * 5_000

    @task(registry=registry, retry=TWO_ATTEMPTS)
    def tags() -> set[str]:
        runs["tags"] += 1
        return {"a", "b"}

    over, too_big, not_json = report.submit(), huge.submit(), tags.submit()
    stats = await drain(aws_env, registry)

    assert runs == {"report": 1, "huge": 1, "tags": 1}
    assert (stats.started, stats.retried, stats.dead, stats.succeeded) == (3, 0, 3, 0)
    with pytest.raises(TaskFailedError) as one_over:
        over.result(timeout_s=5)
    assert (one_over.value.error_type, one_over.value.reason, one_over.value.attempts) == (
        "ResultTooLargeError",
        "permanent_error",
        1,
    )
    assert (
        f"task 'report' returned a result of {c.MAX_RESULT_BYTES + 1} bytes as JSON, over "
        f"the limit of {c.MAX_RESULT_BYTES} bytes"
    ) in (one_over.value.error_message or "")
    record = dispatch.status(over.id)
    assert (record.status, record.attempts, record.result) == ("dead", 1, None)
    with pytest.raises(TaskFailedError) as big:
        too_big.result(timeout_s=5)
    assert (big.value.error_type, big.value.reason, big.value.attempts) == (
        "ResultTooLargeError",
        "permanent_error",
        1,
    )
    assert (
        f"task 'huge' returned a result of 5002 bytes as JSON, over the limit of "
        f"{c.MAX_RESULT_BYTES} bytes"
    ) in (big.value.error_message or "")
    with pytest.raises(TaskFailedError) as unkept:
        not_json.result(timeout_s=5)
    assert (unkept.value.error_type, unkept.value.reason, unkept.value.attempts) == (
        "ResultNotSerializableError",
        "permanent_error",
        1,
    )
    assert "returned a set that JSON cannot carry" in (unkept.value.error_message or "")


async def test_store_result_false_keeps_nothing_and_result_gives_none(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a task declared store_result=False returning a set (which JSON cannot
    carry), when drained, then it succeeded, its record has no result, and result()
    returns None."""

    @task(registry=registry, store_result=False)
    def fire(n: int) -> set[int]:
        return {n}

    handle = fire.submit(n=1)
    stats = await drain(aws_env, registry)

    assert (stats.succeeded, stats.dead) == (1, 0)
    assert handle.result(timeout_s=5) is None
    record = dispatch.status(handle.id)
    assert (record.status, record.result, record.last_error) == ("succeeded", None, None)


async def test_dispatch_handle_waits_on_an_id_from_enqueue(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a task id from enqueue(), when dispatch.handle(id) is waited on, then it
    returns the value; an unknown id's status() raises TaskNotFoundError, and a lean
    task's id is refused at once (it has no record)."""

    @task(registry=registry)
    def shout(word: str) -> str:
        return word.upper()

    task_id = shout.enqueue(word="x")
    handle = dispatch.handle(task_id)
    assert (handle.id, handle.status()) == (task_id, "queued")
    assert handle == TaskHandle(task_id)

    await drain(aws_env, registry)

    assert handle.result(timeout_s=5) == "X"
    with pytest.raises(TaskNotFoundError, match=r"no task with id '0+'"):
        dispatch.handle("0" * 32).status()
    with pytest.raises(TaskNotFoundError, match="lean task"):
        dispatch.handle("lean-0123")


def test_submit_on_a_lean_task_is_refused_before_anything_is_sent(
    aws_env: Settings,
    registry: Registry,
    queue: Queue,
    clients: SyncClients,
    counter: RequestCounter,
) -> None:
    """Given a lean task (track_state=False: no record, so no result), when submitted,
    then EnqueueError says why and what to do, and nothing was sent or written."""

    @task(registry=registry, track_state=False)
    def ping() -> str:
        return "pong"

    with pytest.raises(EnqueueError, match=r"'ping' is lean \(track_state=False\).*enqueue\(\)"):
        ping.submit()

    assert counter.total() == 0
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_waiting_costs_about_one_read_per_second(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a task whose handler works 3 s, when a waiter (its own counted clients)
    waits for it while a dispatcher runs it, then it gets the value having made only
    GetItem requests: a few in the first second, then at most one per second."""

    @task(registry=registry)
    async def slow() -> str:
        await asyncio.sleep(SLOW_TASK_S)  # the work itself, not a wait for a condition
        return "done"

    counter = RequestCounter()
    waiter = Queue(aws_env, counter=counter)
    handle = TaskHandle(slow.submit().id, queue=waiter)
    try:
        started = time.monotonic()
        value, _ = await asyncio.gather(
            asyncio.to_thread(handle.result, timeout_s=WAIT_S), drain(aws_env, registry)
        )
        waited_s = time.monotonic() - started
    finally:
        waiter.close()

    reads = counter.snapshot()
    assert value == "done"
    assert set(reads) == {("dynamodb", "GetItem")}
    assert waited_s >= SLOW_TASK_S
    fast_reads = 5  # after 0, 0.05, 0.15, 0.35 and 0.75 s; then one per second
    fast_s = FIRST_PAUSE_S * (2**fast_reads - 1)
    assert reads[("dynamodb", "GetItem")] <= fast_reads + int(waited_s - fast_s) + 2
    assert reads[("dynamodb", "GetItem")] >= fast_reads
