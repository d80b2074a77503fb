"""Listing task records through the sparse indexes, against the embedded local AWS.

Records get their index keys from real runs of a real Dispatcher (claimed, retrying,
dead, succeeded, cancelled); the listing (one Query a page) returns them newest first,
filtered, paginated without duplicates or gaps; lean tasks and succeeded ones are not
in the index; bad input is refused; `dispatch tasks --json` prints the same pages.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from dispatch import PermanentError, Retry, task
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.errors import ConfigurationError
from dispatch.core.record import Status
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.ops.listing import TaskFilter, TaskPage, list_tasks
from dispatch.producer.enqueue import Queue
from dispatch.producer.status import cancel
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.state import SyncStateStore, task_key
from dispatch.tasks.registry import Registry
from tests.integration.conftest import WAIT_S, dispatch_cli, drain, queue_counts, wait_until

SLOW_RETRY = Retry(max_attempts=3, base_delay_s=600.0, max_delay_s=600.0, jitter=False)


def page(clients: SyncClients, settings: Settings, **where: Any) -> TaskPage:
    now = where.pop("now", None)
    token = where.pop("token", None)
    return list_tasks(clients.dynamodb, settings.table, TaskFilter(**where), token=token, now=now)


def ids(listed: TaskPage) -> list[str]:
    return [t.task_id for t in listed.tasks]


def stored(clients: SyncClients, settings: Settings, task_id: str) -> dict[str, Any]:
    answer = clients.dynamodb.get_item(TableName=settings.table, Key=task_key(task_id))
    return dict(answer.get("Item", {}))


def every_listed_id(clients: SyncClients, settings: Settings) -> set[str]:
    found: set[str] = set()
    for status in (Status.RUNNING, Status.RETRYING, Status.DEAD, Status.CANCELLED):
        found |= set(ids(page(clients, settings, status=status, limit=1000)))
    return found


async def test_real_runs_put_running_retrying_dead_in_the_index_and_take_succeeded_out(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a dispatcher running a held task, a task that failed once (retrying in 10
    minutes), a dead one, a succeeded one, a cancelled one and a lean one that died,
    when the listing is read, then each tracked task is listed under its status (by
    status and by task), the succeeded and queued ones and the lean one are in no index,
    and once the held task succeeds it leaves the running list."""
    started, release = threading.Event(), threading.Event()

    @task(registry=registry, timeout_s=120.0)  # over LIST_RUNNING_OVER_S: listed running
    def held() -> str:
        started.set()
        if not release.wait(WAIT_S):
            raise TimeoutError("the test never let the handler go")
        return "done"

    @task(registry=registry, retry=SLOW_RETRY)
    def flaky() -> None:
        raise ConnectionError("try later")

    @task(registry=registry)
    def doomed() -> None:
        raise PermanentError("no")

    @task(registry=registry)
    def fine() -> int:
        return 1

    @task(registry=registry, track_state=False)
    def lean_doomed() -> None:
        raise PermanentError("no record")

    @task(registry=registry)
    def later() -> None: ...

    [flaky_id, doomed_id, fine_id, lean_id] = queue.enqueue_many(
        [flaky.message(), doomed.message(), fine.message(), lean_doomed.message()]
    )
    waiting_id, cancelled_id = (later.with_options(delay_s=600).enqueue() for _ in range(2))
    cancel(clients.dynamodb, aws_env.table, cancelled_id)
    store = SyncStateStore(clients.dynamodb, aws_env.table)

    def status_of(task_id: str) -> Status | None:
        record = store.get(task_id)
        return record.status if record else None

    def settled() -> bool:
        statuses = [status_of(i) for i in (flaky_id, doomed_id, fine_id)]
        dlq = queue_counts(clients, aws_env.dlq_url)["visible"]
        return statuses == [Status.RETRYING, Status.DEAD, Status.SUCCEEDED] and dlq == 2

    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env, clients=aio, registry=registry, options=DispatcherOptions()
        )
        running = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.to_thread(wait_until, settled, what="the first tasks to settle")
            held_id = queue.enqueue(held.message())
            assert await asyncio.to_thread(started.wait, WAIT_S), "the held task never started"
            running_now = page(clients, aws_env, status=Status.RUNNING)
            running_of_held = page(clients, aws_env, status=Status.RUNNING, task="held")
            release.set()
            await asyncio.to_thread(
                wait_until,
                lambda: status_of(held_id) is Status.SUCCEEDED,
                what="the held task's success",
            )
        finally:
            release.set()
            dispatcher.stop()
            await asyncio.wait_for(running, timeout=WAIT_S)
            await dispatcher.runner.aclose()

    assert ids(running_now) == ids(running_of_held) == [held_id]
    assert running_now.tasks[0].task == "held" and running_now.tasks[0].attempts == 1
    assert ids(page(clients, aws_env, status=Status.RETRYING)) == [flaky_id]
    dead = page(clients, aws_env, status=Status.DEAD)
    assert ids(dead) == [doomed_id]
    assert (dead.tasks[0].task, dead.tasks[0].dead_reason) == ("doomed", "permanent_error")
    assert ids(page(clients, aws_env, status=Status.DEAD, task="doomed")) == [doomed_id]
    assert ids(page(clients, aws_env, status=Status.DEAD, task="fine")) == []
    assert ids(page(clients, aws_env, status=Status.CANCELLED)) == [cancelled_id]
    assert ids(page(clients, aws_env, status=Status.RUNNING)) == []
    assert every_listed_id(clients, aws_env) == {flaky_id, doomed_id, cancelled_id}
    assert c.LISTED_ATTRIBUTE not in stored(clients, aws_env, fine_id)
    assert c.LISTED_ATTRIBUTE not in stored(clients, aws_env, held_id)
    assert c.LISTED_ATTRIBUTE not in stored(clients, aws_env, waiting_id)
    assert stored(clients, aws_env, lean_id) == {}
    record = stored(clients, aws_env, doomed_id)
    assert record[c.LISTED_ATTRIBUTE]["S"].startswith("dead#")


