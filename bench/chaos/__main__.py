"""``python -m bench.chaos [--quick]``: the chaos run (``make chaos``, ``make chaos QUICK=1``).

Starts the embedded local AWS, provisions a queue, DLQ and table from
deploy/template.yaml, and runs :func:`bench.chaos.run.run_chaos`: 3,000 tasks
(``--quick``: 300) and 200 groups of 20 children joined by a callback
(``--quick``: 20 of 10) through 3 dispatcher processes while 5% of their AWS calls
fail and dispatchers are SIGKILLed (10 times; ``--quick``: 2) and restarted.
It prints the figures and writes them to ``bench/results/chaos.json``
(``chaos-quick.json`` with ``--quick``). It exits 1 when a task was lost or a
handler ran again after its success was recorded, or a group's callback was lost,
repeated or given the wrong results; 2 when the run could not finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from bench.chaos.run import FULL, QUICK, REPO_ROOT, ChaosError, run_chaos
from bench.output import to_json, write_atomically
from dispatch.core.config import Endpoint, Settings
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.provision import provision
from dispatch.store.aws import sync_clients

RESULTS: Final = REPO_ROOT / "bench" / "results"
_GATES: Final = (
    "lost",
    "rerun_after_success",
    "callbacks_lost",
    "callbacks_repeated",
    "callbacks_wrong_results",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chaos scenario; 0 when nothing was lost or rerun after success and every
    group's callback ran once with its results."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument(
        "--quick", action="store_true", help="300 tasks, 20 groups of 10, 2 kills (< 1 min)"
    )
    parser.add_argument("--tasks", type=int, help="tasks to enqueue")
    parser.add_argument("--groups", type=int, help="groups to enqueue among the tasks")
    parser.add_argument("--group-size", type=int, help="children per group")
    parser.add_argument("--kills", type=int, help="SIGKILLs during the run")
    parser.add_argument("--fault-rate", type=float, help="share of AWS calls that fail")
    parser.add_argument("--seed", type=int, help="seed of the scenario and the faults")
    parser.add_argument("--out", type=Path, help="where to write the JSON figures")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("tasks", args.tasks),
            ("groups", args.groups),
            ("group_size", args.group_size),
            ("kills", args.kills),
            ("fault_rate", args.fault_rate),
            ("seed", args.seed),
        )
        if value is not None
    }
    config = dataclasses.replace(config, **overrides)
    out = args.out or RESULTS / ("chaos-quick.json" if args.quick else "chaos.json")
    console = Console()
    try:
        with (
            LocalAWS.start() as aws,
            environment(aws.env()),
            tempfile.TemporaryDirectory(prefix="dispatch-chaos-") as scratch,
        ):
            made = sync_clients(Endpoint(region=aws.region, endpoint_url=aws.endpoint_url))
            resources = provision(made.sqs, made.dynamodb, prefix="chaos")
            made.sqs.close()
            made.dynamodb.close()
            env = {**os.environ, **resources.as_env()}
            figures = run_chaos(
                config,
                settings=Settings.from_env(env),
                env=env,
                workdir=Path(scratch),
                say=lambda line: console.print(f"[dim]{line}[/]"),
            )
    except ChaosError as exc:
        console.print(f"[red]chaos run failed:[/] {exc}")
        return 2
    figures["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    write_atomically(out, to_json(figures))
    console.print(_table(figures))
    shown = out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out
    console.print(f"written to {shown}")
    failed = [name for name in _GATES if figures[name] != 0]
    if failed:
        console.print(f"[red]FAIL[/]: {', '.join(f'{n}={figures[n]}' for n in failed)}")
        return 1
    console.print(
        "[green]PASS[/]: nothing lost, nothing rerun after a recorded success, "
        "every group's callback ran once with its children's results"
    )
    return 0


def _table(figures: dict[str, Any]) -> Table:
    table = Table(title="Chaos run", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in (
        "enqueued",
        "faults",
        "kills",
        "succeeded",
        "dead",
        "lost",
        "rerun_after_success",
        "repeated_in_window",
        "unexpected_dead",
        "concurrent_executions",
        "stuck_sync_runs",
        "groups",
        "callbacks_run",
        "callbacks_lost",
        "callbacks_repeated",
        "callbacks_repeated_in_window",
        "callbacks_wrong_results",
        "groups_incomplete",
        "executions",
        "wall_s",
        "tasks_per_s",
    ):
        table.add_row(name, str(figures.get(name)))
    for reason, count in figures["dead_reasons"].items():
        table.add_row(f"dead: {reason}", str(count))
    for kind, count in figures["faults_by_kind"].items():
        table.add_row(f"fault: {kind}", str(count))
    return table


if __name__ == "__main__":
    sys.exit(main())
