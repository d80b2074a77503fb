"""``dispatch tasks``: list task records by status, task name and time from the listing index.

A command of its own module, added to the ``dispatch`` group by :mod:`dispatch.ops.cli`;
the listing itself is :mod:`dispatch.ops.listing` (one Query a page, never a Scan).
"""

from __future__ import annotations

import json
import os
import time
from typing import Final

import click
from rich.console import Console
from rich.table import Table

from dispatch.ops.cli_errors import errors
from dispatch.ops.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ListingError,
    TaskFilter,
    TaskPage,
    list_tasks,
    parse_duration,
    parse_status,
    parse_time,
)

__all__ = ["tasks"]

_PIPE_WIDTH: Final = 200

_EPILOG: Final = """\b
Examples:
  dispatch tasks --status dead --task charge          # the 50 newest dead charges
  dispatch tasks --running-longer-than 10m            # running since before 10 minutes ago
  dispatch tasks --status retrying --since 2h --json
  dispatch tasks --status dead --next TOKEN           # the page after the one that printed TOKEN"""


@click.command("tasks", epilog=_EPILOG)
@click.option("--task", "task_name", metavar="NAME", help="Only tasks of this name.")
@click.option(
    "--status",
    metavar="STATUS",
    help="running, retrying, dead or cancelled (queued and succeeded are not indexed).",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Entered the status at or after this: a duration ago (2h, 30m) or an ISO-8601 time.",
)
@click.option("--until", metavar="WHEN", help="Entered the status at or before this (as --since).")
@click.option(
    "--running-longer-than",
    metavar="DURATION",
    help="Running tasks that started at least this long ago (10m, 1h30m); implies running.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Tasks per page.",
)
@click.option("--next", "token", metavar="TOKEN", help="The next page: the token a page printed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@errors
def tasks(
    *,
    task_name: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    running_longer_than: str | None,
    limit: int,
    token: str | None,
    as_json: bool,
) -> None:
    """List task records newest first, by status, task and time (one Query on the
    listing index a page, never a Scan)."""
    try:
        page = _page(
            task_name=task_name,
            status=status,
            since=since,
            until=until,
            running_longer_than=running_longer_than,
            limit=limit,
            token=token,
        )
    except ListingError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from exc
    if as_json:
        click.echo(json.dumps(page.to_dict()))
        return
    _print(page)


def _page(
    *,
    task_name: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    running_longer_than: str | None,
    limit: int,
    token: str | None,
) -> TaskPage:
    from dispatch.producer.enqueue import default_queue

    now = time.time()
    where = TaskFilter(
        status=parse_status(status) if status is not None else None,
        task=task_name,
        since=parse_time(since, now=now, option="--since") if since is not None else None,
        until=parse_time(until, now=now, option="--until") if until is not None else None,
        running_longer_than_s=(
            parse_duration(running_longer_than, option="--running-longer-than")
            if running_longer_than is not None
            else None
        ),
        limit=limit,
    )
    where.resolved(now)  # a bad filter is refused before any configuration is read
    queue = default_queue()
    return list_tasks(
        queue.sync_clients().dynamodb, queue.settings.table, where, token=token, now=now
    )


def _print(page: TaskPage) -> None:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=_PIPE_WIDTH)
    table = Table(title=f"tasks ({len(page.tasks)})", title_justify="left")
    for column in ("task id", "task", "status", "since", "age", "attempts", "dead reason"):
        table.add_column(column)
    for listed in page.tasks:
        row = listed.to_dict(now=page.now)
        table.add_row(
            row["task_id"],
            row["task"],
            row["status"],
            row["at"],
            f"{row['age_s']:.0f} s",
            str(row["attempts"]),
            row.get("dead_reason", ""),
        )
    console.print(table)
    if page.next_token is not None:
        click.echo(f"more: add --next {page.next_token}")
