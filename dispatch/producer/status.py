"""Task records from the user's side: ``dispatch.status(task_id)`` and cancelling.

It lives in :mod:`dispatch.producer`, not at ``dispatch.status``: a submodule of that
name would replace the ``dispatch.status`` function on the package as soon as anything
imported it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.envelope import is_lean_task_id
from dispatch.core.errors import DispatchError, TaskNotFoundError
from dispatch.core.record import listed_value
from dispatch.store.aws import translate_error
from dispatch.store.codec import number
from dispatch.store.conditional import is_condition_failure, old_item
from dispatch.store.state import Status, SyncStateStore, TaskRecord, task_key

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from dispatch.producer.enqueue import Queue

__all__ = ["cancel", "status"]

LEAN_NO_RECORD: Final = (
    "a lean task, declared with track_state=False: Dispatch keeps no record of it, so it "
    "has no status to show and cannot be cancelled; its failures are on the dead-letter "
    "queue (`dispatch dlq show TASK_ID`)"
)


def status(task_id: str, *, queue: Queue | None = None) -> TaskRecord:
    """The record of one task (its ``status``, attempts, last error, result).

    Uses the table and endpoint of ``queue`` (default: the default queue, from the
    environment). Raises TaskNotFoundError when no record exists.
    """
    from dispatch.producer.enqueue import default_queue

    if is_lean_task_id(task_id):
        raise TaskNotFoundError(task_id, why=LEAN_NO_RECORD)
    queue = queue or default_queue()
    record = SyncStateStore(queue.sync_clients().dynamodb, queue.settings.table).get(task_id)
    if record is None:
        raise TaskNotFoundError(task_id)
    return record


def cancel(client: DynamoDBClient, table: str, task_id: str) -> TaskRecord:
    """Mark a queued or retrying task cancelled, so no dispatcher runs it.

    Its message, when next received, is deleted without running. A task that is
    running or finished cannot be cancelled; the error says which state it is in.
    """
    if is_lean_task_id(task_id):
        raise TaskNotFoundError(task_id, why=LEAN_NO_RECORD)
    now = time.time()
    try:
        answer = client.update_item(
            TableName=table,
            Key=task_key(task_id),
            UpdateExpression=(
                "SET #s = :cancelled, updated_at = :now, finished_at = :now, "
                f"{c.LISTED_ATTRIBUTE} = :listed"
            ),
            ConditionExpression="#s IN (:queued, :retrying)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":cancelled": {"S": Status.CANCELLED.value},
                ":queued": {"S": Status.QUEUED.value},
                ":retrying": {"S": Status.RETRYING.value},
                ":now": number(now),
                ":listed": {"S": listed_value(Status.CANCELLED, now)},
            },
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if not is_condition_failure(exc):
            raise translate_error(exc, "UpdateItem") from exc
        old = old_item(exc)
        if old is None:
            raise TaskNotFoundError(task_id) from None
        current = TaskRecord.from_item(old).status.value
        raise DispatchError(
            f"task {task_id} is {current}: only a queued or retrying task can be cancelled"
        ) from None
    return TaskRecord.from_item(dict(answer["Attributes"]))
