"""The running task's context, readable from inside a handler.

``dispatch.current_task()`` tells a handler which task and attempt it is
running, the way Celery's ``self.request`` does, without a ``bind=True``, and
whether an operator asked to cancel it (``cancel_requested``, set by the
dispatcher that runs it when ``dispatch cancel`` reaches it).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["BatchContext", "TaskContext", "current_task"]


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Which task is running, and which attempt this is (1-based)."""

    task_id: str
    task: str
    attempt: int
    max_attempts: int
    enqueued_at: float
    cancel_signal: threading.Event = field(
        default_factory=threading.Event, compare=False, repr=False, kw_only=True
    )

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the task."""
        return self.attempt >= self.max_attempts

    @property
    def cancel_requested(self) -> bool:
        """True once ``dispatch cancel`` reached the dispatcher running this attempt.

        A sync handler checks it between steps and returns (or raises) early; what
        it returns then is not kept: the task ends ``cancelled`` whatever it does.
        Always False in a handler run by a Lambda invoke worker (the request is not
        sent to the remote worker; its outcome is still recorded ``cancelled``).
        """
        return self.cancel_signal.is_set()


@dataclass(frozen=True, slots=True)
class BatchContext(TaskContext):
    """The context inside a batch handler: the batch as a whole, and each item's own.

    ``items[i]`` is the context of the i-th item of the list the handler received
    (its task id and attempt). The inherited fields describe the batch: ``task_id``
    is its first item's id (so a log line naming it names a real task),
    ``attempt`` the highest attempt among its items (``is_last_attempt`` is true
    when a failure would dead-letter at least one item), ``enqueued_at`` the
    earliest enqueue time.
    """

    items: tuple[TaskContext, ...] = ()

    @property
    def task_ids(self) -> tuple[str, ...]:
        """The task id of each item, in the order of the handler's list."""
        return tuple(item.task_id for item in self.items)

    @classmethod
    def of(cls, items: tuple[TaskContext, ...]) -> BatchContext:
        """The batch context of these items (at least one, all of one task)."""
        if not items:
            raise ValueError("a batch has at least one item")
        return cls(
            task_id=items[0].task_id,
            task=items[0].task,
            attempt=max(item.attempt for item in items),
            max_attempts=items[0].max_attempts,
            enqueued_at=min(item.enqueued_at for item in items),
            items=items,
        )


_current: ContextVar[TaskContext | None] = ContextVar("dispatch_current_task", default=None)


def current_task() -> TaskContext:
    """The context of the task running in this thread or coroutine (a
    :class:`BatchContext` inside a batch handler).

    Raises RuntimeError outside a handler run by a worker.
    """
    context = _current.get()
    if context is None:
        raise RuntimeError("current_task() is only available inside a task handler run by a worker")
    return context
