"""The worker pool's threads (dispatch_workers/pool.py): stuck sync handlers are counted,
replaced and abandoned at shutdown, and never cost another task its timeout.

Handlers that must stay stuck wait on a threading.Event the test sets at teardown
(so no thread outlives the test module); waits for a condition poll it under a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dispatch.core.context import TaskContext
from dispatch.core.outcome import Outcome, OutcomeKind
from dispatch.tasks.registry import Registry, TaskSpec, task
from dispatch_workers.lambda_handler import TaskCall, WorkerHandler
from dispatch_workers.pool import SHUTDOWN_GRACE_S, WorkerPool

REPO = Path(__file__).resolve().parents[2]
STUCK_TIMEOUT_S = 0.05


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """The event stuck handlers wait on; set after the test, so their threads end."""
    event = threading.Event()
    yield event
    event.set()


def declare(fn: Callable[..., Any], *, name: str, timeout_s: float = 30.0) -> TaskSpec:
    """``fn`` as a task called ``name`` in a fresh registry."""
    return task(name=name, timeout_s=timeout_s, registry=Registry())(fn).spec


def context(spec: TaskSpec, number: int = 1) -> TaskContext:
    """The context of attempt 1 of task number ``number`` of ``spec``."""
    return TaskContext(
        task_id=f"{spec.name}-{number}",
        task=spec.name,
        attempt=1,
        max_attempts=3,
        enqueued_at=0.0,
    )


def stuck_task(release: threading.Event) -> TaskSpec:
    """A sync task that blocks (until the test ends) past its 0.05 s timeout."""

    def stuck() -> None:
        release.wait()

    return declare(stuck, name="stuck", timeout_s=STUCK_TIMEOUT_S)


async def until(condition: Callable[[], bool], *, what: str, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def get_stuck(pool: WorkerPool, spec: TaskSpec, number: int) -> Outcome:
    """Run the stuck task once: its attempt times out and leaves its thread stuck."""
    outcome = await pool.run(spec, (), {}, context(spec, number))
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None and outcome.error.type == "TaskTimeoutError"
    return outcome


# --- the timeout is the handler's own time -----------------------------------------------


async def test_a_task_waiting_for_a_thread_is_not_timed_out_while_it_waits() -> None:
    """Given one thread busy with a long handler, when a task with a 0.5 s timeout waits
    a second for that thread, then it is not reported timed out while it waits, and it
    succeeds once the thread is free: its clock starts when its handler starts."""
    busy_started = threading.Event()
    free = threading.Event()

    def busy() -> str:
        busy_started.set()
        free.wait(timeout=30)
        return "busy"

    def quick() -> str:
        return "quick"

    pool = WorkerPool(max_workers=2, thread_workers=1)
    busy_spec = declare(busy, name="busy")
    long_one = asyncio.create_task(pool.run(busy_spec, (), {}, context(busy_spec)))
    await until(busy_started.is_set, what="the long handler to start")
    quick_spec = declare(quick, name="quick", timeout_s=0.5)
    waiting = asyncio.create_task(pool.run(quick_spec, (), {}, context(quick_spec)))

    done, _ = await asyncio.wait({waiting}, timeout=1.0)
    free.set()
    outcomes = [await long_one, await waiting]
    await pool.aclose()

    assert not done, "the task was reported while it still waited for a thread"
    assert [(o.kind, o.result) for o in outcomes] == [
        (OutcomeKind.SUCCEEDED, "busy"),
        (OutcomeKind.SUCCEEDED, "quick"),
    ]


async def test_a_stuck_thread_does_not_cost_the_next_task_its_timeout(
    release: threading.Event,
) -> None:
    """Given a pool of one thread whose handler got stuck past its timeout, when the next
    sync task runs with a 0.5 s timeout, then it runs at once on a new thread and succeeds
    (it is not timed out waiting behind the stuck thread)."""

    def quick() -> str:
        return "done"

    pool = WorkerPool(max_workers=1)
    await get_stuck(pool, stuck_task(release), 1)
    quick_spec = declare(quick, name="quick", timeout_s=0.5)

    outcome = await pool.run(quick_spec, (), {}, context(quick_spec))
    release.set()
    await pool.aclose()  # the released handlers end within the grace

    assert (outcome.kind, outcome.result) == (OutcomeKind.SUCCEEDED, "done")


# --- stuck threads: counted, replaced, logged, bounded -----------------------------------


async def test_stuck_threads_are_replaced_so_the_pool_keeps_its_capacity(
    release: threading.Event,
) -> None:
    """Given a pool of two threads whose two handlers got stuck, when two sync tasks that
    must run at the same time (they meet at a barrier) are run, then both succeed: the
    stuck threads were counted and replaced, and the pool is still healthy."""
    meeting = threading.Barrier(2, timeout=30)

    def meet() -> str:
        meeting.wait()
        return "met"

    pool = WorkerPool(max_workers=2)
    stuck = stuck_task(release)
    await get_stuck(pool, stuck, 1)
    await get_stuck(pool, stuck, 2)
    meet_spec = declare(meet, name="meet")

    outcomes = await asyncio.gather(
        pool.run(meet_spec, (), {}, context(meet_spec, 1)),
        pool.run(meet_spec, (), {}, context(meet_spec, 2)),
    )
    counted = (pool.stuck_threads, pool.healthy)
    release.set()
    await pool.aclose()  # the released handlers end within the grace

    assert [(o.kind, o.result) for o in outcomes] == [(OutcomeKind.SUCCEEDED, "met")] * 2
    assert counted == (2, True)


async def test_a_stuck_thread_is_logged_with_its_task_and_freed_when_its_handler_returns(
    release: threading.Event,
) -> None:
    """Given a handler stuck past its timeout, when its attempt is reported, then
    handler_thread_stuck names the task, its id and how long it has run; when the handler
    finally returns, its thread is freed (handler_thread_freed) and no longer counted."""
    pool = WorkerPool(max_workers=1)
    stuck = stuck_task(release)

    with capture_logs() as logs:
        await get_stuck(pool, stuck, 1)
        counted = pool.stuck_threads
        release.set()
        await until(
            lambda: any(e["event"] == "handler_thread_freed" for e in logs),
            what="the stuck thread to be freed",
        )
    await pool.aclose()

    assert counted == 1
    stuck_logs = [e for e in logs if e["event"] == "handler_thread_stuck"]
    assert len(stuck_logs) == 1
    assert stuck_logs[0]["log_level"] == "warning"
    assert (stuck_logs[0]["task"], stuck_logs[0]["task_id"]) == ("stuck", "stuck-1")
    assert stuck_logs[0]["running_s"] >= 0
    freed = next(e for e in logs if e["event"] == "handler_thread_freed")
    assert (freed["task_id"], freed["stuck_threads"]) == ("stuck-1", 0)
    assert pool.stuck_threads == 0


async def test_past_the_bound_of_stuck_threads_the_pool_is_unhealthy(
    release: threading.Event,
) -> None:
    """Given a pool of one thread that replaces at most one stuck thread, when a second
    handler gets stuck, then the pool reports itself unhealthy (and logs an error), and
    is healthy again once the stuck handlers return."""
    pool = WorkerPool(max_workers=1, max_stuck_threads=1)
    stuck = stuck_task(release)

    with capture_logs() as logs:
        await get_stuck(pool, stuck, 1)
        after_one = (pool.stuck_threads, pool.healthy)
        await get_stuck(pool, stuck, 2)
        after_two = (pool.stuck_threads, pool.healthy)
    release.set()
    await until(lambda: pool.stuck_threads == 0, what="the stuck threads to end")
    await pool.aclose()

    assert after_one == (1, True)
    assert after_two == (2, False)
    over = [e for e in logs if e["event"] == "handler_threads_over_limit"]
    assert [(e["log_level"], e["stuck_threads"], e["live_threads"]) for e in over] == [
        ("error", 2, 0)
    ]
    assert pool.healthy


async def test_an_attempt_cancelled_while_it_waits_for_a_thread_never_runs() -> None:
    """Given one busy thread and a task waiting for it, when the dispatcher cancels the
    waiting attempt (releasing it), then the cancellation propagates and its handler never
    runs, not even once the thread is free."""
    busy_started = threading.Event()
    free = threading.Event()
    ran = threading.Event()

    def busy() -> None:
        busy_started.set()
        free.wait(timeout=30)

    pool = WorkerPool(max_workers=2, thread_workers=1)
    busy_spec = declare(busy, name="busy")

    def never() -> None:
        ran.set()

    never_spec = declare(never, name="never")
    long_one = asyncio.create_task(pool.run(busy_spec, (), {}, context(busy_spec)))
    await until(busy_started.is_set, what="the busy handler to start")
    waiting = asyncio.create_task(pool.run(never_spec, (), {}, context(never_spec)))
    await asyncio.sleep(0)  # let it reach the pool's queue

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    free.set()
    await long_one
    await pool.aclose()  # waits for every job still queued or running

    assert not ran.is_set()


# --- shutdown is bounded ---------------------------------------------------------------------


async def test_aclose_waits_for_a_handler_that_ends_within_the_grace() -> None:
    """Given a sync handler still running, when the pool is closed with a grace period and
    the handler ends within it, then aclose waited for it: the attempt succeeded and
    nothing was abandoned."""
    started = threading.Event()
    finish = threading.Event()

    def slow() -> str:
        started.set()
        finish.wait(timeout=30)
        return "finished"

    pool = WorkerPool(max_workers=1)
    spec = declare(slow, name="slow")
    attempt = asyncio.create_task(pool.run(spec, (), {}, context(spec)))
    await until(started.is_set, what="the handler to start")

    with capture_logs() as logs:
        closing = asyncio.create_task(pool.aclose(grace_s=30))
        await asyncio.sleep(0)
        finish.set()
        await asyncio.wait_for(closing, timeout=30)
    outcome = await attempt

    assert (outcome.kind, outcome.result) == (OutcomeKind.SUCCEEDED, "finished")
    assert not [e for e in logs if e["event"] == "handler_threads_abandoned"]


async def test_aclose_abandons_a_stuck_handler_after_the_grace_and_says_so(
    release: threading.Event,
) -> None:
    """Given a handler stuck for ever, when the pool is closed with a 0.1 s grace, then
    aclose returns (bounded) and logs handler_threads_abandoned with the count and the
    task; the default grace is SHUTDOWN_GRACE_S."""
    pool = WorkerPool(max_workers=1)
    await get_stuck(pool, stuck_task(release), 1)

    with capture_logs() as logs:
        await asyncio.wait_for(pool.aclose(grace_s=0.1), timeout=30)
        await asyncio.wait_for(pool.aclose(), timeout=30)  # a second close does nothing

    abandoned = [e for e in logs if e["event"] == "handler_threads_abandoned"]
    assert [(e["count"], e["tasks"], e["task_ids"]) for e in abandoned] == [
        (1, ["stuck"], ["stuck-1"])
    ]
    assert SHUTDOWN_GRACE_S == 10.0
    release.set()
    await until(lambda: pool.stuck_threads == 0, what="the abandoned thread to end")


STUCK_PROCESS = """
import asyncio, json, threading
from dispatch.core.context import TaskContext
from dispatch.tasks.registry import Registry, task
from dispatch_workers.pool import WorkerPool