async def test_pages_are_newest_first_filtered_and_join_without_duplicates_or_gaps(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 23 dead tasks of two names from a real drain, when the listing is read 5 at
    a time, then the pages join to every dead task exactly once, newest first; by task
    it is that task's share; a time window keeps exactly the tasks inside it."""

    @task(registry=registry)
    def charge(n: int) -> None:
        raise PermanentError(f"no {n}")

    @task(registry=registry)
    def refund(n: int) -> None:
        raise PermanentError(f"no {n}")

    charges = queue.enqueue_many([charge.message(n) for n in range(15)])
    refunds = queue.enqueue_many([refund.message(n) for n in range(8)])
    await drain(aws_env, registry)

    seen: list[Any] = []
    token: str | None = None
    pages = 0
    while True:
        listed = page(clients, aws_env, status=Status.DEAD, limit=5, token=token)
        pages += 1
        assert listed.read <= 6, "a page reads at most one entry more than it shows"
        seen.extend(listed.tasks)
        token = listed.next_token
        if token is None:
            break
    seen_ids = [t.task_id for t in seen]
    assert pages == 5 and len(seen_ids) == 23
    assert sorted(seen_ids) == sorted(charges + refunds)
    assert [t.at for t in seen] == sorted((t.at for t in seen), reverse=True)

    of_charge = page(clients, aws_env, status=Status.DEAD, task="charge", limit=50)
    assert sorted(ids(of_charge)) == sorted(charges) and of_charge.next_token is None
    assert {t.task for t in of_charge.tasks} == {"charge"}

    middle = seen[11].at
    newer = page(clients, aws_env, status=Status.DEAD, since=middle, limit=50)
    older = page(clients, aws_env, status=Status.DEAD, until=middle, limit=50)
    assert set(ids(newer)) == {t.task_id for t in seen if t.at >= middle}
    assert set(ids(older)) == {t.task_id for t in seen if t.at <= middle}


async def test_running_longer_than_lists_tasks_that_started_before_the_cut(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a task running since ``started_at``, when running tasks longer than 10
    minutes are listed as of 10 minutes and a second after its start, it is there, and
    as of a second before that it is not (the clock is the listing's ``now``)."""
    started, release = threading.Event(), threading.Event()

    @task(registry=registry, timeout_s=120.0)  # over LIST_RUNNING_OVER_S: listed running
    def held() -> None:
        started.set()
        release.wait(WAIT_S)

    held_id = queue.enqueue(held.message())
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env, clients=aio, registry=registry, options=DispatcherOptions()
        )
        running = asyncio.create_task(dispatcher.run())
        try:
            assert await asyncio.to_thread(started.wait, WAIT_S), "the held task never started"
            record = SyncStateStore(clients.dynamodb, aws_env.table).get(held_id)
            assert record is not None and record.started_at is not None
            at = record.started_at + 600
            longer = page(clients, aws_env, running_longer_than_s=600, now=at + 1)
            not_yet = page(clients, aws_env, running_longer_than_s=600, now=at - 1)
            by_task = page(clients, aws_env, task="held", running_longer_than_s=600, now=at + 1)
        finally:
            release.set()
            dispatcher.stop()
            await asyncio.wait_for(running, timeout=WAIT_S)
            await dispatcher.runner.aclose()

    assert ids(longer) == ids(by_task) == [held_id]
    assert ids(not_yet) == []
    assert longer.tasks[0].status is Status.RUNNING


async def test_the_cli_prints_pages_as_json_and_refuses_bad_input(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """`dispatch tasks --json` prints the page the API reads, with a --next token that
    gives the rest; bad filters exit 2 naming the option, stdout empty."""

    @task(registry=registry)
    def charge(n: int) -> None:
        raise PermanentError(f"no {n}")

    dead = queue.enqueue_many([charge.message(n) for n in range(3)])
    await drain(aws_env, registry)

    first = dispatch_cli("tasks", "--status", "dead", "--task", "charge", "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout)
    rest = dispatch_cli(
        "tasks", "--status", "dead", "--task", "charge", "--next", shown["next"], "--json"
    )
    assert rest.returncode == 0, rest.stderr
    more = json.loads(rest.stdout)
    listed = [t["task_id"] for t in shown["tasks"] + more["tasks"]]
    assert sorted(listed) == sorted(dead) and more["next"] is None
    assert shown["index"] == c.INDEX_BY_TASK and shown["read"] == 3
    assert set(shown["tasks"][0]) >= {"task_id", "task", "status", "at", "age_s", "attempts"}
    assert shown["tasks"][0]["dead_reason"] == "permanent_error"
    assert listed == ids(page(clients, aws_env, status=Status.DEAD, task="charge"))

    text = dispatch_cli("tasks", "--status", "dead")
    assert text.returncode == 0 and all(i in text.stdout for i in dead)

    for args, option in [
        (("--status", "deadd"), "--status"),
        (("--status", "succeeded"), "--status"),
        (("--running-longer-than", "ten"), "--running-longer-than"),
        (("--status", "dead", "--since", "yesterday"), "--since"),
        (("--status", "dead", "--next", "garbage"), "--next"),
        (("--status", "running", "--next", shown["next"]), "--next"),
    ]:
        bad = dispatch_cli("tasks", *args, "--json")
        assert bad.returncode == 2, (args, bad.stderr)
        assert option in bad.stderr and bad.stdout == ""
        assert "Traceback" not in bad.stderr


def test_a_table_without_the_indexes_is_a_configuration_error_naming_the_index(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given a table created before the listing indexes (only its key), when a page is
    asked for, then the error is a ConfigurationError naming the missing index and how
    to add it, not an AWS traceback."""
    old = f"{aws_env.table}-old"
    clients.dynamodb.create_table(
        TableName=old,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    )

    with pytest.raises(ConfigurationError, match=r"has no index 'by-task'.*GlobalSecondaryIndexes"):
        list_tasks(clients.dynamodb, old, TaskFilter(status=Status.DEAD, task="charge"))
