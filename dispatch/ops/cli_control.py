"""``dispatch pause`` and ``dispatch resume``: stop and restart starting a task or a resource.

Commands of their own module, added to the ``dispatch`` group by
:mod:`dispatch.ops.cli`; the work is :mod:`dispatch.ops.pausing`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import click

from dispatch.ops.cli_errors import errors
from dispatch.ops.pausing import (
    Change,
    check_name,
    current_user,
    iso,
    list_pauses,
    pause,
    resume,
)
from dispatch.store.pauses import Kind

if TYPE_CHECKING:
    from dispatch.producer.enqueue import Queue
    from dispatch.tasks.registry import Registry

__all__ = ["pause_command", "pauses_command", "resume_command"]

_EPILOG: Final = """\b
Examples:
  dispatch pause --task charge              # every dispatcher stops starting charge within 5 s
  dispatch pause --resource orders-db       # ... every task that uses orders-db
  dispatch resume --task charge --json"""


def _target(task: str | None, resource: str | None) -> tuple[Kind, str]:
    if (task is None) == (resource is None):
        raise click.UsageError("name exactly one of --task NAME or --resource NAME")
    return ("task", task) if task is not None else ("resource", resource or "")


def _context() -> tuple[Queue, Registry]:
    from dispatch.producer.enqueue import default_queue
    from dispatch.tasks.registry import default_registry

    queue = default_queue()
    default_registry.import_modules(queue.settings.task_modules)
    return queue, default_registry


def _show(verb: str, kind: Kind, name: str, change: Change, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"action": verb, "kind": kind, "name": name, **change.to_dict()}))
        return
    held = change.pause
    since = iso(held.since) if held else ""
    if verb == "pause":
        state = "paused" if change.changed else "already paused"
        click.echo(
            f"{kind} {name}: {state} (by {held.by if held else '?'} since {since}); "
            "live dispatchers stop starting it within 5 s"
        )
    elif change.changed:
        click.echo(
            f"{kind} {name}: resumed (paused by {held.by if held else '?'} since {since}); "
            "new messages start within 5 s, those that waited within a minute"
        )
    else:
        click.echo(f"{kind} {name}: was not paused")


@click.command("pause", epilog=_EPILOG)
@click.option("--task", metavar="NAME", help="Stop starting this task.")
@click.option("--resource", metavar="NAME", help="Stop starting every task that uses it.")
@click.option("--by", metavar="WHO", help="Recorded as who paused (default: user@host).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@errors
def pause_command(task: str | None, resource: str | None, by: str | None, as_json: bool) -> None:
    """Stop every live dispatcher starting a task (or a resource's tasks) within 5 s;
    their messages wait on the queue, no attempt spent, until `dispatch resume`."""
    kind, name = _target(task, resource)
    queue, registry = _context()
    check_name(registry, kind, name)
    dynamodb = queue.sync_clients().dynamodb
    change = pause(dynamodb, queue.settings, kind, name, by=by or current_user())
    _show("pause", kind, name, change, as_json)


@click.command("resume", epilog=_EPILOG)
@click.option("--task", metavar="NAME", help="Start this task again.")
@click.option("--resource", metavar="NAME", help="Start this resource's tasks again.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@errors
def resume_command(task: str | None, resource: str | None, as_json: bool) -> None:
    """Let dispatchers start a paused task (or resource) again: within 5 s for new
    messages, within a minute for those that waited through the pause."""
    kind, name = _target(task, resource)
    queue, _ = _context()
    change = resume(queue.sync_clients().dynamodb, queue.settings, kind, name)
    _show("resume", kind, name, change, as_json)


@click.command("pauses")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@errors
def pauses_command(as_json: bool) -> None:
    """What is paused now, by whom and since when."""
    queue, _ = _context()
    paused = list_pauses(queue.sync_clients().dynamodb, queue.settings)
    if as_json:
        click.echo(json.dumps({"paused": [p.to_dict() for p in paused.all()]}))
        return
    if not paused.all():
        click.echo("nothing is paused")
    for held in paused.all():
        click.echo(f"{held.kind} {held.name}: paused by {held.by} since {iso(held.since)}")
