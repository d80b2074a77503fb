"""``dispatch.cancel(task_id)``: cancel one task from Python, as ``dispatch cancel`` does.

A queued or retrying task is cancelled at once; a running one is asked to stop,
and the dispatcher holding it records it ``cancelled`` within its
``pause_refresh_s`` (5 s): docs/operations.md, "Cancelling".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatch.core.record import TaskRecord
from dispatch.producer import status

if TYPE_CHECKING:
    from dispatch.producer.enqueue import Queue

__all__ = ["cancel"]


def cancel(task_id: str, *, queue: Queue | None = None, by: str | None = None) -> TaskRecord:
    """Cancel ``task_id`` on ``queue`` (default: the default queue, from the environment).

    Returns the record after the write: ``cancelled`` for a task that was queued or
    retrying; still ``running``, with ``cancel_requested``, for a running one (its
    dispatcher ends it ``cancelled``; ``dispatch.handle(task_id).result()`` then
    raises TaskCancelledError). ``by`` is recorded as who asked (default
    ``user@host``). Raises TaskNotFoundError when there is no record, and
    DispatchError naming the state of a task that already finished. Safe to repeat.
    """
    from dispatch.producer.enqueue import default_queue

    queue = queue or default_queue()
    return status.cancel(
        queue.sync_clients().dynamodb,
        queue.settings.table,
        task_id,
        queue_url=queue.settings.queue_url,
        by=by,
    )
