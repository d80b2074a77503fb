"""Dispatcher slots: at most ``cap`` dispatchers work one queue at a time (``lease#`` items).

Scheduled Lambda invocations overlap (a slow one is still running when the next
tick fires) and a dispatcher may start more of itself under a backlog, so the
number of dispatchers per queue is capped by leases in the state table. A queue
with cap ``N`` has ``N`` slots, one item each::

    pk         = "lease#<queue name>#<slot>"
    holder     = who holds it (the Lambda request id)
    until      = epoch seconds: the lease ends here by itself
    acquired_at, expires_at (TTL: a day after ``until``, so dead slots disappear)

Taking a slot is one conditional ``PutItem`` (``attribute_not_exists(pk) OR
until < now``); giving it back is one conditional ``DeleteItem`` (``holder =
me``). ``until`` is the holder's own deadline (a Lambda invocation's end), so a
dispatcher that dies never blocks the queue for longer than the invocation it
died in would have run. Nothing renews a lease: an invocation cannot outlive its
deadline, and the lease is sized to it.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.core.config import queue_name
from dispatch.core.errors import ConfigurationError
from dispatch.store.aws import translate_error
from dispatch.store.codec import number, read_number
from dispatch.store.conditional import is_condition_failure

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

__all__ = [
    "DEFAULT_LEASE_CAP",
    "Lease",
    "Leases",
    "acquire_params",
    "lease_key",
    "release_params",
]

log = structlog.get_logger("dispatch.aws_lambda.slots")

DEFAULT_LEASE_CAP: Final = 1
MAX_LEASE_CAP: Final = 100
LEASE_ITEM_TTL_S: Final = 24 * 3600
"""A slot item is deleted by the table's TTL this long after its lease ended."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One held slot: who holds it and until when."""

    queue: str
    slot: int
    holder: str
    until: float

    @property
    def key(self) -> str:
        """The slot's ``pk``."""
        return lease_key(self.queue, self.slot)


def lease_key(queue: str, slot: int) -> str:
    """``lease#<queue name>#<slot>``."""
    return f"{c.LEASE_KEY_PREFIX}{queue}#{slot}"


def acquire_params(
    table: str,
    queue: str,
    slot: int,
    *,
    holder: str,
    until: float,
    now: float,
    token: str | None = None,
) -> dict[str, Any]:
    """The PutItem that takes ``slot`` if it is free or its lease has ended.

    ``token`` (fresh for each acquire) lets a repeat of this very request, sent by
    the call retry after its answer was lost, recognise the lease as its own.
    """
    token_attribute = {"token": {"S": token}} if token is not None else {}
    return {
        "TableName": table,
        "Item": {
            c.TABLE_HASH_KEY: {"S": lease_key(queue, slot)},
            **token_attribute,
            "holder": {"S": holder},
            "until": number(until),
            "acquired_at": number(now),
            c.TABLE_TTL_ATTRIBUTE: number(math.ceil(until) + LEASE_ITEM_TTL_S),
        },
        "ConditionExpression": "attribute_not_exists(#pk) OR #until < :now",
        "ExpressionAttributeNames": {"#pk": c.TABLE_HASH_KEY, "#until": "until"},
        "ExpressionAttributeValues": {":now": number(now)},
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def release_params(table: str, lease: Lease) -> dict[str, Any]:
    """The DeleteItem that gives ``lease`` back, only if it is still ours."""
    return {
        "TableName": table,
        "Key": {c.TABLE_HASH_KEY: {"S": lease.key}},
        "ConditionExpression": "#holder = :me",
        "ExpressionAttributeNames": {"#holder": "holder"},
        "ExpressionAttributeValues": {":me": {"S": lease.holder}},
    }


class Leases:
    """The ``cap`` dispatcher slots of one queue, in the state table."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        queue_url: str,
        cap: int = DEFAULT_LEASE_CAP,
        clock: Callable[[], float],
        shuffle: Callable[[list[int]], None] = random.shuffle,
    ) -> None:
        if not 1 <= cap <= MAX_LEASE_CAP:
            raise ConfigurationError(
                f"lease cap {cap}: must be 1 to {MAX_LEASE_CAP}", setting="lease_cap"
            )
        self._client = client
        self.table = table
        self.queue = queue_name(queue_url)
        self.cap = cap
        self._clock = clock
        self._shuffle = shuffle
        self.requests = 0

    async def acquire(self, *, holder: str, until: float) -> Lease | None:
        """Take a free slot until ``until`` (epoch s); None when all ``cap`` are held.

        Slots are tried in a random order, so concurrent dispatchers rarely
        contend for the same one; with a cap of 1 this is one request.
        """
        slots = list(range(self.cap))
        self._shuffle(slots)
        token = uuid.uuid4().hex
        client: Any = self._client
        for slot in slots:
            now = self._clock()
            params = acquire_params(
                self.table, self.queue, slot, holder=holder, until=until, now=now, token=token
            )
            self.requests += 1
            try:
                await client.put_item(**params)
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise translate_error(exc, "PutItem") from exc
                held: Any = exc.response.get("Item") or {}
                if held.get("token", {}).get("S") == token:
                    # Our own PutItem, sent again by the call retry after its answer
                    # was lost: the slot is ours.
                    return Lease(queue=self.queue, slot=slot, holder=holder, until=until)
                log.debug(
                    "lease_slot_busy",
                    queue=self.queue,
                    slot=slot,
                    holder=held.get("holder", {}).get("S"),
                    until=read_number(held.get("until")),
                )
                continue
            except BotoCoreError as exc:
                raise translate_error(exc, "PutItem") from exc
            return Lease(queue=self.queue, slot=slot, holder=holder, until=until)
        return None

    async def release(self, lease: Lease) -> bool:
        """Give the slot back; False when it had ended and someone else took it."""
        client: Any = self._client
        self.requests += 1
        try:
            await client.delete_item(**release_params(self.table, lease))
        except ClientError as exc:
            if is_condition_failure(exc):
                log.warning("lease_lost_before_release", queue=self.queue, slot=lease.slot)
                return False
            raise translate_error(exc, "DeleteItem") from exc
        except BotoCoreError as exc:
            raise translate_error(exc, "DeleteItem") from exc
        return True
