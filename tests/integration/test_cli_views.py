"""`dispatch status` and `dispatch top` run as a user runs them: subprocesses against the
emulator, after a real dispatcher has run tasks."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

from dispatch import PermanentError, Resource, Retry, task
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, async_clients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import REPO, dispatch_cli, drain

ONCE = Retry(max_attempts=1)


async def test_status_counts_tasks_by_status_with_depths_and_dlq(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given three succeeded tasks, one dead, one cancelled and two queued, when a user runs
    `dispatch status --json`, then the counts by status are exact and complete, the queue
    holds the three unrun messages, the DLQ the dead one; the text form says the same."""

    @task(registry=registry, retry=ONCE)
    def step(n: int) -> int:
        if n < 0:
            raise PermanentError(f"step {n} can never work")
        return n

    ok = queue.enqueue_many([step.message(n) for n in range(3)])
    queue.enqueue(step.message(-1))
    await drain(aws_env, registry)
    later = queue.enqueue_many([step.message(n) for n in (10, 11, 12)])
    cancelled = dispatch_cli("cancel", later[0])
    assert cancelled.returncode == 0, cancelled.stderr

    shown = dispatch_cli("status", "--json")

    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["tasks"]["counts"] == {
        "queued": 2,
        "running": 0,
        "retrying": 0,
        "succeeded": len(ok),
        "dead": 1,
        "cancelled": 1,
    }
    assert report["tasks"]["complete"] is True
    assert report["tasks"]["scanned"] >= 7  # the task records, plus the dispatcher's items
    assert report["queue"] == {"visible": 3, "in_flight": 0, "delayed": 0}
    assert report["dlq"]["visible"] == 1
    assert report["resources"] == []

    text = dispatch_cli("status")
    assert text.returncode == 0, text.stderr
    for words in ("queue: visible 3", "dlq: visible 1", "succeeded 3", "dead 1", "cancelled 1",
                  "queued 2"):  # fmt: skip
        assert words in text.stdout, text.stdout
    assert "at least" not in text.stdout


