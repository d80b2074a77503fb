"""Build the console over a queue and serve it until told to stop.

:func:`build_app` adds the pages and actions to the guarded application of
:mod:`.app`; :func:`serve` listens on a host and port (0: a free one) and reports the
URL it serves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from dispatch.ops.console import actions, pages
from dispatch.ops.console.app import Backend, base_app

__all__ = ["build_app", "serve"]


def build_app(backend: Backend) -> web.Application:
    """The console application over ``backend``: every page and action."""
    app = base_app(backend)
    pages.add_routes(app)
    actions.add_routes(app)
    return app


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[str], None],
) -> None:
    """Serve ``app`` on ``host:port`` (0: a free port), call ``on_ready`` with its URL,
    and serve until ``stop`` is set."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{bound}/")
        await stop.wait()
    finally:
        await runner.cleanup()
