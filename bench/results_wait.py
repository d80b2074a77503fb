"""How soon a waiter sees a result, and what waiting costs: ``TaskHandle.result()``.

One long-polling dispatcher with in-process workers (as ``dispatch run``) drains
``bench.timed`` tasks whose handlers work 0, 0.5, 2 or 5 s and note when they
return. For each task one waiter thread calls ``result()`` right after submitting,
through a ``Queue`` of its own whose requests are counted, so each wait's reads
are its own. Measured per task: the handler's return → ``result()`` returning
(same machine, same clock), and the reads (GetItem) the wait took. Target: the
median return → result at most 1 s.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any, Final

from bench import workload
from bench.latency import percentile
from bench.pickup import in_process_dispatcher
from bench.stage import Stage, environment, settings_env
from dispatch.producer.enqueue import Queue
from dispatch.producer.handle import TaskHandle
from dispatch.store.aws import RequestCounter

__all__ = ["TARGET_MEDIAN_S", "run_results_wait"]

WORK_S: Final = (0.0, 0.5, 2.0, 5.0)
TARGET_MEDIAN_S: Final = 1.0
_WAIT_S: Final = 60.0


def run_results_wait(stage: Stage, per_duration: int) -> dict[str, Any]:
    """``per_duration`` waited tasks for each handler duration in :data:`WORK_S`."""
    settings = stage.fresh("results")
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()

    def wait_one(work_s: float) -> None:
        counter = RequestCounter()
        queue = Queue(settings, counter=counter)
        token = uuid.uuid4().hex
        try:
            handle: TaskHandle[Any] = TaskHandle(
                queue.enqueue(workload.timed.message(token=token, work_s=work_s)), queue=queue
            )
            counter.reset()  # the enqueue's requests are not the wait's
            value = handle.result(timeout_s=_WAIT_S)
            seen = time.time()
        finally:
            queue.close()
        returned = workload.returned_at(token)
        if returned is None or value != {"token": token}:
            raise RuntimeError(f"task {token}: result {value!r}, returned at {returned}")
        with lock:
            rows.append(
                {"work_s": work_s, "lag_s": seen - returned, "reads": counter.total("dynamodb")}
            )

    with environment(settings_env(settings)), in_process_dispatcher(settings):
        threads = [
            threading.Thread(target=wait_one, args=(work_s,))
            for work_s in WORK_S
            for _ in range(per_duration)
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.05)  # submissions spread out, as a service's would be
        for thread in threads:
            thread.join(_WAIT_S + 10)
    expected = per_duration * len(WORK_S)
    if len(rows) != expected:
        raise RuntimeError(f"{expected - len(rows)} of {expected} waits did not finish")
    lags = [r["lag_s"] for r in rows]
    by_work = {}
    for work_s in WORK_S:
        mine = [r for r in rows if r["work_s"] == work_s]
        by_work[f"{work_s:g}s"] = {
            "lag_s_median": round(statistics.median(r["lag_s"] for r in mine), 3),
            "reads_median": statistics.median(r["reads"] for r in mine),
            "reads_max": max(r["reads"] for r in mine),
        }
    median = statistics.median(lags)
    return {
        "waited": len(rows),
        "lag_s": {
            "p50": round(median, 3),
            "p90": round(percentile(lags, 90), 3),
            "max": round(max(lags), 3),
        },
        "reads_per_waited_task": round(statistics.fmean(r["reads"] for r in rows), 2),
        "by_work": by_work,
        "target_median_s": TARGET_MEDIAN_S,
        "result": "PASS" if median <= TARGET_MEDIAN_S else "FAIL",
    }


def markdown(section: dict[str, Any]) -> list[str]:
    """The report's results section (nothing when it was not measured)."""
    if "lag_s" not in section:
        return []
    out = [
        "## 9. Results: handler return → `result()` returning",
        "",
        f"{section['waited']} tasks, each waited for by its own thread (`TaskHandle.result()`, "
        "its reads counted on its own clients), handlers working 0, 0.5, 2 and 5 s, one "
        "long-polling dispatcher. Median "
        f"{section['lag_s']['p50']:g} s, p90 {section['lag_s']['p90']:g} s, max "
        f"{section['lag_s']['max']:g} s (target: median ≤ {section['target_median_s']:g} s: "
        f"**{section['result']}**); {section['reads_per_waited_task']:g} reads per waited "
        "task on average.",
        "",
        "| handler works | return → result, median s | reads per wait, median (max) |",
        "|---|---|---|",
    ]
    for work, row in section["by_work"].items():
        out.append(
            f"| {work} | {row['lag_s_median']:g} | {row['reads_median']:g} ({row['reads_max']}) |"
        )
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.results_wait [--per-duration N]``: this section alone, written to
    bench/results/results.json (what ``make bench`` writes for it too)."""
    import argparse

    from bench.fleet import REPO_ROOT
    from bench.output import to_json, write_atomically
    from dispatch.core.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.results_wait", description=__doc__)
    parser.add_argument("--per-duration", type=int, default=10, help="waits per duration (10)")
    args = parser.parse_args(argv)
    configure_logging(level="ERROR", json=True)
    with Stage.start() as stage:
        section = run_results_wait(stage, args.per_duration)
    write_atomically(REPO_ROOT / "bench" / "results" / "results.json", to_json(section))
    print("\n".join(markdown(section)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
