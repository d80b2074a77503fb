"""The console's read-only pages: overview, tasks, a task, dead letters, resources, live JSON.

Each handler reads in a worker thread (the reads are boto3 calls, :mod:`.reads`) and
renders a template; nothing here changes anything.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any

from aiohttp import web

from dispatch.core.errors import TaskNotFoundError
from dispatch.ops.console import reads
from dispatch.ops.console.app import BACKEND, render
from dispatch.ops.console.inputs import parse_tasks_query, task_id_field, translate_listing_error
from dispatch.ops.listing import ListingError, list_tasks
from dispatch.ops.pausing import iso
from dispatch.ops.top import describe_age

__all__ = ["add_routes"]

_LISTED = ("dead", "retrying", "running", "cancelled")


async def overview(request: web.Request) -> web.Response:
    """Queue depth, oldest message, dispatchers, per-task activity, throttle state, pauses."""
    backend = request.app[BACKEND]
    clients, settings = backend.queue.sync_clients(), backend.queue.settings
    frame = await asyncio.to_thread(reads.live_frame, clients, settings, backend.history)
    return render(
        request,
        "overview.html",
        {
            "frame": frame,
            "oldest": describe_age(frame.oldest_message),
            "resources": reads.resource_rows(frame.resources, backend.history),
            "paused": [p.to_dict() | {"since_iso": iso(p.since)} for p in frame.paused],
            "paused_names": {(p.kind, p.name) for p in frame.paused},
        },
    )


async def live(request: web.Request) -> web.Response:
    """The live chart's data (JSON), polled by static/chart.js."""
    backend = request.app[BACKEND]
    clients, settings = backend.queue.sync_clients(), backend.queue.settings
    frame = await asyncio.to_thread(reads.live_frame, clients, settings, backend.history)
    return web.json_response(reads.live_json(frame, backend.history))


async def tasks(request: web.Request) -> web.Response:
    """Task records by status, task and time: one Query on the listing index a page."""
    backend = request.app[BACKEND]
    now = reads.now()
    asked = parse_tasks_query(request.query, now=now)
    dynamodb, table = backend.queue.sync_clients().dynamodb, backend.queue.settings.table
    try:
        page = await asyncio.to_thread(
            list_tasks, dynamodb, table, asked.where, token=asked.token, now=now
        )
    except ListingError as exc:
        raise translate_listing_error(exc) from exc
    following = None
    if page.next_token is not None:
        following = {**asked.shown, "next": page.next_token}
    return render(
        request,
        "tasks.html",
        {
            "page": page,
            "rows": [t.to_dict(now=page.now) for t in page.tasks],
            "shown": asked.shown,
            "statuses": _LISTED,
            "following": following,
        },
    )


async def find_task(request: web.Request) -> web.Response:
    """The search box: to the page of the task id typed."""
    task_id = task_id_field(request.query.get("id", ""))
    raise web.HTTPSeeOther(request.app.router["task"].url_for(task_id=task_id))


async def task_page(request: web.Request) -> web.Response:
    """One task: record, timings, result or failure, dead letter, group progress."""
    backend = request.app[BACKEND]
    task_id = task_id_field(request.match_info["task_id"])
    view = await asyncio.to_thread(reads.task_view, backend.queue, task_id)
    if view is None:
        raise TaskNotFoundError(task_id)
    return render(request, "task.html", {"task_id": task_id, "view": view})


async def dead_letters(request: web.Request) -> web.Response:
    """Dead letters grouped by reason (the first 200; reading hides each a moment)."""
    backend = request.app[BACKEND]
    clients, settings = backend.queue.sync_clients(), backend.queue.settings
    entries = await asyncio.to_thread(reads.read_dead_letters, clients, settings)
    groups = reads.dead_letter_groups(entries)
    return render(
        request,
        "dead_letters.html",
        {"groups": groups, "count": len(entries), "limit": reads.DEAD_LETTERS_SHOWN},
    )


async def resources(request: web.Request) -> web.Response:
    """Per resource: limits, effective and achieved rate, backlog, drain time, busiest keys."""
    backend = request.app[BACKEND]
    clients, settings = backend.queue.sync_clients(), backend.queue.settings
    frame = await asyncio.to_thread(reads.live_frame, clients, settings, backend.history)
    return render(
        request,
        "resources.html",
        {
            "frame": frame,
            "resources": reads.resource_rows(frame.resources, backend.history),
            "paused_names": {(p.kind, p.name) for p in frame.paused},
        },
    )


_STATIC_TYPES = {"css": "text/css", "js": "text/javascript"}


async def static(request: web.Request) -> web.Response:
    """A file shipped in the package's static/ folder (no CDN: the console works offline)."""
    name = request.match_info["name"]
    kind = name.rpartition(".")[2]
    source = files("dispatch.ops.console").joinpath("static", name)
    if kind not in _STATIC_TYPES or "/" in name or not source.is_file():
        raise web.HTTPNotFound
    return web.Response(text=source.read_text(encoding="utf-8"), content_type=_STATIC_TYPES[kind])


def add_routes(app: web.Application) -> None:
    """Register the pages on ``app``."""
    routes: list[Any] = [
        web.get("/", overview, name="overview"),
        web.get("/api/live", live, name="live"),
        web.get("/tasks", tasks, name="tasks"),
        web.get("/task", find_task, name="find_task"),
        web.get("/tasks/{task_id}", task_page, name="task"),
        web.get("/dead-letters", dead_letters, name="dead_letters"),
        web.get("/resources", resources, name="resources"),
        web.get("/static/{name}", static, name="static"),
    ]
    app.add_routes(routes)
