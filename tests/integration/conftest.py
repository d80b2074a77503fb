"""Helpers for tests that run the real code path against the embedded local AWS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.producer import enqueue as queue_module
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, SyncClients, async_clients, sync_clients
from dispatch.tasks.registry import Registry


@pytest.fixture
def registry() -> Registry:
    """A fresh registry per test: tasks declared in one test never leak into another."""
    return Registry()


@pytest.fixture
def counter() -> RequestCounter:
    """Counts the AWS requests the code under test sends."""
    return RequestCounter()


@pytest.fixture
def queue(aws_env: Settings, counter: RequestCounter) -> Iterator[Queue]:
    """The enqueue API on the test's queue and table, also installed as the default queue."""
    q = Queue(aws_env, counter=counter)
    queue_module.set_default_queue(q)
    yield q
    queue_module.set_default_queue(None)
    q.close()


@pytest.fixture
def clients(aws_env: Settings) -> Iterator[SyncClients]:
    """Plain boto3 clients, to look at the queue and table as a user would."""
    made = sync_clients(aws_env)
    yield made
    made.sqs.close()
    made.dynamodb.close()


@contextlib.asynccontextmanager
async def running_dispatcher(
    settings: Settings,
    registry: Registry,
    *,
    pause_refresh_s: float,
    finish_within_s: float | None = None,
) -> AsyncIterator[Dispatcher]:
    """A dispatcher receiving (1 s polls) until the block ends, reading its control item
    (pauses, cancel requests) every ``pause_refresh_s``; stopped, then awaited."""
    async with async_clients(settings) as aio:
        dispatcher = Dispatcher(
            settings,
            clients=aio,
            registry=registry,
            options=DispatcherOptions(pause_refresh_s=pause_refresh_s, wait_time_s=1),
        )
        run = asyncio.create_task(dispatcher.run())
        try:
            yield dispatcher
        finally:
            dispatcher.stop(finish_within_s=finish_within_s)
            await asyncio.wait_for(run, timeout=60)
            await dispatcher.runner.aclose()


async def drain(
    settings: Settings,
    registry: Registry,
    *,
    counter: RequestCounter | None = None,
    **options: Any,
) -> RunStats:
    """Run one dispatcher until nothing is visible, in flight or delayed."""
    async with async_clients(settings, counter=counter) as aio:
        dispatcher = Dispatcher(
            settings, clients=aio, registry=registry, options=DispatcherOptions(**options)
        )
        try:
            return await dispatcher.run(until_empty=True)
        finally:
            await dispatcher.runner.aclose()


def queue_counts(clients: SyncClients, url: str) -> dict[str, int]:
    """Visible, in-flight and delayed message counts of a queue."""
    attrs = clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return {
        "visible": int(attrs["ApproximateNumberOfMessages"]),
        "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attrs["ApproximateNumberOfMessagesDelayed"]),
    }


def receive_all(clients: SyncClients, url: str) -> list[dict[str, Any]]:
    """Every message visible on a queue now (with attributes), left in flight."""
    messages: list[dict[str, Any]] = []
    for _ in range(100):
        answer = clients.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        batch = answer.get("Messages", [])
        if not batch:
            break
        messages.extend(batch)
    return messages


@pytest.fixture
async def aio_clients(aws_env: Settings) -> AsyncIterator[Any]:
    """aiobotocore clients on the test's endpoint."""
    async with async_clients(aws_env) as aio:
        yield aio


REPO = Path(__file__).resolve().parents[2]


def _as_in_a_pipe(env: dict[str, str]) -> dict[str, str]:
    """The environment of a command whose output goes to a pipe: no terminal size is
    inherited (pytest-xdist's workers export the controller's ``COLUMNS``)."""
    return {name: value for name, value in env.items() if name not in ("COLUMNS", "LINES")}


def dispatch_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `dispatch ARGS` with this interpreter, as the console script does."""
    return subprocess.run(  # noqa: S603 - fixed argv: this interpreter, our module, test arguments
        [sys.executable, "-c", "from dispatch.ops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_as_in_a_pipe(os.environ.copy() if env is None else env),
        cwd=REPO,
        check=False,
    )


WAIT_S = 60.0  # the bound on a wait for something a test expects soon; never near it


async def until(condition: Callable[[], bool], *, what: str, timeout_s: float = WAIT_S) -> None:
    """:func:`wait_until` from a coroutine: the event loop (dispatchers on it) runs on."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until(condition: Callable[[], bool], *, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s`` (a
    bounded wait for a condition, never a sleep that guesses how long it takes)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        threading.Event().wait(0.02)
