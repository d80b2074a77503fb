"""Key leases: which dispatcher owns each active key of a keyed resource, in the state table.

A keyed resource's per-key bucket and cap are exact only where one dispatcher
applies them, so each active key is owned by one dispatcher at a time
(docs/throttle.md, "One owner per active key"). Two kinds of item:

- ``keylease#<resource>#<key>``: ``owner``, ``epoch`` (bumped on every hand-over),
  ``at``. Written once when a key becomes active here (one conditional UpdateItem),
  deleted when it goes idle or its owner stops (conditional on ``owner`` and
  ``epoch``), taken over only with the ``epoch`` read (so two takers never both win).
- ``keyowner#<queue>``: the members of a queue's key ownership, one attribute
  ``m#<dispatcher>`` each whose value is its heartbeat (``until``, and ``at``, when it
  was written). A lease is
  valid while its owner's heartbeat is: no request per key to keep it, one write per
  dispatcher every few seconds however many keys it owns, and that write's answer is
  every member's heartbeat (who is alive, and so which dispatcher each key prefers).

Every refusal is an answer (:class:`Held`: who owns it, at which epoch); any other
failure raises :class:`~dispatch.core.errors.DispatchError` and the caller fails
closed (the key's messages are deferred as throttled).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.store.aws import aws_errors, translate_error
from dispatch.store.codec import number, read_number
from dispatch.store.conditional import is_condition_failure, old_item

__all__ = ["Held", "KeyLease", "KeyLeaseStore", "Member", "lease_key"]

_NOT_TAKEN: Final = "attribute_not_exists(#pk) OR #owner = :me"
MEMBER_PREFIX: Final = "m#"
"""A member's attribute in ``keyowner#<queue>``: ``m#<dispatcher>`` =
``{until, at, leasing}``."""
LEASE_TTL_S: Final = 86_400
"""A lease nobody gave back nor took over (its owner died, its key never came back)
is removed by the table's TTL after a day."""


@dataclass(frozen=True, slots=True)
class KeyLease:
    """A key this dispatcher owns (at ``epoch``)."""

    resource: str
    key: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Member:
    """A member's heartbeat: its leases are valid ``until``; written ``at`` (its clock);
    ``leasing`` when it runs only leased keys (False: alone, it runs keys unleased)."""

    until: float
    at: float
    leasing: bool = True


@dataclass(frozen=True, slots=True)
class Held:
    """A key another dispatcher owns: ``owner`` at ``epoch``."""

    owner: str
    epoch: int


def lease_key(resource: str, key: str) -> str:
    """The table key of ``key``'s lease on ``resource``."""
    return f"{c.KEY_LEASE_PREFIX}{resource}#{key}"


