"""Cancel requests without AWS: reading them from the control item, and signalling the
attempts they name (the flag, and an async attempt's cancellation taken back as a cancel)."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatch.core.context import TaskContext
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import Status, TaskRecord
from dispatch.loop.cancels import Cancels
from dispatch.store import state
from dispatch.store.cancels import CancelRequest, read_cancel_requests

NOW = 1_700_000_000.0


def context(task_id: str = "t1") -> TaskContext:
    return TaskContext(task_id=task_id, task="charge", attempt=1, max_attempts=3, enqueued_at=NOW)


def request_map(by: str, at: float) -> dict[str, Any]:
    return {"M": {"by": {"S": by}, "at": {"N": str(at)}}}


def test_the_control_item_yields_its_fresh_cancel_requests_and_nothing_else() -> None:
    """Given a control item with pauses, a fresh request, a day-old one and a malformed
    one, when its requests are read, then only the fresh request comes back."""
    item = {
        "pk": {"S": "pauses#q"},
        "task:charge": {"M": {"by": {"S": "ops"}, "since": {"N": "1"}}},
        "cancel:t1": request_map("ops@host", NOW - 5),
        "cancel:t2": request_map("ops@host", NOW - 2 * 86_400),
        "cancel:t3": {"S": "not a map"},
    }

    found = read_cancel_requests(item, now=NOW)

    assert found == {"t1": CancelRequest("t1", "ops@host", NOW - 5)}
    assert read_cancel_requests(None, now=NOW) == {}


def test_a_context_carries_its_flag_without_changing_equality() -> None:
    """A fresh context has no cancel requested; raising its signal sets the flag, and two
    contexts of the same attempt stay equal whatever their flags."""
    one, two = context(), context()
    assert not one.cancel_requested
    one.cancel_signal.set()
    assert one.cancel_requested and not two.cancel_requested
    assert one == two


async def test_a_request_cancels_the_async_attempt_it_names_and_the_cancel_is_taken_back() -> None:
    """Given two attempts running, when a read brings a request for one, then that one's
    flag is raised and its coroutine cancelled; the cancellation is absorbed (the task is
    no longer cancelling); the other attempt is untouched."""
    cancels = Cancels(None, "table", "https://sqs/q")
    ran: list[str] = []

    async def attempt(task_id: str, ctx: TaskContext) -> None:
        task = asyncio.current_task()
        with cancels.running(task_id, ctx, task=task) as running:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                ran.append(f"{task_id} absorbed={running.absorb()}")
        assert task is not None and task.cancelling() == 0
        ran.append(f"{task_id} settles")

    first, second = context("t1"), context("t2")
    one = asyncio.create_task(attempt("t1", first))
    two = asyncio.create_task(attempt("t2", second))
    await asyncio.sleep(0)

    cancels.update({"t1": CancelRequest("t1", "ops", NOW)})
    await asyncio.wait_for(one, timeout=5)

    assert ran == ["t1 absorbed=True", "t1 settles"]
    assert first.cancel_requested and not second.cancel_requested
    assert cancels.requested("t1") and not cancels.requested("t2")
    assert cancels.signalled == 1
    two.cancel()
    await asyncio.gather(two, return_exceptions=True)


async def test_a_cancel_that_meets_a_release_is_not_absorbed() -> None:
    """Given an attempt cancelled by its request and, at the same time, released by its
    dispatcher (a second cancel), when the CancelledError arrives, then it is not taken
    back: the release goes on."""
    cancels = Cancels(None, "table", "https://sqs/q")
    outcome: list[bool] = []

    async def attempt() -> None:
        with cancels.running("t1", context(), task=asyncio.current_task()) as running:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append(running.absorb())
                raise

    task = asyncio.create_task(attempt())
    await asyncio.sleep(0)
    cancels.update({"t1": CancelRequest("t1", "ops", NOW)})
    task.cancel()  # the release
    results = await asyncio.gather(task, return_exceptions=True)

    assert outcome == [False]
    assert isinstance(results[0], asyncio.CancelledError)


async def test_a_sync_attempt_only_sees_the_flag_even_when_the_request_came_first() -> None:
    """Given a request already read, when an attempt that cannot be interrupted starts,
    then its flag is raised at once and nothing is cancelled."""
    cancels = Cancels(None, "table", "https://sqs/q")
    cancels.update({"t1": CancelRequest("t1", "ops", NOW)})
    ctx = context()

    with cancels.running("t1", ctx, task=None) as running:
        assert ctx.cancel_requested
        assert not running.interrupted


def test_every_settlement_of_a_running_attempt_gives_way_to_a_cancel_request() -> None:
    """The success, retry and dead writes are refused by a record with a cancel request;
    the record reads the request back."""
    for params in (
        state.succeeded_params("t", "id", message_id="m", now=NOW, result=None),
        state.dead_params(
            "t", "id", message_id="m", now=NOW, error=ErrorInfo("E", "x"), reason="r"
        ),
    ):
        assert "attribute_not_exists(cancel_requested)" in params["ConditionExpression"]
    record = TaskRecord.from_item(
        {
            "pk": {"S": "task#id"},
            "status": {"S": "running"},
            "cancel_requested": request_map("ops@host", NOW),
        }
    )
    assert record.status is Status.RUNNING and record.cancel_requested
    assert record.to_dict()["cancel_requested"]["by"] == "ops@host"
