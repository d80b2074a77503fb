"""Cancelling a running task (`dispatch cancel ID`, `dispatch.cancel`) and cancelling in bulk
by filter (`dispatch cancel --task --status`), end to end over HTTP to the embedded local
AWS: the dispatcher running a task notices the request within its control refresh and
ends it `cancelled` (never retried, never dead-lettered), whatever kind of handler runs
it; a request outlives a dispatcher that died; a bulk cancel counts first, cancels
exactly what its filter selects, and cancels nothing more when run again."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import AbstractAsyncContextManager

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

import dispatch
from dispatch import TaskCancelledError, TaskFailedError, current_task, task
from dispatch.core.config import Settings
from dispatch.core.envelope import decode
from dispatch.core.errors import DispatchError
from dispatch.core.record import ClaimAsk, ClaimStatus
from dispatch.local.lambda_endpoint import LocalFunction, LocalLambda
from dispatch.loop.dispatcher import Dispatcher
from dispatch.loop.options import DispatcherOptions
from dispatch.producer import status as records
from dispatch.producer.enqueue import Queue
from dispatch.store import state
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.joins import DEPENDENCY_FAILED
from dispatch.store.pauses import pauses_key
from dispatch.store.state import Status, SyncStateStore, TaskRecord
from dispatch.tasks.registry import Registry
from dispatch_workers.lambda_handler import make_handler
from dispatch_workers.lambda_invoker import LambdaInvoker
from tests.integration.conftest import (
    dispatch_cli,
    drain,
    queue_counts,
    running_dispatcher,
    wait_until,
)

REFRESH_S = 0.2  # the dispatcher reads the control item this often in these tests
EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}


def running(settings: Settings, registry: Registry) -> AbstractAsyncContextManager[Dispatcher]:
    """A dispatcher receiving until the block ends."""
    return running_dispatcher(settings, registry, pause_refresh_s=REFRESH_S, finish_within_s=10)


def record_of(clients: SyncClients, settings: Settings, task_id: str) -> TaskRecord:
    found = SyncStateStore(clients.dynamodb, settings.table).get(task_id)
    assert found is not None, task_id
    return found


async def until_status(
    clients: SyncClients, settings: Settings, task_id: str, wanted: Status, *, what: str
) -> None:
    await asyncio.to_thread(
        wait_until, lambda: record_of(clients, settings, task_id).status is wanted, what=what
    )


def cancel_requests(clients: SyncClients, settings: Settings) -> list[str]:
    """The cancel requests left on the queue's control item."""
    item = clients.dynamodb.get_item(
        TableName=settings.table, Key=pauses_key(settings.queue_url), ConsistentRead=True
    ).get("Item", {})
    return [name for name in item if name.startswith("cancel:")]


def assert_cancelled_and_gone(
    clients: SyncClients, settings: Settings, task_id: str, dispatcher: Dispatcher
) -> TaskRecord:
    """The record ends cancelled (not dead, not retrying), nothing is left on the queue
    or the DLQ, the request left the control item, and a waiter is told it was cancelled."""
    record = record_of(clients, settings, task_id)
    assert record.status is Status.CANCELLED
    assert record.attempts == 1 and record.last_error is None and record.dead_reason is None
    assert record.finished_at is not None and record.cancel_requested
    stats = dispatcher.stats
    wait_until(lambda: stats.cancelled == 1, what="the settlement counted")
    assert (stats.cancelled, stats.retried, stats.dead) == (1, 0, 0)
    wait_until(lambda: queue_counts(clients, settings.queue_url) == EMPTY, what="no message")
    assert queue_counts(clients, settings.dlq_url) == EMPTY
    wait_until(lambda: cancel_requests(clients, settings) == [], what="the request removed")
    with pytest.raises(TaskCancelledError):
        dispatch.handle(task_id).result(timeout_s=0)
    return record


