"""CLI options and API paths no other test drove (issue #19 item 8): `dlq purge` and its
--yes guard, `dlq redrive --task/--limit` and `dlq list --limit` past one SQS batch,
`run --for` and `--max-in-flight`, `enqueue --delay-s` and `--idempotency-key`, the
global `--log-level`/`--log-json`, ``enqueue_many_async`` and FIFO groups through the
dispatcher. Every command runs as a real `dispatch` process on the local emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import dispatch
from dispatch import PermanentError, Retry, task
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.local.provision import load_template, provision
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore, task_key
from dispatch.tasks.registry import Registry
from tests.integration.conftest import (
    REPO,
    dispatch_cli,
    drain,
    queue_counts,
    receive_all,
    wait_until,
)

TASKS = "tests.integration.graceful_tasks"
WAIT_S = 60.0


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have exited 0."""
    assert result.returncode == 0, result.stderr
    return result.stdout


def tasks_on(clients: SyncClients, url: str) -> Counter[str]:
    """Task names of every message visible on a queue (left hidden for a minute)."""
    return Counter(json.loads(m["Body"])["task"] for m in receive_all(clients, url))


def depth(clients: SyncClients, url: str) -> int:
    """Messages on a queue, visible or not."""
    return sum(queue_counts(clients, url).values())


# --- the dead-letter queue, past one SQS batch -------------------------------------------

REFUNDS, CHARGES = 17, 8  # 25 dead letters: more than two batches of ten, two task names


@pytest.fixture
async def dead_letters(aws_env: Settings, registry: Registry, queue: Queue) -> dict[str, list[str]]:
    """25 dead letters on the DLQ: 17 ``refund`` and 8 ``charge``, each dead after one
    attempt (PermanentError); the task ids by name."""

    @task(registry=registry, retry=Retry(max_attempts=1))
    def refund(n: int) -> None:
        raise PermanentError(f"refund {n} refused")

    @task(registry=registry, retry=Retry(max_attempts=1))
    def charge(n: int) -> None:
        raise PermanentError(f"charge {n} refused")

    ids = {
        "refund": queue.enqueue_many([refund.message(n) for n in range(REFUNDS)]),
        "charge": queue.enqueue_many([charge.message(n) for n in range(CHARGES)]),
    }
    stats = await drain(aws_env, registry)
    assert stats.dead == REFUNDS + CHARGES
    return ids


def test_dlq_list_limit_returns_that_many_past_one_batch_and_leaves_them_there(
    aws_env: Settings, clients: SyncClients, dead_letters: dict[str, list[str]]
) -> None:
    """Given 25 dead letters, when `dlq list --limit 12 --json` runs, then it lists 12
    distinct ones (past one receive of 10, short of all 25); `dlq list --json` lists all
    25 with their tasks; afterwards all 25 are still visible on the DLQ."""
    limited = json.loads(ok(dispatch_cli("dlq", "list", "--limit", "12", "--json")))
    everything = json.loads(ok(dispatch_cli("dlq", "list", "--json")))

    assert len(limited) == 12
    assert len({e["message_id"] for e in limited}) == 12
    assert len({e["message_id"] for e in everything}) == REFUNDS + CHARGES
    assert Counter(e["task"] for e in everything) == {"refund": REFUNDS, "charge": CHARGES}
    assert {e["task_id"] for e in everything} == set(
        dead_letters["refund"] + dead_letters["charge"]
    )
    assert queue_counts(clients, aws_env.dlq_url)["visible"] == REFUNDS + CHARGES


