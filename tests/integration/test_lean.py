"""Lean tasks (``@task(track_state=False)``) end to end over HTTP to the embedded local AWS:
SQS only, no task record; retries, dead letters, the throttle and schedules still work."""

from __future__ import annotations

import asyncio
import itertools
import time

from dispatch import Resource, Retry, current_task, task
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.deadletter import parse_attributes
from dispatch.ops.dlq import redrive
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, SyncClients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import dispatch_cli, drain, queue_counts, receive_all

FAST = Retry(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0, jitter=False)
EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}


def table_keys(clients: SyncClients, settings: Settings) -> list[str]:
    """The key of every item in the table."""
    items = clients.dynamodb.scan(TableName=settings.table)["Items"]
    return sorted(item["pk"]["S"] for item in items)


def only_activity_reports(
    requests: dict[str, int], clients: SyncClients, settings: Settings
) -> bool:
    """True when the only DynamoDB requests were the dispatcher's own, never one per
    task: its activity reports (one PutItem of its ``disp#`` item and one UpdateItem of
    the directory per report, every 5 s at most, for ``dispatch status``/``top``) and
    its reads of the pauses (one GetItem when it starts, one every 5 s after)."""
    dynamodb = {k: n for k, n in requests.items() if k.startswith("dynamodb.")}
    reports = dynamodb.get("dynamodb.PutItem", 0)
    keys = table_keys(clients, settings)
    return (
        set(dynamodb) <= {"dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.GetItem"}
        and 1 <= dynamodb.get("dynamodb.GetItem", 0) <= 3
        and dynamodb.get("dynamodb.UpdateItem", 0) == reports <= 3
        and all(k.startswith("disp#") or k == "dispatchers" for k in keys)
    )


def task_records(clients: SyncClients, settings: Settings) -> list[str]:
    """The keys of the task records in the table."""
    return [k for k in table_keys(clients, settings) if k.startswith(c.TASK_KEY_PREFIX)]


def sent(counter: RequestCounter) -> dict[str, int]:
    """What a counter saw, keyed ``service.Action``."""
    return {f"{s}.{a}": n for (s, a), n in counter.snapshot().items()}


