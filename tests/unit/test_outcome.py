"""One attempt of one task (dispatch_workers/runtime.py) and what it reports (core/outcome.py).

Handlers that must outlast their timeout wait on an event the test controls
(asyncio.Event / threading.Event), never on a sleep; timeouts are 0.05 s.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dispatch.core.context import TaskContext, current_task
from dispatch.core.errors import Backpressure, PermanentError
from dispatch.core.outcome import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    ErrorInfo,
    Outcome,
    OutcomeKind,
)
from dispatch.core.retry import Retry
from dispatch.tasks.registry import Registry, TaskSpec, task
from dispatch_workers.runtime import error_info, run_attempt

TINY_TIMEOUT_S = 0.05
CONTEXT = TaskContext(
    task_id="0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa",
    task="handler",
    attempt=2,
    max_attempts=3,
    enqueued_at=1_767_225_600.0,
)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """A thread pool for sync handlers, shut down (and waited for) after the test."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-handler")
    yield pool
    pool.shutdown(wait=True)


def spec(fn: Callable[..., Any], *, timeout_s: float = 5.0, retry: Retry | None = None) -> TaskSpec:
    """``fn`` declared as a task named "handler" in a fresh registry."""
    return task(name="handler", timeout_s=timeout_s, retry=retry, registry=Registry())(fn).spec


async def attempt(
    fn: Callable[..., Any],
    *args: Any,
    executor: ThreadPoolExecutor | None = None,
    timeout_s: float = 5.0,
    retry: Retry | None = None,
    **kwargs: Any,
) -> Outcome:
    """Run one attempt of ``fn`` with the test context."""
    return await run_attempt(
        spec(fn, timeout_s=timeout_s, retry=retry),
        args,
        kwargs,
        context=CONTEXT,
        executor=executor,
    )


# --- the mapping from handler to outcome ---------------------------------------------------


async def test_a_returning_sync_handler_succeeds_with_its_result(
    executor: ThreadPoolExecutor,
) -> None:
    """Given a sync handler that returns a JSON value, when run, then the outcome is
    succeeded with that value as result and no error."""

    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    outcome = await attempt(add, 2, executor=executor, b=3)

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.succeeded
    assert outcome.result == {"sum": 5}
    assert outcome.error is None
    assert outcome.duration_s >= 0


async def test_a_returning_async_handler_succeeds_with_its_result() -> None:
    """Given an async handler that returns a list, when run, then succeeded with it."""

    async def collect(n: int) -> list[int]:
        await asyncio.sleep(0)
        return list(range(n))

    outcome = await attempt(collect, 3)

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.result == [0, 1, 2]


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), math.nan, {"when": b"bytes"}],
    ids=["set", "object", "nan", "nested-bytes"],
)
async def test_a_non_json_result_fails_the_attempt_saying_why(value: Any) -> None:
    """Given a handler returning something JSON cannot carry, when run, then the attempt
    failed for good (permanent: the handler's work is done, a retry would do it again)
    with ResultNotSerializableError naming the type, no result, and the outcome can
    still travel."""

    async def give() -> Any:
        return value

    outcome = await attempt(give)

    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error.type == "ResultNotSerializableError"
    assert f"returned a {type(value).__name__} that JSON cannot carry" in outcome.error.message
    json.dumps(outcome.to_dict(), allow_nan=False)


async def test_permanent_error_is_permanent() -> None:
    """Given a handler raising PermanentError (retry_on covering every Exception), when
    run, then the outcome is permanent with the error's type and message."""

    async def decline() -> None:
        raise PermanentError("card declined")

    outcome = await attempt(decline)

    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error is not None
    assert outcome.error.type == "PermanentError"
    assert outcome.error.message == "card declined"


async def test_backpressure_carries_the_retry_after_hint(executor: ThreadPoolExecutor) -> None:
    """Given a sync handler raising Backpressure(retry_after_s=12.5), when run, then the
    outcome is backpressure with that hint and the error recorded."""

    def overloaded() -> None:
        raise Backpressure("429 from partner", retry_after_s=12.5)

    outcome = await attempt(overloaded, executor=executor)

    assert outcome.kind is OutcomeKind.BACKPRESSURE
    assert outcome.retry_after_s == 12.5
    assert outcome.error is not None
    assert outcome.error.type == "Backpressure"
    assert outcome.error.message == "429 from partner"


async def test_backpressure_without_a_hint_has_none() -> None:
    """Given Backpressure without retry_after_s, when run, then retry_after_s is None."""

    async def overloaded() -> None:
        raise Backpressure()

    outcome = await attempt(overloaded)

    assert outcome.kind is OutcomeKind.BACKPRESSURE
    assert outcome.retry_after_s is None


