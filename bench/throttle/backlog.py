"""The backlog section of the throttle benchmark: a queue that is already full when the
dispatchers start, drained to its last task.

For each :class:`BacklogScenario` :func:`run_backlog` empties the emulator,
provisions fresh resources, enqueues the whole backlog first (tasks with a
record each, as users run them), starts N dispatcher processes
(:mod:`bench.throttle.worker` with ``--until-empty``) and says ``go`` to all at
once; each dispatcher returns once the queue is empty. The backend's arrival
times are the starts: :func:`figures` compares them with the ideal schedule of
the same limits (:func:`ideal_starts`): the makespan from the first start to the
last against the ideal, and how late each start came against its ideal slot.

The ideal: a token bucket of ``burst`` tokens that starts full and refills at
``rate`` grants start ``k`` at ``max(0, (k - burst + 1) / rate)``; a cap of ``c``
tasks of ``d`` seconds each starts ``k`` no sooner than ``d`` after start
``k - c`` (``d`` as the dispatchers measured it: the handler's whole run, its
HTTP call included, not only the backend's work). The makespan target is
``ideal x 1.05 + 0.5 s``; lateness p99 at most 1 s. "Extra SQS requests" are
what deferral costs, per task: visibility changes (hides and recalls), copies
sent again, and receives beyond one per ten tasks (:func:`_deferral_requests`);
"SQS/task" counts every SQS request.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from bench.throttle import tasks
from bench.throttle.harness import (
    READY_TIMEOUT_S,
    REPO_ROOT,
    STOP_TIMEOUT_S,
    ScenarioError,
    WorkerGroup,
    fresh_resources,
    max_in_flight_for,
    process_env,
)
from dispatch.core.config import Settings
from dispatch.local.emulator import LocalAWS
from dispatch.local.example.backend import Backend
from dispatch.producer.enqueue import Queue

__all__ = ["BacklogScenario", "figures", "ideal_starts", "plan", "run_backlog"]

MAKESPAN_SLACK: Final = 1.05
MAKESPAN_SLACK_S: Final = 0.5
LATENESS_P99_TARGET_S: Final = 1.0
EXTRA_SQS_TARGET: Final = 0.5
_ENQUEUE_CHUNK: Final = 500


@dataclass(frozen=True, slots=True)
class BacklogScenario:
    """A backlog of ``tasks`` against one resource, drained by N dispatchers."""

    name: str
    tasks: int
    rate_per_s: float
    burst: int
    dispatchers: int
    work_ms: int = 50
    max_concurrency: int | None = None
    batch_size: int | None = None  # a micro-batch task: one start per batch
    topology: str = "process"  # or "lambda": scheduled dispatcher invocations, worker function
    track_state: bool = True  # False: lean tasks (no claim or record per task in the emulator)

    def worker_env(self, backend_url: str) -> dict[str, str]:
        """The ``BENCH_*`` variables :mod:`bench.throttle.tasks` reads."""
        return tasks.environment(
            rate_per_s=self.rate_per_s,
            burst=self.burst,
            max_concurrency=self.max_concurrency,
            backend_url=backend_url,
            work_ms=self.work_ms,
            batch_size=self.batch_size or 10,
        )

    @property
    def max_in_flight(self) -> int:
        """Each dispatcher's ``max_in_flight``, as in the steady scenarios."""
        return max_in_flight_for(self.rate_per_s, self.dispatchers)

    def max_run_s(self) -> float:
        """How long a dispatcher may run before the harness gives up on it."""
        starts = self.tasks / (self.batch_size or 1)
        ideal_s = max(
            starts / self.rate_per_s, starts * self.work_ms / 1000 / (self.max_concurrency or 1e9)
        )
        return ideal_s * 4 + 60


