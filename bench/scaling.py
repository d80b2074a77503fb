"""Drain throughput with 1, 2 and 4 dispatcher processes on one queue.

The queue is filled first (``enqueue_many``, not measured); then every dispatcher
process starts its loop at the same moment and drains until the queue is empty.
Throughput is the tasks run over the time from the first start to the last end.
The emulator's CPU over the same window says whether adding dispatchers could
help at all on this machine (its request threads share one core).
"""

from __future__ import annotations

from typing import Any, Final

from bench import workload
from bench.billing import Usage, merge
from bench.fleet import Fleet
from bench.stage import EMULATOR, Stage, environment, settings_env
from dispatch.producer.enqueue import Queue

__all__ = ["run_scaling"]

_READY_TIMEOUT_S: Final = 90.0
_EXIT_GRACE_S: Final = 30.0


def run_scaling(stage: Stage, tasks: int, *, dispatchers: int, timeout_s: float) -> dict[str, Any]:
    """Fill the queue with ``tasks`` no-ops; ``dispatchers`` processes drain it together."""
    settings = stage.fresh(f"scale{dispatchers}")
    Queue(settings).enqueue_many(workload.noop_messages(tasks))
    with (
        environment(settings_env(settings)),
        Fleet(dispatchers, until_empty=True, max_run_s=timeout_s) as fleet,
    ):
        fleet.wait_ready(timeout_s=_READY_TIMEOUT_S)
        before = stage.cpu()
        fleet.go()
        results = fleet.wait(timeout_s=timeout_s + _EXIT_GRACE_S)
        after = stage.cpu()
    started = min(r["started_at"] for r in results)
    finished = max(r["finished_at"] for r in results)
    wall_s = max(1e-9, finished - started)
    succeeded = sum(r["stats"]["succeeded"] for r in results)
    requests: dict[str, int] = {}
    for result in results:
        for name, n in result["requests"].items():
            requests[name] = requests.get(name, 0) + n
    usage = merge(Usage.from_json(r["usage"]) for r in results)
    emulator_before, emulator_after = before.cpu_s[EMULATOR], after.cpu_s[EMULATOR]
    emulator_pct = (
        None
        if emulator_before is None or emulator_after is None
        else round(
            100 * (emulator_after - emulator_before) / max(1e-9, after.wall_s - before.wall_s), 1
        )
    )
    return {
        "dispatchers": dispatchers,
        "tasks": tasks,
        "complete": succeeded == tasks,
        "succeeded": succeeded,
        "duplicates": sum(r["stats"]["duplicates"] for r in results),
        "wall_s": round(wall_s, 3),
        "drain_tasks_per_s": round(succeeded / wall_s, 1),
        "per_dispatcher": [
            {
                "succeeded": r["stats"]["succeeded"],
                "wall_s": r["stats"]["wall_s"],
                "cpu_pct_of_one_core": round(
                    100 * r["cpu_s"] / max(1e-9, r["finished_at"] - r["started_at"]), 1
                ),
            }
            for r in results
        ],
        "emulator_cpu_pct_of_one_core": emulator_pct,
        "requests": dict(sorted(requests.items())),
        "requests_per_task": round(sum(requests.values()) / max(1, tasks), 3),
        "usage": usage.to_json(),
    }
