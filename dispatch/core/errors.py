"""Every exception Dispatch raises, under one root.

::

    DispatchError
    ├── ConfigurationError          settings missing or wrong (env vars, table, queue)
    ├── TaskDefinitionError         a @task declaration that cannot work
    ├── UnknownTaskError            a task name nobody registered
    ├── TaskNotFoundError           no record for this task id
    ├── EnqueueError                a task could not be put on the queue
    │   ├── InvalidArgumentsError   arguments do not bind to the handler's signature
    │   ├── PayloadTooLargeError    the envelope is over the SQS limit
    │   └── PartialEnqueueError     some entries of a batch were refused (ids of the rest kept)
    ├── EnvelopeError               a message body that is not a valid Dispatch envelope
    ├── AWSError                    an AWS call failed for good (wraps botocore's ClientError)
    ├── TaskFailure                 raised *by handlers* to steer the retry policy
    │   ├── PermanentError          do not retry: dead-letter now
    │   │   └── ResultError         a result its record cannot keep (raised by the runtime):
    │   │       │                   dead-lettered at once, the work is done, never retried
    │   │       ├── ResultTooLargeError         over MAX_RESULT_BYTES as JSON
    │   │       └── ResultNotSerializableError  not JSON (a set, bytes, NaN, a cycle...)
    │   ├── Backpressure            the protected resource is overloaded: retry later, slower
    │   └── BatchFailures           some items of a micro-batch failed (each with its exception)
    ├── TaskTimeoutError            a handler ran past its timeout_s (retryable)
    └── ResultWaitError             waiting for a result (``TaskHandle.result``) ended without one
        ├── TaskFailedError         the task is dead: reason, error type, message, attempts
        ├── TaskCancelledError      the task was cancelled (before or while it ran)
        └── ResultTimeoutError      the task did not finish within timeout_s

Exceptions carry data (task id, task name, AWS error code) as attributes, so a
caller can act on them without parsing messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from dispatch.core import constants as c


class DispatchError(Exception):
    """Root of every exception raised by Dispatch."""


class ConfigurationError(DispatchError):
    """A setting is missing or wrong; the message names the setting."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class TaskDefinitionError(DispatchError):
    """A ``@task`` declaration that cannot work (bad option, reserved parameter name...)."""