def plan(*, quick: bool) -> list[BacklogScenario]:
    """The scenarios: the issue's table, then the extremes."""
    scenarios = [
        BacklogScenario("backlog-60-r10-x1", 60, 10, 2, 1),
        BacklogScenario("backlog-60-r10-x2", 60, 10, 2, 2),
        BacklogScenario("backlog-300-r50-x1", 300, 50, 10, 1),
        BacklogScenario("backlog-300-r50-x2", 300, 50, 10, 2),
        BacklogScenario("backlog-40-cap4-x2", 40, 100, 10, 2, work_ms=500, max_concurrency=4),
        BacklogScenario("backlog-8-r0.5-x2", 8, 0.5, 1, 2),
        BacklogScenario("backlog-400-batch-r10-x2", 400, 10, 2, 2, batch_size=10),
        BacklogScenario("backlog-300-r50-lambda", 300, 50, 10, 1, topology="lambda"),
    ]
    if quick:
        return scenarios
    return [
        *scenarios,
        BacklogScenario("backlog-300-r50-x4", 300, 50, 10, 4),
        BacklogScenario("backlog-5000-r200-x4", 5000, 200, 10, 4, work_ms=5),
        # The same without a record per task: on 2 cores the emulator's claim and record
        # per task cap the machine below 200/s (the steady -records rows show the same).
        BacklogScenario(
            "backlog-5000-r200-x4-lean", 5000, 200, 10, 4, work_ms=5, track_state=False
        ),
        BacklogScenario("backlog-600-r50-lambda-x2", 600, 50, 10, 2, topology="lambda"),
    ]


def run_backlog(
    aws: LocalAWS,
    scenario: BacklogScenario,
    *,
    index: int,
    workdir: Path,
    template: Mapping[str, Any],
) -> dict[str, Any]:
    """Enqueue the backlog, drain it with N dispatchers; the raw figures."""
    if scenario.topology == "lambda":
        return _run_lambda(scenario, workdir / f"{index:02d}-{scenario.name}.json")
    resources, settings = fresh_resources(aws, f"bench-backlog-{index}", template=template)
    _enqueue(settings, scenario)
    with Backend.start(capacity=10_000) as backend:
        env = process_env(aws, resources, scenario.worker_env(backend.url))
        directory = workdir / f"{index:02d}-{scenario.name}"
        directory.mkdir(parents=True)
        max_run_s = scenario.max_run_s()
        with WorkerGroup(
            scenario.dispatchers,
            env=env,
            directory=directory,
            max_run_s=max_run_s,
            max_in_flight=scenario.max_in_flight,
            extra_args=("--until-empty",),
        ) as group:
            group.wait_ready(timeout_s=READY_TIMEOUT_S)
            backend.reset()
            go_at = group.go()
            if not group.wait_exited(timeout_s=max_run_s + STOP_TIMEOUT_S):
                raise ScenarioError(f"dispatchers still running {max_run_s:g} s after go")
            workers = group.results()
        seen = backend.stats()
    return {
        "scenario": scenario,
        "go_at": go_at,
        "arrivals": sorted(seen.arrivals),
        "peak_in_flight": seen.peak_in_flight,
        "workers": workers,
    }


def _run_lambda(scenario: BacklogScenario, result: Path) -> dict[str, Any]:
    """The Lambda topology in a process of its own (:mod:`bench.throttle.lambda_backlog`)."""
    env = {
        **os.environ,
        **scenario.worker_env(""),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "bench.throttle.lambda_backlog",
        "--tasks",
        str(scenario.tasks),
        "--result",
        str(result),
        "--lease-cap",
        str(scenario.dispatchers),
        "--max-run-s",
        f"{scenario.max_run_s():g}",
    ]
    try:
        subprocess.run(  # noqa: S603 - fixed argv: this interpreter and our module
            command,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=scenario.max_run_s() + 120,
            check=False,
        )
        raw = json.loads(result.read_text())
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ScenarioError(f"the Lambda topology did not report: {exc}") from exc
    return {
        "scenario": scenario,
        "go_at": raw["go_at"] or 0.0,
        "arrivals": raw["arrivals"],
        "peak_in_flight": raw["peak_in_flight"],
        "workers": [],
        "invocations": raw["invocations"],
    }


