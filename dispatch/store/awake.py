"""The awake promise of the responsive mode: until when a dispatcher of a queue is surely receiving.

One item per queue, ``pk = "awake#<queue name>"``, with ``until`` (epoch seconds)
and ``holder``. A dispatcher that lingers (``DispatcherOptions.linger_s``) writes
``until`` = its last task's time + the linger, and keeps receiving at least that
long; a producer that enqueues reads it (one eventually consistent GetItem at most
every few seconds per process) and wakes the dispatcher function only when no
promise covers the moment (:mod:`dispatch.producer.wake`). A promise is only ever
extended, never shortened (the write is conditional), and expires by itself.
"""

from __future__ import annotations

from typing import Any, Final

from dispatch.core import constants as c
from dispatch.core.config import queue_name
from dispatch.store.codec import number, read_number

__all__ = ["awake_key", "promise_params", "promised_until"]

_ITEM_TTL_S: Final = 3600


def awake_key(queue_url: str) -> dict[str, Any]:
    """The key of a queue's awake promise."""
    return {c.TABLE_HASH_KEY: {"S": f"{c.AWAKE_KEY_PREFIX}{queue_name(queue_url)}"}}


def promise_params(table: str, queue_url: str, *, until: float, holder: str) -> dict[str, Any]:
    """PutItem: a dispatcher keeps receiving until ``until`` (only if that is later
    than the promise already there)."""
    return {
        "TableName": table,
        "Item": {
            **awake_key(queue_url),
            "until": number(until),
            "holder": {"S": holder},
            c.TABLE_TTL_ATTRIBUTE: number(int(until) + _ITEM_TTL_S),
        },
        "ConditionExpression": "attribute_not_exists(#pk) OR #until < :until",
        "ExpressionAttributeNames": {"#pk": c.TABLE_HASH_KEY, "#until": "until"},
        "ExpressionAttributeValues": {":until": number(until)},
    }


def promised_until(item: dict[str, Any] | None) -> float:
    """The time a promise item covers (0 when there is none)."""
    return read_number((item or {}).get("until"), 0.0)