async def test_status_scan_budget_says_at_least_when_it_stops_early(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 30 queued tasks, when `dispatch status --max-scan 5` runs, then it reads five
    items, flags the counts as incomplete and prints "at least"; with a budget of exactly
    the table's size the counts are complete; --max-scan 0 skips counting."""

    @task(registry=registry)
    def item(n: int) -> None: ...

    queue.enqueue_many([item.message(n) for n in range(30)])
    table_items = clients.dynamodb.scan(TableName=aws_env.table, Select="COUNT")["Count"]

    small = json.loads(dispatch_cli("status", "--max-scan", "5", "--json").stdout)["tasks"]
    exact = json.loads(dispatch_cli("status", "--max-scan", str(table_items), "--json").stdout)
    skipped = json.loads(dispatch_cli("status", "--max-scan", "0", "--json").stdout)
    text = dispatch_cli("status", "--max-scan", "5")

    assert (small["scanned"], small["complete"], small["max_scan"]) == (5, False, 5)
    assert 0 < small["counts"]["queued"] <= 5
    assert exact["tasks"]["complete"] is True
    assert exact["tasks"]["counts"]["queued"] == 30
    assert skipped["tasks"] is None
    assert text.returncode == 0, text.stderr
    assert "queued at least" in text.stdout and "--max-scan" in text.stdout
    bad = dispatch_cli("status", "--max-scan", "-1")
    assert bad.returncode == 2 and "--max-scan" in bad.stderr


async def test_status_oldest_message_age_comes_from_what_dispatchers_received(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a dispatcher that received messages 30 s after SQS stamped them sent (its
    clock runs 30 s ahead, as if they had waited that long), and a message still queued,
    when `dispatch status --json` runs, then the oldest message age is about 30 s, from
    one dispatcher; on an empty queue it is 0 ("empty")."""

    @task(registry=registry)
    def slow_to_start(n: int) -> int:
        return n

    empty = json.loads(dispatch_cli("status", "--json").stdout)["oldest_message"]
    assert empty == {"age_s": 0.0, "source": "empty", "dispatchers": 0}

    queue.enqueue_many([slow_to_start.message(n) for n in range(3)])
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env,
            clients=aio,
            registry=registry,
            options=DispatcherOptions(),
            clock=lambda: time.time() + 30,
        )
        try:
            stats = await dispatcher.run(until_empty=True)
        finally:
            await dispatcher.runner.aclose()
    assert stats.succeeded == 3
    queue.enqueue(slow_to_start.message(99))  # something on the queue, so an age is due

    oldest = json.loads(dispatch_cli("status", "--json").stdout)["oldest_message"]

    assert oldest["source"] == "dispatchers" and oldest["dispatchers"] == 1
    assert 30 <= oldest["age_s"] < 60


async def test_top_once_shows_each_task_and_resource_from_the_live_dispatchers(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a dispatcher that ran throttled tasks (some retried once, one dead-lettered)
    and unthrottled ones, when `dispatch top --once --json` runs, then each task shows
    what it dispatched, its successes, retries and dead letters, nothing in flight and a
    dispatch rate; the resource shows its limit, cap and waits; the text frame names them."""
    api = Resource("top-api", rate_per_s=40, burst=2, max_concurrency=2)
    failed_once: set[int] = set()

    @task(registry=registry, resource=api, retry=Retry(max_attempts=3, base_delay_s=1.0))
    def call_api(n: int) -> int:
        if n % 2 and n not in failed_once:
            failed_once.add(n)
            raise ConnectionError(f"blip {n}")
        if n == 5:
            raise PermanentError("bad request")
        return n

    @task(registry=registry)
    def note(n: int) -> int:
        return n

    queue.enqueue_many([call_api.message(n) for n in range(6)] + [note.message(1)])
    stats = await drain(aws_env, registry)
    assert (stats.succeeded, stats.dead) == (6, 1)

    shown = dispatch_cli("top", "--once", "--json")

    assert shown.returncode == 0, shown.stderr
    frame = json.loads(shown.stdout)
    rows = {row["task"]: row for row in frame["tasks"]}
    assert set(rows) == {"call_api", "note"}
    api_row = rows["call_api"]
    # n = 1, 3, 5 fail once and retry; 1 and 3 then succeed, 5 dies on its permanent error.
    assert (api_row["dispatched"], api_row["succeeded"]) == (9, 5)
    assert (api_row["retried"], api_row["dead_lettered"], api_row["in_flight"]) == (3, 1, 0)
    assert (rows["note"]["dispatched"], rows["note"]["succeeded"]) == (1, 1)
    # The rate covers the window up to the dispatcher's last report, made when it stopped:
    # that window holds the last dispatches (the retries), so a rate never worked out
    # (always 0) fails here.
    assert api_row["dispatched_per_s"] > 0
    (resource,) = frame["resources"]
    assert resource["name"] == "top-api"
    assert (resource["configured_rate_per_s"], resource["max_concurrency"]) == (40, 2)
    assert resource["started"] == 9 and resource["in_flight"] == 0
    assert frame["queue"] == {"visible": 0, "in_flight": 0, "delayed": 0}
    assert frame["dlq"]["visible"] == 1
    assert frame["dispatchers"] == 0  # drained and stopped: its last report shows, not live

    text = dispatch_cli("top", "--once")
    assert text.returncode == 0, text.stderr
    for words in ("call_api", "note", "top-api", "dispatched/s", "dead-lettered", "40/s"):
        assert words in text.stdout, text.stdout


def test_top_and_status_exit_3_naming_what_is_missing(aws_env: Settings) -> None:
    """Given no DISPATCH_TABLE, when `dispatch top --once` or `dispatch status` runs, then it
    exits 3 and names the variable; with a table that does not exist, it exits 3 too."""
    no_table = {k: v for k, v in os.environ.items() if k != "DISPATCH_TABLE"}
    for argv in (("top", "--once"), ("status", "--json")):
        missing = dispatch_cli(*argv, env=no_table)
        assert missing.returncode == 3, missing.stderr
        assert "DISPATCH_TABLE" in missing.stderr
        assert missing.stdout == ""

    wrong = dispatch_cli("status", "--json", env=os.environ | {"DISPATCH_TABLE": "no-such-table"})
    assert wrong.returncode == 3, wrong.stderr
    assert "no-such-table" in wrong.stderr or "table" in wrong.stderr.lower()


def _read_until(fd: int, wanted: bytes, *, count: int, deadline_s: float) -> bytes:
    """Read a pty until ``wanted`` appeared ``count`` times, or the deadline passed."""
    seen = b""
    end = time.monotonic() + deadline_s
    while seen.count(wanted) < count and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
    return seen


def test_top_redraws_live_on_a_terminal_until_interrupted(aws_env: Settings) -> None:
    """Given a terminal, when `dispatch top --interval-s 0.3` runs, then it draws the queue
    line and redraws it on each refresh, and Ctrl-C (SIGINT) ends it cleanly with exit 0."""
    primary, secondary = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from dispatch.ops.cli import main; main()", "top", "--interval-s",
         "0.3"],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=REPO,
    )  # fmt: skip
    os.close(secondary)
    try:
        drawn = _read_until(primary, b"queue: visible 0", count=3, deadline_s=60)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)

    assert drawn.count(b"queue: visible 0") >= 3, drawn.decode(errors="replace")
    assert b"dispatch top" in drawn
    assert code == 0


def test_top_json_without_once_streams_one_frame_a_line(aws_env: Settings) -> None:
    """Given a script reading `dispatch top --json --interval-s 0.3`, then each refresh is
    one JSON object on its own line, and SIGINT ends the stream with exit 0."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from dispatch.ops.cli import main; main()", "top", "--json",
         "--interval-s", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        frames = [json.loads(process.stdout.readline()) for _ in range(3)]
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    assert [f["queue"] for f in frames] == [{"visible": 0, "in_flight": 0, "delayed": 0}] * 3
    assert frames[0]["at"] < frames[1]["at"] < frames[2]["at"]
    assert code == 0