class UnknownTaskError(DispatchError):
    """No task is registered under this name."""

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        if known:
            close = difflib.get_close_matches(name, list(known), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            hint = (
                f"{guess}; registered tasks: {', '.join(sorted(known))} (from the modules "
                f"{c.ENV_TASKS} or --tasks names)"
            )
        else:
            hint = (
                f"; no task is registered: name the modules that declare your tasks in "
                f"{c.ENV_TASKS} (or pass --tasks), e.g. {c.ENV_TASKS}=myapp.tasks"
            )
        super().__init__(f"unknown task {name!r}{hint}")
        self.name = name


class TaskNotFoundError(DispatchError):
    """No task record exists for this id (never enqueued, or expired after its TTL)."""

    def __init__(self, task_id: str, *, why: str = "never enqueued, or its record expired") -> None:
        super().__init__(f"no task with id {task_id!r} ({why})")
        self.task_id = task_id


class EnqueueError(DispatchError):
    """A task could not be put on the queue."""

    def __init__(self, message: str, *, task: str | None = None) -> None:
        super().__init__(message)
        self.task = task


class InvalidArgumentsError(EnqueueError):
    """The arguments do not bind to the handler's signature."""


class PayloadTooLargeError(EnqueueError):
    """The envelope is larger than a queue message may be."""

    def __init__(self, *, task: str, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"task {task!r}: the message is {size_bytes} bytes, over the limit of "
            f"{limit_bytes} bytes (SQS's 1 MiB less room for the dead-letter details); "
            "store large payloads in S3 and pass the key",
            task=task,
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class PartialEnqueueError(EnqueueError):
    """Some entries of a batch were refused by SQS; the others were enqueued.

    ``task_ids`` holds the id of every entry in input order, ``None`` where the
    entry was refused; ``failures`` maps the input index to the SQS reason.
    """

    def __init__(self, task_ids: list[str | None], failures: dict[int, str]) -> None:
        detail = "; ".join(f"#{i}: {reason}" for i, reason in sorted(failures.items())[:5])
        super().__init__(f"{len(failures)} of {len(task_ids)} messages were refused: {detail}")
        self.task_ids = task_ids
        self.failures = failures


class EnvelopeError(DispatchError):
    """A message body that is not a valid Dispatch envelope; ``reason`` says why."""

    def __init__(self, reason: str, *, task_id: str | None = None, task: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id
        self.task = task


class AWSError(DispatchError):
    """An AWS call failed after the retries it was allowed."""

    def __init__(self, message: str, *, operation: str, code: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.code = code


class TaskFailure(DispatchError):
    """Base of the exceptions a handler raises to steer what happens next."""


class PermanentError(TaskFailure):
    """Raised by a handler: the task can never succeed; dead-letter it without retrying."""


class Backpressure(TaskFailure):
    """Raised by a handler: the protected resource is overloaded.

    The task is retried later without spending an attempt, and the resource's
    rate is lowered (see :mod:`dispatch.throttle.limits`). ``retry_after_s`` is a hint
    for the earliest retry, for example from a ``Retry-After`` header.
    """

    def __init__(self, message: str = "resource overloaded", *, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TaskTimeoutError(DispatchError):
    """A handler ran past its ``timeout_s``; the attempt counts as failed and is retried."""

    def __init__(self, *, task: str, timeout_s: float) -> None:
        super().__init__(f"task {task!r} ran past its timeout of {timeout_s:g} s")
        self.task = task
        self.timeout_s = timeout_s


class BatchFailures(TaskFailure):
    """Raised by a batch handler: these items failed, every other item succeeded.

    ``failures`` maps an item to the exception it failed with; the item is named
    by its index in the list the handler received, or by its task id
    (``current_task().task_ids``). Each failed item then goes the way a task
    raising that exception would: retried after its backoff, dead-lettered
    (``PermanentError``, last attempt, not in ``retry_on``) or retried without
    spending the attempt (``Backpressure``). ``results`` optionally holds one
    result per item of the batch (in order) for the items that succeeded.
    """

    def __init__(
        self,
        failures: Mapping[int | str, BaseException],
        *,
        results: Sequence[Any] | None = None,
    ) -> None:
        if not isinstance(failures, Mapping) or not failures:
            raise TypeError(
                "BatchFailures(failures) takes a non-empty mapping of item index or task id "
                f"to exception, got {failures!r:.200}"
            )
        for key, exc in failures.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise TypeError(
                    f"BatchFailures: {key!r} names no item; use the item's index in the "
                    "batch (int) or its task id (str)"
                )
            if not isinstance(exc, BaseException):
                raise TypeError(
                    f"BatchFailures: item {key!r} maps to {exc!r:.200}, not an exception"
                )
        if results is not None and (
            isinstance(results, str | bytes) or not isinstance(results, Sequence)
        ):
            raise TypeError(f"BatchFailures(results=) takes a list, got {type(results).__name__}")
        shown = list(failures.items())[:5]
        detail = "; ".join(f"{key}: {type(exc).__name__}: {exc}" for key, exc in shown)
        super().__init__(f"{len(failures)} item(s) of the batch failed ({detail})")
        self.failures: dict[int | str, BaseException] = dict(failures)
        self.results: list[Any] | None = None if results is None else list(results)


class ResultError(PermanentError):
    """A handler returned a result its task record cannot keep; the attempt fails with it,
    for good: the task is dead-lettered at once, not retried, because the handler's work
    is done and a retry would do it again. ``@task(store_result=False)`` opts out."""

    def __init__(self, message: str, *, task: str) -> None:
        super().__init__(message)
        self.task = task


class ResultTooLargeError(ResultError):
    """The result is larger, as JSON, than a task record keeps."""

    def __init__(self, *, task: str, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"task {task!r} returned a result of {size_bytes} bytes as JSON, over the limit "
            f"of {limit_bytes} bytes a task record keeps (MAX_RESULT_BYTES); return a "
            "reference (an S3 key, a row id) instead, or declare the task with "
            "@task(store_result=False)",
            task=task,
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class ResultNotSerializableError(ResultError):
    """The result is not a JSON value (a set, bytes, NaN, a cycle, an object...)."""

    def __init__(self, *, task: str, type_name: str, why: str) -> None:
        super().__init__(
            f"task {task!r} returned a {type_name} that JSON cannot carry ({why}); return "
            "JSON values (dict, list, str, int, float, bool, None), or declare the task "
            "with @task(store_result=False)",
            task=task,
        )
        self.type_name = type_name


class ResultWaitError(DispatchError):
    """Waiting for a task's result ended without one; ``task_id`` names the task."""

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskFailedError(ResultWaitError):
    """The task is dead (dead-lettered): it will not produce a result.

    ``reason`` is the dead letter's reason (``max_attempts``, ``permanent_error``...),
    ``error_type``, ``error_message`` and ``traceback`` its last error, ``attempts``
    the attempts it made.
    """

    def __init__(
        self,
        *,
        task_id: str,
        task: str,
        reason: str | None,
        error_type: str | None,
        error_message: str | None,
        attempts: int,
        traceback: str = "",
    ) -> None:
        error = f"{error_type}: {error_message}" if error_type else "no error recorded"
        super().__init__(
            f"task {task_id} ({task}) failed: dead-lettered as {reason or 'unknown'} after "
            f"{attempts} attempt(s); last error {error}",
            task_id=task_id,
        )
        self.task = task
        self.reason = reason
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts
        self.traceback = traceback


class TaskCancelledError(ResultWaitError):
    """The task was cancelled (``dispatch cancel``), before or while it ran: it has no result."""

    def __init__(self, *, task_id: str, task: str) -> None:
        super().__init__(
            f"task {task_id} ({task}) was cancelled: it has no result", task_id=task_id
        )
        self.task = task


class ResultTimeoutError(ResultWaitError):
    """The task had not finished when the wait's ``timeout_s`` ran out (it may still)."""

    def __init__(self, *, task_id: str, timeout_s: float, status: str) -> None:
        super().__init__(
            f"task {task_id} did not finish within {timeout_s:g} s (it is {status}; it may "
            "still finish: wait again, or check `dispatch status`)",
            task_id=task_id,
        )
        self.timeout_s = timeout_s
        self.status = status
