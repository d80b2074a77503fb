"""From a scenario's raw data to figures, verdicts, a markdown report and JSON.

:func:`figures` turns one :class:`~bench.throttle.harness.RunData` into a
JSON-ready dict (one per scenario, series for the chart included);
:func:`summary` condenses them; :func:`markdown` renders the tables that the
command prints and writes. Verdicts are reported, never raised: a FAIL is a
figure to read, not a crash.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.throttle import metrics
from bench.throttle.harness import RunData, Scenario

__all__ = ["failed", "figures", "markdown", "summary", "write_atomically"]

RATE_TARGET_ONE_PCT: Final = 2.0
"""The achieved rate must be within 2 % of the limit with one dispatcher..."""
RATE_TARGET_MANY_PCT: Final = 5.0
"""...and within 5 % with several (the brief names four; two get the same target)."""
CONTENTION_WARNING_PCT: Final = 20.0
"""Other processes using this much of a core during a window get a warning."""
SERIES_STEP_S: Final = 0.1
QUIET_S: Final = 2.0
"""The adaptive run has recovered once no 503 came for this long."""


def rate_target_pct(dispatchers: int) -> float:
    """The allowed error of the achieved rate, in percent."""
    return RATE_TARGET_ONE_PCT if dispatchers == 1 else RATE_TARGET_MANY_PCT


def _verdict(ok: bool | None) -> str | None:
    return None if ok is None else ("PASS" if ok else "FAIL")


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def failed(scenario: Scenario, error: BaseException) -> dict[str, Any]:
    """The entry of a scenario that could not run to the end."""
    return {**_config(scenario), "error": f"{type(error).__name__}: {error}"}


def _config(s: Scenario) -> dict[str, Any]:
    return {
        "name": s.name,
        "kind": s.kind,
        "dispatchers": s.dispatchers,
        "rate_per_s": s.rate_per_s,
        "burst": s.burst,
        "max_concurrency": s.max_concurrency,
        "work_ms": s.work_ms,
        "backend_capacity": s.capacity,
        "backend_capacity_after": s.capacity_after,
        "seconds": s.seconds,
    }


def figures(run: RunData) -> dict[str, Any]:
    """Every figure of one scenario (see the module docstring)."""
    s = run.scenario
    arrivals = sorted(run.backend.arrivals)
    overloads = sorted(run.backend.overload_times)
    permits = sorted(t for w in run.workers for t in w.get("permit_times", []))
    window_s = run.stop_at - run.go_at
    worker_errors = [w["error"] for w in run.workers if w.get("error")]

    steady = metrics.steady_rate(arrivals, end=run.stop_at)
    steady_permits = metrics.steady_rate(permits, end=run.stop_at)
    at_backend = metrics.window_bound(arrivals, rate_per_s=s.rate_per_s, burst=s.burst)
    at_throttle = metrics.window_bound(permits, rate_per_s=s.rate_per_s, burst=s.burst)
    per_second = metrics.counts_per_second(arrivals, start=run.go_at, end=run.stop_at)
    # Whole seconds of the steady window (from the first arrival + 1 s): no burst, no tail.
    steady_seconds = (
        metrics.counts_per_second(
            arrivals, start=steady.start, end=steady.start + int(steady.end - steady.start)
        )
        if steady is not None
        else []
    )

    started = [int(w.get("stats", {}).get("started", 0)) for w in run.workers]
    coordination = sum(int(w.get("coordination_requests", 0)) for w in run.workers)
    requests: Counter[str] = Counter()
    for w in run.workers:
        requests.update(w.get("requests", {}))
    total_started = sum(started)
    dropped = [w.get("tokens_dropped") for w in run.workers]

    # Fewer than two arrivals after the burst second: the rate is what little arrived.
    achieved = (
        steady.rate_per_s
        if steady is not None
        else sum(1 for t in arrivals if run.go_at + 1 <= t <= run.stop_at) / window_s
    )
    error_pct = (achieved / s.rate_per_s - 1) * 100
    rate_changes: Counter[str] = Counter()
    for w in run.workers:
        rate_changes.update(w.get("rate_changes", {}))
    checks_rate = s.kind == "accuracy"
    rate_ok = (
        None
        if not checks_rate or error_pct is None
        else abs(error_pct) <= rate_target_pct(s.dispatchers)
    )
    cap_ok = None if s.max_concurrency is None else run.backend.peak_in_flight <= s.max_concurrency

    result: dict[str, Any] = {
        **_config(s),
        "error": "; ".join(worker_errors) or None,
        "notes": run.notes,
        "enqueued": run.enqueued,
        "enqueue_s": round(run.enqueue_s, 2),
        "window_s": round(window_s, 2),
        "arrivals": len(arrivals),
        "achieved_rate_per_s": _round(achieved),
        "error_pct": _round(error_pct, 2),
        "rate_target_pct": rate_target_pct(s.dispatchers) if checks_rate else None,
        "rate_verdict": _verdict(rate_ok),
        "permit_rate_per_s": _round(steady_permits.rate_per_s if steady_permits else None),
        "per_second_min": min(steady_seconds, default=None),
        "per_second_max": max(steady_seconds, default=None),
        "window_at_backend": _bound(at_backend),
        "window_at_throttle": _bound(at_throttle),
        "window_verdict": _verdict(at_backend.violations == 0),
        "peak_concurrency": run.backend.peak_in_flight,
        # Little's law: arrivals per second x seconds each is held = mean in flight.
        "mean_concurrency": round(
            sum(1 for t in arrivals if run.go_at <= t <= run.stop_at) * s.work_ms / 1000 / window_s,
            2,
        ),
        "cap_violations": (
            None
            if s.max_concurrency is None
            else max(0, run.backend.peak_in_flight - s.max_concurrency)
        ),
        "cap_verdict": _verdict(cap_ok),
        "overloads": run.backend.overloads,
        "tasks_started": total_started,
        "started_per_dispatcher": started,
        "coordination_requests": coordination,
        "coordination_per_task": _round(coordination / total_started if total_started else None, 4),
        "aws_requests": dict(sorted(requests.items())),
        "aws_requests_per_task": _round(
            sum(requests.values()) / total_started if total_started else None, 2
        ),
        "aws_requests_per_s": round(sum(requests.values()) / window_s, 1),
        "tokens_dropped": None if None in dropped else sum(int(d or 0) for d in dropped),
        "rate_changes": dict(sorted(rate_changes.items())),
        "cpu": {
            "emulator_pct_of_one_core": _round(
                None if run.emulator_cpu_s is None else run.emulator_cpu_s / window_s * 100, 1
            ),
            "dispatchers_pct_of_one_core": [
                _round(float(w["window_cpu_s"]) / window_s * 100, 1)
                for w in run.workers
                if "window_cpu_s" in w
            ],
            "harness_and_backend_pct_of_one_core": round(run.harness_cpu_s / window_s * 100, 1),
            "others_pct_of_one_core": _others_pct(run, window_s),
            "cores": os.cpu_count(),
        },
        "series": {
            "step_s": SERIES_STEP_S,
            "per_second": per_second,
            "in_flight": metrics.concurrency_series(
                arrivals,
                hold_s=s.work_ms / 1000,
                start=run.go_at,
                end=run.stop_at,
                step_s=SERIES_STEP_S,
            ),
            "overloads_per_second": metrics.counts_per_second(
                overloads, start=run.go_at, end=run.stop_at
            ),
            "effective_rate": [
                [
                    [round(snap["t"] - run.go_at, 2), _round(snap["effective_rate_per_s"], 2)]
                    for snap in w.get("snapshots", [])
                ]
                for w in run.workers
            ],
        },
    }
    if run.halved_at is not None:
        result["adaptive"] = _adaptive(run, arrivals, overloads)
    return result


def _others_pct(run: RunData, window_s: float) -> float | None:
    """CPU that processes outside this benchmark used during the window (% of one core).

    The machine's busy time minus the emulator's, the dispatchers' and the
    harness's: other work on a shared machine (its figures are then pessimistic).
    """
    if run.machine_busy_s is None or run.emulator_cpu_s is None:
        return None
    ours = run.emulator_cpu_s + run.harness_cpu_s
    ours += sum(float(w.get("window_cpu_s", 0.0)) for w in run.workers)
    return round(max(0.0, run.machine_busy_s - ours) / window_s * 100, 1)


def _bound(bound: metrics.WindowBound) -> dict[str, Any]:
    return {
        "worst": round(bound.worst, 2),
        "excess": round(bound.excess, 2),
        "violations": bound.violations,
        "late_starts": bound.late_events,
        "worst_window_s": round(bound.worst_window_s, 3),
    }


def _adaptive(run: RunData, arrivals: list[float], overloads: list[float]) -> dict[str, Any]:
    assert run.halved_at is not None
    halved = run.halved_at
    before = metrics.steady_rate([t for t in arrivals if t < halved], end=halved)
    after = [t for t in arrivals if t >= halved]
    after_rate = (len(after) / (run.stop_at - halved)) if run.stop_at > halved else None
    recovery = metrics.first_quiet(overloads, since=halved, until=run.stop_at, quiet_s=QUIET_S)
    first_after = next((t - halved for t in overloads if t >= halved), None)
    final_rates = [
        w["snapshots"][-1]["effective_rate_per_s"] for w in run.workers if w.get("snapshots")
    ]
    hold_s = run.scenario.work_ms / 1000
    return {
        "halved_at_s": round(halved - run.go_at, 2),
        "capacity_before": run.scenario.capacity,
        "capacity_after": run.scenario.capacity_after,
        "ceiling_before_per_s": round(run.scenario.capacity / hold_s, 1),
        "ceiling_after_per_s": round((run.scenario.capacity_after or 0) / hold_s, 1),
        "rate_before_per_s": _round(before.rate_per_s if before else None, 1),
        "rate_after_per_s": _round(after_rate, 1),
        "overloads_before": sum(1 for t in overloads if t < halved),
        "overloads_after": sum(1 for t in overloads if t >= halved),
        "first_overload_after_s": _round(first_after, 2),
        "overloads_stop_after_s": _round(recovery, 2),
        "quiet_s": QUIET_S,
        "effective_rate_at_end": [_round(r, 1) for r in final_rates],
    }


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Verdict counts, coordination cost by dispatcher count, and the busiest emulator."""
    ran = [r for r in results if "series" in r]
    verdicts: Counter[str] = Counter()
    for r in ran:
        for key in ("rate_verdict", "window_verdict", "cap_verdict"):
            if r.get(key):
                verdicts[f"{key.removesuffix('_verdict')} {r[key]}"] += 1
    by_dispatchers: dict[int, list[float]] = {}
    for r in ran:
        if r["kind"] == "accuracy" and r["coordination_per_task"] is not None:
            by_dispatchers.setdefault(r["dispatchers"], []).append(r["coordination_per_task"])
    return {
        "scenarios": len(results),
        "errors": [f"{r['name']}: {r['error']}" for r in results if r.get("error")],
        "verdicts": dict(sorted(verdicts.items())),
        "coordination_per_task_by_dispatchers": {
            str(n): round(sum(v) / len(v), 4) for n, v in sorted(by_dispatchers.items())
        },
        "max_aws_requests_per_s": max((r["aws_requests_per_s"] for r in ran), default=None),
        "max_emulator_cpu_pct": max(
            (r["cpu"]["emulator_pct_of_one_core"] or 0 for r in ran), default=None
        ),
    }