def test_dlq_redrive_by_task_and_limit_moves_exactly_those(
    aws_env: Settings, clients: SyncClients, dead_letters: dict[str, list[str]]
) -> None:
    """Given 25 dead letters (17 refund, 8 charge), when `dlq redrive --task refund --limit
    12` runs, then exactly 12 refunds go back to the queue (more than one batch of 10) and
    the other 13 stay; when `dlq redrive --task charge` runs, then the 8 charges go back
    and only the 5 other refunds stay. Redriven records are queued again, attempts 0."""
    first = json.loads(
        ok(dispatch_cli("dlq", "redrive", "--task", "refund", "--limit", "12", "--json"))
    )
    after_first = tasks_on(clients, aws_env.queue_url)
    second = json.loads(ok(dispatch_cli("dlq", "redrive", "--task", "charge", "--json")))

    assert (first["redriven"], first["skipped"]) == (12, REFUNDS + CHARGES - 12)
    assert after_first == {"refund": 12}
    assert (second["redriven"], second["skipped"]) == (CHARGES, REFUNDS - 12)
    assert tasks_on(clients, aws_env.dlq_url) == {"refund": REFUNDS - 12}
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    records = [store.get(i) for i in dead_letters["refund"] + dead_letters["charge"]]
    assert Counter(r.status for r in records) == {
        Status.QUEUED: 12 + CHARGES,
        Status.DEAD: REFUNDS - 12,
    }
    assert all(r.attempts == 0 for r in records if r.status is Status.QUEUED)


def test_dlq_redrive_filters_by_reason_and_time_and_counts_first_with_dry_run(
    aws_env: Settings, clients: SyncClients, dead_letters: dict[str, list[str]]
) -> None:
    """Given 25 dead letters (all permanent_error, dead-lettered just now), when `dlq
    redrive` is filtered by a reason none has, by a time after they died, or dry-run by
    reason, task and `--since 1h`, then it moves nothing and counts exactly the matches;
    run for real with the same filters it moves those 8 only. A bad --since or --reason
    is a usage error naming the option."""
    other_reason = json.loads(
        ok(dispatch_cli("dlq", "redrive", "--reason", "max_attempts", "--dry-run", "--json"))
    )
    future = json.loads(
        ok(dispatch_cli("dlq", "redrive", "--since", "2999-01-01T00:00:00Z", "--json"))
    )
    filters = ("--task", "charge", "--reason", "permanent_error", "--since", "1h")
    counted = json.loads(ok(dispatch_cli("dlq", "redrive", *filters, "--dry-run", "--json")))
    kept = depth(clients, aws_env.dlq_url)
    moved = json.loads(ok(dispatch_cli("dlq", "redrive", *filters, "--json")))
    bad_since = dispatch_cli("dlq", "redrive", "--since", "ten")
    bad_reason = dispatch_cli("dlq", "redrive", "--reason", "tired")

    assert (other_reason["redriven"], other_reason["skipped"]) == (0, REFUNDS + CHARGES)
    assert (future["redriven"], future["skipped"]) == (0, REFUNDS + CHARGES)
    assert (counted["redriven"], counted["dry_run"]) == (CHARGES, True)
    assert kept == REFUNDS + CHARGES
    assert (moved["redriven"], moved["skipped"]) == (CHARGES, REFUNDS)
    assert tasks_on(clients, aws_env.dlq_url) == {"refund": REFUNDS}
    assert bad_since.returncode == bad_reason.returncode == 2
    assert "--since" in bad_since.stderr and "--reason" in bad_reason.stderr


def test_dlq_purge_needs_yes_and_then_empties_the_dlq(
    aws_env: Settings, clients: SyncClients, dead_letters: dict[str, list[str]]
) -> None:
    """Given 25 dead letters, when `dlq purge` runs without --yes, then it exits 2 naming
    --yes and deletes nothing; with --yes it exits 0 and the DLQ is empty (the task
    queue untouched)."""
    refused = dispatch_cli("dlq", "purge")
    kept = depth(clients, aws_env.dlq_url)
    purged = dispatch_cli("dlq", "purge", "--yes")

    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert kept == REFUNDS + CHARGES
    assert purged.returncode == 0, purged.stderr
    assert "purged" in purged.stdout
    assert depth(clients, aws_env.dlq_url) == 0
    assert json.loads(ok(dispatch_cli("dlq", "list", "--json"))) == []