async def test_an_exception_outside_retry_on_is_not_retryable() -> None:
    """Given retry_on=(ConnectionError,) and a handler raising KeyError, when run, then the
    outcome is not_retryable; a ConnectionError subclass is retryable."""
    policy = Retry(retry_on=(ConnectionError,))

    async def missing() -> None:
        raise KeyError("customer")

    async def reset() -> None:
        raise ConnectionResetError("peer reset")

    assert (await attempt(missing, retry=policy)).kind is OutcomeKind.NOT_RETRYABLE
    assert (await attempt(reset, retry=policy)).kind is OutcomeKind.RETRYABLE


async def test_another_exception_is_retryable_with_type_message_and_traceback(
    executor: ThreadPoolExecutor,
) -> None:
    """Given a sync handler raising ValueError, when run, then the outcome is retryable and
    the error has the type, the message and a traceback naming the raising function."""

    def explode(n: int) -> None:
        raise ValueError(f"bad n={n}")

    outcome = await attempt(explode, 7, executor=executor)

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None
    assert outcome.error.type == "ValueError"
    assert outcome.error.message == "bad n=7"
    assert "Traceback (most recent call last)" in outcome.error.traceback
    assert "in explode" in outcome.error.traceback
    assert outcome.error.traceback.rstrip().endswith("ValueError: bad n=7")


async def test_a_handler_raising_its_own_timeout_error_is_reported_as_that_error() -> None:
    """Given a handler that quickly raises the built-in TimeoutError of its own (say, from
    an HTTP client), well within timeout_s, when run, then the error recorded is that
    TimeoutError with its message, not a TaskTimeoutError claiming the handler overran."""

    async def call_upstream() -> None:
        raise TimeoutError("upstream read timed out")

    outcome = await attempt(call_upstream, timeout_s=60)

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None
    assert outcome.error.type == "TimeoutError"
    assert outcome.error.message == "upstream read timed out"


async def test_an_async_handler_past_its_timeout_is_retryable_task_timeout() -> None:
    """Given an async handler still waiting after timeout_s, when run, then the outcome is
    retryable with a TaskTimeoutError naming the task and the timeout, and the handler is
    cancelled."""
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    outcome = await attempt(hang, timeout_s=TINY_TIMEOUT_S)

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None
    assert outcome.error.type == "TaskTimeoutError"
    assert "'handler'" in outcome.error.message
    assert "0.05 s" in outcome.error.message
    assert outcome.duration_s >= TINY_TIMEOUT_S * 0.9
    assert cancelled.is_set()


async def test_a_sync_handler_past_its_timeout_is_reported_at_once(
    executor: ThreadPoolExecutor,
) -> None:
    """Given a sync handler blocked past timeout_s, when run, then the attempt is reported
    retryable with TaskTimeoutError without waiting for the thread, which runs on until
    released."""
    release = threading.Event()
    finished = threading.Event()

    def block() -> str:
        release.wait(timeout=5)
        finished.set()
        return "late"

    try:
        outcome = await attempt(block, executor=executor, timeout_s=TINY_TIMEOUT_S)
        still_running = not finished.is_set()
    finally:
        release.set()

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None
    assert outcome.error.type == "TaskTimeoutError"
    assert outcome.duration_s < 2.0
    assert still_running, "the thread cannot be stopped; it runs on after the report"


# --- current_task() --------------------------------------------------------------------------


async def test_current_task_inside_an_async_handler_is_the_context() -> None:
    """Given an async handler reading current_task(), when run, then it sees the context
    of this attempt."""

    async def whoami() -> dict[str, Any]:
        context = current_task()
        return {"id": context.task_id, "attempt": context.attempt, "last": context.is_last_attempt}

    outcome = await attempt(whoami)

    assert outcome.result == {"id": CONTEXT.task_id, "attempt": 2, "last": False}


async def test_current_task_inside_a_sync_handler_is_the_context(
    executor: ThreadPoolExecutor,
) -> None:
    """Given a sync handler (run in a worker thread) reading current_task(), when run, then
    it sees the same context."""

    def whoami() -> dict[str, Any]:
        context = current_task()
        return {"id": context.task_id, "task": context.task, "max": context.max_attempts}

    outcome = await attempt(whoami, executor=executor)

    assert outcome.result == {"id": CONTEXT.task_id, "task": "handler", "max": 3}


async def test_current_task_outside_a_handler_raises_before_and_after_an_attempt() -> None:
    """Given no handler running, when current_task() is called (before and after an
    attempt), then RuntimeError says it only works inside a handler."""
    with pytest.raises(RuntimeError, match="only available inside a task handler"):
        current_task()

    async def noop() -> None:
        return None

    await attempt(noop)

    with pytest.raises(RuntimeError, match="only available inside a task handler"):
        current_task()


