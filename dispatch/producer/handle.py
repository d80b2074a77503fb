"""Results you can wait for: :class:`TaskHandle`, what ``task.submit(...)`` returns.

A handle is a task id and a way to read its record. Waiting polls the record
(one consistent GetItem per read) with a growing pause: 50 ms after the first
read, then 100 ms, 200 ms... up to one second, so a short task is seen about
as soon as it finishes and a long wait costs about one read per second
(docs/api.md, "Results"). The record is the result store: a succeeded task's
``result`` attribute is its handler's return value as JSON.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar, cast

from dispatch.core.envelope import is_lean_task_id
from dispatch.core.errors import (
    ResultTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from dispatch.core.record import Status, TaskRecord
from dispatch.producer.enqueue import Queue, default_queue
from dispatch.producer.status import LEAN_NO_RECORD
from dispatch.producer.status import status as read_record
from dispatch.store.state import StateStore

__all__ = ["FIRST_PAUSE_S", "MAX_PAUSE_S", "TaskHandle", "handle", "pause_s"]

R_co = TypeVar("R_co", covariant=True)

FIRST_PAUSE_S: Final = 0.05  # after the first read of a waiting record
MAX_PAUSE_S: Final = 1.0  # the pause grows (doubling) to this: about one read per second


def pause_s(reads: int) -> float:
    """The pause after the ``reads``-th read of a record still not finished: 0.05 s,
    0.1 s, 0.2 s, 0.4 s, 0.8 s, then 1 s for good."""
    doublings = min(max(reads - 1, 0), 16)
    return float(min(MAX_PAUSE_S, FIRST_PAUSE_S * 2.0**doublings))


class TaskHandle(Generic[R_co]):
    """A submitted task: its ``id``, its ``status()``, and its ``result()`` to wait for.

    ``R_co`` is the handler's return type (for an async handler, what it awaits to).
    Made by ``task.submit(...)`` or :func:`handle`; making one sends no request.
    """

    def __init__(
        self,
        task_id: str,
        *,
        queue: Queue | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if is_lean_task_id(task_id):
            raise TaskNotFoundError(task_id, why=LEAN_NO_RECORD)
        self.id = task_id
        self._queue = queue
        self._clock = clock

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> Status:
        """The task's status now (a ``str``: ``'queued'``, ``'running'``, ``'retrying'``,
        ``'succeeded'``, ``'dead'`` or ``'cancelled'``); one read of its record."""
        return self._read().status

    async def status_async(self) -> Status:
        """:meth:`status` over aiobotocore."""
        return (await self._read_async()).status

    def cancel(self, *, by: str | None = None) -> Status:
        """Cancel the task (:func:`dispatch.cancel`): a queued or retrying one at once
        (``'cancelled'``); a running one is asked to stop and stays ``'running'`` until
        its dispatcher records it cancelled, within 5 s. Safe to repeat; a finished task
        raises DispatchError naming its state."""
        from dispatch.producer.cancelling import cancel

        return cancel(self.id, queue=self._queue, by=by).status

    def result(self, *, timeout_s: float | None = None) -> R_co:
        """Wait until the task finished and return its handler's result.

        Raises :class:`TaskFailedError` when it is dead (dead-lettered),
        :class:`TaskCancelledError` when it was cancelled, and
        :class:`ResultTimeoutError` when it has not finished within ``timeout_s``
        (None: wait as long as it takes). A task declared
        ``@task(store_result=False)`` (or whose handler returned None) gives None.
        """
        deadline = self._deadline(timeout_s)
        reads = 0
        while True:
            record = self._read()
            reads += 1
            if record.status.is_final:
                return cast(R_co, _final(record))
            time.sleep(self._pause(record, reads, deadline, timeout_s))

    async def result_async(self, *, timeout_s: float | None = None) -> R_co:
        """:meth:`result` over aiobotocore, without blocking the event loop."""
        deadline = self._deadline(timeout_s)
        reads = 0
        while True:
            record = await self._read_async()
            reads += 1
            if record.status.is_final:
                return cast(R_co, _final(record))
            await asyncio.sleep(self._pause(record, reads, deadline, timeout_s))

    def _deadline(self, timeout_s: float | None) -> float | None:
        if timeout_s is None:
            return None
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s)
            or timeout_s < 0
        ):
            raise ValueError(
                f"timeout_s={timeout_s!r}: give a number of seconds >= 0, or None to wait "
                "as long as it takes"
            )
        return self._clock() + timeout_s

    def _pause(
        self, record: TaskRecord, reads: int, deadline: float | None, timeout_s: float | None
    ) -> float:
        """How long to wait before the next read; ResultTimeoutError once the time is up."""
        pause = pause_s(reads)
        if deadline is None:
            return pause
        left = deadline - self._clock()
        if left <= 0:
            raise ResultTimeoutError(
                task_id=self.id, timeout_s=timeout_s or 0.0, status=record.status.value
            )
        return min(pause, left)

    def _read(self) -> TaskRecord:
        return read_record(self.id, queue=self._queue)

    async def _read_async(self) -> TaskRecord:
        queue = self._queue or default_queue()
        clients = await queue.aclients()
        return _found(
            self.id, await StateStore(clients.dynamodb, queue.settings.table).get(self.id)
        )


def handle(task_id: str) -> TaskHandle[Any]:
    """A handle on a task enqueued elsewhere (``enqueue`` returned its id; another
    process, the CLI): ``dispatch.handle(task_id).result(timeout_s=30)``.

    Sends no request; a lean task's id (``lean-...``, no record to read) is refused
    at once with TaskNotFoundError.
    """
    return TaskHandle(task_id)


def _found(task_id: str, record: TaskRecord | None) -> TaskRecord:
    if record is None:
        raise TaskNotFoundError(task_id)
    return record


def _final(record: TaskRecord) -> Any:
    """The result of a finished task, or the error that says why it has none."""
    if record.status is Status.SUCCEEDED:
        return record.result
    if record.status is Status.CANCELLED:
        raise TaskCancelledError(task_id=record.task_id, task=record.task)
    error = record.last_error
    raise TaskFailedError(
        task_id=record.task_id,
        task=record.task,
        reason=record.dead_reason,
        error_type=error.type if error else None,
        error_message=error.message if error else None,
        attempts=record.attempts,
        traceback=error.traceback if error else "",
    )
