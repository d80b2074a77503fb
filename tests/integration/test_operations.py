"""Day-to-day operations from the shell: dead letters, redrive, cancel, records, cron."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatch import Retry, task
from dispatch.core.config import Settings
from dispatch.ops.dlq import redrive
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import dispatch_cli, drain, queue_counts

ONCE = Retry(max_attempts=1)


async def dead_tasks(
    aws_env: Settings, registry: Registry, queue: Queue, count: int, *, fail: set[int]
) -> list[str]:
    """Enqueue ``count`` tasks, drain them while tasks in ``fail`` raise; return the ids."""

    @task(registry=registry, retry=ONCE, name="flaky_job")
    def flaky_job(n: int) -> int:
        if n in fail:
            raise ConnectionError(f"backend down for {n}")
        return n

    ids = queue.enqueue_many([flaky_job.message(n) for n in range(count)])
    await drain(aws_env, registry)
    return ids


async def test_dlq_list_show_and_redrive_from_the_shell(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given three dead tasks, when a user lists them, shows one, and redrives them after
    the backend recovers, then list/show give the reasons, redrive moves all three back
    with attempts reset and recorded, and they then succeed."""
    broken = {1, 3, 4}
    ids = await dead_tasks(aws_env, registry, queue, 6, fail=broken)

    listed = dispatch_cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert sorted(e["task_id"] for e in entries) == sorted(ids[n] for n in broken)
    assert {e["reason"] for e in entries} == {"max_attempts"}
    assert entries[0]["error"]["type"] == "ConnectionError"

    shown = dispatch_cli("dlq", "show", ids[3])
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert json.loads(detail["body"])["args"] == [3]
    assert "ConnectionError" in detail["failure"]["error"]["traceback"]

    dry = json.loads(dispatch_cli("dlq", "redrive", "--dry-run", "--json").stdout)
    assert (dry["redriven"], dry["dry_run"]) == (3, True)
    assert queue_counts(clients, aws_env.dlq_url)["visible"] == 3

    moved = json.loads(dispatch_cli("dlq", "redrive", "--json").stdout)
    assert moved["redriven"] == 3
    assert queue_counts(clients, aws_env.dlq_url) == {"visible": 0, "in_flight": 0, "delayed": 0}
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    reset = store.get(ids[1])
    assert reset is not None and (reset.status, reset.attempts) == (Status.QUEUED, 0)

    broken.clear()  # the backend recovered
    stats = await drain(aws_env, registry)
    assert stats.succeeded == 3
    assert {store.get(ids[n]).status for n in (1, 3, 4)} == {Status.SUCCEEDED}  # type: ignore[union-attr]


class FailDeletes:
    """Interrupts a redrive half way: the DLQ delete after the send fails."""

    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, **_: Any) -> None:
        self.failed += 1
        raise ConnectionResetError("interrupted half way")


async def test_a_redrive_interrupted_half_way_loses_nothing_and_runs_each_task_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given four dead tasks and a redrive that dies after sending them back but before
    deleting them from the DLQ, when the redrive is run again and the queue drained,
    then every task ran exactly once more and both queues end empty."""
    broken = {0, 1, 2, 3}
    ids = await dead_tasks(aws_env, registry, queue, 4, fail=broken)
    broken.clear()
    interrupt = FailDeletes()
    clients.sqs.meta.events.register("before-call.sqs.DeleteMessageBatch", interrupt)

    with pytest.raises(Exception, match="interrupted half way"):
        redrive(clients, aws_env)

    assert interrupt.failed >= 1
    assert queue_counts(clients, aws_env.dlq_url)["visible"] == 4  # nothing lost
    clients.sqs.meta.events.unregister("before-call.sqs.DeleteMessageBatch", interrupt)
    again = redrive(clients, aws_env)
    assert len(again.redriven) == 4

    stats = await drain(aws_env, registry)

    assert stats.succeeded == 4 and stats.duplicates == 4
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    assert [store.get(i).attempts for i in ids] == [1, 1, 1, 1]  # type: ignore[union-attr]
    for url in (aws_env.queue_url, aws_env.dlq_url):
        assert queue_counts(clients, url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_a_cancelled_task_does_not_run(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given two queued tasks, when one is cancelled with `dispatch cancel`, then only the
    other runs, the cancelled one's message is dropped, and cancelling a finished task is
    refused with its state named."""
    ran: list[str] = []

    @task(registry=registry)
    def job(name: str) -> None:
        ran.append(name)

    keep, drop = queue.enqueue_many([job.message("keep"), job.message("drop")])

    cancelled = dispatch_cli("cancel", drop, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"

    await drain(aws_env, registry)

    assert ran == ["keep"]
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 0
    refused = dispatch_cli("cancel", keep)
    assert refused.returncode == 1
    assert "is succeeded" in refused.stderr

    record = json.loads(dispatch_cli("task", keep, "--json").stdout)
    assert (record["status"], record["attempts"]) == ("succeeded", 1)


def test_cron_next_prints_fire_times_and_refuses_bad_expressions() -> None:
    """Given an expression, when `dispatch cron next` runs, then it prints the next fire
    times as ISO-8601 UTC (JSON with --json), and a bad expression exits non-zero naming
    the field."""
    shown = dispatch_cli(
        "cron", "next", "cron(0 12 ? * MON-FRI *)", "-n", "3", "--after", "2027-01-01T00:00:00Z",
        "--json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [
        "2027-01-01T12:00:00Z",
        "2027-01-04T12:00:00Z",
        "2027-01-05T12:00:00Z",
    ]

    bad = dispatch_cli("cron", "next", "cron(0 25 * * ? *)")
    assert bad.returncode != 0
    assert "hours" in bad.stderr
