"""``python -m bench.throttle [--quick] [--seconds N]``: the throttle benchmark.

On the embedded local AWS (one emulator for the whole run, emptied before each
scenario), against the example backend (dispatch/local/example/backend.py), with 1, 2 and 4
dispatcher processes sharing one resource:

1. accuracy: rates 5, 50 and 200 /s with a burst of 10, the queue kept saturated;
   achieved rate, every window against ``rate * w + burst``, peak concurrency.
   The tasks are lean (``track_state=False``): the throttle is the same either
   way, and on 2 cores a claim and a record per task in the emulator would
   compete with the dispatchers for CPU; the top rate is run again with task
   records (``-records``) to show what that costs;
2. a concurrency cap shared by two dispatchers (50 /s, cap 4, 50 ms requests);
3. adaptive: 100 /s against a backend of capacity 4 that halves mid-window;
4. backlog (:mod:`bench.throttle.backlog`): a queue already full when the
   dispatchers start, drained to its last task; makespan and the lateness of each
   start against the ideal schedule, and the SQS requests deferral costs;
5. keyed (:mod:`bench.throttle.keyed`, only with ``--section keyed``): per-key
   limits and fairness with one dispatcher, a noisy neighbour against its baseline
   and the per-key accuracy of many keys at 1/s (``throttle-keyed.*``).

It prints the report (markdown tables) and writes ``throttle.json``,
``throttle.md`` and ``throttle.png`` under ``bench/results/`` (``--quick``
writes ``throttle-quick.*`` instead, so a smoke run never overwrites the full
figures). Targets are printed as PASS/FAIL next to the figures; they never fail
the command. It exits 1 only when a scenario could not run.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench.throttle import backlog, chart, keyed, report
from bench.throttle.harness import (
    REPO_ROOT,
    Scenario,
    ScenarioError,
    calibrate_emulator,
    run_scenario,
)
from dispatch.core.errors import DispatchError
from dispatch.local import moto_patches
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.provision import load_template

DEFAULT_SECONDS: Final = 30.0
QUICK_SECONDS: Final = 6.0
QUICK_ADAPTIVE_SECONDS: Final = 10.0
"""Half of it after the halving: room for the 503s to stop and 2 quiet seconds."""
BURST: Final = 10
_CODE_UNDER_TEST: Final = ("dispatch", "workers", "examples", "bench/throttle")


def plan(*, quick: bool, seconds: float) -> list[Scenario]:
    """The scenarios, in the order they run."""
    rates = (5, 50) if quick else (5, 50, 200)
    counts = (1, 2) if quick else (1, 2, 4)
    scenarios = [
        Scenario(
            name=f"rate-{rate}-x{n}",
            kind="accuracy",
            rate_per_s=rate,
            burst=BURST,
            dispatchers=n,
            seconds=seconds,
            track_state=False,
        )
        for rate in rates
        for n in counts
    ]
    # The same accuracy with a task record per task: on 2 cores the emulator's
    # DynamoDB work (a claim and a record per task) competes with the dispatchers.
    scenarios.extend(
        Scenario(
            name=f"rate-{rates[-1]}-x{n}-records",
            kind="accuracy",
            rate_per_s=rates[-1],
            burst=BURST,
            dispatchers=n,
            seconds=seconds,
        )
        for n in (counts[0], counts[-1])
    )
    scenarios.extend(
        Scenario(
            name=f"cap-4-x{n}",
            kind="cap",
            rate_per_s=50,
            burst=BURST,
            dispatchers=n,
            seconds=seconds,
            work_ms=50,
            max_concurrency=4,
        )
        for n in (1, 2)
    )
    adaptive_seconds = max(seconds, QUICK_ADAPTIVE_SECONDS) if quick else seconds
    for n in (1,) if quick else (1, 2):
        scenarios.append(
            Scenario(
                name=f"adaptive-x{n}",
                kind="adaptive",
                rate_per_s=100,
                burst=BURST,
                dispatchers=n,
                seconds=adaptive_seconds,
                work_ms=50,
                capacity=4,
                capacity_after=2,
            )
        )
    return scenarios


def _keyed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flood",
        type=int,
        help="keyed: tenant A's tasks in the noisy neighbour (default 3000, quick 1000)",
    )
    parser.add_argument(
        "--no-key-leases",
        action="store_true",
        help="keyed: the noisy-neighbour pair with key leases off (names end -unleased)",
    )
    parser.add_argument(
        "--no-fair-queues",
        action="store_true",
        help="the local AWS delivers in send order, not as an SQS fair queue (docs/local.md)",
    )


def _prepare(args: argparse.Namespace) -> None:
    # SIGTERM unwinds like Ctrl-C: every `with` and `finally` stops what it started.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    if args.no_fair_queues:  # read by the emulator this process starts
        os.environ[moto_patches.FAIR_QUEUES_ENV] = "0"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every scenario, print the report, write the results."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.throttle", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="6 s windows, rates 5 and 50, 1 and 2 dispatchers"
    )
    parser.add_argument(
        "--seconds", type=float, help=f"window per scenario (default {DEFAULT_SECONDS:g}, quick 6)"
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated scenario names to run (e.g. rate-200-x1,cap-4-x2); "
        "results go to throttle-only.* so the full figures are never overwritten",
    )
    parser.add_argument(
        "--section",
        choices=("all", "steady", "backlog", "keyed"),
        default="all",
        help="steady windows, the backlog drains, or both (default); keyed (per-key "
        "limits, one dispatcher) runs only when named",
    )
    _keyed_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results directory"
    )
    args = parser.parse_args(argv)
    _prepare(args)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    if seconds < 3:
        parser.error("--seconds must be at least 3 (the first second is the burst)")
    scenarios = plan(quick=args.quick, seconds=seconds) if args.section in ("all", "steady") else []
    backlogs = backlog.plan(quick=args.quick) if args.section in ("all", "backlog") else []
    keyeds = (
        keyed.plan(quick=args.quick, flood=args.flood, key_leases=not args.no_key_leases)
        if args.section == "keyed"
        else []
    )
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        names = {s.name for s in scenarios} | {b.name for b in backlogs} | {k.name for k in keyeds}
        unknown = wanted - names
        if unknown:
            parser.error(f"--only: no scenario named {', '.join(sorted(unknown))}")
        scenarios, backlogs, keyeds = _only(wanted, scenarios, backlogs, keyeds)
    meta: dict[str, Any] = {
        "benchmark": "throttle",
        "fair_queues": not args.no_fair_queues,
        "mode": "quick" if args.quick else "full",
        "seconds": seconds,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "moto": version("moto"),
        "git": _git_state(),
    }
    started = time.monotonic()
    results, drains, (keyed_runs, neighbour) = _run_all(scenarios, backlogs, keyeds, meta)
    meta["wall_s"] = round(time.monotonic() - started, 1)

    stem = "throttle-only" if args.only else "throttle-quick" if args.quick else "throttle"
    if args.section in ("backlog", "keyed"):
        stem += f"-{args.section}"
    text = report.markdown(results, meta) if results else ""
    if drains:
        text += "\n".join(["", *backlog.markdown(drains), ""])
    if keyed_runs:
        text += "\n".join(["", *keyed.markdown(keyed_runs, neighbour), ""])
    payload = {
        **meta,
        "summary": report.summary(results),
        "scenarios": results,
        "backlog": drains,
        **({"keyed": keyed_runs, "noisy_neighbour": neighbour} if keyeds else {}),
    }
    report.write_atomically(args.out / f"{stem}.json", report.to_json(payload))
    report.write_atomically(args.out / f"{stem}.md", text)
    try:
        png = keyed.chart(keyed_runs) if keyeds else chart.draw(results, drains)
        report.write_atomically(args.out / f"{stem}.png", png)
        chart_note = f"{args.out / stem}.png"
    except ImportError:
        chart_note = "no chart: matplotlib is not installed (pip install -e '.[bench]')"
    except ValueError as exc:
        chart_note = f"no chart: {exc}"
    print(text)
    print(f"wrote {args.out / stem}.json, .md; {chart_note} ({meta['wall_s']:g} s in all)")
    return 1 if any(r.get("error") for r in [*results, *drains, *keyed_runs]) else 0


def _only(
    wanted: set[str],
    scenarios: Sequence[Scenario],
    backlogs: Sequence[backlog.BacklogScenario],
    keyeds: Sequence[keyed.KeyedScenario],
) -> tuple[list[Scenario], list[backlog.BacklogScenario], list[keyed.KeyedScenario]]:
    """The scenarios of each section named in ``wanted``."""
    return (
        [s for s in scenarios if s.name in wanted],
        [b for b in backlogs if b.name in wanted],
        [k for k in keyeds if k.name in wanted],
    )


def _git_state() -> dict[str, Any] | None:
    """The commit measured, and the files under test that differ from it (a shared tree)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, fixed argv
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(  # noqa: S603 - fixed argv: git and our own paths
            ["git", "status", "--porcelain", "--", *_CODE_UNDER_TEST],  # noqa: S607 - as above
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted": [line[3:] for line in changed]}


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """Unwind on the first SIGTERM or SIGINT; ignore the next ones.

    A second signal (``timeout`` forwards SIGTERM to its child and to the child's
    process group: two in a row; or Ctrl-C pressed twice) would otherwise abort
    the cleanup half-way and strand what it had not stopped yet. Every cleanup
    step is bounded, so ignoring them cannot hang the exit.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"stopping on signal {signum}: cleaning up", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def _run_all(
    scenarios: Sequence[Scenario],
    backlogs: Sequence[backlog.BacklogScenario],
    keyeds: Sequence[keyed.KeyedScenario],
    meta: dict[str, Any],
) -> tuple[
    list[dict[str, Any]],
    list[dict[str, Any]],
    tuple[list[dict[str, Any]], list[dict[str, Any]]],
]:
    """Run the scenarios on one emulator; note its measured ceiling in ``meta``."""
    results: list[dict[str, Any]] = []
    with (
        LocalAWS.start() as aws,
        environment(aws.env()),
        tempfile.TemporaryDirectory(prefix="bench-throttle-") as workdir,
    ):
        # Loaded once: every scenario is built from the same definitions.
        template = load_template()
        meta["calibration"] = calibrate_emulator(aws, template=template)
        print(
            f"emulator ceiling: {meta['calibration']['update_item_per_s']:g} UpdateItem/s",
            file=sys.stderr,
            flush=True,
        )
        for index, scenario in enumerate(scenarios):
            print(
                f"[{index + 1}/{len(scenarios)}] {scenario.name}: {scenario.rate_per_s:g}/s, "
                f"{scenario.dispatchers} dispatcher(s), {scenario.seconds:g} s",
                file=sys.stderr,
                flush=True,
            )
            try:
                run = run_scenario(
                    aws, scenario, index=index, workdir=Path(workdir), template=template
                )
            except (ScenarioError, DispatchError, OSError) as exc:
                print(f"    failed: {exc}", file=sys.stderr, flush=True)
                results.append(report.failed(scenario, exc))
                continue
            result = report.figures(run)
            results.append(result)
            print(f"    {_progress_line(result)}", file=sys.stderr, flush=True)
        drains = backlog.run_all(aws, backlogs, workdir=Path(workdir), template=template)
        keyed_runs = keyed.run_all(aws, keyeds, workdir=Path(workdir), template=template)
    return results, drains, keyed_runs


def _progress_line(r: dict[str, Any]) -> str:
    window = r["window_at_backend"]
    return (
        f"achieved {r['achieved_rate_per_s']} /s ({r['error_pct']} %), worst window "
        f"{window['worst']} (burst {r['burst']}), peak {r['peak_concurrency']}, "
        f"{r['coordination_per_task']} coordination req/task, "
        f"emulator {r['cpu']['emulator_pct_of_one_core']} % CPU"
    )


if __name__ == "__main__":
    sys.exit(main())
