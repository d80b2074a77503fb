"""Cancel requests for running tasks: on the task's record, and on the queue's control item.

``dispatch cancel`` of a ``running`` task cannot stop it from the outside: the
dispatcher holding it must. Two writes ask it to (docs/formats.md):

1. The record gets ``cancel_requested = {"by": who, "at": epoch seconds}``, a
   conditional UpdateItem (``status = running``; a second request keeps the first's
   ``by`` and ``at``). The record is the request's source of truth: every settlement
   of a running attempt (:mod:`dispatch.store.state`) is conditional on its absence,
   so an attempt that ends after the request is recorded ``cancelled`` whatever its
   outcome, and a claim that finds it (a new delivery after its dispatcher died)
   cancels instead of running.
2. The queue's control item (the pauses item, ``pk = "pauses#<queue name>"``, which
   every dispatcher already reads every ``pause_refresh_s``) gets one attribute
   ``cancel:<task id>`` with the same map. It is the prompt signal: within one
   refresh, the dispatcher running the task interrupts it (an async handler) or
   raises its ``cancel_requested`` flag (a sync one), at no extra request. The
   dispatcher that settles the task ``cancelled`` removes the attribute.

Requests older than :data:`REQUEST_TTL_S` are ignored when read (a task whose
dispatcher died is cancelled by its next claim, which reads the record, not the
control item), so a leftover attribute costs bytes, never a wrong cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from dispatch.core import constants as c
from dispatch.core.record import Status, listed_value
from dispatch.store.codec import number, read_number
from dispatch.store.pauses import pauses_key

__all__ = [
    "REQUEST_PREFIX",
    "REQUEST_TTL_S",
    "CancelRequest",
    "cancel_running_params",
    "cancelled_values",
    "read_cancel_requests",
    "request_done_params",
    "signal_params",
]

REQUEST_PREFIX: Final = "cancel:"
"""The control item's attribute of one request is this, then the task id."""
REQUEST_TTL_S: Final = 24 * 3600.0
"""A request older than this is ignored when the control item is read."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """One request to cancel a running task: who asked, and when."""

    task_id: str
    by: str
    at: float


def _request_map(by: str, now: float) -> dict[str, Any]:
    return {"M": {"by": {"S": by}, "at": number(now)}}


def cancel_running_params(table: str, task_id: str, *, by: str, now: float) -> dict[str, Any]:
    """UpdateItem: ask the dispatcher running ``task_id`` to cancel it (refused,
    ConditionalCheckFailed with the old record, unless it is ``running``). A repeat
    keeps the first request's ``by`` and ``at``."""
    return {
        "TableName": table,
        "Key": {c.TABLE_HASH_KEY: {"S": f"{c.TASK_KEY_PREFIX}{task_id}"}},
        "UpdateExpression": (
            "SET cancel_requested = if_not_exists(cancel_requested, :request), updated_at = :now"
        ),
        "ConditionExpression": "#s = :running",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":request": _request_map(by, now),
            ":running": {"S": Status.RUNNING.value},
            ":now": number(now),
        },
        "ReturnValues": "ALL_NEW",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def signal_params(
    table: str, queue_url: str, task_id: str, *, by: str, now: float
) -> dict[str, Any]:
    """UpdateItem: the request on the queue's control item, read by every dispatcher."""
    return {
        "TableName": table,
        "Key": pauses_key(queue_url),
        "UpdateExpression": "SET #r = if_not_exists(#r, :request)",
        "ExpressionAttributeNames": {"#r": f"{REQUEST_PREFIX}{task_id}"},
        "ExpressionAttributeValues": {":request": _request_map(by, now)},
    }


def request_done_params(table: str, queue_url: str, task_id: str) -> dict[str, Any]:
    """UpdateItem: the task is cancelled; its request leaves the control item."""
    return {
        "TableName": table,
        "Key": pauses_key(queue_url),
        "UpdateExpression": "REMOVE #r",
        "ExpressionAttributeNames": {"#r": f"{REQUEST_PREFIX}{task_id}"},
    }


def cancelled_values(now: float) -> dict[str, Any]:
    """The values a write that ends a task ``cancelled`` sets (``:cancelled``, ``:now``,
    ``:listed``)."""
    return {
        ":cancelled": {"S": Status.CANCELLED.value},
        ":now": number(now),
        ":listed": {"S": listed_value(Status.CANCELLED, now)},
    }


def read_cancel_requests(item: dict[str, Any] | None, *, now: float) -> dict[str, CancelRequest]:
    """The cancel requests a control item holds, by task id (none older than
    :data:`REQUEST_TTL_S`); attributes of another kind or shape are skipped."""
    found: dict[str, CancelRequest] = {}
    for attribute, value in (item or {}).items():
        if not attribute.startswith(REQUEST_PREFIX):
            continue
        fields = value.get("M") if isinstance(value, dict) else None
        if not isinstance(fields, dict):
            continue
        at = read_number(fields.get("at"), 0.0)
        if now - at > REQUEST_TTL_S:
            continue
        by = fields.get("by")
        task_id = attribute[len(REQUEST_PREFIX) :]
        found[task_id] = CancelRequest(
            task_id, str(by.get("S", "")) if isinstance(by, dict) else "", at
        )
    return found
