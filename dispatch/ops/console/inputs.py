"""What the console accepts from a request (filters, ids, names), checked before any AWS call.

A value that does not fit is a :class:`BadInput` naming the field and why; the pages
answer it with a 400 page saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from dispatch.core.errors import DispatchError
from dispatch.ops.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ListingError,
    TaskFilter,
    parse_duration,
    parse_status,
    parse_time,
)

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_NAME_CHARS",
    "BadInput",
    "TasksQuery",
    "name_field",
    "parse_tasks_query",
    "task_id_field",
]

MAX_NAME_CHARS: Final = 128  # a task name, resource name or task id (docs/bad-input.md)
MAX_FIELD_CHARS: Final = 512  # any other field: a time, a duration, a token
_OPTION_FIELDS: Final = {
    "--status": "status",
    "--task": "task",
    "--since": "since",
    "--until": "until",
    "--running-longer-than": "running_longer_than",
    "--limit": "limit",
    "--next": "next",
}


class BadInput(DispatchError, ValueError):
    """A request field the console cannot use; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def _text(values: Mapping[str, str], name: str, *, limit: int = MAX_FIELD_CHARS) -> str | None:
    """The stripped value of a field, None when absent or empty; over ``limit`` refused."""
    value = values.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > limit:
        raise BadInput(name, f"{len(value)} characters, over the limit of {limit}")
    if any(ord(ch) < 32 for ch in value):
        raise BadInput(name, "holds a control character")
    return value.strip()


def name_field(values: Mapping[str, str], name: str, *, required: bool = False) -> str | None:
    """A task or resource name: 1 to 128 printable characters."""
    value = _text(values, name, limit=MAX_NAME_CHARS)
    if value is None and required:
        raise BadInput(name, "required")
    return value


def task_id_field(value: str) -> str:
    """A task id from a URL or a form: 1 to 128 printable characters."""
    return name_field({"id": value}, "id", required=True) or ""


@dataclass(frozen=True, slots=True)
class TasksQuery:
    """The tasks page's filter, as asked (``shown``: the fields to fill the form back with)."""

    where: TaskFilter
    token: str | None
    shown: dict[str, str]


def _limit(values: Mapping[str, str]) -> int:
    text = _text(values, "limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadInput("limit", f"{text!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def parse_tasks_query(values: Mapping[str, str], *, now: float) -> TasksQuery:
    """The tasks page's filter from its query string; :class:`BadInput` names a bad field.

    Without ``status`` (and without ``running_longer_than``), the dead tasks are listed.
    """
    try:
        status_text = _text(values, "status")
        longer = _text(values, "running_longer_than")
        since = _text(values, "since")
        until = _text(values, "until")
        where = TaskFilter(
            status=parse_status(status_text or "dead") if status_text or not longer else None,
            task=name_field(values, "task"),
            since=parse_time(since, now=now, option="--since") if since else None,
            until=parse_time(until, now=now, option="--until") if until else None,
            running_longer_than_s=(
                parse_duration(longer, option="--running-longer-than") if longer else None
            ),
            limit=_limit(values),
        )
        where.resolved(now)
    except ListingError as exc:
        field = _OPTION_FIELDS.get(exc.option, exc.option)
        raise BadInput(field, str(exc).replace("--", "")) from exc
    token = _text(values, "next")
    shown = {
        name: value
        for name in ("status", "task", "since", "until", "running_longer_than")
        if (value := _text(values, name)) is not None
    }
    shown.setdefault("status", "" if longer and not status_text else where.status or "dead")
    shown["limit"] = str(where.limit)
    return TasksQuery(where=where, token=token, shown=shown)


def translate_listing_error(exc: ListingError) -> BadInput:
    """A listing error found when the page is read (a token refused) as a :class:`BadInput`."""
    return BadInput(_OPTION_FIELDS.get(exc.option, exc.option), str(exc).replace("--", ""))
