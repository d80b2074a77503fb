"""The summary (``summary.json``) and the markdown report, from the measured sections.

The report states each target's result and, from the same measurements, what
limits the figure: which action dominates the requests per task, how full the
batches were, how busy the emulator was and what each request costs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench import pickup, prices, results_wait
from bench.analysis import TARGETS, Target
from bench.calibrate import CLAIM_CEILING, DRAIN_LABELS, ENQUEUE_LABELS

__all__ = ["markdown", "summary"]


def _get(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def summary(sections: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The figures any script can check, with each target's PASS/FAIL."""
    requests = sections.get("requests", {})
    throughput = sections.get("throughput", {})
    idle = sections.get("idle", {})
    latency = sections.get("latency", {})
    growth = sections.get("growth", [])
    scaling = sections.get("scaling", [])
    round_trips = sections.get("round_trips", {})
    deepest: Mapping[str, Any] = max(growth, key=lambda p: p["tasks"], default={})
    values: dict[str, Any] = {
        "sqs_requests_per_task": _get(requests, "dispatch", "sqs_requests_per_task"),
        "aws_requests_per_task": _get(requests, "dispatch", "aws_requests_per_task"),
        "throughput_ratio_vs_baseline": _get(throughput, "drain_ratio"),
        "idle_cost_ratio_vs_esm": _get(
            idle, "ratio_vs_esm", f"{max(prices.DISPATCHER_MEMORY_MB)}MB"
        ),
        "dollars_per_million_tasks": _get(
            requests, "dispatch", "dollars_per_million_tasks", "total"
        ),
        "latency_p50_ms": _get(latency, "enqueue_to_start_ms", "p50"),
        "latency_p99_ms": _get(latency, "enqueue_to_start_ms", "p99"),
        "emulator_depth_ratio": deepest.get("depth_ratio"),
        "throughput_ratio_vs_baseline_lean": _get(throughput, "lean_drain_ratio"),
        "sqs_requests_per_task_lean": _get(requests, "lean", "sqs_requests_per_task"),
        "aws_requests_per_task_lean": _get(requests, "lean", "aws_requests_per_task"),
        "dollars_per_million_tasks_lean": _get(
            requests, "lean", "dollars_per_million_tasks", "total"
        ),
        "pickup_responsive_idle_p99_ms": _get(
            sections, "pickup", "modes", "responsive", "idle_pickup_ms", "p99"
        ),
        "pickup_responsive_idle_ratio_vs_esm": _get(
            sections, "pickup", "modes", "responsive", "idle_ratio_vs_esm"
        ),
        "result_lag_p50_s": _get(sections, "results", "lag_s", "p50"),
    }
    out: dict[str, Any] = {
        "mode": meta.get("mode"),
        "started_at": meta.get("started_at"),
        "wall_s": meta.get("wall_s"),
        **values,
        "dynamodb_requests_per_task": _get(requests, "dispatch", "dynamodb_requests_per_task"),
        "dynamodb_requests_per_task_lean": _get(requests, "lean", "dynamodb_requests_per_task"),
        "enqueue_tasks_per_s": _get(throughput, "dispatch", "enqueue_tasks_per_s"),
        "drain_tasks_per_s": _get(throughput, "dispatch", "drain_tasks_per_s"),
        "enqueue_tasks_per_s_lean": _get(throughput, "lean", "enqueue_tasks_per_s"),
        "drain_tasks_per_s_lean": _get(throughput, "lean", "drain_tasks_per_s"),
        "baseline_enqueue_tasks_per_s": _get(throughput, "baseline", "enqueue_tasks_per_s"),
        "baseline_drain_tasks_per_s": _get(throughput, "baseline", "drain_tasks_per_s"),
        "baseline_sqs_requests_per_task": _get(requests, "baseline", "sqs_requests_per_task"),
        "baseline_dollars_per_million_tasks": _get(
            requests, "baseline", "dollars_per_million_tasks", "total"
        ),
        "idle_dollars_per_month": {
            k: v["total"] for k, v in (_get(idle, "dollars_per_month") or {}).items()
        },
        "esm_idle_dollars_per_month": _get(idle, "esm", "dollars_per_month"),
        "idle_method": _get(idle, "method"),
        "scaling_drain_tasks_per_s": {
            str(s["dispatchers"]): s["drain_tasks_per_s"] for s in scaling if "dispatchers" in s
        },
        "growth": {
            str(p["tasks"]): {
                "drain_tasks_per_s": p["drain_tasks_per_s"],
                "aws_requests_per_task": p["aws_requests_per_task"],
                "sqs_requests_per_task": p["sqs_requests_per_task"],
            }
            for p in growth
        },
        "targets": {
            t.key: {"value": values.get(t.key), "target": t.text, "result": t.check(values[t.key])}
            for t in TARGETS
        },
        "pickup": pickup.summary(sections.get("pickup", {})),
        "round_trip_ms": _get(round_trips, "round_trip_ms"),
        "throughput_ratio_vs_baseline_round_trips": _get(round_trips, "drain_ratio"),
        "throughput_ratio_vs_baseline_lean_round_trips": _get(round_trips, "lean_drain_ratio"),
        "round_trips_drain_tasks_per_s": _get(round_trips, "drain_tasks_per_s"),
        "errors": meta.get("errors", []),
    }
    return out


