"""Promises that must hold when the past catches up: stale dead letters, attempts that
never reported, records older than their lifetime, a table deleted under a running
dispatcher. Over real HTTP to the local AWS, with the real dispatcher and CLI."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from dispatch import Retry, task
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.deadletter import ATTR_FAILURE
from dispatch.core.errors import ConfigurationError
from dispatch.ops.dlq import redrive
from dispatch.producer.enqueue import Queue
from dispatch.store import state
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.codec import number
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import dispatch_cli, drain, queue_counts, receive_all
from tests.integration.test_operations import FailDeletes

ONCE = Retry(max_attempts=1)
EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}


def _failing_then_fixed(registry: Registry, runs: list[int]) -> tuple[Any, set[int]]:
    broken: set[int] = set()

    @task(registry=registry, retry=ONCE, name="charge")
    def charge(n: int) -> int:
        runs.append(n)
        if n in broken:
            raise ConnectionError(f"backend down for {n}")
        return n

    return charge, broken


async def test_a_stale_dead_letter_never_runs_a_succeeded_task_again(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given two dead tasks and a redrive interrupted after sending them back but before
    deleting their dead letters, when the revived tasks run and succeed and a later
    redrive meets the stale dead letters, then it revives nothing, says the tasks
    already succeeded, removes the stale copies, and no handler runs a second time."""
    runs: list[int] = []
    charge, broken = _failing_then_fixed(registry, runs)
    broken.update({1, 2})
    ids = queue.enqueue_many([charge.message(1), charge.message(2)])
    await drain(aws_env, registry)
    broken.clear()
    interrupt = FailDeletes()
    clients.sqs.meta.events.register("before-call.sqs.DeleteMessageBatch", interrupt)
    with pytest.raises(Exception, match="interrupted half way"):
        redrive(clients, aws_env)
    clients.sqs.meta.events.unregister("before-call.sqs.DeleteMessageBatch", interrupt)
    await drain(aws_env, registry)  # the revived copies run and succeed
    assert sorted(runs) == [1, 1, 2, 2]
    runs.clear()

    later = dispatch_cli("dlq", "redrive", "--json")
    assert later.returncode == 0, later.stderr
    report = json.loads(later.stdout)
    await drain(aws_env, registry)

    assert runs == []
    assert report["redriven"] == 0
    assert sorted(n["task_id"] for n in report["not_dead"]) == sorted(ids)
    assert {(n["status"], n["removed"]) for n in report["not_dead"]} == {("succeeded", True)}
    assert queue_counts(clients, aws_env.dlq_url) == EMPTY
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    assert {store.get(i).status for i in ids} == {Status.SUCCEEDED}  # type: ignore[union-attr]


async def test_a_second_dead_letter_of_one_death_is_not_revived_twice(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a dead task with two copies on the DLQ (a dead-letter send retried), when
    both are redriven, then one revives the task and the other is left on the DLQ,
    named as not dead; the task runs once; a dry run says the same without moving."""
    runs: list[int] = []
    charge, broken = _failing_then_fixed(registry, runs)
    broken.add(7)
    [task_id] = queue.enqueue_many([charge.message(7)])
    await drain(aws_env, registry)
    [letter] = receive_all(clients, aws_env.dlq_url)
    clients.sqs.change_message_visibility(
        QueueUrl=aws_env.dlq_url, ReceiptHandle=letter["ReceiptHandle"], VisibilityTimeout=0
    )
    clients.sqs.send_message(
        QueueUrl=aws_env.dlq_url,
        MessageBody=letter["Body"],
        MessageAttributes=letter["MessageAttributes"],
    )
    broken.clear()
    runs.clear()

    dry = redrive(clients, aws_env, dry_run=True)
    assert (len(dry.redriven), [n.status for n in dry.not_dead]) == (1, ["queued"])
    report = redrive(clients, aws_env)
    await drain(aws_env, registry)

    assert runs == [7]
    assert len(report.redriven) == 1
    [other] = report.not_dead
    assert (other.entry.task_id, other.status, other.removed) == (task_id, "queued", False)
    assert queue_counts(clients, aws_env.dlq_url)["visible"] == 1
    again = redrive(clients, aws_env)  # the task has succeeded since: the copy is stale
    assert (len(again.redriven), [n.removed for n in again.not_dead]) == (0, [True])
    assert queue_counts(clients, aws_env.dlq_url) == EMPTY


async def test_no_attempt_starts_beyond_max_attempts(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a task whose third and last attempt started and never reported (its
    dispatcher died mid-attempt: the record still says running, the lease lapsed),
    when its message comes back, then the handler does not run a fourth time: the task
    is dead-lettered as max_attempts, saying the last attempt never reported."""
    runs: list[str] = []

    @task(registry=registry, retry=Retry(max_attempts=3), name="sync_crm")
    def sync_crm(contact: str) -> None:
        runs.append(contact)

    message = sync_crm.message("c-1")
    queue.enqueue(message)
    now = time.time()
    clients.dynamodb.update_item(
        TableName=aws_env.table,
        Key=state.task_key(message.task_id),
        UpdateExpression="SET #s = :running, attempts = :three, lease_until = :lapsed, "
        "message_id = :other",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":running": {"S": "running"},
            ":three": number(3),
            ":lapsed": number(now - 60),
            ":other": {"S": "an-earlier-delivery"},
        },
    )

    stats = await drain(aws_env, registry)

    assert runs == [] and stats.started == 0
    record = SyncStateStore(clients.dynamodb, aws_env.table).get(message.task_id)
    assert record is not None
    assert (record.status, record.attempts, record.dead_reason) == (
        Status.DEAD,
        3,
        "max_attempts",
    )
    [letter] = receive_all(clients, aws_env.dlq_url)
    failure = json.loads(letter["MessageAttributes"][ATTR_FAILURE]["StringValue"])
    assert failure["reason"] == "max_attempts"
    assert failure["error"]["type"] == "AttemptsExhausted"
    assert "attempt 3 of 3" in failure["error"]["message"]


