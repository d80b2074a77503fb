"""``python -m bench [--quick]``: throughput, requests and dollars per task, idle cost, latency.

All on the embedded local AWS (one emulator process on 127.0.0.1, emptied before
each measurement), in one run, so that every ratio compares figures measured side
by side on the same machine:

1. throughput: N no-op tasks enqueued with ``enqueue_many`` and drained by one
   dispatcher with in-process workers, with full state tracking (the default) and
   lean (``@task(track_state=False)``), in the same rounds as
2. the baseline consumer (SendMessage, receive 10, DeleteMessage one by one) in
   the same rounds; medians, and the median of the per-round ratios;
3. AWS requests per task by service and action, counted from the requests sent,
   their billing units and the dollars per million tasks (bench/prices.py);
4. idle cost per queue per month, from a simulated hour of schedule ticks;
5. latency from enqueue to handler start with an idle long-polling dispatcher;
6. drain throughput with 1, 2 and 4 dispatcher processes;
7. requests per task and drain throughput by workload size, and the local AWS's
   per-call cost with the queue empty and full;
8. pickup latency (idle and under load) and idle cost per deployment mode
   (scheduled, responsive, service) on the loopback Lambda topology
   (bench/pickup.py), and how soon ``TaskHandle.result()`` sees a result and
   what a wait reads (bench/results_wait.py);
9. the drain comparison of 1. and 2. again on a second emulator that holds each
   request for about the network's round trip to AWS (SQS 20 ms, DynamoDB 5 ms:
   bench/round_trips.py), where waiting for answers costs what it costs on AWS;

and, to say what limits those figures: the local AWS's cost per request (a
calibration, first) and, in the full run, the drain with two dispatcher options
changed (last).

It prints the report (markdown), writes ``bench/results/<section>.json``,
``summary.json``, ``report.md`` and ``efficiency.png`` (``--quick``: the same
names with ``-quick``, except ``summary.json``, which both write). Targets are
PASS/FAIL beside the figures; they never fail the command. It exits 1 only when
a measurement could not run.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from bench import analysis, chart, report
from bench.baseline import run_baseline
from bench.calibrate import run_calibration
from bench.fleet import REPO_ROOT
from bench.idle import run_idle
from bench.latency import run_latency
from bench.output import to_json, write_atomically
from bench.pickup import PickupPlan, run_pickup
from bench.plan import Plan
from bench.results_wait import run_results_wait
from bench.round_trips import run_round_trips
from bench.scaling import run_scaling
from bench.sensitivity import run_sensitivity
from bench.stage import Stage
from bench.throughput import Run, run_dispatch
from dispatch.core.logs import configure_logging

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement, print the report, write the results."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, AWS requests and dollars per task, idle cost and latency of "
        "Dispatch, beside a baseline consumer, on the embedded local AWS.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results directory"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: every context manager stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    configure_logging(level="ERROR", json=True)  # the dispatcher's own logs are not the report
    plan = Plan.quick() if args.quick else Plan.full()
    suffix = "-quick" if args.quick else ""
    meta: dict[str, Any] = {
        "benchmark": "efficiency",
        "mode": plan.mode,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "moto": version("moto"),
        "plan": {k: getattr(plan, k) for k in plan.__slots__},
    }
    started = time.monotonic()
    sections, errors = _run(plan, args.out, suffix)
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["errors"] = errors

    summary = report.summary(sections, meta)
    text = report.markdown(sections, summary, meta, chart_name=f"efficiency{suffix}.png")
    write_atomically(args.out / "summary.json", to_json(summary))
    write_atomically(args.out / f"summary{suffix or '-full'}.json", to_json(summary))
    write_atomically(args.out / f"report{suffix}.md", text)
    try:
        write_atomically(args.out / f"efficiency{suffix}.png", chart.draw(sections))
        chart_note = f"{args.out / f'efficiency{suffix}.png'}"
    except ImportError:
        chart_note = "no chart: matplotlib is not installed (pip install -e '.[bench]')"
    except (KeyError, ValueError) as exc:
        chart_note = f"no chart: {exc}"
    print(text)
    print(
        f"wrote {args.out}/summary.json, report{suffix}.md, <section>{suffix}.json; "
        f"{chart_note} ({meta['wall_s']:g} s in all)"
    )
    return 1 if errors else 0


def _run(plan: Plan, out: Path, suffix: str) -> tuple[dict[str, Any], list[str]]:
    """Every measurement on one emulator; each section written as soon as it is done."""
    sections: dict[str, Any] = {}
    errors: list[str] = []
    done: list[str] = []

    def section(name: str, measure: Callable[[], T]) -> T | None:
        done.append(name)
        _say(f"[{len(done)}] {name} ...")
        began = time.monotonic()
        try:
            value = measure()
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the rest
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            sections[name] = {"error": f"{type(exc).__name__}: {exc}"}
            _say(f"    failed: {exc}\n{traceback.format_exc()}")
            return None
        _say(f"    done in {time.monotonic() - began:.1f} s")
        return value

    def measure(name: str, run: Callable[[], Any]) -> None:
        """Measure one section, keep it (or its error) and write it at once."""
        value = section(name, run)
        if value is not None:
            sections[name] = value
        _write(out, name, suffix, sections[name])

    with Stage.start() as stage:
        calibration = section(
            "calibration", lambda: run_calibration(stage, rounds=plan.calibration_rounds)
        )
        sections["calibration"] = calibration or {}
        _write(out, "calibration", suffix, sections["calibration"])

        pairs = section("throughput", lambda: _throughput(stage, plan))
        if pairs is not None:
            dispatch, lean, baseline = pairs
            sections["throughput"] = analysis.throughput_section(
                dispatch, baseline, sections["calibration"], lean=lean
            )
            sections["requests"] = analysis.requests_section(
                dispatch,
                baseline,
                drain_tasks_per_s=sections["throughput"]["dispatch"]["drain_tasks_per_s"],
                lean=lean,
                lean_drain_tasks_per_s=sections["throughput"]["lean"]["drain_tasks_per_s"],
            )
            _write(out, "throughput", suffix, sections["throughput"])
            _write(out, "requests", suffix, sections["requests"])

        measure("idle", lambda: run_idle(stage, plan.idle_ticks, budget_s=30 + plan.idle_ticks * 5))
        measure("latency", lambda: run_latency(stage, plan.latency_probes))
        measure("scaling", lambda: _scaling(stage, plan))
        measure("growth", lambda: _growth(stage, plan, dispatch if pairs is not None else []))
        pickup_plan = PickupPlan.quick() if plan.mode == "quick" else PickupPlan.full()
        measure("pickup", lambda: run_pickup(stage, pickup_plan))
        waits = 2 if plan.mode == "quick" else 10
        measure("results", lambda: run_results_wait(stage, waits))
        if plan.sensitivity_tasks:
            tasks = plan.sensitivity_tasks
            measure(
                "sensitivity",
                lambda: run_sensitivity(stage, tasks, timeout_s=plan.drain_timeout_s(tasks)),
            )

    # On an emulator of its own, started once the first one has stopped.
    measure(
        "round_trips",
        lambda: run_round_trips(plan.round_trip_tasks, rounds=plan.round_trip_rounds),
    )
    return sections, errors


def _throughput(stage: Stage, plan: Plan) -> tuple[list[Run], list[Run], list[Run]]:
    """Rounds of Dispatch (full state tracking), Dispatch lean and the baseline, the order
    rotating from round to round so that drift hits every side alike."""
    runs: dict[str, list[Run]] = {"dispatch": [], "lean": [], "baseline": []}
    tasks = plan.throughput_tasks
    timeout_s = plan.drain_timeout_s(tasks)
    kinds = list(runs)
    for n in range(plan.rounds):
        for kind in kinds[n % 3 :] + kinds[: n % 3]:
            if kind == "baseline":
                run = run_baseline(stage, tasks, name=f"b{n}", timeout_s=timeout_s)
            else:
                run = run_dispatch(
                    stage,
                    tasks,
                    name=f"{kind[0]}{n}",
                    timeout_s=timeout_s,
                    probe_rounds=plan.depth_rounds if kind == "dispatch" else 0,
                    lean=kind == "lean",
                )
            runs[kind].append(run)
            _say(
                f"    round {n + 1} {kind:8}: enqueue {run.enqueue.per_s:7.1f}/s, "
                f"drain {run.drain.per_s:7.1f}/s, {sum(run.requests.values()) / tasks:.3f} "
                f"requests/task{'' if run.complete else ' (INCOMPLETE)'}"
            )
    return runs["dispatch"], runs["lean"], runs["baseline"]


def _scaling(stage: Stage, plan: Plan) -> list[dict[str, Any]]:
    results = []
    for count in plan.dispatchers:
        result = run_scaling(
            stage,
            plan.scaling_tasks,
            dispatchers=count,
            timeout_s=plan.drain_timeout_s(plan.scaling_tasks),
        )
        _say(
            f"    {count} dispatcher(s): {result['drain_tasks_per_s']}/s, emulator "
            f"{result['emulator_cpu_pct_of_one_core']} % of a core"
        )
        results.append(result)
    return results


def _growth(stage: Stage, plan: Plan, throughput_runs: list[Run]) -> list[dict[str, Any]]:
    """Each size once (the throughput size: its rounds, already measured)."""
    points = []
    for size in plan.sizes:
        runs = [r for r in throughput_runs if r.tasks == size]
        if not runs:
            runs = [
                run_dispatch(
                    stage,
                    size,
                    name=f"g{size}",
                    timeout_s=plan.drain_timeout_s(size),
                    probe_rounds=plan.depth_rounds,
                )
            ]
        point = analysis.growth_point(runs)
        _say(
            f"    {size} tasks: drain {point['drain_tasks_per_s']}/s, "
            f"{point['aws_requests_per_task']} requests/task, receive+delete "
            f"{point['receive_plus_delete_ms']}"
        )
        points.append(point)
    return points


def _write(out: Path, name: str, suffix: str, payload: Any) -> None:
    write_atomically(out / f"{name}{suffix}.json", to_json(payload))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