# --- markdown ---------------------------------------------------------------------------------
def markdown(
    sections: Mapping[str, Any],
    summary: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    chart_name: str,
) -> str:
    """The whole report."""
    plan = meta.get("plan", {})
    lines = [
        f"# Dispatch efficiency benchmark ({meta.get('mode')})",
        "",
        f"{meta.get('started_at')} · {meta.get('cores')} cores · load average at start "
        f"{', '.join(str(x) for x in meta.get('load_average_at_start', []))} · Python "
        f"{meta.get('python')} · moto {meta.get('moto')} (embedded local AWS, its own process, "
        f"127.0.0.1) · {meta.get('wall_s')} s in all. Every figure is a median or a ratio "
        "measured in this run.",
        "",
    ]
    for error in meta.get("errors", []):
        lines.append(f"> **measurement failed**: {error}")
    lines += _summary_table(sections, summary, plan)
    lines += _limits(sections, summary)
    lines += _throughput(sections)
    lines += _requests(sections)
    lines += _idle(sections)
    lines += _latency(sections)
    lines += _scaling(sections)
    lines += _growth(sections, chart_name)
    lines += pickup.markdown(sections.get("pickup", {}))
    lines += results_wait.markdown(sections.get("results", {}))
    lines += _calibration(sections)
    lines += _sensitivity(sections)
    lines += _round_trips(sections)
    return "\n".join(lines).rstrip() + "\n"


def _fmt(value: Any, digits: int = 3, *, missing: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float):
        return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _result(target: Target, summary: Mapping[str, Any]) -> str:
    result = summary["targets"][target.key]["result"]
    return f"{target.text} **{result}**"


def _summary_table(
    sections: Mapping[str, Any], summary: Mapping[str, Any], plan: Mapping[str, Any]
) -> list[str]:
    targets = {t.key: t for t in TARGETS}
    tp = sections.get("throughput", {})
    idle = sections.get("idle", {})
    latency = sections.get("latency", {})
    tasks = plan.get("throughput_tasks")
    rows = [
        "## Summary",
        "",
        "Dispatch is measured twice: with full state tracking (the default: a task record "
        "in DynamoDB, claimed and settled with conditional writes) and lean "
        "(`@task(track_state=False)`: SQS only). The issue's keys in summary.json are the "
        "full-tracking figures; the lean ones end in `_lean`.",
        "",
        "| figure | Dispatch | baseline | target |",
        "|---|---|---|---|",
        f"| enqueue, tasks/s ({_fmt(tasks)} tasks, median of {plan.get('rounds')}) | "
        f"{_fmt(summary['enqueue_tasks_per_s'], 1)} | "
        f"{_fmt(summary['baseline_enqueue_tasks_per_s'], 1)} | |",
        f"| drain, tasks/s (one dispatcher, in-process workers) | "
        f"{_fmt(summary['drain_tasks_per_s'], 1)} | "
        f"{_fmt(summary['baseline_drain_tasks_per_s'], 1)} | |",
        f"| drain throughput / baseline (median of per-round ratios) | "
        f"{_fmt(summary['throughput_ratio_vs_baseline'], 2)} x | 1 x | "
        f"{_result(targets['throughput_ratio_vs_baseline'], summary)} |",
        f"| SQS requests per task | {_fmt(summary['sqs_requests_per_task'], 3)} | "
        f"{_fmt(summary['baseline_sqs_requests_per_task'], 3)} | "
        f"{_result(targets['sqs_requests_per_task'], summary)} |",
        f"| all AWS requests per task (full state tracking) | "
        f"{_fmt(summary['aws_requests_per_task'], 3)} | "
        f"{_fmt(_get(sections, 'requests', 'baseline', 'aws_requests_per_task'), 3)} | "
        f"{_result(targets['aws_requests_per_task'], summary)} |",
        f"| $ per million tasks | {_fmt(summary['dollars_per_million_tasks'], 3)} | "
        f"{_fmt(summary['baseline_dollars_per_million_tasks'], 3)} (requests only) | |",
        f"| **lean**: enqueue, tasks/s | {_fmt(summary['enqueue_tasks_per_s_lean'], 1)} | "
        f"{_fmt(summary['baseline_enqueue_tasks_per_s'], 1)} | |",
        f"| **lean**: drain, tasks/s | {_fmt(summary['drain_tasks_per_s_lean'], 1)} | "
        f"{_fmt(summary['baseline_drain_tasks_per_s'], 1)} | |",
        f"| **lean**: drain throughput / baseline | "
        f"{_fmt(summary['throughput_ratio_vs_baseline_lean'], 2)} x | 1 x | "
        f"{_result(targets['throughput_ratio_vs_baseline_lean'], summary)} |",
        f"| **lean**: SQS requests per task | {_fmt(summary['sqs_requests_per_task_lean'], 3)} | "
        f"{_fmt(summary['baseline_sqs_requests_per_task'], 3)} | "
        f"{_result(targets['sqs_requests_per_task_lean'], summary)} |",
        f"| **lean**: all AWS requests per task | "
        f"{_fmt(summary['aws_requests_per_task_lean'], 3)} | "
        f"{_fmt(_get(sections, 'requests', 'baseline', 'aws_requests_per_task'), 3)} | "
        f"{_result(targets['aws_requests_per_task_lean'], summary)} |",
        f"| **lean**: $ per million tasks | {_fmt(summary['dollars_per_million_tasks_lean'], 3)} "
        f"| {_fmt(summary['baseline_dollars_per_million_tasks'], 3)} (requests only) | |",
        f"| idle $ per queue per month (256 MB; 128 MB) | "
        f"{_fmt(summary['idle_dollars_per_month'].get('256MB'), 4)}; "
        f"{_fmt(summary['idle_dollars_per_month'].get('128MB'), 4)} | "
        f"{_fmt(summary['esm_idle_dollars_per_month'], 4)} (idle event source mapping) | |",
        f"| idle cost / idle event source mapping | {_fmt(summary['idle_cost_ratio_vs_esm'], 3)} "
        f"| 1 | {_result(targets['idle_cost_ratio_vs_esm'], summary)} |",
        "| latency enqueue → handler start with `dispatch run` long-polling (the service mode), "
        f"p50 / p99 ms ({_fmt(latency.get('handled'))} probes) "
        f"| {_fmt(summary['latency_p50_ms'], 1)} / {_fmt(summary['latency_p99_ms'], 1)} | | |",
        "| responsive mode (deployed topology, loopback): idle-queue pickup p99 ms | "
        f"{_fmt(summary['pickup_responsive_idle_p99_ms'], 1)} | up to 60,000 (scheduled) | "
        f"{_result(targets['pickup_responsive_idle_p99_ms'], summary)} |",
        "| handler return → `result()`, median s | "
        f"{_fmt(summary['result_lag_p50_s'], 3)} | | "
        f"{_result(targets['result_lag_p50_s'], summary)} |",
        "| responsive mode: idle cost / idle event source mapping | "
        f"{_fmt(summary['pickup_responsive_idle_ratio_vs_esm'], 3)} | 1 | "
        f"{_result(targets['pickup_responsive_idle_ratio_vs_esm'], summary)} |",
        "| drain tasks/s with 1 / 2 / 4 dispatcher processes | "
        + " / ".join(_fmt(v, 1) for v in summary["scaling_drain_tasks_per_s"].values())
        + " | | |",
        "| local AWS receive+delete cost, deepest queue / empty | "
        f"{_fmt(summary['emulator_depth_ratio'], 2)} | | "
        f"{_result(targets['emulator_depth_ratio'], summary)} |",
        f"| with AWS-like round trips ({_round_trip_text(summary.get('round_trip_ms'))}): "
        "drain throughput / baseline, full; lean | "
        f"{_fmt(summary.get('throughput_ratio_vs_baseline_round_trips'), 2)} x; "
        f"{_fmt(summary.get('throughput_ratio_vs_baseline_lean_round_trips'), 2)} x | 1 x | "
        "no target |",
        "",
    ]
    if tp.get("complete") is False:
        rows.append("> Some runs did not finish every task: see the throughput section.\n")
    if idle.get("note"):
        rows.append(f"> Idle ticks: {idle['method']} ({idle['note']}).\n")
    return rows


