"""Does tuning the dispatcher move its drain on this machine? Two public options, varied.

The same drain as the throughput measurement with DispatcherOptions changed one at
a time: a shorter settle-batch window (``flush_s``) and more messages held at once
(``max_in_flight``), then both. If none moves the drain rate, the limit is not the
dispatcher's pipeline but the work each task costs the local AWS.
"""

from __future__ import annotations

from typing import Any, Final

from bench.stage import EMULATOR, Stage
from bench.throughput import drain, enqueue
from dispatch.loop.dispatcher import DispatcherOptions

__all__ = ["VARIANTS", "run_sensitivity"]

VARIANTS: Final = {
    "defaults": DispatcherOptions(),
    "flush_s=0.05": DispatcherOptions(flush_s=0.05),
    "max_in_flight=256": DispatcherOptions(max_in_flight=256),
    "max_in_flight=256, flush_s=0.05": DispatcherOptions(max_in_flight=256, flush_s=0.05),
}


def run_sensitivity(stage: Stage, tasks: int, *, timeout_s: float) -> list[dict[str, Any]]:
    """One drain of ``tasks`` no-ops per variant."""
    results = []
    for n, (name, options) in enumerate(VARIANTS.items()):
        settings = stage.fresh(f"s{n}")
        enqueue(stage, settings, tasks)
        phase, stats = drain(stage, settings, tasks, timeout_s=timeout_s, options=options)
        results.append(
            {
                "variant": name,
                "tasks": tasks,
                "complete": phase.done == tasks,
                "drain_tasks_per_s": round(phase.per_s, 1),
                "drain_requests_per_task": round(sum(phase.requests.values()) / tasks, 4),
                "requests": phase.requests,
                "peak_in_flight": stats.peak_in_flight,
                "emulator_pct_of_one_core": phase.cpu.pct_of_one_core(EMULATOR),
            }
        )
    return results