# --- markdown -------------------------------------------------------------------------


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: accuracy, coordination cost and adaptive tables, then notes."""
    ran = [r for r in results if "series" in r]
    lines = [
        f"# Throttle benchmark ({meta['mode']}, {meta['seconds']:g} s windows)",
        "",
        f"{meta['started_at']} · {meta['cores']} cores · Python {meta['python']} · "
        f"moto {meta['moto']} (embedded local AWS, one process) · every figure measured "
        "on this machine, over HTTP on 127.0.0.1.",
        "",
    ]
    git = meta.get("git")
    if git:
        dirty = ", ".join(git["uncommitted"]) or "none"
        lines += [f"Code: commit {git['commit']}; uncommitted changes under test: {dirty}.", ""]
    calibration = meta.get("calibration")
    if calibration:
        lines += [
            f"Emulator ceiling: {calibration['update_item_per_s']:g} DynamoDB UpdateItem/s flat "
            f"out from {calibration['client_threads']} client threads, the emulator at "
            f"{_fmt(calibration['emulator_cpu_pct_of_one_core'])} % of one core (a task costs "
            "about 1.5 to 2 requests, most of them UpdateItem).",
            "",
        ]
    lines += [
        "## Rate, burst and concurrency",
        "",
        "Achieved rate: backend arrivals from the first + 1 s to the last; per second: the "
        "arrivals in each whole second of that window. Worst window: the "
        "largest `count - rate·w` over every window of arrivals (the bound is the burst); "
        "'over' counts the windows above `rate·w + burst`. 'At throttle' is the same over "
        "the permit times the dispatchers' throttles granted: the difference between the "
        "two is what happens after the permit (the event loop, the HTTP request).",
        "",
    ]
    rows = []
    for r in ran:
        if r["kind"] == "adaptive":
            continue
        target = r["rate_target_pct"]
        rate_cell = f"{_fmt(r['error_pct'], '+.2f')} %"
        if r["rate_verdict"]:
            rate_cell += f" (±{target:g} %) **{r['rate_verdict']}**"
        backend = r["window_at_backend"]
        throttle = r["window_at_throttle"]
        cap = r["max_concurrency"]
        conc = f"{r['peak_concurrency']}" + (
            f" / cap {cap} **{r['cap_verdict']}** (mean {r['mean_concurrency']:g})"
            if cap is not None
            else ""
        )
        rows.append(
            [
                r["name"],
                str(r["dispatchers"]),
                f"{r['rate_per_s']:g} / {r['burst']}",
                _fmt(r["achieved_rate_per_s"], ".2f"),
                rate_cell,
                f"{_fmt(r['per_second_min'])}-{_fmt(r['per_second_max'])}",
                f"{backend['worst']:.2f}, {backend['violations']} over **{r['window_verdict']}**",
                f"{throttle['worst']:.2f}, {throttle['violations']} over",
                conc,
            ]
        )
    lines += _table(
        [
            "scenario",
            "disp.",
            "rate / burst",
            "achieved /s",
            "error (target)",
            "per second min-max",
            "worst window at backend (≤ burst)",
            "at throttle",
            "peak in flight",
        ],
        rows,
    )
    lines += [
        "",
        "## Cost of coordination",
        "",
        "Coordination: the DynamoDB UpdateItems the dispatchers' shared throttle sent "
        "(`Dispatcher.coordination_requests`: bucket leases, slot leases and renewals, "
        "conditional-write conflicts included) per task started. All AWS: every request the "
        "dispatchers sent (claims, settlements, receives, deletes, deferrals). CPU in % of one "
        "core over the window; 'other processes' is load on the machine from outside this "
        "benchmark.",
        "",
    ]
    rows = [
        [
            r["name"],
            str(r["dispatchers"]),
            str(r["tasks_started"]),
            " / ".join(str(n) for n in r["started_per_dispatcher"]),
            str(r["coordination_requests"]),
            _fmt(r["coordination_per_task"], ".3f"),
            _fmt(r["aws_requests_per_task"], ".2f"),
            f"{r['aws_requests_per_s']:.0f}",
            _fmt(r["tokens_dropped"]),
            f"{_fmt(r['cpu']['emulator_pct_of_one_core'], '.0f')} / "
            f"{_fmt(sum(x or 0 for x in r['cpu']['dispatchers_pct_of_one_core']), '.0f')} / "
            f"{_fmt(r['cpu']['others_pct_of_one_core'], '.0f')}",
        ]
        for r in ran
    ]
    lines += _table(
        [
            "scenario",
            "disp.",
            "tasks started",
            "per dispatcher",
            "coordination requests",
            "per task",
            "all AWS requests per task",
            "AWS requests /s",
            "leased tokens dropped",
            "CPU % emulator / dispatchers / other processes",
        ],
        rows,
    )
    adaptive = [r for r in ran if "adaptive" in r]
    if adaptive:
        lines += [
            "",
            "## Adaptive rate under a capacity halving",
            "",
            f"The backend serves `capacity` requests at once (503 beyond); each holds "
            f"{adaptive[0]['work_ms']} ms, so its ceiling is capacity / hold. The capacity "
            f"halves at mid-window; 'overloads stop' is the time from the halving to the last "
            f"503 before {QUIET_S:g} s without one.",
            "",
        ]
        rows = []
        for r in adaptive:
            a = r["adaptive"]
            stop = a["overloads_stop_after_s"]
            rows.append(
                [
                    r["name"],
                    str(r["dispatchers"]),
                    f"{r['rate_per_s']:g}",
                    f"{a['capacity_before']} → {a['capacity_after']} "
                    f"({a['ceiling_before_per_s']:g} → {a['ceiling_after_per_s']:g} /s)",
                    f"{_fmt(a['rate_before_per_s'])} → {_fmt(a['rate_after_per_s'])}",
                    f"{a['overloads_before']} / {a['overloads_after']}",
                    "did not stop" if stop is None else f"{stop:.1f} s",
                    f"{r['rate_changes'].get('decreased', 0)} / "
                    f"{r['rate_changes'].get('absorbed', 0)} / "
                    f"{r['rate_changes'].get('adopted', 0)}",
                    ", ".join(_fmt(x) for x in a["effective_rate_at_end"]),
                ]
            )
        lines += _table(
            [
                "scenario",
                "disp.",
                "limit /s",
                "capacity (ceiling)",
                "achieved /s before → after",
                "503s before / after",
                "overloads stop after",
                "rate halved / signal absorbed by cool-down / lower rate adopted from the item",
                "effective rate at end /s",
            ],
            rows,
        )
    errors = [r for r in results if r.get("error")]
    notes = [n for r in ran for n in r["notes"]]
    busy = [r for r in ran if (r["cpu"]["others_pct_of_one_core"] or 0) >= CONTENTION_WARNING_PCT]
    if errors or notes or busy:
        lines += ["", "## Problems", ""]
        lines += [f"- {r['name']}: {r['error']}" for r in errors]
        lines += [f"- {n}" for n in notes]
        lines += [
            f"- {r['name']}: other processes used {r['cpu']['others_pct_of_one_core']:g} % of "
            "a core during the window; its figures are pessimistic (run again on a quiet "
            "machine)"
            for r in busy
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if isinstance(data, str):
        partial.write_text(data, encoding="utf-8")
    else:
        partial.write_bytes(data)
    partial.replace(path)


def to_json(payload: Any) -> str:
    """Indented JSON, except that a list of numbers (or of such lists) stays on one line."""
    return _encode(payload, "") + "\n"


def _flat(value: Any) -> bool:
    return isinstance(value, list) and all(
        not isinstance(v, dict | list) or (isinstance(v, list) and _flat(v)) for v in value
    )


def _encode(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_encode(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and value and not _flat(value):
        items = [f"{inner}{_encode(v, inner)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return json.dumps(value, separators=(", ", ": "))
