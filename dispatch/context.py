"""The running task's context, readable from inside a handler.

``dispatch.current_task()`` tells a handler which task and attempt it is
running, the way Celery's ``self.request`` does, without a ``bind=True``.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["TaskContext", "current_task"]


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Which task is running, and which attempt this is (1-based)."""

    task_id: str
    task: str
    attempt: int
    max_attempts: int
    enqueued_at: float

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the task."""
        return self.attempt >= self.max_attempts


_current: ContextVar[TaskContext | None] = ContextVar("dispatch_current_task", default=None)


def current_task() -> TaskContext:
    """The context of the task running in this thread or coroutine.

    Raises RuntimeError outside a handler run by a worker.
    """
    context = _current.get()
    if context is None:
        raise RuntimeError("current_task() is only available inside a task handler run by a worker")
    return context
