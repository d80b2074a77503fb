"""Graceful stop (docs/operations.md: "SIGINT/SIGTERM stop it gracefully"): once asked to
stop, a dispatcher receives nothing more, lets the tasks in flight finish, settles them,
and exits 0; what it never received stays on the queue.

The CLI tests run a real `dispatch run` process on tests/integration/graceful_tasks.py
and signal it while its handlers are held; the last test calls ``Dispatcher.stop()``
in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch import Retry, task
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import REPO, queue_counts, wait_until

TASKS = "tests.integration.graceful_tasks"
WAIT_S = 60.0  # bound on every wait below; none is expected to come near it


def declare_twins(registry: Registry) -> tuple[Any, Any]:
    """The tasks of graceful_tasks.py, declared in the test's registry only to enqueue
    them (the dispatcher process imports the real ones)."""

    @task(registry=registry, name="hold", timeout_s=60.0, retry=Retry(max_attempts=1))
    def hold(folder: str, n: int) -> int: ...

    @task(registry=registry, name="quick", timeout_s=5)
    def quick(n: int) -> int: ...

    return hold, quick


def start_run(*options: str) -> subprocess.Popen[str]:
    """`dispatch run` on the graceful tasks, as a user starts it (stopped by the test)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter, our module, test arguments
        [
            sys.executable,
            "-c",
            "from dispatch.ops.cli import main; main()",
            "--log-json",
            "run",
            "--tasks",
            TASKS,
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_tasks_in_flight_finish_settles_them_and_exits_0(
    sig: signal.Signals, registry: Registry, queue: Queue, clients: SyncClients, tmp_path: Path
) -> None:
    """Given `dispatch run --max-in-flight 2` running two held handlers (so it receives
    nothing more) and a third task enqueued after they started, when the process gets
    SIGTERM (or SIGINT) and only then are the handlers let go, then it exits 0 after
    both finished, both are settled as succeeded (their messages deleted), its report
    counts two received and two succeeded, and the third task is still on the queue,
    queued, never received: nothing is lost."""
    aws_env = queue.settings
    hold, quick = declare_twins(registry)
    held = queue.enqueue_many([hold.message(str(tmp_path), n) for n in (1, 2)])
    run = start_run("--max-in-flight", "2")
    try:
        wait_until(
            lambda: (
                all((tmp_path / f"started-{n}").exists() for n in (1, 2)) or run.poll() is not None
            ),
            what="both held handlers to start",
        )
        assert run.poll() is None, run.communicate()
        later = queue.enqueue(quick.message(7))

        run.send_signal(sig)
        (tmp_path / "release").touch()
        stdout, stderr = run.communicate(timeout=WAIT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()

    assert run.returncode == 0, stderr
    assert all((tmp_path / f"finished-{n}").exists() for n in (1, 2))
    report = json.loads(stdout.strip().splitlines()[-1])
    assert (report["received"], report["succeeded"], report["dead"]) == (2, 2, 0)
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    for n, task_id in zip((1, 2), held, strict=True):
        record = store.get(task_id)
        assert (record.status, record.attempts, record.result) == (Status.SUCCEEDED, 1, n)
    assert store.get(later).status is Status.QUEUED
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 1, "in_flight": 0, "delayed": 0}
    assert queue_counts(clients, aws_env.dlq_url)["visible"] == 0


def test_finish_within_releases_what_still_runs_and_spends_no_attempt(
    registry: Registry, queue: Queue, clients: SyncClients, tmp_path: Path
) -> None:
    """Given `dispatch run --finish-within 1` running a held handler (as a container
    whose supervisor kills it at its stop timeout), when the process gets SIGTERM and
    the handler is still running a second later, then the task is released: it exits
    0 soon after, the message is back on the queue and the record is back to wait
    with no attempt spent (the next delivery runs it as attempt 1 again)."""
    aws_env = queue.settings
    hold, _ = declare_twins(registry)
    (held,) = queue.enqueue_many([hold.message(str(tmp_path), 1)])
    run = start_run("--finish-within", "1")
    try:
        wait_until(
            lambda: (tmp_path / "started-1").exists() or run.poll() is not None,
            what="the held handler to start",
        )
        assert run.poll() is None, run.communicate()
        started = time.monotonic()
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=WAIT_S)
        stopped_s = time.monotonic() - started
    finally:
        (tmp_path / "release").touch()
        if run.poll() is None:
            run.kill()
            run.communicate()

    assert run.returncode == 0, stderr
    assert stopped_s < 15, stopped_s  # the release, not the handler's 60 s
    assert not (tmp_path / "finished-1").exists()  # released while it still ran
    report = json.loads(stdout.strip().splitlines()[-1])
    assert (report["received"], report["succeeded"]) == (1, 0)
    record = SyncStateStore(clients.dynamodb, aws_env.table).get(held)
    assert record is not None and record.attempts == 0
    assert record.status in (Status.QUEUED, Status.RETRYING)
    # Back on the queue: visible, or handed to the long poll that was out when the
    # process stopped (it comes back after that receive's visibility timeout).
    counts = queue_counts(clients, aws_env.queue_url)
    assert counts["visible"] + counts["in_flight"] == 1, counts


async def test_dispatcher_stop_lets_the_task_in_flight_finish_and_settles_it(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given an in-process dispatcher running a handler that waits for the test, when
    ``Dispatcher.stop()`` is called, then ``run()`` does not return while the handler
    still runs; once the handler is let go, ``run()`` returns with it counted as
    succeeded, its record settled and its message gone, and a task enqueued after
    stop() was never received."""
    started, release = threading.Event(), threading.Event()

    @task(registry=registry, timeout_s=60.0)
    def wait_for_test(n: int) -> int:
        started.set()
        if not release.wait(WAIT_S):
            raise TimeoutError("the test never let the handler go")
        return n

    @task(registry=registry)
    def after_stop(n: int) -> int:
        return n

    held = queue.enqueue(wait_for_test.message(5))
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env, clients=aio, registry=registry, options=DispatcherOptions(max_in_flight=1)
        )
        running = asyncio.create_task(dispatcher.run())
        try:
            assert await asyncio.to_thread(started.wait, WAIT_S), "the handler never started"
            later = queue.enqueue(after_stop.message(6))

            dispatcher.stop()
            # run() must still be waiting on the handler: give the loop a bounded chance
            # to (wrongly) return, then let the handler go.
            done, _ = await asyncio.wait({running}, timeout=0.5)
            assert not done, "run() returned while its task was still in flight"
            release.set()
            stats = await asyncio.wait_for(running, timeout=WAIT_S)
        finally:
            release.set()
            if not running.done():
                running.cancel()
            await dispatcher.runner.aclose()

    assert (stats.received, stats.succeeded, stats.dead) == (1, 1, 0)
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    record = store.get(held)
    assert (record.status, record.result) == (Status.SUCCEEDED, 5)
    assert store.get(later).status is Status.QUEUED
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 1, "in_flight": 0, "delayed": 0}
