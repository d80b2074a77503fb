"""Run one attempt of one task: bind arguments, enforce the timeout, map exceptions.

The mapping from what a handler did to what happens next:

==============================  =====================  ==============================
handler                         outcome                dispatcher then
==============================  =====================  ==============================
returns                         ``succeeded``          records the result, deletes
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

A sync handler runs in a thread. Python cannot stop a thread, so when a sync
handler times out the attempt is reported failed at once while the thread runs
on to its end; its result is discarded.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from dispatch.core.context import BatchContext, TaskContext, _current
from dispatch.core.errors import Backpressure, BatchFailures, PermanentError, TaskTimeoutError
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.tasks.registry import TaskSpec

__all__ = ["error_info", "run_attempt", "run_batch_attempt"]


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
    deadline = asyncio.timeout(spec.timeout_s)
    try:
        async with deadline:
            result = await _call(spec, args, kwargs, executor)
    except Exception as exc:  # noqa: BLE001 - a handler's failure is data, reported to the dispatcher
        return _failure(spec, exc, started, timed_out=_is_ours(exc, deadline))
    finally:
        _current.reset(token)
    return Outcome(
        kind=OutcomeKind.SUCCEEDED,
        duration_s=time.perf_counter() - started,
        result=_json_safe(result),
    )


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
    started = time.perf_counter()
    token = _current.set(context)
    deadline = asyncio.timeout(spec.timeout_s)
    try:
        async with deadline:
            result = await _call(spec, (list(items),), {}, executor)
    except BatchFailures as exc:
        return _partial(spec, exc, context, started)
    except Exception as exc:  # noqa: BLE001 - a handler's failure is data, reported to the dispatcher
        return [_failure(spec, exc, started, timed_out=_is_ours(exc, deadline))] * len(items)
    finally:
        _current.reset(token)
    duration_s = time.perf_counter() - started
    return [
        Outcome(kind=OutcomeKind.SUCCEEDED, duration_s=duration_s, result=_json_safe(value))
        for value in _per_item(result, len(items))
    ]


def _partial(
    spec: TaskSpec, failures: BatchFailures, context: BatchContext, started: float
) -> list[Outcome]:
    """One outcome per item: the named items failed, the others succeeded."""
    n = len(context.items)
    positions = {task_id: i for i, task_id in enumerate(context.task_ids)}
    failed: dict[int, BaseException] = {}
    for key, exc in failures.failures.items():
        index = positions.get(key) if isinstance(key, str) else key
        if index is None or not 0 <= index < n:
            # A handler bug: no item can be told apart, so every item fails this attempt.
            wrong = ValueError(
                f"BatchFailures names item {key!r}, but the batch has {n} item(s): use an "
                f"index 0 to {n - 1} or a task id from current_task().task_ids"
            )
            return [_failure(spec, wrong, started, timed_out=False)] * n
        failed[index] = exc
    results = _per_item(failures.results, n)
    duration_s = time.perf_counter() - started
    outcomes = []
    for i in range(n):
        failure = failed.get(i)
        if failure is None:
            outcomes.append(
                Outcome(
                    kind=OutcomeKind.SUCCEEDED, duration_s=duration_s, result=_json_safe(results[i])
                )
            )
        else:
            outcomes.append(_failure(spec, failure, started, timed_out=False))
    return outcomes


def _per_item(result: Any, n: int) -> list[Any]:
    """Each item's result: a list with one entry per item is spread over the items;
    anything else is every item's result."""
    if isinstance(result, list | tuple) and len(result) == n:
        return list(result)
    return [result] * n


def _is_ours(exc: BaseException, deadline: asyncio.Timeout) -> bool:
    """Our deadline expired, not a TimeoutError the handler raised itself."""
    return isinstance(exc, TimeoutError) and deadline.expired()


def _failure(spec: TaskSpec, exc: BaseException, started: float, *, timed_out: bool) -> Outcome:
    """How a handler's exception ends its attempt (the table at the top)."""
    duration_s = time.perf_counter() - started
    if isinstance(exc, Backpressure):
        return Outcome(
            kind=OutcomeKind.BACKPRESSURE,
            duration_s=duration_s,
            error=error_info(exc),
            retry_after_s=exc.retry_after_s,
        )
    if isinstance(exc, PermanentError):
        return _failed(OutcomeKind.PERMANENT, exc, started)
    if timed_out:
        timeout = TaskTimeoutError(task=spec.name, timeout_s=spec.timeout_s)
        return Outcome(
            kind=OutcomeKind.RETRYABLE,
            duration_s=duration_s,
            error=ErrorInfo(type="TaskTimeoutError", message=str(timeout)),
        )
    kind = OutcomeKind.RETRYABLE if spec.retry.is_retryable(exc) else OutcomeKind.NOT_RETRYABLE
    return _failed(kind, exc, started)


async def _call(
    spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], executor: Executor | None
) -> Any:
    if spec.is_async:
        return await spec.fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, spec.fn, *args, **kwargs)
    return await loop.run_in_executor(executor, call)


def error_info(exc: BaseException) -> ErrorInfo:
    """Type, message and the last frames of the traceback of ``exc``."""
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8)
    return ErrorInfo(type=type(exc).__name__, message=str(exc), traceback="".join(frames))


def _failed(kind: OutcomeKind, exc: BaseException, started: float) -> Outcome:
    return Outcome(kind=kind, duration_s=time.perf_counter() - started, error=error_info(exc))


def _json_safe(value: Any) -> Any:
    """The value when it is JSON; otherwise its repr, so the outcome can always travel."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value
