"""Reading task records: ``dispatch.status(task_id)``."""

from __future__ import annotations

from dispatch.errors import TaskNotFoundError
from dispatch.state import SyncStateStore, TaskRecord

__all__ = ["status"]


def status(task_id: str) -> TaskRecord:
    """The record of one task (its ``status``, attempts, last error, result).

    Uses the table and endpoint of the default queue (the environment).
    Raises TaskNotFoundError when no record exists.
    """
    from dispatch.queue import default_queue

    queue = default_queue()
    record = SyncStateStore(queue.sync_clients().dynamodb, queue.settings.table).get(task_id)
    if record is None:
        raise TaskNotFoundError(task_id)
    return record
