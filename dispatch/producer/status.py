"""Task records from the user's side: ``dispatch.status(task_id)`` and cancelling them.

It lives in :mod:`dispatch.producer`, not at ``dispatch.status``: a submodule of that
name would replace the ``dispatch.status`` function on the package as soon as anything
imported it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.config import current_user
from dispatch.core.envelope import is_lean_task_id
from dispatch.core.errors import DispatchError, TaskNotFoundError
from dispatch.core.record import listed_value
from dispatch.store.aws import error_code, translate_error
from dispatch.store.cancels import cancel_running_params, signal_params
from dispatch.store.codec import number
from dispatch.store.conditional import is_condition_failure, old_item
from dispatch.store.state import Status, SyncStateStore, TaskRecord, task_key

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from dispatch.producer.enqueue import Queue

__all__ = ["cancel", "cancel_waiting_params", "request_cancel", "status"]

LEAN_NO_RECORD: Final = (
    "a lean task, declared with track_state=False: Dispatch keeps no record of it, so it "
    "has no status to show and cannot be cancelled; its failures are on the dead-letter "
    "queue (`dispatch dlq show TASK_ID`)"
)

_WAITING: Final = (Status.QUEUED, Status.RETRYING)


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


def cancel(
    client: DynamoDBClient,
    table: str,
    task_id: str,
    *,
    queue_url: str | None = None,
    by: str | None = None,
    now: float | None = None,
) -> TaskRecord:
    """Cancel a task: a queued or retrying one at once, a running one by request.

    A queued or retrying task is marked ``cancelled`` (its message, when next
    received, is deleted without running). A running task gets ``cancel_requested``
    (``by``, default ``user@host``; when) on its record, and, with ``queue_url``, a
    request on that queue's control item that every dispatcher reads within its
    ``pause_refresh_s`` (:mod:`dispatch.store.cancels`): the one running it
    interrupts it and records it ``cancelled``. The record returned then still says
    ``running``, with ``cancel_requested``. Asking again changes nothing (each write
    is conditional), so a repeat is safe. A finished task cannot be cancelled: the
    DispatchError names its state.
    """
    if is_lean_task_id(task_id):
        raise TaskNotFoundError(task_id, why=LEAN_NO_RECORD)
    now = time.time() if now is None else now
    try:
        answer = client.update_item(**cancel_waiting_params(table, task_id, now))
        return TaskRecord.from_item(dict(answer["Attributes"]))
    except ClientError as exc:
        current = _refused_status(exc, task_id, "UpdateItem")
    if current is not Status.RUNNING:
        raise DispatchError(
            f"task {task_id} is {current.value}: only a queued, retrying or running task "
            "can be cancelled"
        ) from None
    return request_cancel(
        client, table, task_id, queue_url=queue_url, by=by, now=now, or_waiting=True
    )


def cancel_waiting_params(
    table: str, task_id: str, now: float, *, statuses: tuple[Status, ...] = _WAITING
) -> dict[str, Any]:
    """UpdateItem: a task in one of ``statuses`` (queued or retrying) is cancelled."""
    names = [f":w{i}" for i in range(len(statuses))]
    return {
        "TableName": table,
        "Key": task_key(task_id),
        "UpdateExpression": (
            "SET #s = :cancelled, updated_at = :now, finished_at = :now, "
            f"{c.LISTED_ATTRIBUTE} = :listed"
        ),
        "ConditionExpression": f"#s IN ({', '.join(names)})",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":cancelled": {"S": Status.CANCELLED.value},
            ":now": number(now),
            ":listed": {"S": listed_value(Status.CANCELLED, now)},
        }
        | {name: {"S": status.value} for name, status in zip(names, statuses, strict=True)},
        "ReturnValues": "ALL_NEW",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def _refused_status(exc: ClientError, task_id: str, operation: str) -> Status:
    """The status of the record that refused a conditional write (TaskNotFoundError
    when there is none; the AWS error itself when it was not a refusal)."""
    if not is_condition_failure(exc):
        raise translate_error(exc, operation) from exc
    old = old_item(exc)
    if old is None:
        raise TaskNotFoundError(task_id) from None
    return TaskRecord.from_item(old).status


def request_cancel(
    client: DynamoDBClient,
    table: str,
    task_id: str,
    *,
    queue_url: str | None,
    by: str | None,
    now: float,
    or_waiting: bool = False,
) -> TaskRecord:
    """Ask the dispatcher running ``task_id`` to cancel it: the record gets the request,
    then (with ``queue_url``) the queue's control item. DispatchError naming the state
    when it is not running (``or_waiting``: a task given back to queued or retrying
    meanwhile is cancelled at once instead)."""
    by = by or current_user()
    try:
        answer = client.update_item(**cancel_running_params(table, task_id, by=by, now=now))
    except ClientError as exc:
        current = _refused_status(exc, task_id, "UpdateItem")
        if or_waiting and current in (Status.QUEUED, Status.RETRYING):  # given back meanwhile
            return cancel(client, table, task_id, queue_url=queue_url, by=by, now=now)
        raise DispatchError(
            f"task {task_id} is {current.value}: it left running before the cancel reached it"
        ) from None
    record = TaskRecord.from_item(dict(answer["Attributes"]))
    if queue_url is not None:
        try:
            client.update_item(
                **signal_params(
                    table,
                    queue_url,
                    task_id,
                    by=record.cancel_requested_by or by,
                    now=record.cancel_requested_at or now,
                )
            )
        except ClientError as exc:
            # The control item is full (400 KB of pending requests): the record's request
            # still cancels the task, when its attempt settles rather than within 5 s.
            if error_code(exc) != "ValidationException":
                raise translate_error(exc, "UpdateItem") from exc
    return record