async def test_lean_tasks_run_once_each_and_leave_no_record(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given lean tasks (sync and async) enqueued, when drained, then each ran once on its
    first attempt, the queue is empty, and neither enqueue nor dispatcher wrote to the
    table: no task record, no DynamoDB request at all from the dispatcher."""
    calls: list[tuple[str, int]] = []

    @task(registry=registry, track_state=False)
    async def ping(n: int) -> None:
        calls.append(("ping", current_task().attempt))

    @task(registry=registry, track_state=False)
    def pong(n: int) -> int:
        calls.append(("pong", current_task().attempt))
        return n

    ids = queue.enqueue_many([ping.message(n) for n in range(5)] + [pong.message(1)])
    dispatcher_counter = RequestCounter()

    stats = await drain(aws_env, registry, counter=dispatcher_counter)

    assert sorted(calls) == [("ping", 1)] * 5 + [("pong", 1)]
    assert stats.succeeded == 6 and stats.dead == 0 and stats.duplicates == 0
    assert all(i.startswith(c.LEAN_TASK_ID_PREFIX) for i in ids)
    assert task_records(clients, aws_env) == []
    assert only_activity_reports(sent(dispatcher_counter), clients, aws_env)
    assert queue_counts(clients, aws_env.queue_url) == EMPTY


async def test_lean_retries_count_attempts_from_the_receive_count(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a lean task that fails twice then succeeds, when drained, then it ran three
    times, each attempt numbered by the message's receive count (1, 2, 3), on the same
    message (hidden for the backoff, never sent again), and left no record."""
    seen: list[int] = []

    @task(registry=registry, retry=FAST, track_state=False)
    def flaky() -> str:
        seen.append(current_task().attempt)
        if len(seen) < 3:
            raise ConnectionError(f"attempt {len(seen)} failed")
        return "ok"

    flaky.enqueue()
    dispatcher_counter = RequestCounter()

    stats = await drain(aws_env, registry, counter=dispatcher_counter)

    assert seen == [1, 2, 3]
    assert stats.retried == 2 and stats.succeeded == 1
    actions = sent(dispatcher_counter)
    assert "sqs.ChangeMessageVisibilityBatch" in actions
    assert "sqs.SendMessageBatch" not in actions
    assert task_records(clients, aws_env) == []


async def test_a_lean_task_out_of_attempts_is_dead_lettered_with_the_reason(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a lean task that always fails, when drained, then after max_attempts it is
    on the DLQ with its body and the failure (reason, error, attempts = receive count),
    off the main queue, with no record written."""

    @task(registry=registry, retry=Retry(max_attempts=2, base_delay_s=1), track_state=False)
    def doomed(n: int) -> None:
        raise ValueError(f"bad n={n}")

    message = doomed.message(n=7)
    queue.enqueue(message)

    stats = await drain(aws_env, registry)

    assert stats.dead == 1 and stats.dead_reasons == {"max_attempts": 1}
    (letter,) = receive_all(clients, aws_env.dlq_url)
    assert letter["Body"] == message.body
    failure = parse_attributes(letter["MessageAttributes"])
    assert failure["reason"] == "max_attempts"
    assert failure["error"]["type"] == "ValueError"
    assert failure["error"]["message"] == "bad n=7"
    assert (failure["attempts"], failure["receive_count"]) == (2, 2)
    assert failure["task_id"] == message.task_id
    assert queue_counts(clients, aws_env.queue_url) == EMPTY
    assert task_records(clients, aws_env) == []

    # Redriven, it is back on the queue with a fresh receive count, and still has no record.
    clients.sqs.change_message_visibility(
        QueueUrl=aws_env.dlq_url, ReceiptHandle=letter["ReceiptHandle"], VisibilityTimeout=0
    )
    report = redrive(clients, aws_env)
    assert len(report.redriven) == 1
    (back,) = receive_all(clients, aws_env.queue_url)
    assert back["Body"] == message.body
    assert back["Attributes"]["ApproximateReceiveCount"] == "1"
    assert task_records(clients, aws_env) == []


async def test_lean_tasks_respect_the_throttle_and_a_deferral_spends_a_receive(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given 4 lean tasks on a resource of 2/s with a burst of 1 and a throttle horizon
    of 0.4 s, when drained, then starts never beat the bucket, every task succeeded
    (none dead-lettered), at least one was deferred, and a deferred task's attempt
    number counts the receive its deferral spent (the documented trade-off)."""
    api = Resource("partner-api", rate_per_s=2, burst=1)
    starts: list[tuple[float, int]] = []

    @task(registry=registry, resource=api, track_state=False)
    async def call(n: int) -> None:
        starts.append((time.time(), current_task().attempt))

    queue.enqueue_many([call.message(n) for n in range(4)])

    stats = await drain(aws_env, registry, throttle_horizon_s=0.4)

    assert stats.succeeded == 4 and stats.dead == 0
    assert stats.deferred >= 1
    times = sorted(t for t, _ in starts)
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= 0.5 - 0.03  # one token every 0.5 s, 30 ms of jitter
    assert max(attempt for _, attempt in starts) >= 2
    assert task_records(clients, aws_env) == []
    assert queue_counts(clients, aws_env.queue_url) == EMPTY


async def test_lean_periodic_tasks_fire_once_with_a_marker_and_no_record(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a lean task scheduled every minute and two dispatchers starting together,
    when both drain, then the fire time ran once, a later dispatcher does not run it
    again, and the table holds one ``sched#`` marker per fire time, no task record."""
    runs: list[int] = []

    @task(registry=registry, schedule="rate(1 minute)", track_state=False)
    def heartbeat() -> None:
        runs.append(1)

    first, second = await asyncio.gather(drain(aws_env, registry), drain(aws_env, registry))
    third = await drain(aws_env, registry)

    # The minute may turn during the test: then a second fire time runs, once.
    assert len(runs) in (1, 2)
    assert first.succeeded + second.succeeded + third.succeeded == len(runs)
    keys = table_keys(clients, aws_env)
    markers = [k for k in keys if k.startswith(f"{c.SCHEDULE_KEY_PREFIX}{c.LEAN_TASK_ID_PREFIX}")]
    assert len(markers) == len(runs)
    assert task_records(clients, aws_env) == []


async def test_lean_requests_per_task_stay_under_half_a_request(
    aws_env: Settings,
    registry: Registry,
    queue: Queue,
    counter: RequestCounter,
    clients: SyncClients,
) -> None:
    """Given 100 lean tasks enqueued with enqueue_many, when one dispatcher drains them,
    then enqueue and drain together sent at most 0.5 AWS requests per task (the lean
    mode's promise: send, receive and delete, ten at a time), none of them DynamoDB."""

    @task(registry=registry, track_state=False)
    async def noop(n: int) -> None:
        """Nothing."""

    queue.enqueue_many([noop.message(n) for n in range(100)])
    dispatcher_counter = RequestCounter()

    stats = await drain(aws_env, registry, counter=dispatcher_counter)

    assert stats.succeeded == 100
    everything = sent(counter)
    for name, n in sent(dispatcher_counter).items():
        everything[name] = everything.get(name, 0) + n
    per_task = sum(everything.values()) / 100
    assert per_task <= 0.5, everything
    assert only_activity_reports(everything, clients, aws_env), everything


async def test_status_task_and_cancel_of_a_lean_task_say_it_keeps_no_record(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a lean task's id, when `dispatch status`, `dispatch task` and `dispatch
    cancel` are asked about it, then each exits 4 (not found) with one line saying it
    is a lean task (track_state=False) whose failures are on the DLQ."""

    @task(registry=registry, track_state=False)
    def ping() -> None:
        """Nothing."""

    task_id = queue.enqueue(ping.message())

    for command in ("status", "task", "cancel"):
        result = dispatch_cli(command, task_id)
        assert result.returncode == 4, result.stderr
        assert "lean task, declared with track_state=False" in result.stderr
        assert "dead-letter queue" in result.stderr
