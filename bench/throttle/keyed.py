"""The keyed section of the throttle benchmark: per-key limits and fairness.

``python -m bench.throttle --section keyed [--quick]``. Every dispatcher is a
process of its own (:mod:`bench.throttle.keyed_worker`).

1. Noisy neighbour. Two dispatchers run; tenant A enqueues ``flood`` tasks, then
   tenants B..K enqueue 100 each (global 100/s burst 10, per key 50/s). The same
   run without A is the baseline. A tenant's *finish* is its last start minus the
   moment its own enqueue began. Targets: each of B..K finishes within 2x its
   baseline, and A gets the rest of the global rate while B..K run (its rate over
   the span of B..K's starts at least 90 % of ``min(key rate, global - B..K's
   rate)``). The window is fixed: it ends :meth:`KeyedScenario.tail_s` after
   B..K's enqueue (time for A's flood at its own rate and B..K at the global one).
   The pair runs with ``max_in_flight`` 64 (the default); ``--flood N`` sets A's size.
2. Per-key accuracy. ``keys`` tenants backlogged (enqueued round robin before the
   dispatcher starts) at ``KeyLimits(rate_per_s=1, burst=1, max_concurrency=1)``
   under a global 200/s that never binds, for ``seconds``. Every key's starts are
   checked against ``1 * w + 1`` in every window, its rate (intervals between its
   starts from :data:`SETTLE_S` after go) within 5 % of 1/s, its peak concurrency
   against its cap of 1; with 1, 2 and 4 dispatchers (key leases on, the default),
   and with 2 with key leases off (each dispatcher then applies the limits alone).
3. Coordination. 1,000 keys (1/s each, so the global 200/s binds) and 10 keys
   (50/s each) backlogged, 4 dispatchers with key leases, 30 s: every DynamoDB
   request of every dispatcher per task started, over the window and over its
   second half before the stop (steady state), by operation.

Starts are the handler's own (tenant, start, end), noted in the dispatcher
process (:mod:`bench.throttle.keyed_tasks`); the backend's arrivals give the
global windows at the backend, the permits' times (noted in each dispatcher) the
global windows as granted. Tasks are lean (no record per task).
"""

from __future__ import annotations

import io
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from bench.throttle import keyed_tasks, metrics
from bench.throttle.harness import (
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ScenarioError,
    WorkerGroup,
    fresh_resources,
    process_env,
)
from dispatch.local.emulator import LocalAWS
from dispatch.local.example.backend import Backend
from dispatch.producer.enqueue import Queue

__all__ = ["KeyedScenario", "chart", "figures", "markdown", "plan", "run_all"]

FINISH_RATIO_TARGET: Final = 2.0
RATE_SHARE_TARGET: Final = 0.9
KEY_RATE_TARGET_PCT: Final = 5.0
SETTLE_S: Final = 5.0
"""Per-key accuracy: a key's rate is measured from this long after go (the dispatcher
first receives and sorts the backlog)."""
NEIGHBOUR_TAIL_S: Final = 15.0
"""Spare time at the end of a noisy-neighbour window (:meth:`KeyedScenario.tail_s`)."""
NEIGHBOUR_MAX_IN_FLIGHT: Final = (64,)
"""The default ``max_in_flight`` (a key holds at most half of it: docs/throttle.md)."""
NEIGHBOUR_DISPATCHERS: Final = 2
"""The issue's noisy neighbour runs two dispatcher processes."""
COORDINATION_SECONDS: Final = 30.0
"""The coordination rows' window (half of it quick)."""
NEIGHBOURS: Final = tuple("BCDEFGHIJK")
NEIGHBOUR_TASKS: Final = 100
_ENQUEUE_CHUNK: Final = 500

Kind = Literal["neighbour", "accuracy", "coordination"]