def test_is_last_attempt() -> None:
    """Given attempt 3 of 3, when asked, then it is the last; attempt 2 of 3 is not."""
    last = TaskContext(task_id="a", task="t", attempt=3, max_attempts=3, enqueued_at=0.0)

    assert last.is_last_attempt
    assert not CONTEXT.is_last_attempt


# --- ErrorInfo and Outcome ---------------------------------------------------------------------


def test_error_info_keeps_the_start_of_a_long_message() -> None:
    """Given a message longer than 1,000 characters, when stored, then its first 999 are
    kept followed by an ellipsis (1,000 in all)."""
    message = "".join(str(i % 10) for i in range(MAX_MESSAGE_CHARS + 500))

    info = ErrorInfo(type="ValueError", message=message)

    assert len(info.message) == MAX_MESSAGE_CHARS
    assert info.message == message[: MAX_MESSAGE_CHARS - 1] + "…"


def test_error_info_keeps_the_end_of_a_long_traceback() -> None:
    """Given a traceback longer than 4,000 characters, when stored, then an ellipsis and its
    last 3,999 characters are kept (the raising frame matters most)."""
    traceback = "frame\n" * 1_000 + "ValueError: the end"

    info = ErrorInfo(type="ValueError", message="m", traceback=traceback)

    assert len(info.traceback) == MAX_TRACEBACK_CHARS
    assert info.traceback == "…" + traceback[-(MAX_TRACEBACK_CHARS - 1) :]
    assert info.traceback.endswith("ValueError: the end")


def test_error_info_leaves_text_at_the_limits_alone() -> None:
    """Given a message of exactly 1,000 and a traceback of exactly 4,000 characters, when
    stored, then both are unchanged."""
    info = ErrorInfo(type="E", message="m" * MAX_MESSAGE_CHARS, traceback="t" * MAX_TRACEBACK_CHARS)

    assert info.message == "m" * MAX_MESSAGE_CHARS
    assert info.traceback == "t" * MAX_TRACEBACK_CHARS


def test_error_info_round_trips_and_summarises() -> None:
    """Given an ErrorInfo, when turned into a dict and back, then equal; its summary is
    ``Type: message``, or the type alone without a message."""
    info = ErrorInfo(type="ValueError", message="bad", traceback="tb")

    assert ErrorInfo.from_dict(info.to_dict()) == info
    assert info.summary() == "ValueError: bad"
    assert ErrorInfo(type="KeyError", message="").summary() == "KeyError"
    assert ErrorInfo.from_dict({}) == ErrorInfo(type="", message="")


def test_error_info_of_a_raised_exception() -> None:
    """Given a caught exception, when reduced with error_info, then type, message and the
    formatted traceback are kept."""
    try:
        raise LookupError("no such order")
    except LookupError as exc:
        info = error_info(exc)

    assert info.type == "LookupError"
    assert info.message == "no such order"
    assert "LookupError: no such order" in info.traceback


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(kind=OutcomeKind.SUCCEEDED, duration_s=0.25, result={"a": [1, None, "x"]}),
        Outcome(kind=OutcomeKind.SUCCEEDED, duration_s=0.0),
        Outcome(
            kind=OutcomeKind.RETRYABLE,
            duration_s=1.5,
            error=ErrorInfo(type="ValueError", message="bad", traceback="tb"),
        ),
        Outcome(
            kind=OutcomeKind.PERMANENT, duration_s=0.1, error=ErrorInfo("PermanentError", "no")
        ),
        Outcome(kind=OutcomeKind.NOT_RETRYABLE, duration_s=0.1, error=ErrorInfo("KeyError", "k")),
        Outcome(
            kind=OutcomeKind.BACKPRESSURE,
            duration_s=0.3,
            error=ErrorInfo("Backpressure", "slow down"),
            retry_after_s=12.5,
        ),
    ],
    ids=lambda outcome: outcome.kind.value,
)
def test_outcome_round_trips_through_json(outcome: Outcome) -> None:
    """Given an outcome of each kind, when turned into JSON (as in a Lambda response) and
    back, then the same outcome comes back."""
    travelled = json.loads(json.dumps(outcome.to_dict()))

    assert Outcome.from_dict(travelled) == outcome


def test_outcome_to_dict_leaves_out_unset_fields() -> None:
    """Given a bare success, when turned into a dict, then only kind and duration appear."""
    assert Outcome(kind=OutcomeKind.SUCCEEDED, duration_s=0.5).to_dict() == {
        "kind": "succeeded",
        "duration_s": 0.5,
    }


def test_outcome_from_dict_refuses_an_unknown_kind() -> None:
    """Given a dict with a kind that does not exist, when read, then ValueError."""
    with pytest.raises(ValueError, match="exploded"):
        Outcome.from_dict({"kind": "exploded", "duration_s": 1})
