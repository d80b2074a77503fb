"""A backlog drained by the Lambda topology: scheduled dispatcher invocations with real
deadlines fanning out to the worker function, as ``dispatch dev --lambda`` runs them.

::

    python -m bench.throttle.lambda_backlog --tasks N --result PATH [--lease-cap K]

A process of its own, because the benchmark's resource is declared from the
``BENCH_*`` environment when :mod:`bench.throttle.tasks` is first imported: it
starts the backend, sets ``BENCH_BACKEND_URL``, then boots the topology
(:func:`dispatch.local.dev.run_dev`, its own embedded local AWS), enqueues the
backlog before the first scheduled event, waits until the backend has seen every
task (or ``--max-run-s``), stops, and writes the backend's arrival times, when
the first event was sent, and the invocations by function and status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from bench.output import write_atomically
from dispatch.local.example.backend import Backend

POLL_S: Final = 0.1


def main(argv: Sequence[str] | None = None) -> int:
    """Drain one backlog through the Lambda topology; 0 when every task started."""
    parser = argparse.ArgumentParser(prog="python -m bench.throttle.lambda_backlog")
    parser.add_argument("--tasks", type=int, required=True, help="the backlog's size")
    parser.add_argument("--result", type=Path, required=True, help="JSON written on exit")
    parser.add_argument("--lease-cap", type=int, default=1, help="dispatcher invocations at once")
    parser.add_argument("--max-run-s", type=float, default=120.0, help="give up after this long")
    args = parser.parse_args(argv)
    with Backend.start(capacity=10_000) as backend:
        os.environ["BENCH_BACKEND_URL"] = backend.url
        from bench.throttle import tasks
        from dispatch.local.dev import DevEnvironment, run_dev

        stop = threading.Event()
        started: dict[str, float] = {}

        def enqueue(dev: DevEnvironment) -> None:
            from dispatch.core.config import Settings
            from dispatch.producer.enqueue import Queue

            queue = Queue(Settings.from_env(dev.env))
            try:
                for start in range(0, args.tasks, 500):
                    count = min(500, args.tasks - start)
                    queue.enqueue_many(
                        [tasks.call_backend.message(start + k) for k in range(count)]
                    )
            finally:
                queue.close()
            backend.reset()
            started["go_at"] = time.time()

        def watch() -> None:
            deadline = time.monotonic() + args.max_run_s
            while time.monotonic() < deadline and backend.stats().served < args.tasks:
                time.sleep(POLL_S)
            stop.set()

        watcher = threading.Thread(target=watch, name="drain-watch", daemon=True)
        watcher.start()
        summary = run_dev(
            lambda_mode=True,
            tasks="bench.throttle.tasks",
            prefix="bench-lambda",
            schedule="rate(1 minute)",
            dispatcher_timeout_s=120.0,
            worker_timeout_s=30.0,
            worker_concurrency=64,
            lease_cap=args.lease_cap,
            console=Console(file=sys.stderr),
            stop=stop,
            on_ready=enqueue,
        )
        seen = backend.stats()
    result: dict[str, Any] = {
        "go_at": started.get("go_at"),
        "arrivals": sorted(seen.arrivals),
        "peak_in_flight": seen.peak_in_flight,
        "invocations": summary.invocations,
    }
    write_atomically(args.result, json.dumps(result))
    return 0 if len(seen.arrivals) >= args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
