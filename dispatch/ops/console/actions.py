"""The console's actions (pause, resume, cancel, redrive, purge), refused unless allowed.

Every action is a POST that must pass, in order: the console was started with
``--allow-actions`` (else 403); the request comes from the console's own origin; it
carries this process's token in the form (or header) and in the cookie. Then its
fields are checked (:mod:`.inputs`) and it calls the same function as the CLI
command it stands for. The answer is a page saying what was done.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from dispatch.core.errors import DispatchError, TaskNotFoundError
from dispatch.ops.console.app import BACKEND, render
from dispatch.ops.console.guard import CSRF_FIELD
from dispatch.ops.console.inputs import BadInput, name_field, task_id_field
from dispatch.ops.pausing import PauseError, check_name, current_user, iso, pause, resume
from dispatch.store.pauses import Kind

__all__ = ["PURGE_CONFIRMATION", "add_routes"]

PURGE_CONFIRMATION: Final = "purge"  # what the purge form asks to be typed
_KINDS: Final[dict[str, Kind]] = {"task": "task", "resource": "resource"}


def _refused(request: web.Request, why: str) -> web.Response:
    return render(request, "error.html", {"title": "Refused", "detail": why}, status=403)


async def _allowed_form(request: web.Request) -> dict[str, str] | web.Response:
    """The action's form fields, or the 403 page that refuses it."""
    backend = request.app[BACKEND]
    if not backend.options.allow_actions:
        return _refused(
            request, "this console is read-only: start it with `dispatch ui --allow-actions`"
        )
    if not backend.guard.origin_ok(request):
        return _refused(request, "the request does not come from this console (Origin)")
    form = {key: str(value) for key, value in (await request.post()).items()}
    if not backend.guard.token_ok(request, form.get(CSRF_FIELD)):
        return _refused(request, "the request lacks this console's token (CSRF)")
    return form


def _done(request: web.Request, message: str, back: str) -> web.Response:
    return render(request, "done.html", {"message": message, "back": back})


def _target(form: dict[str, str]) -> tuple[Kind, str]:
    kind = _KINDS.get(form.get("kind", ""))
    if kind is None:
        raise BadInput("kind", "must be task or resource")
    return kind, name_field(form, "name", required=True) or ""


async def pause_action(request: web.Request) -> web.Response:
    """Pause a task or resource (every live dispatcher stops starting it within 5 s)."""
    form = await _allowed_form(request)
    if isinstance(form, web.Response):
        return form
    backend = request.app[BACKEND]
    kind, name = _target(form)
    try:
        check_name(backend.registry, kind, name)
    except PauseError as exc:
        raise BadInput("name", str(exc)) from exc
    dynamodb, settings = backend.queue.sync_clients().dynamodb, backend.queue.settings
    by = f"{current_user()} (console)"
    change = await asyncio.to_thread(pause, dynamodb, settings, kind, name, by=by)
    held = change.pause
    state = "paused" if change.changed else "already paused"
    since = f" by {held.by} since {iso(held.since)}" if held else ""
    return _done(
        request,
        f"{kind} {name}: {state}{since}; live dispatchers stop starting it within 5 s",
        "/",
    )


async def resume_action(request: web.Request) -> web.Response:
    """Resume a paused task or resource."""
    form = await _allowed_form(request)
    if isinstance(form, web.Response):
        return form
    backend = request.app[BACKEND]
    kind, name = _target(form)
    dynamodb, settings = backend.queue.sync_clients().dynamodb, backend.queue.settings
    change = await asyncio.to_thread(resume, dynamodb, settings, kind, name)
    message = (
        f"{kind} {name}: resumed; new messages start within 5 s, those that waited within a minute"
        if change.changed
        else f"{kind} {name}: was not paused"
    )
    return _done(request, message, "/")


async def cancel_action(request: web.Request) -> web.Response:
    """Cancel a task, as ``dispatch cancel`` does: a queued or retrying one at once, a
    running one by request to the dispatcher running it."""
    from dispatch.producer.cancelling import cancel

    form = await _allowed_form(request)
    if isinstance(form, web.Response):
        return form
    backend = request.app[BACKEND]
    task_id = task_id_field(form.get("task_id", ""))
    try:
        record = await asyncio.to_thread(cancel, task_id, queue=backend.queue)
    except TaskNotFoundError:
        raise
    except DispatchError as exc:  # finished: it cannot be cancelled
        return render(
            request, "error.html", {"title": "Not cancelled", "detail": str(exc)}, status=409
        )
    return _done(request, f"task {task_id}: {record.status.value}", f"/tasks/{task_id}")


async def redrive_action(request: web.Request) -> web.Response:
    """Put dead letters back on the queue (optionally one reason's or one task's)."""
    from dispatch.ops.dlq import redrive

    form = await _allowed_form(request)
    if isinstance(form, web.Response):
        return form
    backend = request.app[BACKEND]
    reason = name_field(form, "reason")
    task = name_field(form, "task")
    clients, settings = backend.queue.sync_clients(), backend.queue.settings
    report = await asyncio.to_thread(redrive, clients, settings, task=task, reason=reason)
    what = " ".join(part for part in (f"reason {reason}" if reason else "", task or "") if part)
    lines = [f"redrove {len(report.redriven)} task(s){f' ({what})' if what else ''}"]
    lines += [f"{n.entry.task_id} ({n.entry.task}): {n.why}" for n in report.not_dead]
    return _done(request, "; ".join(lines), "/dead-letters")


async def purge_action(request: web.Request) -> web.Response:
    """Delete every dead letter, once the word ``purge`` is typed in the form."""
    from dispatch.ops.dlq import purge

    form = await _allowed_form(request)
    if isinstance(form, web.Response):
        return form
    if form.get("confirm", "").strip() != PURGE_CONFIRMATION:
        raise BadInput("confirm", f"type {PURGE_CONFIRMATION!r} to delete every dead letter")
    backend = request.app[BACKEND]
    await asyncio.to_thread(purge, backend.queue.sync_clients(), backend.queue.settings)
    return _done(request, "dead-letter queue purged", "/dead-letters")


def add_routes(app: web.Application) -> None:
    """Register the actions on ``app`` (they refuse themselves when not allowed)."""
    routes: list[Any] = [
        web.post("/actions/pause", pause_action, name="pause"),
        web.post("/actions/resume", resume_action, name="resume"),
        web.post("/actions/cancel", cancel_action, name="cancel"),
        web.post("/actions/redrive", redrive_action, name="redrive"),
        web.post("/actions/purge", purge_action, name="purge"),
    ]
    app.add_routes(routes)