# --- enqueue options and run options -----------------------------------------------------


def enqueue_quick(n: int, *options: str) -> str:
    """`dispatch enqueue quick` from graceful_tasks.py; the task id."""
    return ok(
        dispatch_cli("enqueue", "quick", "--tasks", TASKS, "--args", json.dumps({"n": n}), *options)
    ).strip()


def test_enqueue_delay_s_holds_the_message_back_and_run_for_stops_on_time(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given one task enqueued now and one with `--delay-s 30`, then SQS counts one
    visible and one delayed; when `dispatch run --for 2` runs, then it exits 0 after at
    least 2 s (not at once, not waiting for the delayed one), having run only the
    task due now; the delayed one is still delayed and queued."""
    now = enqueue_quick(1)
    later = enqueue_quick(2, "--delay-s", "30")
    before = queue_counts(clients, aws_env.queue_url)

    started = time.monotonic()
    ran = dispatch_cli("run", "--tasks", TASKS, "--for", "2")
    took_s = time.monotonic() - started

    assert before == {"visible": 1, "in_flight": 0, "delayed": 1}
    report = json.loads(ok(ran).strip().splitlines()[-1])
    assert (report["received"], report["succeeded"]) == (1, 1)
    assert 2 <= report["wall_s"] < 20 and took_s >= 2
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    assert (store.get(now).status, store.get(later).status) == (Status.SUCCEEDED, Status.QUEUED)
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 1}


def test_enqueue_delay_beyond_the_sqs_limit_is_carried_to_the_due_time(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given `enqueue --delay-s 3600` (past SQS's 15-minute DelaySeconds, so the envelope
    carries the eta), then the message is delayed on SQS and its record is kept for the
    record lifetime counted from the due time an hour on, not from now (the record's
    expiry is the one place outside the delayed body where the eta shows); `--delay-s -1`
    is a usage error (exit 2) that enqueues nothing."""
    due_now = enqueue_quick(3)
    due_later = enqueue_quick(4, "--delay-s", "3600")
    negative = dispatch_cli(
        "enqueue", "quick", "--tasks", TASKS, "--args", '{"n": 5}', "--delay-s", "-1"
    )

    assert negative.returncode == 2, negative.stderr
    assert "--delay-s" in negative.stderr
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 1, "in_flight": 0, "delayed": 1}
    expiry = {
        task_id: int(
            clients.dynamodb.get_item(TableName=aws_env.table, Key=task_key(task_id))["Item"][
                c.TABLE_TTL_ATTRIBUTE
            ]["N"]
        )
        for task_id in (due_now, due_later)
    }
    assert 3600 - 60 <= expiry[due_later] - expiry[due_now] <= 3600 + 60
    record = json.loads(ok(dispatch_cli("task", due_later, "--json")))
    assert (record["status"], record["attempts"]) == ("queued", 0)


