"""One dispatcher process of the chaos run.

::

    python -m bench.chaos.dispatcher --ready PATH [--visibility-s 6] [--lease-grace-s 5]

The contract with :mod:`bench.chaos.run`, which starts (and SIGKILLs) it:

* the environment names the queue, table and endpoint (``DISPATCH_*``, ``AWS_*``),
  the ledger directory (``CHAOS_LEDGER_DIR``) and the AWS faults to inject
  (``DISPATCH_LOCAL_FAULTS``, read by :func:`dispatch.local.faults.install_from_env`
  here: every client this process makes gets the injector);
* once its clients answer (``Dispatcher.check()``) it creates the ``--ready`` file
  and runs the loop on the chaos tasks (:mod:`bench.chaos.tasks`);
* stdin is its lifeline: end-of-file stops it (as SIGTERM does): it stops
  receiving, lets running tasks finish and settle, and exits.

``--lease-grace-s`` shortens the time the claim's lease outlives a task's timeout
(:data:`dispatch.store.state.LEASE_GRACE_S`, 30 s) so that a task whose dispatcher was
killed mid-attempt is taken over within the run rather than half a minute later. Both
claim paths read it there when they build a claim: the single claim and the batched one
(:mod:`dispatch.store.statements`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from bench.chaos import tasks
from dispatch.core.config import Settings
from dispatch.core.logs import configure_logging
from dispatch.local.faults import install_from_env
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.store import state
from dispatch.store.aws import async_clients

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one dispatcher until stdin closes or SIGTERM; 0 when it stopped cleanly."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.dispatcher")
    parser.add_argument("--ready", type=Path, required=True, help="created once ready")
    parser.add_argument("--visibility-s", type=int, default=6, help="SQS visibility timeout")
    parser.add_argument("--lease-grace-s", type=float, default=5.0, help="claim lease grace")
    parser.add_argument("--max-in-flight", type=int, default=32, help="messages held at once")
    parser.add_argument("--max-run-s", type=float, default=900.0, help="stop after this long")
    args = parser.parse_args(argv)
    configure_logging(level="ERROR", json=True)
    # Both claims (single and batched) read it from dispatch.store.state when they build.
    setattr(state, "LEASE_GRACE_S", args.lease_grace_s)  # noqa: B010 - a Final, on purpose
    install_from_env()
    asyncio.run(_run(args))
    return 0


async def _run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _watch_stdin(loop, stop)
    settings = Settings.from_env()
    options = DispatcherOptions(
        max_in_flight=args.max_in_flight,
        visibility_timeout_s=args.visibility_s,
        wait_time_s=2,
    )
    async with async_clients(settings) as clients:
        dispatcher = Dispatcher(settings, clients=clients, registry=tasks.registry, options=options)
        try:
            await dispatcher.check()
            args.ready.touch()

            async def stop_on_signal() -> None:
                await stop.wait()
                dispatcher.stop()

            watcher = asyncio.create_task(stop_on_signal())
            try:
                await dispatcher.run(for_s=args.max_run_s)
            finally:
                watcher.cancel()
        finally:
            await dispatcher.runner.aclose()


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """End-of-file on stdin (the harness closed it, or died) stops the loop."""

    def read() -> None:
        with contextlib.suppress(OSError, ValueError):
            for _ in sys.stdin.buffer:
                pass
        with contextlib.suppress(RuntimeError):  # the loop has finished already
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, name="stdin-lifeline", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
