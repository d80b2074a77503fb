"""One dispatcher process of the throttle benchmark.

::

    python -m bench.throttle.worker --ready PATH --result PATH --max-run-s SECONDS

The contract with the harness (``bench.throttle.harness``):

* the environment names the queue, table and endpoint (``DISPATCH_*``, ``AWS_*``)
  and the resource (``BENCH_*``, see :mod:`bench.throttle.tasks`);
* once its clients answer (``Dispatcher.check()``) it creates the ``--ready`` file;
* it starts the loop when it reads the line ``go`` on stdin, so that every
  dispatcher of a scenario starts at the same moment;
* stdin is its lifeline: end-of-file (the harness closed it, or died) stops it,
  as SIGTERM and SIGINT do: it stops receiving, lets running tasks finish and
  settle, returns its unused tokens and slots;
* it stops by itself after ``--max-run-s`` seconds of running, and exits at the
  latest :data:`STOP_GRACE_S` after a stop request, finished or not;
* on exit it writes ``--result`` atomically: its RunStats, the DynamoDB requests
  its throttle spent on coordination, the AWS requests it sent by action, the
  time of every permit its throttle granted, how often its adaptive rate was
  lowered (by its own backpressure, or adopted from the shared bucket), and a
  snapshot of its throttle every half second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from bench.drainer import harness_parser, wait_for_go
from bench.throttle import tasks
from dispatch.core.config import Settings
from dispatch.core.logs import configure_logging
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.store.aws import RequestCounter, async_clients
from dispatch.tasks.registry import default_registry
from dispatch.throttle.limits import Permit, ResourceThrottle

SNAPSHOT_EVERY_S: Final = 0.5
GO_LINE: Final = b"go"
STOP_GRACE_S: Final = 20.0
"""After a stop request the worker exits within this long, finished or not: with the
emulator gone, the SDK's retries alone could keep its shutdown busy for minutes."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one dispatcher as the harness asks; 0 when it ran, 1 when it failed."""
    parser = harness_parser("python -m bench.throttle.worker")
    parser.add_argument("--max-in-flight", type=int, default=64, help="DispatcherOptions value")
    parser.add_argument(
        "--until-empty", action="store_true", help="drain the queue and return (a backlog run)"
    )
    parser.add_argument(
        "--no-key-leases",
        action="store_true",
        help="each dispatcher applies per-key limits alone (DispatcherOptions(key_leases=False))",
    )
    args = parser.parse_args(argv)
    configure_logging(level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"), json=True)
    permit_times: list[float] = []
    _record_permits(permit_times.append)
    rate_changes = _count_rate_changes()
    # The hard bound on this process's life, whatever happens to the loop.
    _exit_after(args.go_timeout_s + args.max_run_s + STOP_GRACE_S, "its maximum lifetime")
    result = asyncio.run(_run(args, permit_times))
    result["rate_changes"] = dict(rate_changes)
    _write_json_atomically(args.result, result)
    return 0 if result["error"] is None else 1


def _record_permits(record: Callable[[float], None]) -> None:
    """Note the wall-clock time of every permit any throttle in this process grants.

    Instrumentation for the benchmark only: it separates what the throttle decided
    (permit times) from what the backend saw (arrival times, later by the claim
    write and the HTTP request).
    """
    original = ResourceThrottle.try_start

    @functools.wraps(original)
    def try_start(self: ResourceThrottle, *args: Any, **kwargs: Any) -> Permit | float:
        answer = original(self, *args, **kwargs)
        if isinstance(answer, Permit):
            record(time.time())
        return answer

    ResourceThrottle.try_start = try_start  # type: ignore[method-assign]


def _count_rate_changes() -> Counter[str]:
    """Count the adaptive rate's decreases: on this dispatcher's own backpressure
    (``decreased``) and adopted from the bucket item (``adopted``), as the dispatcher
    sees them. Instrumentation for the benchmark only, like :func:`_record_permits`."""
    counts: Counter[str] = Counter()
    on_backpressure = ResourceThrottle.on_backpressure
    adopt_rate = ResourceThrottle.adopt_rate

    @functools.wraps(on_backpressure)
    def counted_backpressure(self: ResourceThrottle) -> bool:
        lowered = on_backpressure(self)
        counts["decreased" if lowered else "absorbed"] += 1
        return lowered

    @functools.wraps(adopt_rate)
    def counted_adopt(self: ResourceThrottle, rate_per_s: float) -> bool:
        adopted = adopt_rate(self, rate_per_s)
        counts["adopted" if adopted else "not_adopted"] += 1
        return adopted

    ResourceThrottle.on_backpressure = counted_backpressure  # type: ignore[method-assign]
    ResourceThrottle.adopt_rate = counted_adopt  # type: ignore[method-assign]
    return counts


async def _run(args: argparse.Namespace, permit_times: list[float]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_with_grace, stop)
    _watch_stdin(loop, go=go, stop=stop)
    result: dict[str, Any] = {"pid": os.getpid(), "error": None, "permit_times": permit_times}
    settings = Settings.from_env()
    counter = RequestCounter()
    try:
        async with async_clients(settings, counter=counter) as clients:
            dispatcher = Dispatcher(
                settings,
                clients=clients,
                registry=default_registry,
                options=DispatcherOptions(
                    max_in_flight=args.max_in_flight, key_leases=not args.no_key_leases
                ),
            )
            try:
                await dispatcher.check()
                args.ready.touch()
                if not await wait_for_go(go, stop, timeout_s=args.go_timeout_s):
                    result["error"] = "stopped (or timed out) before the go signal"
                    return result
                counter.reset()
                result.update(
                    await _run_dispatcher(
                        dispatcher,
                        stop,
                        max_run_s=args.max_run_s,
                        until_empty=args.until_empty,
                        counter=counter,
                    )
                )
                result["requests"] = {f"{s}.{a}": n for (s, a), n in counter.snapshot().items()}
            finally:
                await dispatcher.runner.aclose()
                await tasks.close_session()
    except Exception as exc:  # noqa: BLE001 - reported to the harness in the result file
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    return result


async def _run_dispatcher(
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    *,
    max_run_s: float,
    until_empty: bool,
    counter: RequestCounter | None = None,
) -> dict[str, Any]:
    """Run the loop until stopped (or, ``until_empty``, drained); sample the throttle meanwhile."""
    snapshots: list[dict[str, Any]] = []
    cpu_at_stop: list[float] = []

    async def stop_on_signal() -> None:
        await stop.wait()
        cpu_at_stop.append(time.process_time() - cpu_before)
        dispatcher.stop()

    async def sample() -> None:
        while True:
            now = time.time()
            for snap in dispatcher.throttle_snapshots():
                snapshots.append(
                    {
                        "t": now,
                        "effective_rate_per_s": snap.effective_rate_per_s,
                        "tokens": snap.tokens,
                        "in_flight": snap.in_flight,
                        "started": snap.started,
                        "backpressure_signals": snap.backpressure_signals,
                        "dynamodb_requests": counter.total("dynamodb") if counter else None,
                    }
                )
            await asyncio.sleep(SNAPSHOT_EVERY_S)

    go_at, cpu_before = time.time(), time.process_time()
    helpers = [asyncio.create_task(stop_on_signal()), asyncio.create_task(sample())]
    try:
        stats = await dispatcher.run(for_s=max_run_s, until_empty=until_empty)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    final = dispatcher.throttle_snapshots()
    return {
        "go_at": go_at,
        "ended_at": time.time(),
        "cpu_s": time.process_time() - cpu_before,
        # Over the window only (go to the stop signal), to compare with the machine's.
        "window_cpu_s": cpu_at_stop[0] if cpu_at_stop else time.process_time() - cpu_before,
        "stats": _stats(stats),
        "coordination_requests": dispatcher.coordination_requests,
        "tokens_dropped": _tokens_dropped(dispatcher),
        "peak_in_flight": max((s.peak_in_flight for s in final), default=0),
        "mean_hold_s": max((getattr(s, "mean_hold_s", None) or 0.0 for s in final), default=None),
        "snapshots": snapshots,
    }


def _stats(stats: RunStats) -> dict[str, Any]:
    names = (
        "received",
        "started",
        "succeeded",
        "retried",
        "backpressure",
        "dead",
        "duplicates",
        "deferred",
        "peak_in_flight",
        "throttle_wait_s",
    )
    return {name: getattr(stats, name) for name in names} | {"wall_s": stats.wall_s}


def _tokens_dropped(dispatcher: Dispatcher) -> int | None:
    """Leased tokens the shared bucket dropped unused (a diagnostic; None if not exposed)."""
    coordinator = getattr(dispatcher, "_coordinator", None)
    buckets = getattr(coordinator, "buckets", None)
    if not isinstance(buckets, dict):
        return None
    return sum(int(getattr(bucket, "dropped", 0)) for bucket in buckets.values())


def _stop_with_grace(stop: asyncio.Event) -> None:
    """Ask the loop to stop, and exit anyway :data:`STOP_GRACE_S` later."""
    if not stop.is_set():
        stop.set()
        _exit_after(STOP_GRACE_S, "the stop request")


def _exit_after(seconds: float, what: str) -> None:
    def exit_now() -> None:
        print(f"worker: still running {seconds:g} s after {what}: exiting", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()


def _watch_stdin(
    loop: asyncio.AbstractEventLoop, *, go: asyncio.Event, stop: asyncio.Event
) -> None:
    """Set ``go`` on a ``go`` line and ``stop`` at end-of-file, from a daemon thread."""

    def read() -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in sys.stdin.buffer:
                if line.strip() == GO_LINE:
                    with contextlib.suppress(RuntimeError):  # the loop has closed already
                        loop.call_soon_threadsafe(go.set)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_stop_with_grace, stop)

    threading.Thread(target=read, name="stdin-lifeline", daemon=True).start()


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload))
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
