"""Run one attempt of one task: bind arguments, enforce the timeout, map exceptions.

The mapping from what a handler did to what happens next:

==============================  =====================  ==============================
handler                         outcome                dispatcher then
==============================  =====================  ==============================
returns                         ``succeeded``          records the result, deletes
returns what its record         ``permanent``          dead-letters now
cannot keep (``ResultError``)
raises PermanentError           ``permanent``          dead-letters now
raises an exception outside     ``not_retryable``      dead-letters now
``retry_on``
raises Backpressure             ``backpressure``       retries later, slows the resource
runs past ``timeout_s``         ``retryable``          retries after the backoff
raises anything else            ``retryable``          retries after the backoff
==============================  =====================  ==============================

A batch handler (``@task(batch_size=...)``) runs once for a list of items and
reports one outcome per item: returning means every item succeeded (a list
with one entry per item gives each item its own result); raising
:class:`~dispatch.core.errors.BatchFailures` fails the items it names, each mapped
by the table above, the others succeed; raising anything else (or running past
``timeout_s``) ends every item of the batch the way that exception would.

A sync handler runs in a thread, and its ``timeout_s`` starts when it starts
there: waiting for a free thread is not the handler's time. Python cannot stop
a thread, so when a sync handler times out the attempt is reported failed at
once while the thread runs on to its end; its result is discarded (the
thread pool counts such a thread as stuck: :mod:`dispatch_workers.pool`).

Handler code is untrusted input: nothing it returns or raises escapes the
attempt, and every outcome is plain JSON, whatever the handler's dunder
methods do:

- A result is kept in its JSON form (what a JSON round trip gives back:
  tuples become lists, keys strings, a lone surrogate "?"), because its task
  record keeps it for ``TaskHandle.result()``. A result JSON cannot carry (a set,
  NaN, bytes, a cycle, nesting too deep, a ``__str__``/``items``/``__iter__``
  that raises) fails the attempt with ``ResultNotSerializableError``, and one
  over ``MAX_RESULT_BYTES`` as JSON with ``ResultTooLargeError`` (naming the
  size and the limit), so a waiter never gets a value of another type than the
  handler's. Both are ``PermanentError``: the attempt fails for good, and the
  task is dead-lettered at once whatever ``retry_on`` says, because the handler's
  work is done and a retry would do it again. A task declared
  ``@task(store_result=False)`` keeps no result: its attempt succeeds whatever it
  returns, with no result in the outcome.
- An exception is reported by its type's name, its ``str()`` and its
  traceback; each falls back to a placeholder (``"<str() failed: TYPE>"``,
  ``"<traceback unavailable: TYPE>"``) when the exception's own code fails,
  and text that UTF-8 cannot carry (lone surrogates) is escaped. An exception
  that cannot even be classified (``isinstance`` itself raising) fails the
  attempt as ``retryable``, the message saying so.
- A ``BaseException`` that is not an ``Exception`` (``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit``, a ``CancelledError`` of the
  handler's own) ends the attempt like any exception, classified by
  ``retry_on`` (with the default ``retry_on=(Exception,)``: not retryable),
  and never stops the process. Only the cancellation of the attempt itself
  (the dispatcher releasing it) propagates.
- A batch handler's list whose ``len``/``__iter__`` fails is every item's
  result (so, not serialisable: every item fails for good); a ``BatchFailures``
  whose contents cannot be read fails every item of the batch, retryable, saying
  why.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import math
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from dispatch.core.context import BatchContext, TaskContext, _current
from dispatch.core.errors import (
    Backpressure,
    BatchFailures,
    PermanentError,
    ResultError,
    ResultNotSerializableError,
    TaskTimeoutError,
)
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.core.result import result_json
from dispatch.tasks.registry import TaskSpec

__all__ = ["error_info", "run_attempt", "run_batch_attempt"]


@dataclass(frozen=True, slots=True)
class _Ended:
    """How a handler's run ended: it returned ``value``, raised ``error``, or timed out."""

    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False


