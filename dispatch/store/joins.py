"""The join of a group (fan-out / fan-in) in the table: its item and its conditional writes.

A group is one item, ``group#<group id>`` (docs/formats.md, "Group item"): the
children's task ids in order, the callback's task id and body, and two string
sets that only grow by one conditional write per child: ``done`` (children that
succeeded) and ``failed`` (children that died and have not succeeded since).
The callback's task record is written ``queued`` when the group is made, before
any child is sent, so its handle can be waited on at once; its message is sent
only when ``done`` holds every child.

Every builder here is pure (request parameters in, nothing sent); the loop's
:mod:`~dispatch.loop.join` sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from boto3.dynamodb.types import TypeSerializer

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.record import Status, listed_value
from dispatch.store import state
from dispatch.store.codec import number

__all__ = [
    "DEPENDENCY_FAILED",
    "GroupState",
    "callback_dead_params",
    "callback_record_item",
    "callback_revive_params",
    "child_counted_params",
    "child_failed_params",
    "group_item",
    "group_key",
    "sent_params",
]

DEPENDENCY_FAILED: Final = "dependency_failed"
"""The ``dead_reason`` of a callback whose group has a dead child."""

_SERIALIZER: Final = TypeSerializer()


def group_key(group_id: str) -> dict[str, Any]:
    """The DynamoDB key of a group's join item."""
    return {c.TABLE_HASH_KEY: {"S": f"{c.GROUP_KEY_PREFIX}{group_id}"}}


def group_item(
    group_id: str,
    *,
    kind: str,
    children: list[str],
    callback: Envelope,
    now: float,
) -> dict[str, Any]:
    """The join item written when the group is made (before any child is sent).

    ``kind`` is ``group`` (the callback gets the list of results) or ``chain`` (one
    child: the callback gets its result itself).
    """
    return {
        c.TABLE_HASH_KEY: {"S": f"{c.GROUP_KEY_PREFIX}{group_id}"},
        "group_id": {"S": group_id},
        "kind": {"S": kind},
        "children": {"L": [{"S": child} for child in children]},
        "size": number(len(children)),
        "callback_id": {"S": callback.id},
        "callback_task": {"S": callback.task},
        "callback_body": {"S": callback.to_json()},
        "created_at": number(now),
        "updated_at": number(now),
        c.TABLE_TTL_ATTRIBUTE: number(state.record_ttl(now)),
    }


def callback_record_item(callback: Envelope, group_id: str, now: float) -> dict[str, Any]:
    """The callback's task record, ``queued`` from the start, naming its group."""
    item = state.queued_item(callback, now)
    item["waits_for"] = {"S": group_id}
    return item


def child_counted_params(table: str, group_id: str, child_id: str, now: float) -> dict[str, Any]:
    """UpdateItem: count one child's success, once.

    ``ADD done :child`` conditional on the child not being in ``done`` yet, so a
    success settled twice (a redelivery after a lost delete, a dispatcher that died
    after the join) is refused the second time (and answers with the item, from
    which the caller sees whether the callback still has to go). A redriven child
    that succeeds leaves ``failed`` in the same write. ``ALL_NEW``: exactly one
    writer sees ``done`` complete after its own write.
    """
    return _child_update(table, group_id, child_id, now, "ADD done :child DELETE failed :child")


def child_failed_params(table: str, group_id: str, child_id: str, now: float) -> dict[str, Any]:
    """UpdateItem: a child died (``ADD failed``); refused for a child counted as done."""
    return _child_update(table, group_id, child_id, now, "ADD failed :child")