async def test_an_async_handler_is_interrupted_and_its_task_ends_cancelled(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given an async handler blocked on an Event, when `dispatch.cancel` asks for it,
    then within the control refresh its coroutine gets CancelledError, and the task ends
    `cancelled` with its message deleted: not retried, not dead-lettered."""
    started, seen = asyncio.Event(), []

    @task(registry=registry)
    async def export(n: int) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task_id = queue.enqueue(export.message(n=1))
    async with running(aws_env, registry) as dispatcher:
        await asyncio.wait_for(started.wait(), timeout=30)
        asked = time.monotonic()
        requested = await asyncio.to_thread(dispatch.cancel, task_id, by="ops@test")
        assert requested.status is Status.RUNNING and requested.cancel_requested
        assert requested.cancel_requested_by == "ops@test"
        await until_status(clients, aws_env, task_id, Status.CANCELLED, what="the cancel")
        took_s = time.monotonic() - asked
        await asyncio.to_thread(assert_cancelled_and_gone, clients, aws_env, task_id, dispatcher)
    assert seen == ["cancelled"]
    assert took_s < REFRESH_S + 5  # one refresh, and the writes


async def test_a_sync_handler_that_checks_cancel_requested_stops_and_ends_cancelled(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a sync handler looping until `current_task().cancel_requested`, when the
    task is cancelled, then the flag turns true, the handler returns early, and its
    return value is not kept: the task ends `cancelled`."""
    started, steps = threading.Event(), []

    @task(registry=registry, timeout_s=120)
    def reindex(n: int) -> str:
        started.set()
        deadline = time.monotonic() + 60
        while not current_task().cancel_requested:
            if time.monotonic() > deadline:
                return "ran to the end"
            steps.append(1)
            threading.Event().wait(0.01)  # one step of the work
        return "stopped early"

    task_id = queue.enqueue(reindex.message(n=1))
    async with running(aws_env, registry) as dispatcher:
        await asyncio.to_thread(started.wait, 30)
        await asyncio.to_thread(
            dispatch_cli, "cancel", task_id, "--json"
        )  # the CLI, as an operator would
        await until_status(clients, aws_env, task_id, Status.CANCELLED, what="the cancel")
        record = await asyncio.to_thread(
            assert_cancelled_and_gone, clients, aws_env, task_id, dispatcher
        )
    assert record.result is None  # "stopped early" is not a result of a cancelled task


async def test_a_handler_that_ignores_the_flag_is_recorded_cancelled_and_not_run_again(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a sync handler that never looks at the flag, when it is cancelled and then
    returns a value, then the task is recorded `cancelled` (its result dropped) and the
    handler never runs again."""
    started, release, ran = threading.Event(), threading.Event(), []

    @task(registry=registry)
    def charge(n: int) -> int:
        ran.append(n)
        started.set()
        release.wait(30)
        return n

    task_id = queue.enqueue(charge.message(n=7))
    async with running(aws_env, registry) as dispatcher:
        await asyncio.to_thread(started.wait, 30)
        cancelled = await asyncio.to_thread(dispatch_cli, "cancel", task_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel requested" in cancelled.stdout
        await asyncio.to_thread(
            wait_until, lambda: dispatcher.pauses.cancels.signalled == 1, what="the signal"
        )
        assert record_of(clients, aws_env, task_id).status is Status.RUNNING  # still running
        release.set()
        await until_status(clients, aws_env, task_id, Status.CANCELLED, what="the cancel")
        await asyncio.to_thread(assert_cancelled_and_gone, clients, aws_env, task_id, dispatcher)
    assert ran == [7]


async def test_a_request_the_dispatcher_has_not_read_yet_still_beats_a_failure(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a running task whose cancel reached only its record (no signal on the
    control item: the dispatcher cannot have read it), when its handler then fails, then
    the record refuses the retry and the task ends `cancelled`, not `retrying`."""
    started, release = threading.Event(), threading.Event()

    @task(registry=registry)
    def charge(n: int) -> None:
        started.set()
        release.wait(30)
        raise RuntimeError("the card was declined")

    task_id = queue.enqueue(charge.message(n=1))
    async with running(aws_env, registry) as dispatcher:
        await asyncio.to_thread(started.wait, 30)
        records.cancel(clients.dynamodb, aws_env.table, task_id, queue_url=None, by="ops@test")
        release.set()
        await until_status(clients, aws_env, task_id, Status.CANCELLED, what="the cancel")
        await asyncio.to_thread(assert_cancelled_and_gone, clients, aws_env, task_id, dispatcher)
    assert dispatcher.pauses.cancels.signalled == 0


async def test_a_handler_run_by_a_lambda_worker_runs_on_and_its_task_ends_cancelled(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a task run by a Lambda invoke worker (the loopback Invoke endpoint), when
    it is cancelled while it runs, then the remote handler is not interrupted and its
    flag stays False, and the success it then reports is recorded `cancelled`."""
    started, release, seen = threading.Event(), threading.Event(), []

    @task(registry=registry)
    def charge(n: int) -> int:
        started.set()
        release.wait(30)
        seen.append(current_task().cancel_requested)
        return n

    task_id = queue.enqueue(charge.message(n=1))
    worker = LocalFunction("worker", make_handler(registry=registry, task_modules=()))
    config = AioConfig(retries={"total_max_attempts": 1}, read_timeout=60)
    with LocalLambda.start([worker]) as endpoint:
        async with (
            get_session().create_client(
                "lambda",
                endpoint_url=endpoint.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # noqa: S106 - the endpoint ignores them
                config=config,
            ) as lam,
            async_clients(aws_env) as aio,
        ):
            dispatcher = Dispatcher(
                aws_env,
                clients=aio,
                registry=registry,
                runner=LambdaInvoker(lam, function_name="worker"),
                options=DispatcherOptions(pause_refresh_s=REFRESH_S, wait_time_s=1),
            )
            run = asyncio.create_task(dispatcher.run())
            await asyncio.to_thread(started.wait, 30)
            await asyncio.to_thread(dispatch.cancel, task_id)
            await asyncio.to_thread(
                wait_until, lambda: dispatcher.pauses.cancels.signalled == 1, what="the signal"
            )
            assert record_of(clients, aws_env, task_id).status is Status.RUNNING
            release.set()
            await until_status(clients, aws_env, task_id, Status.CANCELLED, what="the cancel")
            await asyncio.to_thread(
                assert_cancelled_and_gone, clients, aws_env, task_id, dispatcher
            )
            dispatcher.stop()
            await asyncio.wait_for(run, timeout=30)
            await dispatcher.runner.aclose()
    assert seen == [False]


async def test_a_cancel_pending_when_its_dispatcher_died_is_carried_out_by_the_next_one(
    aws_env: Settings,
    registry: Registry,
    queue: Queue,
    clients: SyncClients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a task claimed by a dispatcher that then died (its message in flight, its
    record running, never settled) and a cancel requested meanwhile, when the next
    dispatcher receives the message, then it finds the request on the record at its
    claim and cancels the task instead of running it."""
    monkeypatch.setattr(state, "LEASE_GRACE_S", 0.0)  # the dead claim's lease lapses at once
    ran: list[int] = []

    @task(registry=registry, timeout_s=1)
    def charge(n: int) -> None:
        ran.append(n)

    task_id = queue.enqueue(charge.message(n=1))
    # The dead dispatcher: it received the message and claimed the task, then stopped.
    message = clients.sqs.receive_message(
        QueueUrl=aws_env.queue_url, VisibilityTimeout=2, AttributeNames=["All"]
    )["Messages"][0]
    envelope = decode(message["Body"])
    async with async_clients(aws_env) as aio:
        claim = await state.StateStore(aio.dynamodb, aws_env.table).claim(
            ClaimAsk(envelope, message_id=message["MessageId"], now=time.time(), timeout_s=1)
        )
    assert claim.status is ClaimStatus.CLAIMED
    requested = dispatch.cancel(task_id)
    assert requested.status is Status.RUNNING and requested.cancel_requested

    stats = await drain(aws_env, registry, pause_refresh_s=REFRESH_S, drain_wait_time_s=1)

    record = record_of(clients, aws_env, task_id)
    assert record.status is Status.CANCELLED
    assert ran == []  # cancelled, not run
    assert (stats.cancelled, stats.succeeded, stats.retried, stats.dead) == (1, 0, 0, 0)
    assert queue_counts(clients, aws_env.queue_url) == EMPTY
    assert queue_counts(clients, aws_env.dlq_url) == EMPTY
    assert cancel_requests(clients, aws_env) == []


async def test_bulk_cancel_of_running_tasks_stops_exactly_those_the_filter_selects(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given two `export` attempts and one `backup` attempt running (async handlers
    blocked on an Event), when `dispatch cancel --task export --status running` runs,
    then it asks both exports to stop and they end `cancelled`, while the backup runs
    on and succeeds once released."""
    started: list[int] = []
    release = asyncio.Event()

    @task(registry=registry)
    async def export(n: int) -> None:
        started.append(n)
        await asyncio.Event().wait()

    @task(registry=registry)
    async def backup(n: int) -> None:
        started.append(n)
        await release.wait()

    exports = queue.enqueue_many([export.message(n=n) for n in range(2)])
    backups = queue.enqueue_many([backup.message(n=9)])
    async with running(aws_env, registry) as dispatcher:
        await asyncio.to_thread(wait_until, lambda: len(started) == 3, what="all three running")
        shown = await asyncio.to_thread(
            dispatch_cli, "cancel", "--task", "export", "--status", "running", "--json"
        )
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert report["matched"]["running"] == 2 and report["cancel_requested"] == 2
        again = await asyncio.to_thread(
            dispatch_cli, "cancel", "--task", "export", "--status", "running", "--json"
        )
        assert json.loads(again.stdout)["matched"]["running"] == 0  # asked already, or done
        for task_id in exports:
            await until_status(clients, aws_env, task_id, Status.CANCELLED, what="the cancels")
        assert record_of(clients, aws_env, backups[0]).status is Status.RUNNING
        release.set()
        await until_status(clients, aws_env, backups[0], Status.SUCCEEDED, what="the backup")
        stats = dispatcher.stats
        await asyncio.to_thread(
            wait_until, lambda: stats.succeeded == 1, what="the settlement counted"
        )
        assert (stats.cancelled, stats.succeeded) == (2, 1)


async def test_a_group_child_cancelled_while_running_kills_the_callback(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a group whose second child is running (blocked), when that child is
    cancelled, then the callback never runs: its record is dead as dependency_failed,
    naming the cancelled child, as for a dead child."""
    blocked, calls = asyncio.Event(), []

    @task(registry=registry)
    async def step(name: str) -> str:
        if name == "b":
            blocked.set()
            await asyncio.Event().wait()
        return name.upper()

    @task(registry=registry)
    def join_names(results: list[str]) -> str:
        calls.append(results)
        return "".join(results)

    children = [step.message(name=n) for n in ("a", "b")]
    handle = dispatch.group(children).then(join_names.message())
    async with running(aws_env, registry):
        await asyncio.wait_for(blocked.wait(), timeout=30)
        await asyncio.to_thread(dispatch.cancel, children[1].task_id)
        await until_status(clients, aws_env, handle.id, Status.DEAD, what="the callback to die")
    with pytest.raises(TaskFailedError) as caught:
        handle.result(timeout_s=5)
    assert caught.value.reason == DEPENDENCY_FAILED
    assert f"{children[1].task_id} (cancelled)" in (caught.value.error_message or "")
    assert record_of(clients, aws_env, children[1].task_id).status is Status.CANCELLED
    assert calls == []


async def test_cancelling_a_finished_task_names_its_state(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a task that succeeded, when it is cancelled (API or CLI), then the error
    names its state and the CLI exits 1; nothing changes."""

    @task(registry=registry)
    def ping() -> None: ...

    task_id = queue.enqueue(ping.message())
    await drain(aws_env, registry)
    with pytest.raises(DispatchError, match=r"is succeeded: only a queued, retrying or running"):
        dispatch.cancel(task_id)
    shown = await asyncio.to_thread(dispatch_cli, "cancel", task_id, "--json")
    assert shown.returncode == 1
    assert "succeeded" in shown.stderr and shown.stdout == ""
    assert record_of(clients, aws_env, task_id).status is Status.SUCCEEDED


async def test_bulk_cancel_counts_first_cancels_exactly_the_filtered_tasks_then_nothing_more(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given queued charges and receipts, when `dispatch cancel --task charge --status
    queued` runs with --dry-run, then it counts the charges and cancels nothing; run for
    real, it cancels exactly the charges; run again, it cancels nothing more; a
    dispatcher then runs the receipts and drops the charges' messages unrun."""
    ran: list[str] = []

    @task(registry=registry)
    def charge(n: int) -> None:
        ran.append(f"charge {n}")

    @task(registry=registry)
    def receipt(n: int) -> None:
        ran.append(f"receipt {n}")

    charges = queue.enqueue_many([charge.message(n=n) for n in range(3)])
    receipts = queue.enqueue_many([receipt.message(n=n) for n in range(2)])
    args = ("cancel", "--task", "charge", "--status", "queued", "--since", "1h", "--json")

    dry = await asyncio.to_thread(dispatch_cli, *args, "--dry-run")
    real = await asyncio.to_thread(dispatch_cli, *args)
    again = await asyncio.to_thread(dispatch_cli, *args)

    for shown in (dry, real, again):
        assert shown.returncode == 0, shown.stderr
    counted, done, redone = (json.loads(s.stdout) for s in (dry, real, again))
    assert counted["dry_run"] and counted["matched"]["queued"] == 3
    assert counted["cancelled"] == 0 and counted["scanned"] >= 5
    assert (done["matched"]["queued"], done["cancelled"], done["skipped"]) == (3, 3, 0)
    assert (redone["matched"]["queued"], redone["cancelled"]) == (0, 0)
    statuses = {i: record_of(clients, aws_env, i).status for i in [*charges, *receipts]}
    assert statuses == {
        **dict.fromkeys(charges, Status.CANCELLED),
        **dict.fromkeys(receipts, Status.QUEUED),
    }
    # Without --status, the filter takes every cancellable status (and --since each one's time).
    receipts_only = await asyncio.to_thread(
        dispatch_cli, "cancel", "--task", "receipt", "--since", "1h", "--dry-run", "--json"
    )
    assert json.loads(receipts_only.stdout)["matched"] == {"queued": 2, "retrying": 0, "running": 0}
    await drain(aws_env, registry)
    assert sorted(ran) == ["receipt 0", "receipt 1"]


def test_the_cli_refuses_a_cancel_without_a_target_or_with_two(aws_env: Settings) -> None:
    """Bad input is a usage error (exit 2, nothing on stdout) naming what is wrong: no id
    and no filter, an id beside a filter, a status that cannot be cancelled, a bad time."""
    cases: dict[tuple[str, ...], str] = {
        ("cancel",): "give a TASK_ID, or a filter",
        ("cancel", "some-id", "--task", "charge"): "not both",
        ("cancel", "--status", "succeeded"): "'succeeded' is not one of",
        ("cancel", "--task", "charge", "--since", "yesterday"): "--since",
    }
    for args, message in cases.items():
        shown = dispatch_cli(*args)
        assert shown.returncode == 2, (args, shown.stderr)
        assert message in shown.stderr, (args, shown.stderr)
        assert shown.stdout == ""
    helped = dispatch_cli("cancel", "--help")
    assert "Scan" in helped.stdout and "run it" in helped.stdout


async def test_a_handle_cancels_its_own_task(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a submitted task still queued, when its handle's cancel() is called, then
    it answers 'cancelled', result() raises TaskCancelledError at once, and a dispatcher
    draining the queue afterwards never runs it."""
    ran: list[int] = []

    @task(registry=registry)
    def export(n: int) -> int:
        ran.append(n)
        return n

    handle = await asyncio.to_thread(export.submit, n=1)
    assert await asyncio.to_thread(handle.cancel, by="ops@test") == "cancelled"
    with pytest.raises(TaskCancelledError):
        await asyncio.to_thread(handle.result, timeout_s=0)
    await drain(aws_env, registry)
    assert ran == []
    assert record_of(clients, aws_env, handle.id).status is Status.CANCELLED