def _enqueue(settings: Settings, scenario: BacklogScenario) -> None:
    call = (
        tasks.call_backend_batch
        if scenario.batch_size
        else tasks.call_backend
        if scenario.track_state
        else tasks.call_backend_lean
    )
    queue = Queue(settings)
    try:
        for start in range(0, scenario.tasks, _ENQUEUE_CHUNK):
            count = min(_ENQUEUE_CHUNK, scenario.tasks - start)
            queue.enqueue_many([call.message(start + k) for k in range(count)])
    finally:
        queue.close()


def ideal_starts(
    count: int, *, rate_per_s: float, burst: int, cap: int | None, hold_s: float
) -> list[float]:
    """Offsets from the first start at which ``count`` starts would come, at best."""
    starts: list[float] = []
    for k in range(count):
        at = max(0.0, (k - burst + 1) / rate_per_s)
        if cap is not None and k >= cap:
            at = max(at, starts[k - cap] + hold_s)
        starts.append(at)
    return starts


def _deferral_requests(by_action: Mapping[str, int], tasks: int) -> int:
    """The SQS requests deferral cost: hides and recalls (visibility changes), copies
    sent again, and receives beyond one per ten tasks (those that brought deferred
    messages back, and the last empty polls). Deletes are not counted: every task
    pays its settlement, deferred or not (a throttled drain settles a few at a time,
    so its deletes batch less than an unthrottled one's), nor the queue-attribute
    reads that tell ``--until-empty`` the queue is drained."""
    receives = by_action.get("ReceiveMessage", 0)
    changes = sum(n for a, n in by_action.items() if a.startswith("ChangeMessageVisibility"))
    sends = sum(n for a, n in by_action.items() if a.startswith("SendMessage"))
    return changes + sends + max(0, receives - math.ceil(tasks / 10))


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """Makespan and lateness against the ideal, extra SQS requests, the verdicts."""
    s: BacklogScenario = raw["scenario"]
    arrivals: list[float] = raw["arrivals"]
    workers: list[dict[str, Any]] = raw["workers"]
    result: dict[str, Any] = {"kind": "backlog", **asdict(s)}
    errors = [w["error"] for w in workers if w.get("error")]
    expected = math.ceil(s.tasks / s.batch_size) if s.batch_size else s.tasks
    if errors or not arrivals:
        result["error"] = "; ".join(errors) or "no task reached the backend"
        return result
    first = arrivals[0]
    # A task holds its slot for the handler's whole run (the backend's work and the
    # HTTP call around it), as the dispatchers measured it.
    holds = [w["mean_hold_s"] for w in workers if w.get("mean_hold_s")]
    hold_s = max(s.work_ms / 1000, sum(holds) / len(holds)) if holds else s.work_ms / 1000
    ideal = ideal_starts(
        len(arrivals),
        rate_per_s=s.rate_per_s,
        burst=s.burst,
        cap=s.max_concurrency,
        hold_s=hold_s,
    )
    lateness = [max(0.0, (at - first) - slot) for at, slot in zip(arrivals, ideal, strict=True)]
    makespan_s = arrivals[-1] - first
    by_action: dict[str, int] = {}
    for w in workers:
        for key, n in w.get("requests", {}).items():
            if key.startswith("sqs."):
                by_action[key[4:]] = by_action.get(key[4:], 0) + n
    sqs = sum(by_action.values())
    # The Lambda topology's dispatchers run inside the endpoint: no request counts.
    extra = _deferral_requests(by_action, s.tasks) / s.tasks if workers else None
    target_s = ideal[-1] * MAKESPAN_SLACK + MAKESPAN_SLACK_S
    result.update(
        starts=len(arrivals),
        expected_starts=expected,
        first_start_after_go_s=round(first - raw["go_at"], 3),
        makespan_s=round(makespan_s, 2),
        ideal_makespan_s=round(ideal[-1], 2),
        hold_s=round(hold_s, 3),
        makespan_target_s=round(target_s, 2),
        lateness_s={
            "p50": round(_quantile(lateness, 0.5), 3),
            "p99": round(_quantile(lateness, 0.99), 3),
            "max": round(max(lateness), 3),
        },
        extra_sqs_per_task=None if extra is None else round(extra, 3),
        sqs_per_task=round(sqs / s.tasks, 3) if workers else None,
        sqs_requests=by_action,
        deferred=sum(w.get("stats", {}).get("deferred", 0) for w in workers),
        duplicates=sum(w.get("stats", {}).get("duplicates", 0) for w in workers),
        peak_in_flight=raw["peak_in_flight"],
        wall_s=round(
            max((w.get("ended_at", first) for w in workers), default=arrivals[-1]) - raw["go_at"], 2
        ),
        series={
            "offsets": [round(at - first, 4) for at in arrivals],
            "ideal": [round(x, 4) for x in ideal],
        },
    )
    result["verdict"] = {
        "makespan": makespan_s <= target_s,
        "lateness_p99": result["lateness_s"]["p99"] <= LATENESS_P99_TARGET_S,
        "extra_sqs": extra is None or extra <= EXTRA_SQS_TARGET,
        "all_started": len(arrivals) >= expected,
    }
    return result


