"""dispatch.testing.run_task calls one handler as a worker would, without AWS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispatch import (
    BatchContext,
    InvalidArgumentsError,
    PermanentError,
    Registry,
    Retry,
    TaskContext,
    current_task,
    task,
)
from dispatch.testing import run_task, run_task_async, with_context

registry = Registry()


@task(registry=registry, retry=Retry(max_attempts=4))
def charge(order_id: str, amount: int) -> dict[str, Any]:
    """A sync handler that reports what it was given and its context."""
    context = current_task()
    return {"order_id": order_id, "amount": amount, "context": context}


@task(registry=registry)
async def fetch(url: str, *, tags: list[str] | None = None) -> dict[str, Any]:
    """An async handler that awaits and reports its context."""
    await asyncio.sleep(0)
    return {"url": url, "tags": tags, "context": current_task()}


@task(registry=registry, track_state=False)
def lean(n: int) -> str:
    """A lean task: reports its task id."""
    return f"{current_task().task_id}:{n}"


@task(registry=registry)
def refund(order_id: str) -> None:
    """Always refuses, permanently."""
    raise PermanentError(f"order {order_id} cannot be refunded")


@task(registry=registry)
async def broken(n: int) -> None:
    """An async handler that fails."""
    raise ConnectionError(f"backend down for {n}")


@task(registry=registry, batch_size=10)
def index(docs: list[dict[str, str]]) -> dict[str, Any]:
    """A batch handler that reports its list and its batch context."""
    return {"docs": docs, "context": current_task()}


def test_a_sync_handler_returns_its_value_with_a_first_attempt_context() -> None:
    """Given a sync task, when run_task calls it, then it returns the handler's value and
    current_task() described a first attempt of that task."""
    result = run_task(charge, "42", amount=5)

    context = result["context"]
    assert (result["order_id"], result["amount"]) == ("42", 5)
    assert isinstance(context, TaskContext)
    assert (context.task, context.attempt, context.max_attempts) == ("charge", 1, 4)
    assert len(context.task_id) == 32 and context.enqueued_at > 0
    assert not context.is_last_attempt


def test_an_async_handler_is_awaited_from_sync_code() -> None:
    """Given an async task, when run_task calls it from sync code, then it returns the
    awaited value (not a coroutine), the arguments decoded as from the queue."""
    result = run_task(fetch, "https://example.test", tags=("a", "b"))  # type: ignore[arg-type]

    assert result["url"] == "https://example.test"
    assert result["tags"] == ["a", "b"]  # a tuple comes back from the queue as a list
    assert result["context"].task == "fetch"


async def test_run_task_async_awaits_async_and_sync_handlers() -> None:
    """Given both kinds of handler, when run_task_async runs them in a coroutine, then
    each returns its value with its own context."""
    fetched = await run_task_async(fetch, "u")
    charged = await run_task_async(charge, "7", 1)

    assert fetched["context"].task == "fetch"
    assert charged["context"].task == "charge"
    assert charged["amount"] == 1


async def test_run_task_refuses_an_async_handler_inside_a_running_loop() -> None:
    """Given a running event loop, when run_task (sync) is asked to run an async
    handler, then the error points to run_task_async."""
    with pytest.raises(RuntimeError, match="run_task_async"):
        run_task(fetch, "u")


def test_with_context_sets_the_attempt_and_task_id() -> None:
    """Given with_context(attempt=, task_id=), when the handler runs, then current_task()
    reports that attempt (the last here) and id."""
    result = with_context(charge, attempt=4, task_id="t-1", enqueued_at=12.5).run("1", 2)

    context = result["context"]
    assert (context.task_id, context.attempt, context.enqueued_at) == ("t-1", 4, 12.5)
    assert context.is_last_attempt


def test_an_attempt_beyond_max_attempts_is_refused() -> None:
    """Given a task with 4 attempts, when a fifth is asked for, then ValueError."""
    with pytest.raises(ValueError, match="attempt=5"):
        with_context(charge, attempt=5)


def test_a_lean_task_gets_a_lean_id() -> None:
    """Given a lean task, when run, then its id starts with lean- as on the queue."""
    result = run_task(lean, 3)

    assert result.startswith("lean-") and result.endswith(":3")


def test_exceptions_propagate_unchanged() -> None:
    """Given handlers that raise, when run, then run_task raises what they raised."""
    with pytest.raises(PermanentError, match="order 9 cannot be refunded"):
        run_task(refund, "9")
    with pytest.raises(ConnectionError, match="backend down for 3"):
        run_task(broken, 3)


def test_arguments_that_cannot_be_enqueued_are_refused_as_enqueue_would() -> None:
    """Given arguments of the wrong type, or that JSON cannot carry, when run_task is
    called, then InvalidArgumentsError, as from task.enqueue, and the handler never runs."""
    with pytest.raises(InvalidArgumentsError):
        run_task(charge, "42", amount="five")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentsError):
        run_task(charge, "42", amount=5, extra=1)  # type: ignore[call-arg]


def test_current_task_is_unset_again_after_the_call() -> None:
    """Given a finished run_task, when current_task() is called outside, then it raises
    as it does outside any handler."""
    run_task(charge, "1", 1)

    with pytest.raises(RuntimeError, match="only available inside a task handler"):
        current_task()


def test_a_batch_handler_gets_its_list_and_a_batch_context() -> None:
    """Given a batch task, when run_task calls it with a list, then the handler gets the
    list and a BatchContext with one item context (and id) per item."""
    docs = [{"id": "1"}, {"id": "2"}]

    result = with_context(index, attempt=2).run(docs)

    context = result["context"]
    assert result["docs"] == docs
    assert isinstance(context, BatchContext)
    assert len(context.task_ids) == 2 and len(set(context.task_ids)) == 2
    assert [item.attempt for item in context.items] == [2, 2]


def test_a_batch_item_of_the_wrong_type_is_refused() -> None:
    """Given a batch task of dicts of strings, when an item is not one, then
    InvalidArgumentsError names it, as at enqueue."""
    with pytest.raises(InvalidArgumentsError):
        run_task(index, [{"id": 1}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="task_id"):
        with_context(index, task_id="x")
