"""Latency from ``enqueue`` to the handler's start, with an idle dispatcher waiting.

One dispatcher process (:mod:`bench.drainer`) long-polls an empty queue with the
default options (20-second polls). This process enqueues latency probes one at a
time with ``Queue.enqueue`` (a record write, then a SendMessage), a random
50-150 ms apart, so the dispatcher is idle each time one arrives. Each probe
carries the time its enqueue call began; its handler notes when it started. The
latency is the difference (same machine, same clock): the enqueue's own two
requests, the long poll's wake-up, the claim in DynamoDB and the hand-off to the
worker pool. The part after ``enqueue`` returned is reported too.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any, Final

from bench import workload
from bench.fleet import Fleet
from bench.stage import Stage, environment, settings_env
from dispatch.core.config import Settings
from dispatch.producer.enqueue import Queue

__all__ = ["percentile", "run_latency"]

_GAP_S: Final = (0.05, 0.15)
_SETTLE_TIMEOUT_S: Final = 15.0
_READY_TIMEOUT_S: Final = 90.0
_WARM_UP_SENT_AT: Final = 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (``pct`` in 0-100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def run_latency(stage: Stage, probes: int) -> dict[str, Any]:
    """Enqueue ``probes`` probes against an idle long-polling dispatcher; the latencies."""
    settings = stage.fresh("latency")
    queue = Queue(settings)
    budget_s = probes * (_GAP_S[1] + 0.5) + 60
    returned: dict[float, float] = {}
    with environment(settings_env(settings)), Fleet(1, until_empty=False, max_run_s=budget_s) as f:
        f.wait_ready(timeout_s=_READY_TIMEOUT_S)
        f.go()
        # A first probe, not measured, so that neither side pays for connecting.
        queue.enqueue(workload.probe_message(_WARM_UP_SENT_AT))
        time.sleep(0.5)
        for _ in range(probes):
            sent_at = time.time()
            queue.enqueue(workload.probe_message(sent_at))
            returned[sent_at] = time.time()
            time.sleep(random.uniform(*_GAP_S))
        _wait_until_empty(stage, settings)
        f.stop()
        (result,) = f.wait(timeout_s=_SETTLE_TIMEOUT_S + 30)
    pairs = [(sent, started) for sent, started in result["probes"] if sent != _WARM_UP_SENT_AT]
    total_ms = [(started - sent) * 1000 for sent, started in pairs]
    after_ms = [(started - returned[sent]) * 1000 for sent, started in pairs if sent in returned]
    enqueue_ms = [(back - sent) * 1000 for sent, back in returned.items()]
    return {
        "probes": probes,
        "handled": len(pairs),
        "long_poll_s": 20,
        "enqueue_to_start_ms": _summary(total_ms),
        "enqueue_returned_to_start_ms": _summary(after_ms),
        "enqueue_call_ms": _summary(enqueue_ms),
        "requests": result["requests"],
    }


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
        "mean": round(statistics.fmean(values), 2),
    }


def _wait_until_empty(stage: Stage, settings: Settings) -> None:
    """Bounded wait for every probe to be received and deleted."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        depth = stage.queue_depth(settings)
        if depth["visible"] == 0 and depth["in_flight"] == 0:
            return
        time.sleep(0.1)