def _child_update(
    table: str, group_id: str, child_id: str, now: float, change: str
) -> dict[str, Any]:
    """UpdateItem ``change`` on the group's sets, for a child not already counted as done;
    the new item back (the old one when refused)."""
    return {
        "TableName": table,
        "Key": group_key(group_id),
        "UpdateExpression": f"{change} SET updated_at = :now, {c.TABLE_TTL_ATTRIBUTE} = :ttl",
        "ConditionExpression": "attribute_exists(pk) AND NOT contains(done, :id)",
        "ExpressionAttributeValues": {
            ":child": {"SS": [child_id]},
            ":id": {"S": child_id},
            ":now": number(now),
            ":ttl": number(state.record_ttl(now)),
        },
        "ReturnValues": "ALL_NEW",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def callback_dead_params(
    table: str, callback_id: str, *, now: float, error: dict[str, str]
) -> dict[str, Any]:
    """UpdateItem: the callback can never run as things stand: dead, ``dependency_failed``.

    Only from ``queued`` (its message was never sent) or from this same death (a
    second dead child rewrites the error naming both).
    """
    return {
        "TableName": table,
        "Key": state.task_key(callback_id),
        "UpdateExpression": (
            "SET #s = :dead, dead_reason = :reason, last_error = :error, "
            "finished_at = :now, updated_at = :now, last_failure_at = :now, "
            f"first_failure_at = if_not_exists(first_failure_at, :now), {c.LISTED_ATTRIBUTE} = "
            ":listed"
        ),
        "ConditionExpression": "#s = :queued OR (#s = :dead AND dead_reason = :reason)",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":dead": {"S": Status.DEAD.value},
            ":queued": {"S": Status.QUEUED.value},
            ":reason": {"S": DEPENDENCY_FAILED},
            ":error": _SERIALIZER.serialize(error),
            ":now": number(now),
            ":listed": {"S": listed_value(Status.DEAD, now)},
        },
    }


def callback_revive_params(table: str, callback_id: str, *, now: float) -> dict[str, Any]:
    """UpdateItem: every child succeeded (a dead one was redriven and succeeded): the
    callback goes (back) to ``queued`` before its message is sent.

    Refused when it has left ``queued`` otherwise (claimed, finished, cancelled):
    then its message went out before, or it must not run, and none is sent.
    """
    return {
        "TableName": table,
        "Key": state.task_key(callback_id),
        "UpdateExpression": (
            "SET #s = :queued, updated_at = :now, "
            f"{c.TABLE_TTL_ATTRIBUTE} = :ttl REMOVE dead_reason, finished_at, "
            f"{c.LISTED_ATTRIBUTE}"
        ),
        "ConditionExpression": "#s = :queued OR (#s = :dead AND dead_reason = :reason)",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":queued": {"S": Status.QUEUED.value},
            ":dead": {"S": Status.DEAD.value},
            ":reason": {"S": DEPENDENCY_FAILED},
            ":now": number(now),
            ":ttl": number(state.record_ttl(now)),
        },
    }


def sent_params(table: str, group_id: str, now: float) -> dict[str, Any]:
    """UpdateItem: the callback's message is on the queue (set once)."""
    return {
        "TableName": table,
        "Key": group_key(group_id),
        "UpdateExpression": "SET callback_sent_at = :now",
        "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(callback_sent_at)",
        "ExpressionAttributeValues": {":now": number(now)},
    }


@dataclass(frozen=True, slots=True)
class GroupState:
    """A group's join item, read back."""

    group_id: str
    kind: str
    children: tuple[str, ...]
    done: frozenset[str]
    failed: frozenset[str]
    callback_id: str
    callback_body: str
    sent_at: float | None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> GroupState:
        sent = item.get("callback_sent_at")
        return cls(
            group_id=item["group_id"]["S"],
            kind=item["kind"]["S"],
            children=tuple(entry["S"] for entry in item["children"]["L"]),
            done=frozenset(item.get("done", {}).get("SS", [])),
            failed=frozenset(item.get("failed", {}).get("SS", [])),
            callback_id=item["callback_id"]["S"],
            callback_body=item["callback_body"]["S"],
            sent_at=float(sent["N"]) if sent else None,
        )

    @property
    def complete(self) -> bool:
        """Every child succeeded."""
        return self.done.issuperset(self.children)

    def callback_args(self, results: list[Any]) -> list[Any]:
        """The callback's first argument: the results in order (a chain: the one result)."""
        return [results[0] if self.kind == "chain" else results]

    def failure_error(self, reasons: dict[str, str]) -> dict[str, str]:
        """The callback's ``last_error``, naming the failed children (and their reasons)."""
        named = ", ".join(f"{child} ({reasons.get(child, 'dead')})" for child in sorted(reasons))
        then = (
            "a cancelled child never runs, so the group cannot complete"
            if Status.CANCELLED.value in reasons.values()
            else "redrive them (dispatch dlq redrive) and it runs once they succeed"
        )
        return {
            "type": "DependencyFailed",
            "message": (
                f"group {self.group_id}: child task(s) {named} failed, so the callback "
                f"{self.callback_id} did not run; {then}"
            ),
            "traceback": "",
        }
