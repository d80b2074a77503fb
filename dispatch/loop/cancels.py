"""Cancelling running attempts: the requests this dispatcher acts on, and the attempts it runs.

``dispatch cancel`` of a running task writes a request on its record and one on
the queue's control item (:mod:`dispatch.store.cancels`). :class:`Cancels` gets
the control item's requests each time :class:`~dispatch.loop.pauses.PauseWatch`
reads it (one GetItem per ``pause_refresh_s``, shared with the pauses: no request
of its own), so a request reaches every live dispatcher within that period. For
each request naming an attempt it runs, it raises the attempt's
``current_task().cancel_requested`` flag and, for an async handler in this
process, cancels the coroutine (the pipeline turns that ``CancelledError`` into a
cancel, not a failure). A sync handler cannot be stopped: it sees the flag; a
handler run by a Lambda invoke worker sees nothing. Whatever such an attempt then
reports, its settlement records the task ``cancelled`` (:class:`~dispatch.loop.settle.Settler`),
and :meth:`Cancels.done` removes the request from the control item.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core.context import TaskContext
from dispatch.store.cancels import CancelRequest, request_done_params

__all__ = ["Attempt", "Cancels"]

log = structlog.get_logger("dispatch.loop.cancels")


@dataclass(slots=True)
class Attempt:
    """One attempt running here: its context (the flag) and, when it can be
    interrupted, the asyncio task to cancel."""

    task_id: str
    context: TaskContext
    task: asyncio.Task[Any] | None
    interrupted: bool = False

    def signal(self) -> None:
        """Raise the flag; cancel the coroutine once (an async handler in this process)."""
        self.context.cancel_signal.set()
        if self.task is not None and not self.interrupted:
            self.interrupted = True
            self.task.cancel()

    def absorb(self) -> bool:
        """The attempt's coroutine was cancelled: True when only by this cancel (it is
        taken back, so the settlement runs), False when something else cancels it too
        (a release at a deadline, a stop), which must go on."""
        if not self.interrupted or self.task is None:
            return False
        self.interrupted = False
        return self.task.uncancel() == 0


class Cancels:
    """The cancel requests of one queue, as last read, and the attempts running here."""

    def __init__(self, dynamodb: Any, table: str, queue_url: str) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._queue_url = queue_url
        self.requests: dict[str, CancelRequest] = {}
        self._running: dict[str, Attempt] = {}
        self.signalled = 0  # attempts signalled so far (tests and logs)

    def update(self, requests: dict[str, CancelRequest]) -> None:
        """The control item's requests as just read: signal the attempts they name."""
        self.requests = requests
        for task_id in requests.keys() & self._running.keys():
            self._signal(self._running[task_id])

    def requested(self, task_id: str) -> bool:
        """Whether a cancel of ``task_id`` is known here (read, or seen on its record)."""
        return task_id in self.requests

    @contextlib.contextmanager
    def running(
        self, task_id: str, context: TaskContext, *, task: asyncio.Task[Any] | None
    ) -> Iterator[Attempt]:
        """The block in which the attempt runs; ``task`` (None: not interruptible) is
        cancelled when a request names it."""
        attempt = Attempt(task_id, context, task)
        self._running[task_id] = attempt
        try:
            if task_id in self.requests:
                self._signal(attempt)
            yield attempt
        finally:
            if self._running.get(task_id) is attempt:
                del self._running[task_id]
            if attempt.interrupted and attempt.task is not None:
                # The handler swallowed the cancel and returned: take it back, or the
                # asyncio task stays "cancelling" for the settlement that follows.
                attempt.task.uncancel()

    def _signal(self, attempt: Attempt) -> None:
        if not attempt.context.cancel_signal.is_set():
            self.signalled += 1
            log.info("task_cancel_signalled", task_id=attempt.task_id)
        attempt.signal()

    async def done(self, task_id: str) -> None:
        """The task is cancelled: its request leaves the control item (logged, not
        raised, when that fails: a leftover request is ignored after a day). Nothing is
        written for a request this dispatcher never read there (its claim found it)."""
        if self.requests.pop(task_id, None) is None:
            return
        try:
            await self._dynamodb.update_item(
                **request_done_params(self._table, self._queue_url, task_id)
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("cancel_request_not_removed", task_id=task_id, error=str(exc))
