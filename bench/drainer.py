"""One dispatcher process, for the measurements that need several or a long-polling one.

::

    python -m bench.drainer --ready PATH --result PATH --max-run-s SECONDS [--until-empty]

The contract with :mod:`bench.fleet`, which starts it:

* the environment names the queue, table and endpoint (``DISPATCH_*``, ``AWS_*``);
* it builds its clients and a :class:`~dispatch.loop.dispatcher.Dispatcher` with the
  in-process worker pool, checks them (``Dispatcher.check()``), then creates the
  ``--ready`` file;
* it starts the loop when it reads the line ``go`` on stdin, so that every
  dispatcher of a measurement starts at the same moment; with ``--until-empty``
  it drains the queue and returns, otherwise it long-polls until told to stop;
* stdin is its lifeline: end-of-file (the harness closed it, or died) stops it,
  as SIGTERM and SIGINT do; it also stops by itself after ``--max-run-s``;
* on exit it writes ``--result`` atomically (JSON): its RunStats, the requests it
  sent by action and their billing units (counted from ``go``), its CPU seconds,
  the wall-clock times of ``go`` and of the end, and the (sent, started) times of
  every latency probe it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench import workload
from bench.billing import BillingMeter
from bench.output import write_atomically
from dispatch.core.config import Settings
from dispatch.core.logs import configure_logging
from dispatch.loop.dispatcher import Dispatcher, RunStats
from dispatch.store.aws import RequestCounter, async_clients

__all__ = ["GO_LINE", "harness_parser", "main", "wait_for_go"]

GO_LINE: Final = "go"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one dispatcher as the harness asks; 0 when it ran, 1 when it failed."""
    parser = harness_parser("python -m bench.drainer")
    parser.add_argument("--until-empty", action="store_true", help="drain the queue and return")
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", json=True)
    result = asyncio.run(_run(args))
    result["probes"] = workload.probe_starts()
    write_atomically(args.result, json.dumps(result, indent=1) + "\n")
    return 0 if result["error"] is None else 1


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _watch_stdin(loop, go=go, stop=stop)
    result: dict[str, Any] = {"pid": os.getpid(), "error": None}
    counter, meter = RequestCounter(), BillingMeter()
    try:
        settings = Settings.from_env()
        async with async_clients(settings, counter=counter) as clients:
            meter.attach(clients.sqs)
            meter.attach(clients.dynamodb)
            dispatcher = Dispatcher(settings, clients=clients, registry=workload.registry)
            try:
                await dispatcher.check()
                args.ready.touch()
                if not await wait_for_go(go, stop, timeout_s=args.go_timeout_s):
                    result["error"] = "stopped (or timed out) before the go signal"
                    return result
                counter.reset()
                meter.reset()
                cpu_before = time.process_time()
                result["started_at"] = time.time()
                stats = await _run_until_stopped(
                    dispatcher, stop, until_empty=args.until_empty, max_run_s=args.max_run_s
                )
                result["finished_at"] = time.time()
                result["cpu_s"] = time.process_time() - cpu_before
                result["stats"] = _stats_json(stats)
                result["requests"] = {f"{s}.{a}": n for (s, a), n in counter.snapshot().items()}
                result["usage"] = meter.snapshot().to_json()
            finally:
                await dispatcher.runner.aclose()
    except Exception as exc:  # noqa: BLE001 - reported to the harness in the result file
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    return result


async def _run_until_stopped(
    dispatcher: Dispatcher, stop: asyncio.Event, *, until_empty: bool, max_run_s: float
) -> RunStats:
    async def stop_on_signal() -> None:
        await stop.wait()
        dispatcher.stop()

    watcher = asyncio.create_task(stop_on_signal())
    try:
        return await dispatcher.run(until_empty=until_empty, for_s=max_run_s)
    finally:
        watcher.cancel()


def harness_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every benchmark child takes from its harness: where to say it is
    ready, where to write its result, how long it may run and wait for go."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--ready", type=Path, required=True, help="created once ready to go")
    parser.add_argument("--result", type=Path, required=True, help="JSON written on exit")
    parser.add_argument("--max-run-s", type=float, required=True, help="stop after this long")
    parser.add_argument("--go-timeout-s", type=float, default=120.0, help="give up waiting for go")
    return parser


async def wait_for_go(go: asyncio.Event, stop: asyncio.Event, *, timeout_s: float) -> bool:
    """Wait for ``go`` (True) or ``stop`` or ``timeout_s`` (False), whichever comes first."""
    waits = {asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    return go.is_set() and not stop.is_set()


def _watch_stdin(
    loop: asyncio.AbstractEventLoop, *, go: asyncio.Event, stop: asyncio.Event
) -> None:
    """``go`` on a line of its own starts the run; end-of-file stops it."""

    def read() -> None:
        try:
            for line in sys.stdin:
                if line.strip() == GO_LINE:
                    loop.call_soon_threadsafe(go.set)
        except (OSError, ValueError):
            pass  # stdin closed under us: the same as end-of-file
        with contextlib.suppress(RuntimeError):  # the loop has finished: nothing to stop
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, name="drainer-stdin", daemon=True).start()


def _stats_json(stats: RunStats) -> dict[str, Any]:
    return {
        "received": stats.received,
        "started": stats.started,
        "succeeded": stats.succeeded,
        "duplicates": stats.duplicates,
        "dead": stats.dead,
        "retried": stats.retried,
        "deferred": stats.deferred,
        "peak_in_flight": stats.peak_in_flight,
        "wall_s": round(stats.wall_s, 4),
    }


if __name__ == "__main__":
    sys.exit(main())