@dataclass(frozen=True, slots=True)
class KeyedScenario:
    """One keyed run: a resource with per-key limits, ``dispatchers`` processes."""

    name: str
    kind: Kind
    rate_per_s: float
    burst: int
    key_rate_per_s: float
    key_burst: int
    key_max_concurrency: int | None = None
    flood: int = 0  # neighbour: tenant A's tasks (0: the baseline, B..K alone)
    keys: int = 0  # accuracy: how many keys
    seconds: float = 0.0  # accuracy: the window
    work_ms: int = 5
    max_in_flight: int = 64
    dispatchers: int = 1
    key_leases: bool = True  # one owner per active key (DispatcherOptions, the default)

    def worker_env(self, backend_url: str) -> dict[str, str]:
        """The ``BENCH_*`` variables :mod:`bench.throttle.keyed_tasks` reads."""
        return keyed_tasks.environment(
            rate_per_s=self.rate_per_s,
            burst=self.burst,
            key_rate_per_s=self.key_rate_per_s,
            key_burst=self.key_burst,
            key_max_concurrency=self.key_max_concurrency,
            backend_url=backend_url,
            work_ms=self.work_ms,
        )

    def window_s(self) -> float:
        """How long the dispatcher runs after go (the enqueue included)."""
        if self.kind != "neighbour":
            return self.seconds
        return self.flood / 1000 * 3 + self.tail_s()  # the flood's enqueue, then the tail

    def tail_s(self) -> float:
        """Neighbour: how long the dispatcher runs after B..K's enqueue: A's flood at its
        own rate, B..K at the global rate, and :data:`NEIGHBOUR_TAIL_S` to spare."""
        work = len(NEIGHBOURS) * NEIGHBOUR_TASKS / self.rate_per_s
        return self.flood / self.key_rate_per_s + work + NEIGHBOUR_TAIL_S


def plan(*, quick: bool, flood: int | None = None, key_leases: bool = True) -> list[KeyedScenario]:
    """The noisy-neighbour pair (A's tasks: ``flood``, by default 3,000, quick 1,000),
    two dispatchers as configured by default (``key_leases=False``: with key leases
    off, the names ending ``-unleased``); the per-key accuracy with 1, 2 and 4 dispatchers
    (quick: 1 and 2); the coordination cost at 200/s over 1,000 and 10 keys, 4
    dispatchers (quick: 2)."""
    flood = flood or (1000 if quick else 3000)
    keys, seconds = (20, 20.0) if quick else (100, 60.0)
    neighbour: dict[str, Any] = {
        "rate_per_s": 100,
        "burst": 10,
        "key_rate_per_s": 50,
        "key_burst": 5,
    }
    pairs = [
        KeyedScenario(
            f"neighbour-{what}-mif{m}{'' if key_leases else '-unleased'}",
            "neighbour",
            flood=n,
            max_in_flight=m,
            dispatchers=NEIGHBOUR_DISPATCHERS,
            key_leases=key_leases,
            **neighbour,
        )
        for m in NEIGHBOUR_MAX_IN_FLIGHT
        for what, n in (("baseline", 0), (f"flood-{flood}", flood))
    ]
    accuracy = [
        KeyedScenario(
            f"per-key-{keys}x1-d{d}{'' if leases else '-unleased'}",
            "accuracy",
            rate_per_s=200,
            burst=20,
            key_rate_per_s=1,
            key_burst=1,
            key_max_concurrency=1,
            keys=keys,
            seconds=seconds,
            work_ms=200,
            max_in_flight=max(64, 2 * keys),
            dispatchers=d,
            key_leases=leases,
        )
        for d, leases in (
            ((1, True), (2, True), (2, False))
            if quick
            else ((1, True), (2, True), (4, True), (2, False))
        )
    ]
    return [*pairs, *accuracy, *_coordination_plan(quick=quick)]


def _coordination_plan(*, quick: bool) -> list[KeyedScenario]:
    """200/s over 1,000 keys and over 10, 4 dispatchers (quick: 2) with key leases."""
    d = 2 if quick else 4
    return [
        KeyedScenario(
            f"coordination-{n}keys-d{d}",
            "coordination",
            rate_per_s=200,
            burst=20,
            key_rate_per_s=key_rate,
            key_burst=1 if key_rate < 2 else 5,
            keys=n,
            seconds=COORDINATION_SECONDS / (2 if quick else 1),
            max_in_flight=200,
            dispatchers=d,
            key_leases=True,
        )
        for n, key_rate in ((1000, 1.0), (10, 50.0))
    ]


def _backlog_per_key(s: KeyedScenario) -> int:
    """Tasks each key gets before the dispatchers start: more than it can start in the
    window, whether its own rate or its share of the global one binds."""
    share = min(s.key_rate_per_s, s.rate_per_s / s.keys)
    return math.ceil(s.seconds * share * 1.2) + 5


# --- running -------------------------------------------------------------------------


def _enqueue(queue: Queue, rows: Sequence[tuple[str, int]]) -> None:
    for start in range(0, len(rows), _ENQUEUE_CHUNK):
        chunk = rows[start : start + _ENQUEUE_CHUNK]
        queue.enqueue_many([keyed_tasks.call_keyed.message(t, n) for t, n in chunk])