async def run_attempt(
    spec: TaskSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    context: TaskContext,
    executor: Executor | None = None,
) -> Outcome:
    """Run ``spec``'s handler once with a timeout and report how it ended."""
    started = time.perf_counter()
    token = _current.set(context)
    try:
        ended = await _call(spec, args, kwargs, executor)
    finally:
        _current.reset(token)
    if ended.error is None and not ended.timed_out:
        return _returned(spec, ended.value, started)
    return _failure(spec, ended, started)


async def run_batch_attempt(
    spec: TaskSpec,
    items: Sequence[Any],
    *,
    context: BatchContext,
    executor: Executor | None = None,
) -> list[Outcome]:
    """Run a batch handler once on ``items``; one outcome per item, in order."""
    if len(items) != len(context.items):
        raise ValueError(f"{len(items)} items but {len(context.items)} item contexts")
    n = len(items)
    started = time.perf_counter()
    token = _current.set(context)
    try:
        ended = await _call(spec, (list(items),), {}, executor)
    finally:
        _current.reset(token)
    if ended.error is not None and _is(ended.error, BatchFailures):
        return _partial(spec, ended.error, context, started)
    if ended.error is not None or ended.timed_out:
        return [_failure(spec, ended, started)] * n
    return [_returned(spec, result, started) for result in _results(ended.value, n)]


# --- running the handler -----------------------------------------------------------------


async def _call(
    spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], executor: Executor | None
) -> _Ended:
    """Run the handler under its timeout; whatever it raises is caught and returned."""
    if spec.is_async:
        return await _call_async(spec, args, kwargs)
    return await _call_in_thread(spec, args, kwargs, executor)