async def test_an_old_message_whose_record_expired_is_not_taken_as_new(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a message enqueued longer ago than records live (it waited on a long
    delay) whose record is gone, when it is received, then it does not run: whether it
    was cancelled or already ran is unknown. It is dead-lettered as record_expired,
    and a redrive (the operator's decision) runs it."""
    runs: list[int] = []

    @task(registry=registry, name="report")
    def report(n: int) -> None:
        runs.append(n)

    message = report.message(1)
    body = json.loads(message.body)
    body["enqueued_at"] = time.time() - c.RECORD_TTL_S - 3600
    clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=json.dumps(body))

    await drain(aws_env, registry)

    assert runs == []
    record = SyncStateStore(clients.dynamodb, aws_env.table).get(message.task_id)
    assert record is not None and (record.status, record.dead_reason) == (
        Status.DEAD,
        "record_expired",
    )
    [letter] = receive_all(clients, aws_env.dlq_url)
    failure = json.loads(letter["MessageAttributes"][ATTR_FAILURE]["StringValue"])
    assert failure["reason"] == "record_expired"
    assert "dispatch dlq redrive" in failure["error"]["message"]
    clients.sqs.change_message_visibility(
        QueueUrl=aws_env.dlq_url, ReceiptHandle=letter["ReceiptHandle"], VisibilityTimeout=0
    )

    assert len(redrive(clients, aws_env).redriven) == 1
    await drain(aws_env, registry)
    assert runs == [1]


async def test_a_long_delay_keeps_its_record_and_its_cancel_until_due(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a task delayed for 30 days (longer than a record lives), its record lives
    until a record lifetime after the task is due; cancelled, it stays cancelled that
    long, so the message, when due, finds the cancel."""

    @task(registry=registry, name="renewal")
    def renewal(account: str) -> None: ...

    delay_s = 30 * 86_400
    before = time.time()
    task_id = renewal.with_options(delay_s=delay_s).enqueue("acme")  # type: ignore[attr-defined]
    cancelled = dispatch_cli("cancel", task_id)
    assert cancelled.returncode == 0, cancelled.stderr

    item = clients.dynamodb.get_item(TableName=aws_env.table, Key=state.task_key(task_id))["Item"]
    assert item["status"]["S"] == "cancelled"
    assert int(item[c.TABLE_TTL_ATTRIBUTE]["N"]) >= int(before) + delay_s + c.RECORD_TTL_S


async def test_a_table_deleted_under_a_running_dispatcher_stops_it(
    aws_env: Settings, registry: Registry, clients: SyncClients
) -> None:
    """Given a dispatcher that started with its table, when the table is deleted and a
    message arrives, then the run ends with a configuration error naming the missing
    table (the CLI's exit status 3) instead of cycling the message through failed
    claims, and the message is still on the queue."""
    from dispatch.loop.dispatcher import Dispatcher

    @task(registry=registry, name="ping")
    def ping() -> None: ...

    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(aws_env, clients=aio, registry=registry)
        await dispatcher.check()
        clients.dynamodb.delete_table(TableName=aws_env.table)
        clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=ping.message().body)
        try:
            with pytest.raises(ConfigurationError, match="ResourceNotFoundException"):
                await dispatcher.run()
        finally:
            await dispatcher.runner.aclose()

    counts = queue_counts(clients, aws_env.queue_url)
    assert counts["visible"] + counts["in_flight"] == 1
