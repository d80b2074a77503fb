"""Pause and resume tasks or resources (``dispatch pause`` / ``dispatch resume``).

A pause is an attribute of the queue's pauses item (:mod:`dispatch.store.pauses`):
every live dispatcher reads it within ``DispatcherOptions.pause_refresh_s`` (5 s)
and stops starting what it names; their messages wait on the queue, unclaimed, no
attempt spent, and other tasks are not delayed. Pausing what is paused, or
resuming what is not, changes nothing and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core.config import Settings, current_user
from dispatch.core.errors import DispatchError
from dispatch.store.aws import translate_error
from dispatch.store.conditional import is_condition_failure
from dispatch.store.pauses import (
    Kind,
    Pause,
    Paused,
    pause_params,
    pauses_key,
    read_paused,
    resume_params,
)
from dispatch.tasks.registry import Registry

__all__ = [
    "Change",
    "PauseError",
    "current_user",
    "describe_paused",
    "iso",
    "list_pauses",
    "pause",
    "resume",
]


class PauseError(DispatchError):
    """A pause or resume that names nothing this deployment runs."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a pause or resume did: ``changed`` False when it was already so."""

    changed: bool
    pause: Pause | None  # the pause now in force (pause) or the one removed (resume)

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json``."""
        return {"changed": self.changed, "pause": self.pause.to_dict() if self.pause else None}


def check_name(registry: Registry, kind: Kind, name: str) -> None:
    """Refuse a task or resource the registry does not know (when it knows any)."""
    specs = registry.specs()
    if not specs:
        return
    known = sorted(
        {s.name for s in specs}
        if kind == "task"
        else {s.resource.name for s in specs if s.resource is not None}
    )
    if name not in known:
        raise PauseError(
            f"no {kind} named {name!r} in this deployment's task modules; "
            f"known {kind}s: {', '.join(known) or 'none'}"
        )


def pause(dynamodb: Any, settings: Settings, kind: Kind, name: str, *, by: str) -> Change:
    """Pause ``name``; if it already is, the pause in force, unchanged."""
    params = pause_params(settings.table, settings.queue_url, kind, name, by=by, now=time.time())
    done = _update(dynamodb, params)
    if done is None:
        return Change(False, _of(list_pauses(dynamodb, settings), kind, name))
    return Change(True, _of(read_paused(done), kind, name))


def resume(dynamodb: Any, settings: Settings, kind: Kind, name: str) -> Change:
    """Resume ``name``; if it was not paused, nothing changes."""
    done = _update(dynamodb, resume_params(settings.table, settings.queue_url, kind, name))
    return Change(False, None) if done is None else Change(True, _of(read_paused(done), kind, name))


def _update(dynamodb: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """The conditional UpdateItem's returned attributes; None when its condition refused it."""
    try:
        answer = dynamodb.update_item(**params)
    except ClientError as exc:
        if is_condition_failure(exc):
            return None
        raise translate_error(exc, "UpdateItem") from exc
    except BotoCoreError as exc:
        raise translate_error(exc, "UpdateItem") from exc
    attributes: dict[str, Any] = answer.get("Attributes") or {}
    return attributes


def list_pauses(dynamodb: Any, settings: Settings) -> Paused:
    """Every pause of the queue now (one strongly consistent GetItem)."""
    try:
        answer = dynamodb.get_item(
            TableName=settings.table, Key=pauses_key(settings.queue_url), ConsistentRead=True
        )
    except (BotoCoreError, ClientError) as exc:
        raise translate_error(exc, "GetItem") from exc
    return read_paused(answer.get("Item"))


def describe_paused(paused: list[Pause]) -> str:
    """``paused: task charge (by ops@host since 12:00:01Z), ...`` for status and top."""
    if not paused:
        return "paused: nothing"
    shown = ", ".join(f"{p.kind} {p.name} (by {p.by} since {iso(p.since)})" for p in paused)
    return f"paused: {shown}"


def iso(at: float) -> str:
    """A time as `2026-12-07T12:00:01Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _of(paused: Paused, kind: Kind, name: str) -> Pause | None:
    return (paused.tasks if kind == "task" else paused.resources).get(name)