async def _call_async(spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Ended:
    deadline = asyncio.timeout(spec.timeout_s)
    try:
        async with deadline:
            ended = await _guarded_async(lambda: spec.fn(*args, **kwargs))
    except TimeoutError:  # ours: the handler's own exceptions are caught inside
        return _Ended(timed_out=True)
    # A handler that caught its cancellation at the deadline still ran past it.
    return _Ended(timed_out=True) if deadline.expired() else ended


async def _call_in_thread(
    spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], executor: Executor | None
) -> _Ended:
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    context = contextvars.copy_context()

    def run() -> _Ended:
        loop.call_soon_threadsafe(_resolve, started)
        return context.run(_guarded_sync, spec.fn, args, kwargs)

    running = loop.run_in_executor(executor, run)
    try:
        # Waiting for a free thread is not the handler's time: its clock starts with it.
        await asyncio.wait((started, running), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        running.cancel()  # a job not started yet never starts
        raise
    deadline = asyncio.timeout(spec.timeout_s)
    try:
        async with deadline:
            return await running
    except TimeoutError:
        if not deadline.expired():
            raise
        return _Ended(timed_out=True)


def _resolve(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


async def _guarded_async(start: Callable[[], Coroutine[Any, Any, Any]]) -> _Ended:
    try:
        return _Ended(value=await start())
    except asyncio.CancelledError as exc:
        if _being_cancelled():
            raise  # the attempt itself is cancelled: its deadline, or the dispatcher
        return _Ended(error=exc)  # the handler's own
    except BaseException as exc:  # noqa: BLE001 - handler code is untrusted: what it raises ends its attempt
        return _Ended(error=exc)


def _guarded_sync(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Ended:
    try:
        return _Ended(value=fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handler code is untrusted: what it raises ends its attempt
        return _Ended(error=exc)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# --- outcomes ----------------------------------------------------------------------------


def _failure(spec: TaskSpec, ended: _Ended, started: float) -> Outcome:
    """How a failed run ends its attempt (the table at the top); never raises."""
    duration_s = time.perf_counter() - started
    exc = ended.error
    if ended.timed_out or exc is None:
        timeout = TaskTimeoutError(task=spec.name, timeout_s=spec.timeout_s)
        return Outcome(
            kind=OutcomeKind.RETRYABLE,
            duration_s=duration_s,
            error=ErrorInfo(type="TaskTimeoutError", message=str(timeout)),
        )
    if _is(exc, Backpressure):
        return Outcome(
            kind=OutcomeKind.BACKPRESSURE,
            duration_s=duration_s,
            error=error_info(exc),
            retry_after_s=_retry_after_s(exc),
        )
    if _is(exc, PermanentError):
        kind = OutcomeKind.PERMANENT
    else:
        try:
            retryable = spec.retry.is_retryable(exc)
        except BaseException as problem:  # noqa: BLE001 - a hostile __class__ or __instancecheck__
            return Outcome(
                kind=OutcomeKind.RETRYABLE,
                duration_s=duration_s,
                error=ErrorInfo(
                    type=_type_name(exc),
                    message=f"<not classified: {_type_name(problem)} checking retry_on; retried>",
                    traceback=_traceback(exc),
                ),
            )
        kind = OutcomeKind.RETRYABLE if retryable else OutcomeKind.NOT_RETRYABLE
    return Outcome(kind=kind, duration_s=duration_s, error=error_info(exc))


def _partial(
    spec: TaskSpec, failures: BaseException, context: BatchContext, started: float
) -> list[Outcome]:
    """One outcome per item: the named items failed, the others succeeded."""
    n = len(context.items)
    try:
        failed = _item_failures(failures, context)
        results = [] if isinstance(failed, str) else _results(getattr(failures, "results", None), n)
    except BaseException as problem:  # noqa: BLE001 - hostile contents of a handler's BatchFailures
        failed = f"the handler's BatchFailures cannot be read ({_type_name(problem)})"
    if isinstance(failed, str):
        # A handler bug: no item can be told apart, so every item fails this attempt.
        return [_failure(spec, _Ended(error=ValueError(failed)), started)] * n
    outcomes = []
    for i in range(n):
        failure = failed.get(i)
        if failure is None:
            outcomes.append(_returned(spec, results[i], started))
        else:
            outcomes.append(_failure(spec, _Ended(error=failure), started))
    return outcomes


def _item_failures(
    failures: BaseException, context: BatchContext
) -> dict[int, BaseException] | str:
    """Which items failed, by index; or what is wrong when an entry names no item."""
    n = len(context.items)
    positions = {task_id: i for i, task_id in enumerate(context.task_ids)}
    failed: dict[int, BaseException] = {}
    for key, exc in dict(getattr(failures, "failures", None) or {}).items():
        index: int | None = None
        if _is(key, str):
            index = positions.get(str.__str__(key))
        elif _is(key, int) and not _is(key, bool):
            index = int.__index__(key)
        if index is None or not 0 <= index < n:
            return (
                f"BatchFailures names item {_shown(key)}, but the batch has {n} item(s): use an "
                f"index 0 to {n - 1} or a task id from current_task().task_ids"
            )
        if not _is(exc, BaseException):
            return f"BatchFailures maps item {index} to a {_type_name(exc)}, not an exception"
        failed[index] = exc
    if not failed:
        return "BatchFailures names no failed item"
    return failed


def _results(value: Any, n: int) -> list[Any]:
    """Each item's result: a list or tuple with one entry per item is spread over the
    items; anything else (a list-like that cannot be read, too) is every item's."""
    spread = _spread(value, n)
    return [value] * n if spread is None else spread


def _spread(value: Any, n: int) -> list[Any] | None:
    if not _is(value, list | tuple):
        return None
    try:
        entries = list(itertools.islice(iter(value), n + 1))
    except BaseException:  # noqa: BLE001 - a hostile __iter__/__len__: the value is one result
        return None
    return entries if len(entries) == n else None


def _returned(spec: TaskSpec, value: Any, started: float) -> Outcome:
    """The outcome of a handler that returned ``value``: succeeded with the result its
    record keeps; failed for good (``permanent``: a ResultError is a PermanentError)
    when the record cannot keep it (not JSON, too large); succeeded with no result
    under ``store_result=False``."""
    if not spec.store_result:
        return Outcome(kind=OutcomeKind.SUCCEEDED, duration_s=time.perf_counter() - started)
    try:
        result = _kept(spec, value)
    except ResultError as exc:
        return _failure(spec, _Ended(error=exc), started)
    return Outcome(
        kind=OutcomeKind.SUCCEEDED, duration_s=time.perf_counter() - started, result=result
    )


def _kept(spec: TaskSpec, value: Any) -> Any:
    """The value as plain JSON (what a JSON round trip gives back, any lone surrogate
    replaced by "?" so that UTF-8 can carry it), checked against the record's size
    limit; ResultNotSerializableError or ResultTooLargeError when it cannot be kept."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        plain = json.loads(text.encode("utf-8", "replace"))
    except BaseException as problem:  # noqa: BLE001 - TypeError, ValueError, RecursionError or a hostile dunder's own
        raise ResultNotSerializableError(
            task=spec.name, type_name=_type_name(value), why=_message(problem)[:200]
        ) from None
    result_json(plain, task=spec.name)
    return plain


def _retry_after_s(exc: BaseException) -> float | None:
    """A Backpressure's hint as a finite number of seconds; None when it is not one."""
    try:
        value = float(exc.retry_after_s)  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001 - None, or a hostile attribute
        return None
    return value if math.isfinite(value) else None


def _is(value: object, cls: type | Any) -> bool:
    """``isinstance`` by the value's real type: a ``__class__`` property cannot lie or raise."""
    return issubclass(type(value), cls)


# --- describing an exception -------------------------------------------------------------


def error_info(exc: BaseException) -> ErrorInfo:
    """Type, message and the last frames of the traceback of ``exc``, as plain strings
    even when the exception's own ``__str__`` (or its chain's) fails."""
    return ErrorInfo(type=_type_name(exc), message=_message(exc), traceback=_traceback(exc))


def _message(exc: BaseException) -> str:
    try:
        return _plain(str(exc))
    except BaseException as problem:  # noqa: BLE001 - a hostile __str__
        return f"<str() failed: {_type_name(problem)}>"


def _traceback(exc: BaseException) -> str:
    """The formatted traceback; only its frames and last line when the chain or the notes
    cannot be formatted; a placeholder when nothing can."""
    problem: BaseException | None = None
    for formatted in (_whole_traceback, _frames_only):
        try:
            return _plain(formatted(exc))
        except BaseException as failed:  # noqa: BLE001 - a hostile __str__, __notes__ or chain
            problem = failed
    return f"<traceback unavailable: {_type_name(problem)}>"


def _whole_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, _frames_of(exc), limit=-8))


def _frames_only(exc: BaseException) -> str:
    frames = traceback.format_tb(_frames_of(exc), limit=-8)
    last = f"{_type_name(exc)}: {_message(exc)}\n"
    return "".join(["Traceback (most recent call last):\n", *frames, last])


def _frames_of(exc: BaseException) -> TracebackType | None:
    """``exc.__traceback__``, read past a hostile ``__getattribute__``."""
    frames: TracebackType | None = BaseException.__dict__["__traceback__"].__get__(exc)
    return frames


def _type_name(value: object) -> str:
    try:
        return _plain(type(value).__name__)
    except BaseException:  # noqa: BLE001 - a metaclass's hostile __name__
        return "<unknown type>"


def _shown(key: object) -> str:
    try:
        return _plain(repr(key))[:200]
    except BaseException:  # noqa: BLE001 - a hostile __repr__
        return f"<{_type_name(key)}>"


def _plain(text: str) -> str:
    """``text`` as an exact ``str`` that UTF-8 can carry (lone surrogates escaped), so a
    str subclass's methods never run again and DynamoDB and SQS accept it."""
    return str.encode(text, "utf-8", "backslashreplace").decode("utf-8")