def markdown(results: Sequence[dict[str, Any]]) -> list[str]:
    """The backlog table (markdown lines)."""
    lines = [
        "## Backlog: a queue already full when the dispatchers start",
        "",
        "Makespan = first start to last start at the backend; ideal from the limits alone "
        f"(target: ideal x {MAKESPAN_SLACK:g} + {MAKESPAN_SLACK_S:g} s). Lateness = each start "
        f"against its ideal slot (target: p99 <= {LATENESS_P99_TARGET_S:g} s). Extra SQS = "
        "what deferral costs per task: visibility changes, copies sent again, receives "
        f"beyond one per ten tasks (target <= {EXTRA_SQS_TARGET:g}); SQS/task counts every "
        "SQS request, deletes and the drain check included.",
        "",
        "| scenario | tasks | limit | dispatchers | makespan s | ideal s "
        "| lateness p50 / p99 / max s | extra SQS/task | SQS/task | deferred | first start s "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("error"):
            failed = f"failed: {r['error']}"
            lines.append(f"| {r['name']} | {r['tasks']} | | {r['dispatchers']} | {failed} ||||||||")
            continue
        limit = f"{r['rate_per_s']:g}/s burst {r['burst']}"
        if r["max_concurrency"]:
            limit += f", cap {r['max_concurrency']} x {r['work_ms']} ms"
        if r["batch_size"]:
            limit += f", batches of {r['batch_size']}"
        if r["topology"] == "lambda":
            limit += ", Lambda topology"
        if not r["track_state"]:
            limit += ", lean tasks"
        late = r["lateness_s"]
        ok = all(r["verdict"].values())
        failing = ", ".join(k for k, v in r["verdict"].items() if not v)
        lines.append(
            f"| {r['name']} | {r['tasks']} | {limit} | {r['dispatchers']} | {r['makespan_s']} "
            f"| {r['ideal_makespan_s']} | {late['p50']} / {late['p99']} / {late['max']} "
            f"| {_dash(r['extra_sqs_per_task'])} | {_dash(r['sqs_per_task'])} | {r['deferred']} "
            f"| {r['first_start_after_go_s']} "
            f"| {'PASS' if ok else 'FAIL: ' + failing} |"
        )
    return lines


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def run_all(
    aws: LocalAWS,
    scenarios: Sequence[BacklogScenario],
    *,
    workdir: Path,
    template: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Run every backlog scenario; a failed one is reported, not raised."""
    results = []
    for index, scenario in enumerate(scenarios):
        print(f"[backlog {index + 1}/{len(scenarios)}] {scenario.name}", flush=True)
        started = time.monotonic()
        try:
            result = figures(
                run_backlog(aws, scenario, index=index, workdir=workdir, template=template)
            )
        except (ScenarioError, OSError) as exc:
            result = {"kind": "backlog", **asdict(scenario), "error": str(exc)}
        results.append(result)
        if "makespan_s" in result:
            print(
                f"    makespan {result['makespan_s']} s (ideal {result['ideal_makespan_s']}), "
                f"lateness {result['lateness_s']}, extra SQS {result['extra_sqs_per_task']}/task, "
                f"{result['starts']}/{result['expected_starts']} starts "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        else:
            print(f"    failed: {result.get('error')}", flush=True)
    return results
