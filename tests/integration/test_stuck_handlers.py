"""A sync handler stuck for ever does not starve later tasks, nor hang the shutdown.

`dispatch run --until-empty` runs as a user runs it (a subprocess against the local
AWS) with one held message at a time, on tasks from tests/integration/stuck_tasks.py.
The run must end on its own: the subprocess timeout is the bound, no sleep decides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from dispatch.core.config import Settings
from tests.integration.conftest import REPO, dispatch_cli

TASKS = "tests.integration.stuck_tasks"
GREETINGS = 4
RUN_BOUND_S = 90  # start-up, a 1 s timeout, the 10 s shutdown grace, with room for a slow machine


def run_until_empty() -> subprocess.CompletedProcess[str]:
    """`dispatch run --until-empty --max-in-flight 1`; TimeoutExpired if it never ends."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(  # noqa: S603 - fixed argv: this interpreter, our module, test arguments
        [
            sys.executable, "-c", "from dispatch.ops.cli import main; main()",
            "run", "--tasks", TASKS, "--until-empty", "--max-in-flight", "1",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_BOUND_S,
        env=env,
        cwd=REPO,
        check=False,
    )  # fmt: skip


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run (structlog renders JSON off a terminal)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


@pytest.mark.timeout(240)
def test_a_handler_stuck_for_ever_neither_starves_later_tasks_nor_hangs_the_run(
    aws_env: Settings,
) -> None:
    """Given a sync handler that blocks for ever (1 s timeout, one attempt) enqueued before
    four quick sync tasks, and a dispatcher holding one message at a time (one thread),
    when `dispatch run --until-empty` runs, then the stuck task is dead-lettered after
    its timeout, the four later tasks succeed on a replacement thread, and the process
    exits on its own, logging the stuck thread and the one it abandoned at shutdown."""
    stuck = dispatch_cli("enqueue", "stuck_for_ever", "--tasks", TASKS)
    assert stuck.returncode == 0, stuck.stderr
    stuck_id = stuck.stdout.strip()
    greetings = dispatch_cli(
        "enqueue", "greet", "--tasks", TASKS, "--count", str(GREETINGS), "--json",
        "--args", '{"name": "later"}',
    )  # fmt: skip
    assert greetings.returncode == 0, greetings.stderr

    ran = run_until_empty()

    assert ran.returncode == 0, ran.stderr
    stats = json.loads(ran.stdout.strip().splitlines()[-1])
    assert (stats["succeeded"], stats["dead"]) == (GREETINGS, 1)
    events = log_events(ran.stderr)
    stuck_logs = [e for e in events if e["event"] == "handler_thread_stuck"]
    assert [(e["task"], e["task_id"]) for e in stuck_logs] == [("stuck_for_ever", stuck_id)]
    abandoned = [e for e in events if e["event"] == "handler_threads_abandoned"]
    assert [(e["count"], e["tasks"]) for e in abandoned] == [(1, ["stuck_for_ever"])]
    for task_id in json.loads(greetings.stdout):
        record = json.loads(dispatch_cli("status", task_id, "--json").stdout)
        assert (record["status"], record["attempts"], record["result"]) == (
            "succeeded", 1, "hello later",
        )  # fmt: skip
    dead = json.loads(dispatch_cli("status", stuck_id, "--json").stdout)
    assert dead["status"] == "dead"
    assert "TaskTimeoutError" in json.dumps(dead)


def start_run(*options: str) -> subprocess.Popen[str]:
    """`dispatch run` on the stuck tasks, as a user starts it (stopped by the test)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter, our module, test arguments
        [
            sys.executable, "-c", "from dispatch.ops.cli import main; main()",
            "run", "--tasks", TASKS, *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )  # fmt: skip


@pytest.mark.timeout(240)
def test_stuck_threads_show_in_status_and_too_many_stop_the_dispatcher(
    aws_env: Settings,
) -> None:
    """Given a dispatcher with one thread (so one stuck thread is replaced, a second is
    more than the pool replaces) and two handlers that block for ever, when it runs,
    then `dispatch status` shows the stuck thread while it runs, and once the second
    sticks the dispatcher stops on its own with exit status 1 naming the stuck threads,
    for a supervisor to restart; the quick task queued behind them is not lost (released
    with its attempt given back, if it never got a thread)."""
    first = dispatch_cli("enqueue", "stuck_for_ever", "--tasks", TASKS)
    assert first.returncode == 0, first.stderr
    run = start_run("--max-in-flight", "1")
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline and run.poll() is None:
            shown = dispatch_cli("status", "--json", "--max-scan", "0")
            seen = json.loads(shown.stdout).get("stuck_threads", 0)
        assert seen == 1
        second = dispatch_cli("enqueue", "stuck_for_ever", "--tasks", TASKS)
        later = dispatch_cli("enqueue", "greet", "--tasks", TASKS, "--args", '{"name": "x"}')
        assert second.returncode == 0 and later.returncode == 0
        _, stderr = run.communicate(timeout=RUN_BOUND_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()

    assert run.returncode == 1, stderr
    assert "stuck past their tasks' timeouts" in stderr
    stopping = [e for e in log_events(stderr) if e["event"] == "dispatcher_stopping"]
    assert len(stopping) == 1
    record = json.loads(dispatch_cli("status", later.stdout.strip(), "--json").stdout)
    # Still waiting for a thread when the dispatcher stopped: released, its attempt given
    # back, for the next dispatcher (or it ran, if a thread came free in time).
    assert (record["status"], record["attempts"]) in (("retrying", 0), ("queued", 0)) or (
        record["status"] == "succeeded"
    )
