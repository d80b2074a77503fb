"""Pause and resume (`dispatch pause`, `dispatch resume`), end to end over HTTP to the
embedded local AWS: a live dispatcher stops starting what is paused within its refresh
period, the paused tasks wait on the queue with no attempt spent, other tasks are not
held up, a pause survives a dispatcher's restart, and a resume lets them run."""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from dispatch import Resource, task
from dispatch.core.config import Settings
from dispatch.loop import pipeline
from dispatch.loop.dispatcher import Dispatcher
from dispatch.ops.pausing import PauseError, check_name, list_pauses, pause, resume
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import dispatch_cli, running_dispatcher, wait_until

REFRESH_S = 0.2  # the dispatcher reads the pauses this often in these tests


@pytest.fixture(autouse=True)
def _short_hide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A paused message comes back after 1 s here (10 s, growing to 60 s, by default)."""
    monkeypatch.setattr(pipeline, "PAUSED_HIDE_S", 1)
    monkeypatch.setattr(pipeline, "PAUSED_MAX_HIDE_S", 1)


def running(settings: Settings, registry: Registry) -> AbstractAsyncContextManager[Dispatcher]:
    """A dispatcher receiving until the block ends."""
    return running_dispatcher(settings, registry, pause_refresh_s=REFRESH_S)


def statuses(clients: SyncClients, settings: Settings, ids: list[str]) -> list[Any]:
    store = SyncStateStore(clients.dynamodb, settings.table)
    found = [store.get(i) for i in ids]
    return [(r.status, r.attempts) if r else None for r in found]


async def test_a_paused_task_waits_unclaimed_while_others_run_and_runs_after_resume(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a live dispatcher and `charge` paused, when charges and receipts are
    enqueued, then every receipt succeeds while every charge stays queued with no
    attempt spent (received and hidden again, never claimed); once resumed, every
    charge succeeds at its first attempt."""
    ran: list[str] = []

    @task(registry=registry)
    def charge(n: int) -> None:
        ran.append(f"charge {n}")

    @task(registry=registry)
    def receipt(n: int) -> None:
        ran.append(f"receipt {n}")

    async with running(aws_env, registry) as dispatcher:
        change = pause(clients.dynamodb, aws_env, "task", "charge", by="ops@test")
        assert change.changed and change.pause is not None and change.pause.by == "ops@test"
        await asyncio.to_thread(
            wait_until,
            lambda: dispatcher.pauses.paused.tasks.keys() == {"charge"},
            what="the dispatcher to read the pause",
        )
        charges = queue.enqueue_many([charge.message(n=n) for n in range(5)])
        receipts = queue.enqueue_many([receipt.message(n=n) for n in range(5)])
        await asyncio.to_thread(
            wait_until,
            lambda: statuses(clients, aws_env, receipts) == [(Status.SUCCEEDED, 1)] * 5,
            what="the receipts to run",
        )
        # The charges were received meanwhile (the receipts came in the same receives)
        # and hidden again: still queued, no attempt counted, nothing ran.
        assert dispatcher.stats.received >= 10
        assert statuses(clients, aws_env, charges) == [(Status.QUEUED, 0)] * 5
        assert not [r for r in ran if r.startswith("charge")]

        assert resume(clients.dynamodb, aws_env, "task", "charge").changed
        await asyncio.to_thread(
            wait_until,
            lambda: statuses(clients, aws_env, charges) == [(Status.SUCCEEDED, 1)] * 5,
            what="the charges to run after the resume",
        )
    assert sorted(r for r in ran if r.startswith("charge")) == [f"charge {n}" for n in range(5)]


async def test_a_pause_survives_a_restart_and_a_resource_pause_stops_its_tasks(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given `orders-db` paused before any dispatcher runs, when a dispatcher starts,
    then from its first receive the tasks using orders-db are not started (the pause is
    read before receiving) while a task without the resource runs."""
    db = Resource("orders-db", rate_per_s=100, max_concurrency=5)

    @task(registry=registry, resource=db)
    def reserve(n: int) -> None: ...

    @task(registry=registry)
    def notify(n: int) -> None: ...

    pause(clients.dynamodb, aws_env, "resource", "orders-db", by="ops@test")
    reserved = queue.enqueue_many([reserve.message(n=n) for n in range(3)])
    notified = queue.enqueue_many([notify.message(n=n) for n in range(3)])
    async with running(aws_env, registry):
        await asyncio.to_thread(
            wait_until,
            lambda: statuses(clients, aws_env, notified) == [(Status.SUCCEEDED, 1)] * 3,
            what="the unpaused task to run",
        )
        assert statuses(clients, aws_env, reserved) == [(Status.QUEUED, 0)] * 3
    assert list_pauses(clients.dynamodb, aws_env).resources.keys() == {"orders-db"}


def test_pausing_twice_and_resuming_what_is_not_paused_change_nothing(
    aws_env: Settings, clients: SyncClients, registry: Registry
) -> None:
    """The second pause keeps the first's who and since; a resume of what is not paused
    says so; a name the deployment does not know is refused, naming the known ones."""
    first = pause(clients.dynamodb, aws_env, "task", "charge", by="alice@host")
    again = pause(clients.dynamodb, aws_env, "task", "charge", by="bob@host")
    assert first.changed and not again.changed
    assert again.pause == first.pause and again.pause is not None
    assert again.pause.by == "alice@host"
    assert not resume(clients.dynamodb, aws_env, "resource", "nothing").changed

    @task(registry=registry)
    def charge() -> None: ...

    with pytest.raises(PauseError, match=r"no task named 'chrage'.*known tasks: charge"):
        check_name(registry, "task", "chrage")
    with pytest.raises(ValueError, match="1 to 256 printable characters"):
        pause(clients.dynamodb, aws_env, "task", "", by="x")


def test_the_cli_pauses_lists_and_resumes_with_json_and_refuses_bad_input(
    aws_env: Settings,
) -> None:
    """`dispatch pause --task`, `pauses`, `resume` print one JSON object each with
    --json, `dispatch status` shows what is paused, by whom and since when; naming
    neither or both of --task and --resource is a usage error (2)."""
    paused = dispatch_cli("pause", "--task", "charge", "--by", "ops@test", "--json")
    listed = dispatch_cli("pauses", "--json")
    status = dispatch_cli("status", "--json")
    status_text = dispatch_cli("status")
    resumed = dispatch_cli("resume", "--task", "charge", "--json")
    neither = dispatch_cli("pause")
    both = dispatch_cli("pause", "--task", "a", "--resource", "b")

    assert paused.returncode == 0, paused.stderr
    shown = json.loads(paused.stdout)
    assert (shown["changed"], shown["pause"]["by"], shown["kind"]) == (True, "ops@test", "task")
    assert [p["name"] for p in json.loads(listed.stdout)["paused"]] == ["charge"]
    assert [p["by"] for p in json.loads(status.stdout)["paused"]] == ["ops@test"]
    assert "paused: task charge (by ops@test since " in status_text.stdout
    assert json.loads(resumed.stdout)["changed"] is True
    assert neither.returncode == both.returncode == 2
    assert "exactly one of --task NAME or --resource NAME" in neither.stderr
