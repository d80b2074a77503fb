"""From measurements to figures: medians, requests and dollars per task, targets, limits.

Every figure here is a median or a ratio of measurements made in the same run, so
a machine busy with something else moves Dispatch and the baseline alike. Each
target is checked (PASS/FAIL, never an error), and each figure carries the
evidence of what limits it, computed from the same measurements.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench import prices
from bench.billing import Usage, merge
from bench.calibrate import DRAIN_LABELS
from bench.stage import EMULATOR
from bench.throughput import Run

__all__ = [
    "TARGETS",
    "Target",
    "cost_per_million",
    "growth_point",
    "per_task",
    "requests_section",
    "throughput_section",
]

MILLION: Final = 1_000_000
FLAT_RATIO_MAX: Final = 1.5
"""The emulator counts as flat when a call at the deepest queue costs at most this times empty."""


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue: a summary key, a bound and which side passes."""

    key: str
    label: str
    bound: float
    at_most: bool

    def check(self, value: float | None) -> str:
        """PASS, FAIL, or n/a when the figure could not be measured."""
        if value is None or math.isnan(value):
            return "n/a"
        ok = value <= self.bound if self.at_most else value >= self.bound
        return "PASS" if ok else "FAIL"

    @property
    def text(self) -> str:
        """``≤ 0.35`` or ``≥ 3``."""
        return f"{'≤' if self.at_most else '≥'} {self.bound:g}"


TARGETS: Final = (
    Target("sqs_requests_per_task", "SQS requests per task", 0.35, at_most=True),
    Target("aws_requests_per_task", "AWS requests per task (full state tracking)", 1.5, True),
    Target("throughput_ratio_vs_baseline", "drain throughput / baseline", 3.0, at_most=False),
    Target("sqs_requests_per_task_lean", "SQS requests per task, lean", 0.35, at_most=True),
    Target("aws_requests_per_task_lean", "AWS requests per task, lean", 0.5, at_most=True),
    Target("throughput_ratio_vs_baseline_lean", "drain throughput / baseline, lean", 3.0, False),
    Target("idle_cost_ratio_vs_esm", "idle cost / idle event source mapping", 0.5, True),
    Target(
        "emulator_depth_ratio", "local AWS per-call cost, deepest / empty", FLAT_RATIO_MAX, True
    ),
    Target(
        "pickup_responsive_idle_p99_ms", "responsive mode: idle-queue pickup p99, ms", 2000, True
    ),
    Target(
        "pickup_responsive_idle_ratio_vs_esm", "responsive mode: idle cost / idle ESM", 0.5, True
    ),
    Target("result_lag_p50_s", "handler return → result(), median s", 1.0, at_most=True),
)


def per_task(requests: Mapping[str, float], tasks: int) -> dict[str, float]:
    """Requests per task by action."""
    return {name: round(n / tasks, 4) for name, n in sorted(requests.items())} if tasks else {}