def run_keyed(
    aws: LocalAWS,
    scenario: KeyedScenario,
    *,
    index: int,
    workdir: Path,
    template: Mapping[str, Any],
) -> dict[str, Any]:
    """Run one scenario; the raw starts and enqueue times."""
    resources, settings = fresh_resources(aws, f"bench-keyed-{index}", template=template)
    queue = Queue(settings)
    enqueued: dict[str, list[float]] = {}
    try:
        if scenario.kind != "neighbour":
            per_key = _backlog_per_key(scenario)
            rows = [(f"k{k:03d}", n) for n in range(per_key) for k in range(scenario.keys)]
            _enqueue(queue, rows)
        with Backend.start(capacity=10_000) as backend:
            env = process_env(aws, resources, scenario.worker_env(backend.url))
            directory = workdir / f"keyed-{index:02d}-{scenario.name}"
            directory.mkdir(parents=True)
            window_s = scenario.window_s()
            with WorkerGroup(
                scenario.dispatchers,
                env=env,
                directory=directory,
                max_run_s=window_s + 60,
                max_in_flight=scenario.max_in_flight,
                extra_args=() if scenario.key_leases else ("--no-key-leases",),
                module="bench.throttle.keyed_worker",
            ) as group:
                group.wait_ready(timeout_s=READY_TIMEOUT_S)
                backend.reset()
                go_at = group.go()
                end_at = go_at + window_s
                if scenario.kind == "neighbour":
                    end_at = _enqueue_tenants(queue, scenario, enqueued)
                while (now := time.time()) < end_at:
                    group.check_running()
                    time.sleep(min(0.1, max(0.0, end_at - now)))
                stop_at = time.time()
                notes = group.stop(timeout_s=STOP_TIMEOUT_S)
                workers = group.results()
            seen = backend.stats()
    finally:
        queue.close()
    return {
        "scenario": scenario,
        "go_at": go_at,
        "stop_at": stop_at,
        "enqueued": enqueued,
        "arrivals": sorted(seen.arrivals),
        "workers": workers,
        "notes": notes,
    }


def _enqueue_tenants(
    queue: Queue, scenario: KeyedScenario, enqueued: dict[str, list[float]]
) -> float:
    """A's flood first (if any), then B..K 100 each; the time the window ends."""
    if scenario.flood:
        began = time.time()
        _enqueue(queue, [("A", n) for n in range(scenario.flood)])
        enqueued["A"] = [began, time.time()]
    for tenant in NEIGHBOURS:
        began = time.time()
        _enqueue(queue, [(tenant, n) for n in range(NEIGHBOUR_TASKS)])
        enqueued[tenant] = [began, time.time()]
    return time.time() + scenario.tail_s()


# --- figures -------------------------------------------------------------------------