class KeyLeaseStore:
    """The key leases and heartbeat of one dispatcher (``owner``)."""

    def __init__(
        self,
        dynamodb: Any,
        *,
        table: str,
        owner: str,
        queue: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self.owner = owner
        self._members_key = f"{c.KEY_OWNER_PREFIX}{queue}"
        self._clock = clock

    async def acquire(self, resource: str, key: str) -> KeyLease | Held:
        """Own ``key`` unless another dispatcher does (then who, and at which epoch)."""
        return await self._write(resource, key, _NOT_TAKEN, {})

    async def take_over(self, resource: str, key: str, held: Held) -> KeyLease | Held:
        """Own ``key`` in place of ``held`` (its owner stale or gone), only if nobody
        changed the lease since it was read."""
        condition = "#owner = :old AND #epoch = :epoch"
        values = {":old": {"S": held.owner}, ":epoch": {"N": str(held.epoch)}}
        return await self._write(resource, key, condition, values)

    async def _write(
        self, resource: str, key: str, condition: str, values: dict[str, Any]
    ) -> KeyLease | Held:
        try:
            answer = await self._dynamodb.update_item(
                TableName=self._table,
                Key={c.TABLE_HASH_KEY: {"S": lease_key(resource, key)}},
                UpdateExpression="SET #owner = :me, #at = :now, #ttl = :ttl ADD #epoch :one",
                ConditionExpression=condition,
                ExpressionAttributeNames={
                    **({"#pk": c.TABLE_HASH_KEY} if "#pk" in condition else {}),
                    "#owner": "owner",
                    "#epoch": "epoch",
                    "#at": "at",
                    "#ttl": c.TABLE_TTL_ATTRIBUTE,
                },
                ExpressionAttributeValues={
                    ":me": {"S": self.owner},
                    ":now": number(self._clock()),
                    ":ttl": {"N": str(int(self._clock()) + LEASE_TTL_S)},
                    ":one": {"N": "1"},
                    **values,
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except (ClientError, BotoCoreError) as exc:
            if not is_condition_failure(exc):
                raise translate_error(exc, "UpdateItem") from exc
            item = old_item(exc) or {}
            owner = str(item.get("owner", {}).get("S", ""))
            return Held(owner=owner, epoch=int(read_number(item.get("epoch"))))
        item = answer.get("Attributes", {})
        return KeyLease(resource, key, int(read_number(item.get("epoch"))))

    async def release(self, lease: KeyLease) -> bool:
        """Give ``lease`` up (delete it, if it is still ours at its epoch); False when
        it was not (taken over meanwhile)."""
        try:
            await self._dynamodb.delete_item(
                TableName=self._table,
                Key={c.TABLE_HASH_KEY: {"S": lease_key(lease.resource, lease.key)}},
                ConditionExpression="#owner = :me AND #epoch = :epoch",
                ExpressionAttributeNames={"#owner": "owner", "#epoch": "epoch"},
                ExpressionAttributeValues={
                    ":me": {"S": self.owner},
                    ":epoch": {"N": str(lease.epoch)},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            if is_condition_failure(exc):
                return False
            raise translate_error(exc, "DeleteItem") from exc
        return True

    async def beat(
        self, until: float, forget: Collection[str] = (), *, leasing: bool = True
    ) -> dict[str, Member]:
        """This dispatcher's leases are valid until ``until`` (epoch seconds): its entry
        in the queue's members item is set (``leasing``: it runs only leased keys; a
        member alone runs keys unleased), long-gone members in ``forget`` removed.
        Returns every member's entry as the write left them (one request)."""
        names = {"#me": _member(self.owner), "#ttl": c.TABLE_TTL_ATTRIBUTE}
        names.update({f"#f{i}": _member(owner) for i, owner in enumerate(forget)})
        expression = "SET #me = :until, #ttl = :ttl"
        if forget:
            expression += " REMOVE " + ", ".join(f"#f{i}" for i in range(len(forget)))
        with aws_errors("UpdateItem"):
            answer = await self._dynamodb.update_item(
                TableName=self._table,
                Key={c.TABLE_HASH_KEY: {"S": self._members_key}},
                UpdateExpression=expression,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    ":until": {
                        "M": {
                            "until": number(until),
                            "at": number(self._clock()),
                            "leasing": {"BOOL": leasing},
                        }
                    },
                    ":ttl": {"N": str(int(until) + LEASE_TTL_S)},
                },
                ReturnValues="ALL_NEW",
            )
        return {
            name[len(MEMBER_PREFIX) :]: _member_of(value.get("M", {}))
            for name, value in answer.get("Attributes", {}).items()
            if name.startswith(MEMBER_PREFIX)
        }

    async def retire(self) -> None:
        """This dispatcher owns nothing any more: its entry in the members item goes."""
        with aws_errors("UpdateItem"):
            await self._dynamodb.update_item(
                TableName=self._table,
                Key={c.TABLE_HASH_KEY: {"S": self._members_key}},
                UpdateExpression="REMOVE #me",
                ExpressionAttributeNames={"#me": _member(self.owner)},
            )


def _member_of(entry: dict[str, Any]) -> Member:
    return Member(
        until=read_number(entry.get("until")),
        at=read_number(entry.get("at")),
        leasing=bool(entry.get("leasing", {}).get("BOOL", True)),
    )


def _member(owner: str) -> str:
    return f"{MEMBER_PREFIX}{owner}"