def _sum(parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        for name, n in part.items():
            out[name] = out.get(name, 0) + n
    return out


def _service_total(requests: Mapping[str, float], service: str | None = None) -> float:
    return sum(n for name, n in requests.items() if service is None or name.startswith(service))


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# --- throughput ---------------------------------------------------------------------------
def throughput_section(
    dispatch: Sequence[Run],
    baseline: Sequence[Run],
    calibration: Mapping[str, Any],
    *,
    lean: Sequence[Run] = (),
) -> dict[str, Any]:
    """Medians of the rounds, the ratios to the baseline (full state tracking and lean),
    and where the drain time went."""
    ratios = _ratios(dispatch, baseline, "drain")
    lean_ratios = _ratios(lean, baseline, "drain")
    enqueue_ratios = _ratios(dispatch, baseline, "enqueue")
    rounds = [
        {"round": n + 1, **r.to_json()}
        for side in (dispatch, lean, baseline)
        for n, r in enumerate(side)
    ]
    rounds.sort(key=lambda r: r["round"])
    return {
        "tasks": dispatch[0].tasks if dispatch else 0,
        "rounds": len(dispatch),
        "complete": all(r.complete for r in (*dispatch, *lean, *baseline)),
        "duplicates": sum(r.duplicates for r in dispatch),
        "dispatch": _rates(dispatch),
        "lean": _rates(lean),
        "baseline": {
            "enqueue_tasks_per_s": round(_median([r.enqueue.per_s for r in baseline]), 1),
            "drain_tasks_per_s": round(_median([r.drain.per_s for r in baseline]), 1),
        },
        "drain_ratio": round(_median(ratios), 3),
        "drain_ratios": [round(r, 3) for r in ratios],
        "lean_drain_ratio": round(_median(lean_ratios), 3),
        "lean_drain_ratios": [round(r, 3) for r in lean_ratios],
        "enqueue_ratio": round(_median(enqueue_ratios), 3),
        "where_time_goes": {
            "dispatch": _drain_profile(dispatch, calibration, DRAIN_LABELS),
            "lean": _drain_profile(lean, calibration, DRAIN_LABELS) if lean else {},
            "baseline": _drain_profile(baseline, calibration, DRAIN_LABELS),
        },
        "runs": rounds,
    }


def _ratios(runs: Sequence[Run], baseline: Sequence[Run], phase: str) -> list[float]:
    """Per-round ratios of ``phase`` throughput, each run against its round's baseline."""
    out = []
    for run, base in zip(runs, baseline, strict=False):
        ours, theirs = getattr(run, phase).per_s, getattr(base, phase).per_s
        if theirs > 0:
            out.append(ours / theirs)
    return out


def _rates(runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "enqueue_tasks_per_s": round(_median([r.enqueue.per_s for r in runs]), 1),
        "drain_tasks_per_s": round(_median([r.drain.per_s for r in runs]), 1),
        "peak_in_flight": max((r.peak_in_flight for r in runs), default=0),
    }


def _drain_profile(
    runs: Sequence[Run], calibration: Mapping[str, Any], labels: Mapping[str, str]
) -> dict[str, Any]:
    """Emulator and consumer CPU per task while draining; the emulator-bound ceiling;
    the calibrated emulator cost of each action per task."""
    tasks = sum(r.tasks for r in runs)
    emulator = [r.drain.cpu.cpu_s.get(EMULATOR) for r in runs]
    consumer = [r.drain.cpu.cpu_s.get("bench") for r in runs]
    wall = sum(r.drain.cpu.wall_s for r in runs)
    requests = _sum([r.drain.requests for r in runs])
    predicted: dict[str, float] = {}
    for name, n in requests.items():
        label = labels.get(name)
        cost = calibration.get(label, {}).get("emulator_cpu_ms") if label else None
        if cost is not None and not math.isnan(cost):
            predicted[name] = round(n / tasks * cost, 3)
    emulator_ms = (
        None if any(e is None for e in emulator) else 1000 * sum(e or 0 for e in emulator) / tasks
    )
    consumer_ms = (
        None if any(c is None for c in consumer) else 1000 * sum(c or 0 for c in consumer) / tasks
    )
    hold_s = [r.peak_in_flight / r.drain.per_s for r in runs if r.drain.per_s and r.peak_in_flight]
    return {
        "emulator_cpu_ms_per_task": None if emulator_ms is None else round(emulator_ms, 3),
        "emulator_pct_of_one_core": None
        if emulator_ms is None or not wall
        else round(100 * (emulator_ms * tasks / 1000) / wall, 1),
        "consumer_cpu_ms_per_task": None if consumer_ms is None else round(consumer_ms, 3),
        "emulator_bound_ceiling_tasks_per_s": None
        if not emulator_ms
        else round(1000 / emulator_ms, 1),
        "calibrated_emulator_ms_per_task": predicted,
        "calibrated_total_ms_per_task": round(sum(predicted.values()), 3),
        "mean_hold_s_littles_law": round(_median(hold_s), 3) if hold_s else None,
    }


# --- requests and dollars -----------------------------------------------------------------
def requests_section(
    dispatch: Sequence[Run],
    baseline: Sequence[Run],
    *,
    drain_tasks_per_s: float,
    lean: Sequence[Run] = (),
    lean_drain_tasks_per_s: float | None = None,
) -> dict[str, Any]:
    """Requests per task by action, billing units and dollars per million tasks: full
    state tracking, lean (when measured) and the baseline."""
    base_tasks = sum(r.tasks for r in baseline)
    base = _sum([r.requests for r in baseline])
    base_usage = merge(r.usage for r in baseline)
    return {
        "tasks": sum(r.tasks for r in dispatch),
        "dispatch": _mode_requests(dispatch, drain_tasks_per_s=drain_tasks_per_s),
        "lean": _mode_requests(lean, drain_tasks_per_s=lean_drain_tasks_per_s) if lean else None,
        "baseline": {
            "per_task": per_task(base, base_tasks),
            "sqs_requests_per_task": round(_service_total(base, "sqs.") / base_tasks, 4)
            if base_tasks
            else None,
            "aws_requests_per_task": round(_service_total(base) / base_tasks, 4)
            if base_tasks
            else None,
            "dollars_per_million_tasks": cost_per_million(base_usage, base_tasks),
        },
    }


def _mode_requests(runs: Sequence[Run], *, drain_tasks_per_s: float | None) -> dict[str, Any]:
    """One mode's requests per task (enqueue, drain, both), batch fill, units and dollars."""
    tasks = sum(r.tasks for r in runs)
    enqueue = _sum([r.enqueue.requests for r in runs])
    drain = _sum([r.drain.requests for r in runs])
    both = _sum([enqueue, drain])
    usage = merge(r.usage for r in runs)
    deletes = drain.get("sqs.DeleteMessageBatch", 0)
    receives = drain.get("sqs.ReceiveMessage", 0)
    sends = enqueue.get("sqs.SendMessageBatch", 0)
    return {
        "tasks": tasks,
        "per_task": {
            "enqueue": per_task(enqueue, tasks),
            "drain": per_task(drain, tasks),
            "all": per_task(both, tasks),
        },
        "sqs_requests_per_task": round(_service_total(both, "sqs.") / tasks, 4),
        "dynamodb_requests_per_task": round(_service_total(both, "dynamodb.") / tasks, 4),
        "aws_requests_per_task": round(_service_total(both) / tasks, 4),
        "batch_fill": {
            "messages_per_SendMessageBatch": round(tasks / sends, 2) if sends else None,
            "messages_per_ReceiveMessage": round(tasks / receives, 2) if receives else None,
            "entries_per_DeleteMessageBatch": round(tasks / deletes, 2) if deletes else None,
        },
        "units_per_task": _units_per_task(usage, tasks),
        "dollars_per_million_tasks": cost_per_million(
            usage, tasks, drain_tasks_per_s=drain_tasks_per_s
        ),
    }


def _units_per_task(usage: Usage, tasks: int) -> dict[str, Any]:
    return {
        "sqs_billed_requests": round(usage.sqs_billed_requests / tasks, 4),
        "dynamodb_write_units": round(usage.total_write_units / tasks, 4),
        "dynamodb_read_units": round(usage.total_read_units / tasks, 4),
        "largest_item_bytes": usage.max_item_bytes,
        "write_units_by_action": per_task(usage.write_units, tasks),
    }


def cost_per_million(
    usage: Usage, tasks: int, *, drain_tasks_per_s: float | None = None
) -> dict[str, float]:
    """Dollars per million tasks, by line. With ``drain_tasks_per_s``, the dispatcher
    function's Lambda time too (in-process workers, the larger memory size, one
    invocation per minute of draining)."""
    if not tasks:
        return {}
    scale = MILLION / tasks
    lines = {k: v * scale for k, v in usage.dollars().items()}
    if drain_tasks_per_s:
        busy_s = MILLION / drain_tasks_per_s
        memory_gb = max(prices.DISPATCHER_MEMORY_MB) / 1024
        invocations = math.ceil(busy_s / 60)
        lines["lambda_requests"] = invocations * prices.LAMBDA_PER_MILLION_REQUESTS / MILLION
        lines["lambda_gb_s"] = busy_s * memory_gb * prices.LAMBDA_PER_GB_SECOND
    lines["total"] = sum(lines.values())
    return {k: round(v, 4) for k, v in lines.items()}


# --- growth -------------------------------------------------------------------------------
def growth_point(runs: Sequence[Run]) -> dict[str, Any]:
    """One workload size: drain throughput (median), requests per task, call cost at depth."""
    tasks = runs[0].tasks
    requests = _sum([r.requests for r in runs])
    n = sum(r.tasks for r in runs)
    costs = [r.call_cost_ms for r in runs if r.call_cost_ms]
    depth_key = f"depth_{tasks}"
    empty = _median([c["depth_0"]["receive_plus_delete"] for c in costs])
    deep = _median([c[depth_key]["receive_plus_delete"] for c in costs])
    return {
        "tasks": tasks,
        "runs": len(runs),
        "complete": all(r.complete for r in runs),
        "drain_tasks_per_s": round(_median([r.drain.per_s for r in runs]), 1),
        "enqueue_tasks_per_s": round(_median([r.enqueue.per_s for r in runs]), 1),
        "sqs_requests_per_task": round(_service_total(requests, "sqs.") / n, 4),
        "aws_requests_per_task": round(_service_total(requests) / n, 4),
        "per_task": per_task(requests, n),
        "call_cost_ms": costs[0] if costs else {},
        "receive_plus_delete_ms": {"depth_0": empty, depth_key: deep},
        "depth_ratio": round(deep / empty, 3) if empty else None,
        "emulator_pct_of_one_core": _median(
            [p for r in runs if (p := r.drain.cpu.pct_of_one_core(EMULATOR)) is not None]
        ),
    }
