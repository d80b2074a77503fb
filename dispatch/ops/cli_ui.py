"""``dispatch ui``: serve the web console on 127.0.0.1 until Ctrl-C.

A command of its own module, added to the ``dispatch`` group by :mod:`dispatch.ops.cli`;
the console itself is :mod:`dispatch.ops.console`. It prints the URL it serves on,
alone on one line of stdout (``--port 0`` picks a free port), so a script can read it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import click

from dispatch.core.config import parse_task_modules
from dispatch.core.errors import DispatchError
from dispatch.ops.cli_errors import errors

if TYPE_CHECKING:
    from aiohttp import web

    from dispatch.ops.console.app import ConsoleOptions
    from dispatch.producer.enqueue import Queue

__all__ = ["BesideConsole", "ui"]

DEFAULT_PORT: Final = 8321

_EPILOG: Final = """\b
Examples:
  dispatch ui                                  # read-only, http://127.0.0.1:8321/
  dispatch ui --allow-actions                  # pause, resume, cancel, redrive, purge too
  dispatch ui --port 0                         # any free port (printed)
  dispatch ui --host 0.0.0.0 --allow-remote --allowed-host ops.internal"""


@click.command("ui", epilog=_EPILOG)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs --allow-remote.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65_535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host beyond loopback (the console has no login: put it behind one).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name browsers use to reach the console (repeatable); other Host headers "
    "are refused. Required with a wildcard --host.",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow pause, resume, cancel, redrive and purge from the pages (default: read-only).",
)
@click.option(
    "--tasks",
    "tasks",
    metavar="MODULES",
    help="Task modules, to check the names paused (default: $DISPATCH_TASKS, if set).",
)
@errors
def ui(
    *,
    host: str,
    port: int,
    allow_remote: bool,
    allowed_hosts: tuple[str, ...],
    allow_actions: bool,
    tasks: str | None,
) -> None:
    """Serve the web console (overview, tasks, dead letters, resources) on 127.0.0.1,
    with your AWS credentials and DISPATCH_* settings; read-only unless --allow-actions."""
    from dispatch.ops.console.app import ConsoleOptions
    from dispatch.ops.console.guard import BindRefused, accepted_hosts
    from dispatch.producer.enqueue import default_queue
    from dispatch.tasks.registry import default_registry

    try:
        hosts = accepted_hosts(host, allow_remote=allow_remote, allowed=allowed_hosts)
    except BindRefused as exc:
        raise click.UsageError(str(exc)) from exc
    queue = default_queue()
    modules = parse_task_modules(tasks) if tasks else queue.settings.task_modules
    default_registry.import_modules(modules)
    options = ConsoleOptions(host=host, port=port, allow_actions=allow_actions, hosts=hosts)
    app = _console_app(queue, options)
    try:
        asyncio.run(_serve(app, options))
    finally:
        queue.close()


def _console_app(queue: Queue, options: ConsoleOptions) -> web.Application:
    """The console over ``queue`` and the default registry, guarded for ``options.hosts``."""
    from dispatch.ops.console.app import Backend
    from dispatch.ops.console.guard import Guard
    from dispatch.ops.console.server import build_app
    from dispatch.tasks.registry import default_registry

    guard = Guard(options.hosts)
    return build_app(Backend(queue=queue, registry=default_registry, options=options, guard=guard))


def _ready(url: str, *, allow_actions: bool) -> None:
    click.echo(url)
    sys.stdout.flush()
    mode = "actions allowed (--allow-actions)" if allow_actions else "read-only"
    click.echo(f"dispatch ui serving on {url} ({mode}); Ctrl-C stops", err=True)


async def _serve(app: web.Application, options: ConsoleOptions) -> None:
    from dispatch.ops.console.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(
            app,
            host=options.host,
            port=options.port,
            stop=stop,
            on_ready=lambda url: _ready(url, allow_actions=options.allow_actions),
        )
    except OSError as exc:  # the port is taken, the address is not this machine's
        raise DispatchError(f"cannot listen on {options.host}:{options.port}: {exc}") from exc


class BesideConsole:
    """The console served from a thread of its own beside ``dispatch dev``'s dispatcher,
    on the local AWS that ``dev`` started (actions allowed: it is the local emulator's
    data; the same-origin guard still applies)."""

    def __init__(self, *, port: int) -> None:
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self, env: Mapping[str, str], say: Callable[[str], None]) -> None:
        """Serve on 127.0.0.1 with the settings ``env`` names; ``say`` tells where (or
        why not: a taken port leaves ``dev`` running without its console)."""
        from dispatch.core.config import Settings
        from dispatch.ops.console.app import ConsoleOptions
        from dispatch.ops.console.guard import accepted_hosts
        from dispatch.producer.enqueue import Queue

        queue = Queue(Settings.from_env(env))
        queue.sync_clients()  # made now, while this process's environment names the emulator
        hosts = accepted_hosts("127.0.0.1", allow_remote=False)
        app = _console_app(queue, ConsoleOptions(port=self._port, allow_actions=True, hosts=hosts))

        async def serve_until_stopped() -> None:
            from dispatch.ops.console.server import serve

            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                await serve(
                    app,
                    host="127.0.0.1",
                    port=self._port,
                    stop=self._stop,
                    on_ready=lambda url: say(
                        f"console on {url} (actions allowed; --no-ui: none, --ui-port: another)"
                    ),
                )
            except OSError as exc:
                say(f"console not served: cannot listen on 127.0.0.1:{self._port}: {exc}")
            finally:
                queue.close()

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve_until_stopped(),), name="dispatch-ui", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (nothing when it never started)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
