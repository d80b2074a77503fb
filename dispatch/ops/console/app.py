"""The console's aiohttp application: its options, shared state, templates and middlewares.

:func:`base_app` makes the application the pages (:mod:`.pages`) and actions
(:mod:`.actions`) are added to, behind two middlewares: :func:`_guarded` refuses a
foreign ``Host`` and sets the security headers on every answer; :func:`_errors` turns
what goes wrong into a plain page (400 for bad input, 404, 502 for AWS or
configuration trouble, 500 otherwise), never a stack trace.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import jinja2
import structlog
from aiohttp import web

from dispatch.core.errors import ConfigurationError, DispatchError, TaskNotFoundError
from dispatch.ops.console.guard import CSRF_FIELD, Guard
from dispatch.ops.console.inputs import BadInput
from dispatch.ops.console.reads import History, redact

if TYPE_CHECKING:
    from dispatch.producer.enqueue import Queue
    from dispatch.tasks.registry import Registry

__all__ = ["BACKEND", "Backend", "ConsoleOptions", "base_app", "render"]

_LOG = structlog.get_logger("dispatch.console")
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """How the console serves: where, and whether actions are allowed."""

    host: str = "127.0.0.1"
    port: int = 8321
    allow_actions: bool = False
    hosts: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(slots=True)
class Backend:
    """What every handler shares: the queue (clients, settings), the registry, the guard."""

    queue: Queue
    registry: Registry
    options: ConsoleOptions
    guard: Guard
    history: History = field(default_factory=History)


BACKEND: Final = web.AppKey("backend", Backend)
_TEMPLATES: Final = web.AppKey("templates", jinja2.Environment)


def _iso(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _seconds(value: float | None) -> str:
    """``0.25 s``, ``95 s``, ``4.5 min``, ``2.1 h``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dispatch.ops.console", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iso"] = _iso
    env.filters["seconds"] = _seconds
    return env


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """A page from ``template``, with what every page needs (the mode, the token)."""
    backend = request.app[BACKEND]
    page = request.app[_TEMPLATES].get_template(template)
    body = page.render(
        {
            "actions": backend.options.allow_actions,
            "csrf_field": CSRF_FIELD,
            "csrf": backend.guard.token,
            "path": request.path,
            "queue_name": backend.queue.settings.queue_url.rsplit("/", 1)[-1],
            **context,
        }
    )
    response = web.Response(text=body, content_type="text/html", status=status)
    response.set_cookie(
        backend.guard.cookie_name(request),
        backend.guard.token,
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return response


def _problem(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    try:
        return render(request, "error.html", {"title": title, "detail": detail}, status=status)
    except jinja2.TemplateError:  # the error page itself failed: plain text, still no trace
        _LOG.exception("console_error_page_failed")
        return web.Response(text=f"{title}: {detail}", status=status)


@web.middleware
async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request naming a foreign host; add the security headers to every answer."""
    if not request.app[BACKEND].guard.host_ok(request):
        response: web.StreamResponse = web.Response(
            text="refused: this console answers only to the host names it serves on "
            "(a foreign Host header, as DNS rebinding sends)\n",
            status=403,
        )
    else:
        response = await handler(request)
    response.headers.update(_HEADERS)
    return response


def _described(request: web.Request, exc: Exception) -> tuple[int, str, str] | None:
    """(status, title, detail) of an error a page can name; None for anything else."""
    detail = str(exc)
    if isinstance(exc, web.HTTPNotFound):
        detail = f"nothing at {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"{request.method}: use {', '.join(sorted(exc.allowed_methods))}"
    elif isinstance(exc, DispatchError):
        detail = str(redact(detail))
    kinds: tuple[tuple[type[Exception], int, str], ...] = (
        (BadInput, 400, "Bad request"),
        (TaskNotFoundError, 404, "Not found"),
        (web.HTTPNotFound, 404, "Not found"),
        (web.HTTPMethodNotAllowed, 405, "Method not allowed"),
        (ConfigurationError, 502, "Configuration error"),
        (DispatchError, 502, "AWS error"),
    )
    for kind, status, title in kinds:
        if isinstance(exc, kind):
            return status, title, detail
    return None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What goes wrong, as a page that says what without a stack trace."""
    try:
        return await handler(request)
    except Exception as exc:  # named on the page, re-raised, or logged with its trace
        known = _described(request, exc)
        if known is not None:
            return _problem(request, *known)
        if isinstance(exc, web.HTTPException):
            raise
        _LOG.error("console_error", path=request.path, exc_info=True)
        return _problem(
            request, 500, "Internal error", f"{type(exc).__name__}; the console's log has the trace"
        )


def base_app(backend: Backend) -> web.Application:
    """An application over ``backend`` with the middlewares and templates, and no routes
    yet (:func:`dispatch.ops.console.server.build_app` adds them)."""
    app = web.Application(middlewares=[_guarded, _errors], client_max_size=64 * 1024)
    app[BACKEND] = backend
    app[_TEMPLATES] = _environment()
    return app
