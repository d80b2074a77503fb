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
from concurrent.futures import Executor
from typing import Any

from dispatch.context import TaskContext, _current
from dispatch.errors import Backpressure, PermanentError, TaskTimeoutError
from dispatch.registry import TaskSpec
from workers.outcome import ErrorInfo, Outcome, OutcomeKind

__all__ = ["error_info", "run_attempt"]


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
    except Backpressure as exc:
        return Outcome(
            kind=OutcomeKind.BACKPRESSURE,
            duration_s=time.perf_counter() - started,
            error=error_info(exc),
            retry_after_s=exc.retry_after_s,
        )
    except PermanentError as exc:
        return _failed(OutcomeKind.PERMANENT, exc, started)
    except Exception as exc:  # noqa: BLE001 - a handler's failure is data, reported to the dispatcher
        if isinstance(exc, TimeoutError) and deadline.expired():
            # Our deadline, not a TimeoutError the handler raised itself.
            timeout = TaskTimeoutError(task=spec.name, timeout_s=spec.timeout_s)
            return Outcome(
                kind=OutcomeKind.RETRYABLE,
                duration_s=time.perf_counter() - started,
                error=ErrorInfo(type="TaskTimeoutError", message=str(timeout)),
            )
        kind = OutcomeKind.RETRYABLE if spec.retry.is_retryable(exc) else OutcomeKind.NOT_RETRYABLE
        return _failed(kind, exc, started)
    finally:
        _current.reset(token)
    return Outcome(
        kind=OutcomeKind.SUCCEEDED,
        duration_s=time.perf_counter() - started,
        result=_json_safe(result),
    )


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
