"""What operators paused: tasks and resources a dispatcher must not start, by queue.

One item per queue, ``pk = "pauses#<queue name>"``. Each paused thing is one
attribute of it, named ``task:<name>`` or ``resource:<name>``, whose value is a map
``{"by": who, "since": epoch seconds}``. Pausing is one UpdateItem that sets that
attribute (the first pause of a thing keeps its ``by`` and ``since``: the
condition refuses a second); resuming is one UpdateItem that removes it. A
dispatcher reads the whole item with one GetItem when it starts and then every
few seconds (:mod:`dispatch.loop.pauses`), so a pause reaches every live
dispatcher within that period and survives their restarts: it is in the table,
not in any process. The item has no TTL: a pause lasts until resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from dispatch.core import constants as c
from dispatch.core.config import queue_name
from dispatch.store.codec import number, read_number

__all__ = [
    "KINDS",
    "MAX_NAME_CHARS",
    "Pause",
    "Paused",
    "pause_params",
    "pauses_key",
    "read_paused",
    "resume_params",
]

Kind = Literal["task", "resource"]
KINDS: Final[tuple[Kind, ...]] = ("task", "resource")
MAX_NAME_CHARS: Final = 256
_PREFIX: Final = "pauses#"


@dataclass(frozen=True, slots=True)
class Pause:
    """One paused task or resource: who paused it and since when."""

    kind: Kind
    name: str
    by: str
    since: float

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json`` and the published views."""
        return {"kind": self.kind, "name": self.name, "by": self.by, "since": self.since}


@dataclass(frozen=True, slots=True)
class Paused:
    """Every pause of a queue, as last read."""

    tasks: dict[str, Pause]
    resources: dict[str, Pause]

    def of(self, task: str, resource: str | None) -> Pause | None:
        """The pause that stops ``task`` (its own, else its resource's), if any."""
        found = self.tasks.get(task)
        if found is None and resource is not None:
            found = self.resources.get(resource)
        return found

    def all(self) -> list[Pause]:
        """Every pause, oldest first."""
        return sorted([*self.tasks.values(), *self.resources.values()], key=lambda p: p.since)


NOTHING_PAUSED: Final = Paused({}, {})


def pauses_key(queue_url: str) -> dict[str, Any]:
    """The key of a queue's pauses item."""
    return {c.TABLE_HASH_KEY: {"S": f"{_PREFIX}{queue_name(queue_url)}"}}


def _attribute(kind: Kind, name: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"a pause is of a task or a resource, not {kind!r}")
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(
            f"{kind} name {name!r}: must be 1 to {MAX_NAME_CHARS} printable characters"
        )
    return f"{kind}:{name}"


def pause_params(
    table: str, queue_url: str, kind: Kind, name: str, *, by: str, now: float
) -> dict[str, Any]:
    """UpdateItem: pause ``name`` (refused, ConditionalCheckFailed, if it already is)."""
    return {
        "TableName": table,
        "Key": pauses_key(queue_url),
        "UpdateExpression": "SET #p = :pause",
        "ConditionExpression": "attribute_not_exists(#p)",
        "ExpressionAttributeNames": {"#p": _attribute(kind, name)},
        "ExpressionAttributeValues": {":pause": {"M": {"by": {"S": by}, "since": number(now)}}},
        "ReturnValues": "ALL_NEW",
    }


def resume_params(table: str, queue_url: str, kind: Kind, name: str) -> dict[str, Any]:
    """UpdateItem: resume ``name`` (refused, ConditionalCheckFailed, if it is not paused);
    the old values come back, so the caller can say what the pause was."""
    return {
        "TableName": table,
        "Key": pauses_key(queue_url),
        "UpdateExpression": "REMOVE #p",
        "ConditionExpression": "attribute_exists(#p)",
        "ExpressionAttributeNames": {"#p": _attribute(kind, name)},
        "ReturnValues": "ALL_OLD",
    }


def read_paused(item: dict[str, Any] | None) -> Paused:
    """The pauses an item holds (nothing paused when there is no item); attributes that
    are not pauses (the key) and values of another shape are skipped."""
    tasks: dict[str, Pause] = {}
    resources: dict[str, Pause] = {}
    for attribute, value in (item or {}).items():
        kind, _, name = attribute.partition(":")
        fields = value.get("M") if isinstance(value, dict) else None
        if kind not in KINDS or not name or not isinstance(fields, dict):
            continue
        by = fields.get("by", {}).get("S", "") if isinstance(fields.get("by"), dict) else ""
        if kind == "task":
            tasks[name] = Pause("task", name, by, read_number(fields.get("since"), 0.0))
        else:
            resources[name] = Pause("resource", name, by, read_number(fields.get("since"), 0.0))
    return Paused(tasks, resources)