def _limits(sections: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    """What limits each targeted figure, from the measurements (failed targets first)."""
    out = ["## What limits each figure", ""]
    findings = {
        "sqs_requests_per_task": _limit_sqs(sections),
        "aws_requests_per_task": _limit_aws(sections),
        "throughput_ratio_vs_baseline": _limit_throughput(sections),
        "idle_cost_ratio_vs_esm": _limit_idle(sections),
        "emulator_depth_ratio": _limit_depth(sections),
        "sqs_requests_per_task_lean": _limit_sqs(sections, mode="lean"),
        "aws_requests_per_task_lean": _limit_aws_lean(sections),
        "throughput_ratio_vs_baseline_lean": _limit_throughput_lean(sections),
        **pickup.limits(sections.get("pickup", {})),
        "result_lag_p50_s": (
            "The success is written within 50 ms (the success batch window), then the "
            "waiter's next read: it polls 50 ms, doubling to 1 s, so a longer task waits "
            "up to a second for its read; "
            f"{_get(sections, 'results', 'reads_per_waited_task')} reads per waited task."
        ),
    }
    ordered = sorted(TARGETS, key=lambda t: summary["targets"][t.key]["result"] != "FAIL")
    for target in ordered:
        result = summary["targets"][target.key]["result"]
        out.append(f"- **{target.label}: {result}** ({target.text}). {findings[target.key]}")
    out.append("")
    return out


def _dominant(per_task: Mapping[str, float], prefix: str = "") -> tuple[str, float, float]:
    chosen = {k: v for k, v in per_task.items() if k.startswith(prefix)}
    if not chosen:
        return ("none", 0.0, 0.0)
    name = max(chosen, key=lambda k: chosen[k])
    total = sum(chosen.values())
    return name, chosen[name], (100 * chosen[name] / total if total else 0.0)


def _breakdown(per_task: Mapping[str, float], prefix: str = "") -> str:
    parts = [f"{k} {v:.3f}" for k, v in per_task.items() if k.startswith(prefix) and v]
    return " + ".join(parts) or "none"


def _limit_sqs(sections: Mapping[str, Any], *, mode: str = "dispatch") -> str:
    dispatch = _get(sections, "requests", mode)
    if not dispatch:
        return "Not measured."
    per_task = dispatch["per_task"]["all"]
    fill = dispatch["batch_fill"]
    name, value, share = _dominant(per_task, "sqs.")
    return (
        f"Per task: {_breakdown(per_task, 'sqs.')}. The largest is {name} ({value:.3f}, "
        f"{share:.0f} % of SQS requests). Batches held "
        f"{_fmt(fill['messages_per_SendMessageBatch'], 2)} messages per SendMessageBatch, "
        f"{_fmt(fill['messages_per_ReceiveMessage'], 2)} per "
        f"ReceiveMessage and {_fmt(fill['entries_per_DeleteMessageBatch'], 2)} per "
        "DeleteMessageBatch (10 is full: 0.3 per task is the floor of send + receive + delete). "
        "Deletes are batched by a flush window (DispatcherOptions.flush_s, 0.2 s); a batch "
        "that leaves before it has 10 entries costs a fraction of a request per task."
    )


def _limit_aws(sections: Mapping[str, Any]) -> str:
    dispatch = _get(sections, "requests", "dispatch")
    if not dispatch:
        return "Not measured."
    per_task = dispatch["per_task"]["all"]
    name, value, share = _dominant(per_task)
    ddb = _breakdown(per_task, "dynamodb.")
    return (
        f"All AWS requests per task: {dispatch['aws_requests_per_task']:.3f}, of which DynamoDB "
        f"{dispatch['dynamodb_requests_per_task']:.3f} ({ddb}) and SQS "
        f"{dispatch['sqs_requests_per_task']:.3f}. The largest single action is {name} "
        f"({value:.3f} per task, {share:.0f} % of all requests). Claims go in batches: one "
        "BatchExecuteStatement of conditional PartiQL UPDATEs per receive (up to 25), and "
        "successes the same way, up to 25 within DispatcherOptions.flush_s; records at enqueue "
        "go 25 per BatchWriteItem. The floor is about 0.3 (SQS) + 0.1 (a claim batch per "
        "receive of 10) + 0.04 (success batches) + 0.04 (records at enqueue) = 0.48. "
        f"{dispatch['units_per_task']['dynamodb_write_units']:.2f} DynamoDB write units per task "
        f"(largest item {dispatch['units_per_task']['largest_item_bytes']} bytes, so every write "
        "is one unit)."
    )


def _limit_aws_lean(sections: Mapping[str, Any]) -> str:
    lean = _get(sections, "requests", "lean")
    if not lean:
        return "Not measured."
    per_task = lean["per_task"]["all"]
    return (
        f"All AWS requests per task: {lean['aws_requests_per_task']:.3f} "
        f"({_breakdown(per_task)}): send, receive and delete, ten at a time, and no DynamoDB "
        f"request ({lean['dynamodb_requests_per_task']:.3f} per task). The floor is 0.3; what "
        "is above it is partial batches (receives and deletes that leave with fewer than 10) "
        "and the until-empty checks."
    )


def _limit_throughput_lean(sections: Mapping[str, Any]) -> str:
    tp = sections.get("throughput", {})
    lean = _get(tp, "where_time_goes", "lean")
    base = _get(tp, "where_time_goes", "baseline")
    if not lean or not base:
        return "Not measured."
    ratios = ", ".join(f"{r:.2f}" for r in tp.get("lean_drain_ratios", []))
    return (
        f"Per-round ratios {ratios}. Per task drained, the emulator spent "
        f"{_fmt(lean['emulator_cpu_ms_per_task'], 2)} ms of CPU for the lean drain (baseline "
        f"{_fmt(base['emulator_cpu_ms_per_task'], 2)} ms) and the dispatcher process "
        f"{_fmt(lean['consumer_cpu_ms_per_task'], 2)} ms (the baseline's consumer "
        f"{_fmt(base['consumer_cpu_ms_per_task'], 2)} ms); the emulator was busy "
        f"{_fmt(lean['emulator_pct_of_one_core'], 0)} % of a core. Both processes share this "
        "machine's cores with each other (and with anything else running), so the lean drain "
        "is bound by the sum of the two CPU figures, not by requests."
    )


_EMULATOR_BOUND_PCT = 70.0
"""Above this share of a core the emulator is the bottleneck: its request threads share
one GIL, and thread hand-offs keep it from a full 100 % (see the claim ceiling)."""


def _limit_throughput(sections: Mapping[str, Any]) -> str:
    tp = sections.get("throughput", {})
    where = tp.get("where_time_goes")
    if not where:
        return "Not measured."
    d, b = where["dispatch"], where["baseline"]
    calibration = sections.get("calibration", {})
    claim = _get(calibration, DRAIN_LABELS["dynamodb.BatchExecuteStatement"], "emulator_cpu_ms")
    single = _get(calibration, DRAIN_LABELS["dynamodb.UpdateItem"], "emulator_cpu_ms")
    delete = _get(calibration, DRAIN_LABELS["sqs.DeleteMessage"], "emulator_cpu_ms")
    ceiling = _get(calibration, CLAIM_CEILING, "per_s")
    drain_rate = _get(tp, "dispatch", "drain_tasks_per_s")
    base_rate = _get(tp, "baseline", "drain_tasks_per_s")
    d_ms, b_ms = d["emulator_cpu_ms_per_task"], b["emulator_cpu_ms_per_task"]
    d_pct = d["emulator_pct_of_one_core"]
    parts = [
        f"Per task drained, the emulator (one process; its request threads share one core) "
        f"spent {_fmt(d_ms, 2)} ms of CPU for Dispatch and {_fmt(b_ms, 2)} ms for the "
        f"baseline, and was busy {_fmt(d_pct, 0)} % and {_fmt(b['emulator_pct_of_one_core'], 0)} "
        "% of a core while they drained."
    ]
    if d_pct is not None and d_pct >= _EMULATOR_BOUND_PCT:
        parts.append(
            "Dispatch's drain is bound by the emulator: it is as busy as it gets (its "
            "threads hand the GIL to each other, so it tops out short of 100 %)."
        )
    elif d.get("mean_hold_s_littles_law"):
        parts.append(
            "The emulator had room, so Dispatch's own pipeline set the pace: each message "
            f"was held about {_fmt(d['mean_hold_s_littles_law'], 2)} s (peak in flight "
            f"{_fmt(tp['dispatch']['peak_in_flight'])} / drain rate) for "
            f"{_fmt(d_ms, 0)} ms of emulator work: the claim, then the batched record write "
            "and delete, each waiting up to DispatcherOptions.flush_s to fill."
        )
    if d_ms and base_rate:
        target_rate = 3 * base_rate
        parts.append(
            f"3x the baseline is {_fmt(target_rate, 0)} tasks/s; at {_fmt(d_ms, 2)} ms a task "
            f"that needs {_fmt(target_rate * d_ms / 1000, 1)} emulator cores, and the emulator "
            f"has one: the target needs Dispatch's cost to the emulator under "
            f"{_fmt(1000 / target_rate, 2)} ms a task (at full use of its core)."
        )
    if claim:
        predicted = d.get("calibrated_emulator_ms_per_task", {})
        total = d.get("calibrated_total_ms_per_task") or 0
        batched = predicted.get("dynamodb.BatchExecuteStatement", 0)
        share = 100 * batched / total if total else None
        text = (
            "The claims and successes are batched: a BatchExecuteStatement of 10 conditional "
            f"claims costs the emulator {_fmt(claim, 2)} ms of CPU ({_fmt(claim / 10, 2)} ms a "
            f"task, against {_fmt(single, 2)} ms for one claim by UpdateItem and "
            f"{_fmt(delete, 2)} ms for the baseline's DeleteMessage), {_fmt(share, 0)} % of "
            "Dispatch's drain cost by the calibration"
        )
        if ceiling:
            text += (
                f"; one claim per UpdateItem (batch_claims=False), sent flat out from "
                f"{_get(calibration, CLAIM_CEILING, 'threads')} threads, tops out at "
                f"{_fmt(ceiling, 0)} claims a second"
            )
        parts.append(text + ".")
    sensitivity = sections.get("sensitivity")
    if isinstance(sensitivity, list) and sensitivity:
        variants = ", ".join(
            f"{v['variant']} {_fmt(v['drain_tasks_per_s'], 0)}/s" for v in sensitivity
        )
        parts.append(f"Dispatcher options, {sensitivity[0]['tasks']:,} tasks each: {variants}.")
    parts.append(
        f"Dispatch process CPU: {_fmt(d['consumer_cpu_ms_per_task'], 2)} ms per task "
        f"(baseline {_fmt(b['consumer_cpu_ms_per_task'], 2)} ms); drained at "
        f"{_fmt(drain_rate, 0)} tasks/s."
    )
    return " ".join(parts)


def _limit_idle(sections: Mapping[str, Any]) -> str:
    idle = sections.get("idle", {})
    if "per_month" not in idle:
        return "Not measured."
    per_tick = ", ".join(f"{k} {v:g}" for k, v in idle["requests_per_tick"].items())
    month = idle["per_month"]
    lines = idle["dollars_per_month"]["256MB"]
    return (
        f"Each tick ({idle['method']}) sent {per_tick} and took {idle['tick_ms']['p50']:g} ms "
        f"(median). A month of ticks is {month['lambda_invocations']:,} invocations and "
        f"{month['aws_requests']:,} AWS requests against the event source mapping's "
        f"{idle['esm']['requests_per_month']:,} receives. At 256 MB: SQS ${lines['sqs']:.4f}, "
        f"DynamoDB ${lines['dynamodb']:.4f}, Lambda requests ${lines['lambda_requests']:.4f}, "
        f"Lambda time ${lines['lambda_gb_s']:.4f} ({lines['gb_s']:g} GB-s). The invocation "
        "charge and the GB-seconds are most of it; the tick's duration here is on the local "
        "AWS (a real SQS round trip is slower, the client set-up the same)."
    )


def _limit_depth(sections: Mapping[str, Any]) -> str:
    growth = sections.get("growth", [])
    if not growth:
        return "Not measured."
    parts = []
    for point in growth:
        costs = point["receive_plus_delete_ms"]
        (_, empty), (deep_key, deep) = list(costs.items())[:2]
        parts.append(
            f"{_fmt(empty, 1)} ms empty, {_fmt(deep, 1)} ms at {deep_key.removeprefix('depth_')}"
        )
    return (
        "ReceiveMessage of 10 + DeleteMessageBatch of 10, median: "
        + "; ".join(parts)
        + ". The patched emulator (dispatch/local/moto_patches.py) keeps SQS calls O(log n) in "
        "queue depth, so the figures at every size measure Dispatch, not the emulator's "
        "growth; only GetQueueAttributes still counts the whole queue (see the growth table)."
    )


def _throughput(sections: Mapping[str, Any]) -> list[str]:
    tp = sections.get("throughput", {})
    if "runs" not in tp:
        return []
    out = [
        f"## 1-2. Throughput: {tp['tasks']:,} no-op tasks, Dispatch (full state tracking and "
        "lean) and the baseline in the same rounds",
        "",
        "| round | consumer | enqueue s | enqueue tasks/s | drain s | drain tasks/s "
        "| requests/task | emulator CPU % (drain) | complete |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in tp["runs"]:
        requests = sum(run["enqueue"]["requests"].values()) + sum(run["drain"]["requests"].values())
        out.append(
            f"| {run['round']} | {run['kind']} | {run['enqueue']['seconds']:.2f} | "
            f"{run['enqueue']['tasks_per_s']:,.1f} | {run['drain']['seconds']:.2f} | "
            f"{run['drain']['tasks_per_s']:,.1f} | {requests / run['tasks']:.3f} | "
            f"{_fmt(run['drain']['cpu']['pct_of_one_core'].get('emulator'), 0)} | "
            f"{'yes' if run['complete'] else 'NO'} |"
        )
    out += [
        "",
        f"Per-round drain ratios: {', '.join(f'{r:.2f}' for r in tp['drain_ratios'])} "
        f"(median {tp['drain_ratio']:.2f}); lean: "
        f"{', '.join(f'{r:.2f}' for r in tp.get('lean_drain_ratios', []))} (median "
        f"{_fmt(tp.get('lean_drain_ratio'), 2)}); enqueue ratio (enqueue_many vs SendMessage "
        f"one by one) {tp['enqueue_ratio']:.2f}. Duplicate deliveries skipped by Dispatch: "
        f"{tp['duplicates']}.",
        "",
    ]
    return out


def _requests(sections: Mapping[str, Any]) -> list[str]:
    req = sections.get("requests")
    if not req:
        return []
    d, b = req["dispatch"], req["baseline"]
    lean: Mapping[str, Any] = req.get("lean") or {}
    lean_all: Mapping[str, float] = _get(lean, "per_task", "all") or {}
    names = sorted(set(d["per_task"]["all"]) | set(b["per_task"]) | set(lean_all))
    out = [
        "## 3. AWS requests per task, by service and action (counted)",
        "",
        "Counted by `dispatch.store.aws.RequestCounter` on the queue's and the dispatcher's "
        "clients "
        f"over {req['tasks']:,} tasks per mode (every throughput round).",
        "",
        "| action | full: enqueue | full: drain | full: total | lean: total | baseline |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        out.append(
            f"| {name} | {_fmt(d['per_task']['enqueue'].get(name), 4, missing='-')} | "
            f"{_fmt(d['per_task']['drain'].get(name), 4, missing='-')} | "
            f"{_fmt(d['per_task']['all'].get(name), 4, missing='-')} | "
            f"{_fmt(lean_all.get(name), 4, missing='-')} | "
            f"{_fmt(b['per_task'].get(name), 4, missing='-')} |"
        )
    out.append(
        f"| **all** | | | **{d['aws_requests_per_task']:.4f}** | "
        f"**{_fmt(lean.get('aws_requests_per_task'), 4)}** | "
        f"**{_fmt(b['aws_requests_per_task'], 4)}** |"
    )
    units = d["units_per_task"]
    cost = d["dollars_per_million_tasks"]
    lean_cost: Mapping[str, float] = lean.get("dollars_per_million_tasks") or {}
    out += [
        "",
        f"Billing units per task (bench/billing.py), full state tracking: "
        f"{units['sqs_billed_requests']:.4f} SQS requests as billed (64 KiB chunks), "
        f"{units['dynamodb_write_units']:.4f} DynamoDB write units, "
        f"{units['dynamodb_read_units']:.4f} read units; the largest item written was "
        f"{units['largest_item_bytes']} bytes. Lean: "
        f"{_fmt(_get(lean, 'units_per_task', 'sqs_billed_requests'), 4)} SQS requests, "
        f"{_fmt(_get(lean, 'units_per_task', 'dynamodb_write_units'), 4)} write units.",
        "",
        "| $ per million tasks | full | lean | baseline |",
        "|---|---|---|---|",
    ]
    for line in ("sqs", "dynamodb_writes", "dynamodb_reads", "lambda_requests", "lambda_gb_s"):
        out.append(
            f"| {line} | {_fmt(cost.get(line), 4)} | {_fmt(lean_cost.get(line), 4)} | "
            f"{_fmt(b['dollars_per_million_tasks'].get(line), 4)} |"
        )
    out += [
        f"| **total** | **{_fmt(cost.get('total'), 4)}** | "
        f"**{_fmt(lean_cost.get('total'), 4)}** | "
        f"**{_fmt(b['dollars_per_million_tasks'].get('total'), 4)}** |",
        "",
        "Lambda lines: the dispatcher function (256 MB, in-process workers) busy for a million "
        "tasks at the drain rate measured here, one invocation per minute. The baseline's "
        "line is its requests only (where its consumer runs is not priced).",
        "",
    ]
    return out


def _idle(sections: Mapping[str, Any]) -> list[str]:
    idle = sections.get("idle", {})
    if "per_month" not in idle:
        return []
    out = [
        "## 4. Idle cost per queue per month",
        "",
        f"{idle['ticks']} schedule ticks (rate(1 minute)) against an empty queue, each "
        f"{idle['method']}; tick time p50 {idle['tick_ms']['p50']:g} ms, max "
        f"{idle['tick_ms']['max']:g} ms. Scaled to {idle['per_month']['ticks']:,} ticks a month.",
        "",
        "| $ per month | SQS | DynamoDB | Lambda requests | Lambda GB-s | schedule | total | "
        "/ idle ESM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, lines in idle["dollars_per_month"].items():
        out.append(
            f"| Dispatch, {name} | {lines['sqs']:.4f} | {lines['dynamodb']:.4f} | "
            f"{lines['lambda_requests']:.4f} | {lines['lambda_gb_s']:.4f} ({lines['gb_s']:g}) | "
            f"{lines['schedule']:.4f} | **{lines['total']:.4f}** | "
            f"{idle['ratio_vs_esm'][name]:.3f} |"
        )
    esm = idle["esm"]
    out += [
        f"| idle SQS event source mapping ({esm['receives_per_minute']} receives/min, "
        f"{esm['requests_per_month']:,} a month) | {esm['dollars_per_month']:.4f} | | | | | "
        f"**{esm['dollars_per_month']:.4f}** | 1 |",
        "",
    ]
    return out


def _latency(sections: Mapping[str, Any]) -> list[str]:
    lat = sections.get("latency", {})
    if "enqueue_to_start_ms" not in lat:
        return []
    rows = [
        ("enqueue called → handler started", lat["enqueue_to_start_ms"]),
        ("enqueue returned → handler started", lat["enqueue_returned_to_start_ms"]),
        ("the enqueue call itself (record + SendMessage)", lat["enqueue_call_ms"]),
    ]
    out = [
        "## 5. Latency with an idle dispatcher waiting (long poll)",
        "",
        f"{lat['handled']} of {lat['probes']} probes, one at a time, 50-150 ms apart; one "
        "dispatcher process long-polling (20 s) with default options.",
        "",
        "| ms | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for label, s in rows:
        out.append(
            f"| {label} | {_fmt(s.get('p50'), 1)} | {_fmt(s.get('p90'), 1)} | "
            f"{_fmt(s.get('p99'), 1)} | {_fmt(s.get('max'), 1)} |"
        )
    out.append("")
    return out


def _scaling(sections: Mapping[str, Any]) -> list[str]:
    scaling = sections.get("scaling")
    if not isinstance(scaling, list) or not scaling:
        return []
    out = [
        "## 6. Scaling: dispatcher processes on one queue",
        "",
        "| dispatchers | tasks | drain tasks/s | requests/task | emulator CPU % of a core | "
        "dispatcher CPU % each | duplicates | complete |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scaling:
        each = " / ".join(_fmt(p["cpu_pct_of_one_core"], 0) for p in s["per_dispatcher"])
        out.append(
            f"| {s['dispatchers']} | {s['tasks']:,} | {s['drain_tasks_per_s']:,.1f} | "
            f"{s['requests_per_task']:.3f} | {_fmt(s['emulator_cpu_pct_of_one_core'], 0)} | "
            f"{each} | {s['duplicates']} | {'yes' if s['complete'] else 'NO'} |"
        )
    out += [
        "",
        "On this machine one emulator process serves every dispatcher, and its request threads "
        "share one core: once it is near 100 %, more dispatchers add contention, not "
        "throughput. On AWS the services scale out; this measures Dispatch's overhead, not "
        "AWS's capacity.",
        "",
    ]
    return out


def _growth(sections: Mapping[str, Any], chart_name: str) -> list[str]:
    growth = sections.get("growth")
    if not isinstance(growth, list) or not growth:
        return []
    out = [
        "## 7. How cost grows with work",
        "",
        f"![throughput and requests per task by workload size]({chart_name})",
        "",
        "| tasks | runs | drain tasks/s | enqueue tasks/s | SQS req/task | AWS req/task | "
        "receive+delete ms, empty → full | GetQueueAttributes ms, empty → full | emulator CPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in growth:
        costs = p["call_cost_ms"]
        deep = f"depth_{p['tasks']}"
        gqa = f"{_fmt(_get(costs, 'depth_0', 'get_queue_attributes'), 1)} → " + _fmt(
            _get(costs, deep, "get_queue_attributes"), 1
        )
        rd = p["receive_plus_delete_ms"]
        out.append(
            f"| {p['tasks']:,} | {p['runs']} | {p['drain_tasks_per_s']:,.1f} | "
            f"{p['enqueue_tasks_per_s']:,.1f} | {p['sqs_requests_per_task']:.4f} | "
            f"{p['aws_requests_per_task']:.4f} | {_fmt(rd['depth_0'], 1)} → "
            f"{_fmt(rd[deep], 1)} | {gqa} | {_fmt(p['emulator_pct_of_one_core'], 0)} |"
        )
    out.append("")
    return out


def _calibration(sections: Mapping[str, Any]) -> list[str]:
    calibration = sections.get("calibration")
    if not calibration:
        return []
    where = _get(sections, "throughput", "where_time_goes", "dispatch") or {}
    per_task = _get(sections, "requests", "dispatch", "per_task") or {}
    out = [
        "## The local AWS's cost per request (calibration)",
        "",
        "One request at a time, Dispatch's own request shapes. Emulator CPU is what bounds "
        "every throughput figure here once the emulator is busy.",
        "",
        "| request | emulator CPU ms | round trip ms (median) | Dispatch per task | "
        "emulator ms per task |",
        "|---|---|---|---|---|",
    ]
    predicted = where.get("calibrated_emulator_ms_per_task", {})
    phases: Sequence[tuple[str, Mapping[str, str]]] = (
        ("enqueue", ENQUEUE_LABELS),
        ("drain", DRAIN_LABELS),
    )
    for phase, labels in phases:
        for action, label in labels.items():
            figures = calibration.get(label)
            if not figures:
                continue
            n = _get(per_task, phase, action)
            ms = predicted.get(action) if phase == "drain" else None
            if phase == "enqueue" and n is not None:
                ms = round(n * figures["emulator_cpu_ms"], 3)
            out.append(
                f"| {label} | {_fmt(figures['emulator_cpu_ms'], 2)} | "
                f"{_fmt(figures['wall_ms'], 2)} | {_fmt(n, 4)} | {_fmt(ms, 3)} |"
            )
    out.append("")
    return out


def _sensitivity(sections: Mapping[str, Any]) -> list[str]:
    sensitivity = sections.get("sensitivity")
    if not isinstance(sensitivity, list) or not sensitivity:
        return []
    out = [
        "## Dispatcher options against the drain (full run only)",
        "",
        "| DispatcherOptions | tasks | drain tasks/s | drain requests/task | peak in flight | "
        "emulator CPU % | complete |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in sensitivity:
        out.append(
            f"| {v['variant']} | {v['tasks']:,} | {v['drain_tasks_per_s']:,.1f} | "
            f"{v['drain_requests_per_task']:.4f} | {v['peak_in_flight']} | "
            f"{_fmt(v['emulator_pct_of_one_core'], 0)} | {'yes' if v['complete'] else 'NO'} |"
        )
    out.append("")
    return out


def _round_trip_text(round_trip_ms: Mapping[str, float] | None) -> str:
    if not round_trip_ms:
        return "n/a"
    return ", ".join(f"{service} {ms:g} ms" for service, ms in round_trip_ms.items())


def _round_trips(sections: Mapping[str, Any]) -> list[str]:
    rt = sections.get("round_trips")
    if not rt or "error" in rt:
        return []
    per_s = rt["drain_tasks_per_s"]
    by_round = rt["drain_tasks_per_s_by_round"]
    requests = rt["requests_per_task"]
    lines = [
        f"## With AWS-like round trips ({_round_trip_text(rt['round_trip_ms'])})",
        "",
        "A second emulator holds every request for about the network's round trip to "
        "AWS before serving it (bench/round_trips.py). The same drains as the throughput "
        f"section: {_fmt(rt['tasks'])} no-op tasks per kind and round, {rt['rounds']} "
        "round(s), the order rotating.",
        "",
        "| kind | drain tasks/s (median) | by round | requests per task | ratio to baseline |",
        "|---|---|---|---|---|",
    ]
    ratios = {
        "dispatch": f"{_fmt(rt['drain_ratio'], 2)} x "
        f"({', '.join(_fmt(r, 2) for r in rt['drain_ratios'])})",
        "lean": f"{_fmt(rt['lean_drain_ratio'], 2)} x "
        f"({', '.join(_fmt(r, 2) for r in rt['lean_drain_ratios'])})",
        "baseline": "1 x",
    }
    names = {"dispatch": "Dispatch, full state tracking", "lean": "Dispatch, lean"}
    for kind in ("dispatch", "lean", "baseline"):
        lines.append(
            f"| {names.get(kind, kind)} | {_fmt(per_s[kind], 1)} | "
            f"{', '.join(_fmt(v, 1) for v in by_round[kind])} | "
            f"{_fmt(requests[kind], 3)} | {ratios[kind]} |"
        )
    lines.append("")
    return lines