@task(registry=Registry(), timeout_s=0.05)
def stuck() -> None:
    threading.Event().wait()  # for ever

async def main() -> None:
    pool = WorkerPool(max_workers=1)
    context = TaskContext(task_id="t-1", task="stuck", attempt=1, max_attempts=1, enqueued_at=0.0)
    outcome = await pool.run(stuck.spec, (), {}, context)
    await pool.aclose(grace_s=0.1)
    print(json.dumps({"kind": outcome.kind.value, "stuck": pool.stuck_threads}))

asyncio.run(main())
"""


def test_a_process_whose_handler_is_stuck_for_ever_still_exits() -> None:
    """Given a process whose only sync handler blocks for ever, when its pool is closed,
    then the process exits 0 on its own (the stuck thread is a daemon thread the
    interpreter does not join) after logging the abandoned thread."""
    finished = subprocess.run(  # noqa: S603 - fixed argv: this interpreter and a test script
        [sys.executable, "-c", STUCK_PROCESS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    *logs, last = finished.stdout.strip().splitlines()  # structlog's default: stdout
    assert json.loads(last) == {"kind": "retryable", "stuck": 1}
    assert any("handler_threads_abandoned" in line and "count=1" in line for line in logs)


# --- the worker Lambda's threads -------------------------------------------------------------


def test_the_worker_lambda_replaces_a_stuck_thread_too(release: threading.Event) -> None:
    """Given a worker Lambda process with one handler thread, when an invocation's sync
    handler gets stuck past its timeout, then the next invocation's sync task runs on a
    new thread and succeeds, and the stuck thread is counted."""
    registry = Registry()

    @task(registry=registry, name="stuck", timeout_s=STUCK_TIMEOUT_S)
    def stuck() -> None:
        release.wait()

    @task(registry=registry, name="quick", timeout_s=5)
    def quick() -> str:
        return "done"

    worker = WorkerHandler(registry=registry, task_modules=(), thread_workers=1)

    def invoke(name: str) -> dict[str, Any]:
        call = TaskCall(task=name, args=(), kwargs={}, context=context(registry.get(name)))
        outcome: dict[str, Any] = worker({"v": 1, "tasks": [call.to_dict()]}, None)["outcomes"][0]
        return outcome

    first = invoke("stuck")
    second = invoke("quick")

    assert (first["kind"], first["error"]["type"]) == ("retryable", "TaskTimeoutError")
    assert (second["kind"], second.get("result")) == ("succeeded", "done")
    assert (worker.stuck_threads, worker.healthy) == (1, True)
    release.set()
    deadline = time.monotonic() + 30
    while worker.stuck_threads:
        assert time.monotonic() < deadline, "timed out waiting for the stuck thread to end"
        time.sleep(0.005)