def test_enqueue_idempotency_key_enqueues_one_task_for_the_same_key(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given `enqueue --idempotency-key K` run twice (and once with another key), then
    the same key prints the same task id and puts one message on the queue; another
    key is another task; the key with --count 2 is a usage error (exit 2)."""
    first = enqueue_quick(1, "--idempotency-key", "order-17")
    again = enqueue_quick(1, "--idempotency-key", "order-17")
    other = enqueue_quick(1, "--idempotency-key", "order-18")
    two = dispatch_cli(
        "enqueue", "quick", "--tasks", TASKS, "--args", '{"n": 1}',
        "--idempotency-key", "order-19", "--count", "2",
    )  # fmt: skip

    assert first == again
    assert other != first
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 2
    record = json.loads(ok(dispatch_cli("task", first, "--json")))
    assert record["idempotency_key"] == "order-17"
    assert two.returncode == 2
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 2


def test_run_max_in_flight_bounds_the_messages_held(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients, tmp_path: Path
) -> None:
    """Given two held tasks on the queue before `dispatch run --max-in-flight 1` starts,
    when one has started, then the other is still visible on the queue (a dispatcher
    receiving batches of up to 10 would have taken both at once); stopped (SIGTERM)
    and let go, it reports one received and one succeeded, the other still queued."""

    @task(registry=registry, name="hold", timeout_s=60.0, retry=Retry(max_attempts=1))
    def hold(folder: str, n: int) -> int: ...

    ids = queue.enqueue_many([hold.message(str(tmp_path), n) for n in (1, 2)])
    run = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter, our module, test arguments
        [
            sys.executable,
            "-c",
            "from dispatch.ops.cli import main; main()",
            "run",
            "--tasks",
            TASKS,
            "--max-in-flight",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
        cwd=REPO,
    )
    try:
        wait_until(
            lambda: (
                any((tmp_path / f"started-{n}").exists() for n in (1, 2)) or run.poll() is not None
            ),
            what="a held handler to start",
        )
        held_now = queue_counts(clients, aws_env.queue_url)
        run.terminate()
        (tmp_path / "release").touch()
        stdout, stderr = run.communicate(timeout=WAIT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()

    assert held_now == {"visible": 1, "in_flight": 1, "delayed": 0}
    assert run.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert (report["received"], report["succeeded"]) == (1, 1)
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    assert sorted(store.get(i).status.value for i in ids) == ["queued", "succeeded"]
    assert len([n for n in (1, 2) if (tmp_path / f"started-{n}").exists()]) == 1


def log_lines(stderr: str) -> list[str]:
    """The non-empty lines a command wrote on stderr."""
    return [line for line in stderr.splitlines() if line.strip()]


def test_log_json_and_log_level_shape_what_run_writes(aws_env: Settings) -> None:
    """Given a task to run, when `dispatch --log-json --log-level DEBUG run --until-empty`
    runs, then every stderr line is a JSON object with an event and a level, debug lines
    among them; with `--log-level WARNING` no info or debug line appears; with
    `--log-console` the lines are not JSON."""
    enqueue_quick(1)
    debug = dispatch_cli(
        "--log-json", "--log-level", "DEBUG", "run", "--tasks", TASKS, "--until-empty"
    )
    enqueue_quick(2)
    quiet = dispatch_cli(
        "--log-json", "--log-level", "WARNING", "run", "--tasks", TASKS, "--until-empty"
    )
    enqueue_quick(3)
    console = dispatch_cli(
        "--log-console", "--log-level", "DEBUG", "run", "--tasks", TASKS, "--until-empty"
    )

    ok(debug)
    events = [json.loads(line) for line in log_lines(debug.stderr)]
    assert events and all("event" in e and "level" in e for e in events)
    assert "debug" in {e["level"] for e in events}
    ok(quiet)
    quiet_levels = {json.loads(line)["level"] for line in log_lines(quiet.stderr)}
    assert not quiet_levels & {"debug", "info"}
    ok(console)
    console_lines = log_lines(console.stderr)
    assert console_lines
    assert not any(line.lstrip().startswith("{") for line in console_lines)
    for ran in (debug, quiet, console):
        assert json.loads(ran.stdout.strip().splitlines()[-1])["succeeded"] == 1


# --- the async bulk API and FIFO groups ---------------------------------------------------


async def test_enqueue_many_async_sends_every_task_past_one_batch(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 25 tasks (three SendMessageBatch calls), when ``dispatch.enqueue_many_async``
    sends them on the default queue, then it returns 25 distinct ids in order, each has a
    queued record and a message; drained, each ran once with its own argument."""

    @task(registry=registry)
    def square(n: int) -> int:
        return n * n

    messages = [square.message(n) for n in range(25)]

    ids = await dispatch.enqueue_many_async(messages)

    assert ids == [m.task_id for m in messages]
    assert len(set(ids)) == 25
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 25
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    assert {store.get(i).status for i in ids} == {Status.QUEUED}
    stats = await drain(aws_env, registry)
    assert stats.succeeded == 25
    assert [store.get(i).result for i in ids] == [n * n for n in range(25)]


@pytest.fixture
def fifo_env(
    aws_env: Settings, _provisioning_clients: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A FIFO queue and FIFO DLQ (the template's queues with FifoQueue set) and a table,
    provisioned as the fixtures do; the environment points at them."""
    template = load_template()
    for logical_id in ("TaskQueue", "DeadLetterQueue"):
        template["Resources"][logical_id]["Properties"]["FifoQueue"] = True
    sqs, dynamodb = _provisioning_clients
    resources = provision(sqs, dynamodb, prefix=f"fifo-{uuid.uuid4().hex[:12]}", template=template)
    for name, value in resources.as_env().items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.is_fifo
    return settings


def declare_steps(registry: Registry, finished: list[tuple[str, int]]) -> Any:
    """``step(lane, n)``: notes (lane, n) when it finishes; a1's first attempt fails."""
    failed_once: set[str] = set()

    @task(registry=registry, retry=Retry(max_attempts=3, base_delay_s=1.0))
    def step(lane: str, n: int) -> None:
        if (lane, n) == ("a", 1) and lane not in failed_once:
            failed_once.add(lane)
            raise ConnectionError("a1 fails once")
        finished.append((lane, n))

    return step


def enqueue_lanes(settings: Settings, step: Any) -> list[str]:
    """Five tasks in each of groups "a" and "b", interleaved (a0, b0, a1, b1, ...)."""
    fifo_queue = Queue(settings)
    try:
        ids = fifo_queue.enqueue_many(
            [step.message(g, n, group=g) for n in range(5) for g in ("a", "b")]
        )
        with pytest.raises(dispatch.DispatchError, match="FIFO"):
            fifo_queue.enqueue(step.message("a", 9, group="a", delay_s=5))
    finally:
        fifo_queue.close()
    return ids


async def test_fifo_groups_keep_their_order_through_the_dispatcher(
    fifo_env: Settings, registry: Registry, clients: SyncClients
) -> None:
    """Given a FIFO queue and two groups of five tasks, interleaved, where a1 fails its
    first attempt (retried after 1 s), when a dispatcher holding one message at a time
    drains it, then each group's tasks finish in the order sent (a1 before a2, though
    retried) while group "b" is not held up behind a1 (b1 finishes before a1's retry);
    every task succeeded; a delay_s on a FIFO queue is refused before anything is sent."""
    finished: list[tuple[str, int]] = []
    ids = enqueue_lanes(fifo_env, declare_steps(registry, finished))

    stats = await drain(fifo_env, registry, max_in_flight=1)

    assert (stats.succeeded, stats.retried, stats.dead) == (10, 1, 0)
    assert [n for g, n in finished if g == "a"] == [0, 1, 2, 3, 4]
    assert [n for g, n in finished if g == "b"] == [0, 1, 2, 3, 4]
    assert finished.index(("b", 1)) < finished.index(("a", 1))
    store = SyncStateStore(clients.dynamodb, fifo_env.table)
    assert {store.get(i).status for i in ids} == {Status.SUCCEEDED}
    assert queue_counts(clients, fifo_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_fifo_group_order_holds_with_many_in_flight(
    fifo_env: Settings, registry: Registry
) -> None:
    """Given the same two interleaved groups, when the default dispatcher (64 in flight)
    drains them, then each group's tasks still finish in the order sent."""
    finished: list[tuple[str, int]] = []
    enqueue_lanes(fifo_env, declare_steps(registry, finished))

    stats = await drain(fifo_env, registry)

    assert stats.succeeded == 10
    assert [n for g, n in finished if g == "a"] == [0, 1, 2, 3, 4]
    assert [n for g, n in finished if g == "b"] == [0, 1, 2, 3, 4]