def _starts_by_key(workers: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for w in workers:
        for tenant, started_at, ended_at in w.get("key_starts", []):
            by_key[tenant].append((started_at, ended_at))
    for rows in by_key.values():
        rows.sort()
    return dict(by_key)


def _peak_concurrency(rows: Sequence[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in rows] + [(e, -1) for _, e in rows])
    level = peak = 0
    for _, change in events:  # an end and a start at the same instant: the end first
        level += change
        peak = max(peak, level)
    return peak


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready figures of one run (verdicts of the neighbour pair: :func:`compare`)."""
    s: KeyedScenario = raw["scenario"]
    result: dict[str, Any] = {**asdict(s), "kind": f"keyed-{s.kind}"}
    errors = [w["error"] for w in raw["workers"] if w.get("error")]
    by_key = _starts_by_key(raw["workers"])
    if errors or not by_key:
        result["error"] = "; ".join(errors) or "no task started"
        return result
    go_at = raw["go_at"]
    arrivals = raw["arrivals"]
    stats = [w.get("stats", {}) for w in raw["workers"]]
    glob = metrics.window_bound(arrivals, rate_per_s=s.rate_per_s, burst=s.burst)
    permits = [t for w in raw["workers"] for t in w.get("permit_times", [])]
    granted = metrics.window_bound(permits, rate_per_s=s.rate_per_s, burst=s.burst)
    result.update(
        go_at=go_at,
        window_s=round(raw["stop_at"] - go_at, 2),
        starts=sum(len(rows) for rows in by_key.values()),
        deferred=sum(st.get("deferred", 0) for st in stats),
        received=sum(st.get("received", 0) for st in stats),
        global_worst_window=round(glob.worst, 2),
        global_violations=glob.violations,
        permits_worst_window=round(granted.worst, 2),
        permits_violations=granted.violations,
        sqs_requests={
            k[4:]: n
            for w in raw["workers"]
            for k, n in w.get("requests", {}).items()
            if "sqs." in k
        },
        notes=raw["notes"],
    )
    dynamodb = sum(
        n for w in raw["workers"] for k, n in w.get("requests", {}).items() if "dynamodb." in k
    )
    result["dynamodb_requests"] = dynamodb
    by_operation: dict[str, int] = defaultdict(int)
    for w in raw["workers"]:
        for k, n in w.get("requests", {}).items():
            if "dynamodb." in k:
                by_operation[k[9:]] += n
    result["dynamodb_by_operation"] = dict(by_operation)
    result["dynamodb_per_task"] = round(dynamodb / max(1, result["starts"]), 4)
    if s.kind == "neighbour":
        result.update(_neighbour(s, raw, by_key))
    elif s.kind == "accuracy":
        result.update(_accuracy(s, raw, by_key))
    else:
        result.update(_coordination(s, raw, by_key))
    return result


def _key_window(s: KeyedScenario, rows: Sequence[tuple[float, float]]) -> metrics.WindowBound:
    return metrics.window_bound(
        [a for a, _ in rows], rate_per_s=s.key_rate_per_s, burst=s.key_burst
    )


def _neighbour(
    s: KeyedScenario, raw: dict[str, Any], by_key: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    go_at, enqueued = raw["go_at"], raw["enqueued"]
    tenants: dict[str, Any] = {}
    for tenant, (began, ended) in enqueued.items():
        rows = by_key.get(tenant, [])
        window = _key_window(s, rows)
        tenants[tenant] = {
            "enqueued": NEIGHBOUR_TASKS if tenant != "A" else s.flood,
            "enqueue_at_s": round(began - go_at, 3),
            "enqueue_s": round(ended - began, 3),
            "started": len(rows),
            "first_start_s": round(rows[0][0] - go_at, 3) if rows else None,
            "last_start_s": round(rows[-1][0] - go_at, 3) if rows else None,
            "finish_s": round(rows[-1][0] - began, 3) if rows else None,
            "worst_window": round(window.worst, 2),
            "window_violations": window.violations,
            "peak_concurrency": _peak_concurrency(rows),
        }
    others = [by_key.get(t, []) for t in NEIGHBOURS]
    span = (
        min(rows[0][0] for rows in others if rows),
        max(rows[-1][0] for rows in others if rows),
    )
    length = span[1] - span[0]
    others_in = sum(1 for rows in others for a, _ in rows if span[0] <= a <= span[1])
    a_in = sum(1 for a, _ in by_key.get("A", []) if span[0] <= a <= span[1])
    out: dict[str, Any] = {
        "tenants": tenants,
        "neighbours_span_s": [round(span[0] - go_at, 3), round(span[1] - go_at, 3)],
        "neighbours_rate_per_s": round(others_in / length, 2) if length > 0 else None,
        "a_rate_while_neighbours_per_s": round(a_in / length, 2) if length > 0 else None,
        "all_neighbours_finished": all(len(rows) >= NEIGHBOUR_TASKS for rows in others),
        "series": {
            tenant: [round(a - go_at, 4) for a, _ in rows] for tenant, rows in by_key.items()
        },
    }
    out.update(_rest_by_second(s, span, others, by_key.get("A", [])))
    a_rows = by_key.get("A", [])
    if a_rows:
        before = [a for a, _ in a_rows if a < span[0]]
        out["a_rate_before_neighbours_per_s"] = (
            round((len(before) - 1) / (before[-1] - before[0]), 2)
            if len(before) > 2 and before[-1] > before[0]
            else None
        )
    return out


def _rest_by_second(
    s: KeyedScenario,
    span: tuple[float, float],
    others: Sequence[Sequence[tuple[float, float]]],
    a_rows: Sequence[tuple[float, float]],
) -> dict[str, Any]:
    """What of the global rate B..K left A, second by second over their span: in each
    second, ``min(A's own rate, global - B..K's starts)``, summed, against A's starts.
    Averaging first (A against ``min(50, 100 - B..K's mean rate)``) asks A for more
    than was left whenever B..K's rate varies: in the seconds they used nearly all of
    it, nothing was left, and the mean hides that."""
    edges = [span[0] + i for i in range(math.ceil(span[1] - span[0]) + 1)]
    rest = used = 0.0
    for begin in edges:
        end = min(begin + 1.0, span[1])
        if end <= begin:
            continue
        length = end - begin
        theirs = sum(1 for rows in others for a, _ in rows if begin <= a < end)
        rest += min(s.key_rate_per_s * length, s.rate_per_s * length - theirs)
        used += sum(1 for a, _ in a_rows if begin <= a < end)
    return {
        "a_rest_by_second": round(rest, 1),
        "a_started_in_rest": int(used),
        "a_share_of_rest": round(used / rest, 3) if rest > 0 else None,
    }


def _accuracy(
    s: KeyedScenario, raw: dict[str, Any], by_key: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    go_at, stop_at = raw["go_at"], raw["stop_at"]
    settle = go_at + SETTLE_S
    rows_out: list[dict[str, Any]] = []
    for key in sorted(by_key):
        rows = by_key[key]
        window = _key_window(s, rows)
        starts = [a for a, _ in rows if settle <= a <= stop_at]
        rate = (
            (len(starts) - 1) / (starts[-1] - starts[0])
            if len(starts) > 2 and starts[-1] > starts[0]
            else None
        )
        rows_out.append(
            {
                "key": key,
                "started": len(rows),
                "rate_per_s": None if rate is None else round(rate, 4),
                "error_pct": (
                    None
                    if rate is None
                    else round((rate - s.key_rate_per_s) / s.key_rate_per_s * 100, 2)
                ),
                "worst_window": round(window.worst, 3),
                "window_violations": window.violations,
                "peak_concurrency": _peak_concurrency(rows),
            }
        )
    errors = [abs(r["error_pct"]) for r in rows_out if r["error_pct"] is not None]
    missing = s.keys - sum(1 for r in rows_out if r["error_pct"] is not None)
    cap = s.key_max_concurrency
    verdict = {
        "windows": all(r["window_violations"] == 0 for r in rows_out),
        "rate": missing == 0 and all(e <= KEY_RATE_TARGET_PCT for e in errors),
        "cap": cap is None or all(r["peak_concurrency"] <= cap for r in rows_out),
    }
    rates = [r["rate_per_s"] for r in rows_out if r["rate_per_s"] is not None]
    return {
        "per_key": rows_out,
        "keys_measured": len(rates),
        "key_rate_min_per_s": min(rates, default=None),
        "key_rate_mean_per_s": round(sum(rates) / len(rates), 4) if rates else None,
        "key_rate_max_per_s": max(rates, default=None),
        "worst_error_pct": max(errors, default=None),
        "keys_over_5pct": sum(1 for e in errors if e > KEY_RATE_TARGET_PCT),
        "worst_key_window": max((r["worst_window"] for r in rows_out), default=None),
        "key_window_violations": sum(r["window_violations"] for r in rows_out),
        "peak_key_concurrency": max((r["peak_concurrency"] for r in rows_out), default=0),
        "aggregate_rate_per_s": round(
            sum(1 for rows in by_key.values() for a, _ in rows if settle <= a <= stop_at)
            / (stop_at - settle),
            2,
        ),
        "verdict": verdict,
    }


def _coordination(
    s: KeyedScenario, raw: dict[str, Any], by_key: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    go_at, stop_at = raw["go_at"], raw["stop_at"]
    settle = go_at + SETTLE_S
    starts = sum(1 for rows in by_key.values() for a, _ in rows if settle <= a <= stop_at)
    over = sum(_key_window(s, rows).violations for rows in by_key.values())
    sqs = sum(n for w in raw["workers"] for k, n in w.get("requests", {}).items() if "sqs." in k)
    total = max(1, sum(len(rows) for rows in by_key.values()))
    half_at = go_at + s.seconds / 2
    samples = [x["t"] for w in raw["workers"] for x in w.get("snapshots", [])]
    last = min(stop_at, max(samples, default=stop_at))
    later = sum(1 for rows in by_key.values() for a, _ in rows if half_at <= a <= last)
    return {
        "dynamodb_per_task_second_half": round(
            _requests_since(raw["workers"], half_at, stop_at) / max(1, later), 4
        ),
        "keys_started": len(by_key),
        "aggregate_rate_per_s": round(starts / (stop_at - settle), 2),
        "key_window_violations": over,
        "peak_key_concurrency": max((_peak_concurrency(r) for r in by_key.values()), default=0),
        "sqs_per_task": round(sqs / total, 3),
        "verdict": {"dynamodb_per_task_le_0.1": _dynamodb_per_task(raw, total) <= 0.1},
    }


def _requests_since(workers: Sequence[dict[str, Any]], since: float, until: float) -> int:
    """DynamoDB requests of every dispatcher from ``since`` to its last sample before
    ``until`` (the stop: what a stopping dispatcher gives back is not steady state)."""
    total = 0
    for w in workers:
        samples = [
            (x["t"], x["dynamodb_requests"])
            for x in w.get("snapshots", [])
            if x.get("dynamodb_requests") is not None and x["t"] <= until
        ]
        before = [n for t, n in samples if t <= since]
        if samples:
            total += samples[-1][1] - (before[-1] if before else 0)
    return total


def _dynamodb_per_task(raw: dict[str, Any], starts: int) -> float:
    """DynamoDB requests of every dispatcher per task started."""
    dynamodb: int = sum(
        n for w in raw["workers"] for k, n in w.get("requests", {}).items() if "dynamodb." in k
    )
    return dynamodb / max(1, starts)


def compare(baseline: dict[str, Any], flood: dict[str, Any]) -> dict[str, Any]:
    """The noisy-neighbour verdicts: B..K with A's flood against B..K alone."""
    rows = []
    for tenant in NEIGHBOURS:
        alone = baseline["tenants"][tenant]["finish_s"]
        with_a = flood["tenants"][tenant]["finish_s"]
        done = flood["tenants"][tenant]["started"] >= NEIGHBOUR_TASKS
        ratio = with_a / alone if alone and with_a is not None and done else None
        rows.append({"tenant": tenant, "alone_s": alone, "with_flood_s": with_a, "ratio": ratio})
    others = flood["neighbours_rate_per_s"] or 0.0
    a_rate = flood["a_rate_while_neighbours_per_s"] or 0.0
    rest = min(flood["key_rate_per_s"], flood["rate_per_s"] - others)
    share = flood.get("a_share_of_rest")
    verdict = {
        "within_2x": all(
            r["ratio"] is not None and r["ratio"] <= FINISH_RATIO_TARGET for r in rows
        ),
        # Second by second (:func:`_rest_by_second`); the span's means are reported too.
        "a_gets_the_rest": share is not None and share >= RATE_SHARE_TARGET,
        "a_gets_the_rest_of_the_means": a_rate >= RATE_SHARE_TARGET * rest,
    }
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    return {
        "per_tenant": [
            {**r, "ratio": None if r["ratio"] is None else round(r["ratio"], 2)} for r in rows
        ],
        "worst_ratio": round(max(ratios), 2) if ratios else None,
        "rest_of_global_per_s": round(rest, 2),
        "verdict": verdict,
    }


def markdown(results: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]]) -> list[str]:
    """The keyed tables (markdown lines)."""
    lines = [
        "## Keyed: per-key limits and fairness",
        "",
        "Every dispatcher a process of its own. "
        "Lean tasks (no record per task); starts as the handler noted them.",
        "",
    ]
    by_name = {r["name"]: r for r in results}
    for r in results:
        if r.get("error"):
            lines += [f"- {r['name']}: failed: {r['error']}", ""]
    for comparison in comparisons:
        lines += _neighbour_lines(
            by_name[comparison["baseline"]], by_name[comparison["flood"]], comparison
        )
    lines += _accuracy_lines(results)
    lines += _coordination_lines(results)
    return lines


def _neighbour_lines(
    baseline: dict[str, Any], flood: dict[str, Any], comparison: dict[str, Any]
) -> list[str]:
    lines = [
        f"### Noisy neighbour: A floods {flood['flood']:,}, then B..K 100 each "
        f"(global {flood['rate_per_s']:g}/s burst {flood['burst']}, per key "
        f"{flood['key_rate_per_s']:g}/s burst {flood['key_burst']}, "
        f"max_in_flight {flood['max_in_flight']}, {flood['dispatchers']} dispatchers)",
        "",
        "Finish = a tenant's last start minus the moment its own enqueue began. "
        f"Target: with A's flood within {FINISH_RATIO_TARGET:g}x of B..K alone.",
        "",
        "| tenant | enqueued at s | first start s | finish alone s | finish with A s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in comparison["per_tenant"]:
        t = row["tenant"]
        ft = flood["tenants"][t]
        lines.append(
            f"| {t} | {ft['enqueue_at_s']} | {ft['first_start_s']} | {row['alone_s']} "
            f"| {row['with_flood_s']} | {_dash(row['ratio'])} |"
        )
    a = flood["tenants"].get("A", {})
    v = comparison["verdict"]
    lines += [
        "",
        f"- B..K within {FINISH_RATIO_TARGET:g}x: worst ratio {comparison['worst_ratio']} "
        f"({'PASS' if v['within_2x'] else 'FAIL'}).",
        f"- While B..K ran ({flood['neighbours_span_s'][0]}-{flood['neighbours_span_s'][1]} s "
        f"after go): B..K together {flood['neighbours_rate_per_s']}/s, A "
        f"{flood['a_rate_while_neighbours_per_s']}/s. Second by second, B..K left A "
        f"{flood.get('a_rest_by_second')} starts (its own rate or what B..K did not "
        f"use, whichever is less) and A made {flood.get('a_started_in_rest')}: "
        f"{flood.get('a_share_of_rest')} (target: at least {RATE_SHARE_TARGET:.0%}: "
        f"{'PASS' if v['a_gets_the_rest'] else 'FAIL'}). Against the span's means "
        f"instead, the rest would be {comparison['rest_of_global_per_s']}/s "
        f"({'PASS' if v['a_gets_the_rest_of_the_means'] else 'FAIL'}; the means ask A "
        "for what B..K used in their busiest seconds).",
        f"- A before B..K started: {flood.get('a_rate_before_neighbours_per_s')}/s (its own "
        f"limit {flood['key_rate_per_s']:g}/s); A's enqueue of {flood['flood']:,} took "
        f"{a.get('enqueue_s')} s; A started {a.get('started')} in the "
        f"{flood['window_s']} s window.",
        f"- Global windows at the backend: worst {flood['global_worst_window']} (burst "
        f"{flood['burst']}), {flood['global_violations']} over; baseline worst "
        f"{baseline['global_worst_window']}. Per-key worst window with A: "
        f"{max(t['worst_window'] for t in flood['tenants'].values())} (burst "
        f"{flood['key_burst']}). Deferred: {flood['deferred']} with A, "
        f"{baseline['deferred']} alone; received {flood['received']} with A.",
        "",
    ]
    return lines


def _coordination_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    rows = [r for r in results if r["kind"] == "keyed-coordination" and not r.get("error")]
    if not rows:
        return []
    lines = [
        "### Coordination: DynamoDB requests per task with key leases",
        "",
        "Every DynamoDB request of every dispatcher (shared bucket, key leases and "
        "heartbeats, published status) over every task started, the leases given back "
        "at the stop included; in brackets, the second half of the window up to the "
        "stop (steady state: the keys are active). Backlogged keys, lean tasks. "
        "Target: at most 0.1 at 200/s over 1,000 keys with 4 dispatchers.",
        "",
        "| keys | key limit | dispatchers | all keys /s | DynamoDB per task (second half) "
        "| SQS per task | keys started | key windows over | peak per key |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['keys']} | {r['key_rate_per_s']:g}/s burst {r['key_burst']} "
            f"| {r['dispatchers']} | {r['aggregate_rate_per_s']} | {r['dynamodb_per_task']} "
            f"({r['dynamodb_per_task_second_half']}) "
            f"| {r['sqs_per_task']} | {r['keys_started']} | {r['key_window_violations']} "
            f"| {r['peak_key_concurrency']} |"
        )
    for r in rows:
        ops = ", ".join(f"{k} {n}" for k, n in sorted(r.get("dynamodb_by_operation", {}).items()))
        lines.append(f"\n{r['keys']} keys: DynamoDB requests by operation: {ops}.")
    return [*lines, ""]


def _accuracy_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for r in results:
        if r["kind"] != "keyed-accuracy" or r.get("error"):
            continue
        v = r["verdict"]
        lines += [
            f"### Per-key accuracy: {r['keys']} keys backlogged at "
            f"{r['key_rate_per_s']:g}/s (burst {r['key_burst']}, cap "
            f"{r['key_max_concurrency']}), {r['seconds']:g} s, {r['dispatchers']} "
            f"dispatcher(s){'' if r['key_leases'] else ', key leases off'}",
            "",
            f"Rate per key from {SETTLE_S:g} s after go (intervals between its starts); every "
            "window of every key against `rate * w + burst`; peak per key against its cap.",
            "",
            "| keys measured | key rate min / mean / max | keys > 5 % off | worst error "
            "| worst key window (≤ burst) | windows over | peak per key (cap) | all keys /s "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {r['keys_measured']} / {r['keys']} | {r['key_rate_min_per_s']} / "
            f"{r['key_rate_mean_per_s']} / {r['key_rate_max_per_s']} | {r['keys_over_5pct']} "
            f"| {r['worst_error_pct']} % | {r['worst_key_window']} | "
            f"{r['key_window_violations']} | {r['peak_key_concurrency']} "
            f"({r['key_max_concurrency']}) | {r['aggregate_rate_per_s']} | "
            + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in v.items())
            + " |",
            "",
        ]
    return lines


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def chart(results: Sequence[dict[str, Any]]) -> bytes:
    """Per-tenant cumulative starts, with A's flood and without; ImportError without
    matplotlib, ValueError when no neighbour run has starts."""
    runs = [r for r in results if r["kind"] == "keyed-neighbour" and "series" in r]
    if not runs:
        raise ValueError("no noisy-neighbour run: nothing to draw")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs.sort(key=lambda r: (r["max_in_flight"], -r["flood"]))  # each flood above its baseline
    figure, axes = plt.subplots(
        len(runs), 1, figsize=(11, 4.2 * len(runs)), squeeze=False, layout="constrained"
    )
    colours = plt.get_cmap("tab10")
    for ax, r in zip(axes[:, 0], runs, strict=True):
        for k, tenant in enumerate(NEIGHBOURS):
            times = r["series"].get(tenant, [])
            ax.step(
                times,
                range(1, len(times) + 1),
                where="post",
                color=colours(k),
                linewidth=1.0,
                label=tenant,
            )
        if "A" in r["series"]:
            times = r["series"]["A"]
            right = ax.twinx()
            right.step(
                times,
                range(1, len(times) + 1),
                where="post",
                color="black",
                linewidth=2.0,
                label="A (right axis)",
            )
            right.set_ylabel("A: tasks started")
            right.set_ylim(bottom=0)
            right.legend(loc="center right", fontsize=8)
        arrived = r["tenants"]["B"]["enqueue_at_s"]
        ax.axvline(arrived, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("seconds since the dispatcher started")
        ax.set_ylabel("B..K: tasks started (each)")
        ax.set_ylim(0, NEIGHBOUR_TASKS * 1.05)
        what = f"A floods {r['flood']:,} first" if r["flood"] else "baseline: B..K alone"
        ax.set_title(
            f"{what}; B..K enqueue 100 each at {arrived:.1f} s (dotted); global "
            f"{r['rate_per_s']:g}/s, per key {r['key_rate_per_s']:g}/s, "
            f"{r['dispatchers']} dispatcher(s), "
            f"max_in_flight {r['max_in_flight']}",
            fontsize=10,
        )
        ax.legend(loc="upper left", fontsize=8, ncol=5)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def run_all(
    aws: LocalAWS,
    scenarios: Sequence[KeyedScenario],
    *,
    workdir: Path,
    template: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every keyed scenario; a failed one is reported, not raised. Also the
    noisy-neighbour comparisons (:func:`comparisons`)."""
    results = []
    for index, scenario in enumerate(scenarios):
        print(f"[keyed {index + 1}/{len(scenarios)}] {scenario.name}", flush=True)
        started = time.monotonic()
        try:
            result = figures(
                run_keyed(aws, scenario, index=index, workdir=workdir, template=template)
            )
        except (ScenarioError, OSError) as exc:
            result = {**asdict(scenario), "kind": f"keyed-{scenario.kind}", "error": str(exc)}
        results.append(result)
        print(
            f"    {result.get('error') or str(result.get('starts')) + ' starts'} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    return results, comparisons(results)


def comparisons(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`compare` for each flood and the baseline of the same ``max_in_flight``
    and key leases."""
    ran = [r for r in results if r["kind"] == "keyed-neighbour" and not r.get("error")]
    out = []
    for flood in (r for r in ran if r["flood"]):
        baseline = next(
            (
                r
                for r in ran
                if not r["flood"]
                and r["max_in_flight"] == flood["max_in_flight"]
                and r["key_leases"] == flood["key_leases"]
            ),
            None,
        )
        if baseline is not None:
            out.append(
                {"baseline": baseline["name"], "flood": flood["name"]} | compare(baseline, flood)
            )
    return out
