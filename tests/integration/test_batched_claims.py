"""Claims and successes in batches (BatchExecuteStatement), over HTTP to the embedded local AWS.

The default mode claims a receive's tasks with one request and settles their
successes with one more, instead of one conditional UpdateItem each; it must
keep every promise the single claim kept: a task runs once however many copies
of its message arrive, at once or to two dispatchers, attempts are counted
exactly, a message from elsewhere (no record) still runs, and an endpoint that
does not answer a batch as DynamoDB does gets one claim per task, saying so once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from dispatch import Retry, current_task, task
from dispatch.core.config import Settings
from dispatch.local.emulator import LocalAWS
from dispatch.local.provision import provision
from dispatch.producer.enqueue import Queue
from dispatch.store import statements
from dispatch.store.aws import RequestCounter
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain, queue_counts

PROBE_REQUESTS = 6  # BatchWriteItem x2, BatchExecuteStatement, GetItem x3


class ClaimCounter(RequestCounter):
    """Counts requests, and among DynamoDB's UpdateItems the single claims."""

    def __init__(self) -> None:
        super().__init__()
        self.single_claims = 0

    def _on_send(self, event_name: str = "", **kwargs: Any) -> None:
        super()._on_send(event_name, **kwargs)
        body = getattr(kwargs.get("request"), "body", b"") or b""
        if event_name.endswith(".UpdateItem") and b"claim_token = :token" in bytes(body):
            self.single_claims += 1


def ddb(counter: RequestCounter) -> Counter[str]:
    return Counter({op: n for (svc, op), n in counter.snapshot().items() if svc == "dynamodb"})


def records(clients: Any, settings: Settings, ids: list[str]) -> list[Any]:
    store = SyncStateStore(clients.dynamodb, settings.table)
    return [store.get(task_id) for task_id in ids]


@pytest.fixture(autouse=True)
def _fresh_probes() -> Iterator[None]:
    """Every test's endpoint is probed as a new process would probe it."""
    statements.forget_probes()
    yield
    statements.forget_probes()


async def test_a_queue_of_tracked_tasks_is_claimed_and_settled_in_batches(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given 60 tracked tasks, when one dispatcher drains them, then each ran once,
    its record says succeeded with its result and one attempt, and DynamoDB saw no
    single-task claim: under 0.3 requests per task besides the one-off probe."""
    runs: Counter[int] = Counter()

    @task(registry=registry)
    def double(n: int) -> int:
        runs[n] += 1
        return 2 * n

    ids = queue.enqueue_many([double.message(n) for n in range(60)])
    counter = ClaimCounter()

    stats = await drain(aws_env, registry, counter=counter)

    assert runs == Counter(range(60)) and stats.succeeded == 60
    found = records(clients, aws_env, ids)
    assert [(r.status, r.attempts, r.result) for r in found] == [
        (Status.SUCCEEDED, 1, 2 * n) for n in range(60)
    ]
    requests = ddb(counter)
    assert counter.single_claims == 0
    assert requests["BatchExecuteStatement"] >= 2
    assert sum(requests.values()) - PROBE_REQUESTS <= 0.3 * 60, requests


async def test_switched_off_every_claim_is_its_own_update_item(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given batch_claims=False, when 20 tasks are drained, then no statement batch is
    sent (not even the probe) and each task was claimed by its own UpdateItem."""

    @task(registry=registry)
    def noop(n: int) -> None:
        return None

    ids = queue.enqueue_many([noop.message(n) for n in range(20)])
    counter = ClaimCounter()

    stats = await drain(aws_env, registry, counter=counter, batch_claims=False)

    assert stats.succeeded == 20
    assert all(r.status is Status.SUCCEEDED for r in records(clients, aws_env, ids))
    requests = ddb(counter)
    assert requests["BatchExecuteStatement"] == 0
    assert counter.single_claims == 20


async def test_copies_of_one_task_in_one_receive_run_it_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task whose message is on the queue three times (so that one receive
    brings the copies together and one batch would address the record three times),
    when drained, then the handler ran once, two copies were dropped as duplicates,
    and the record counts one attempt."""
    runs: list[str] = []

    @task(registry=registry)
    def once(name: str) -> None:
        runs.append(name)

    message = once.message("a")
    queue.enqueue(message)
    for _ in range(2):
        clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=message.body)

    stats = await drain(aws_env, registry)

    assert runs == ["a"]
    assert (stats.succeeded, stats.duplicates) == (1, 2)
    (found,) = records(clients, aws_env, [message.task_id])
    assert (found.status, found.attempts) == (Status.SUCCEEDED, 1)
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_two_dispatchers_given_every_task_twice_run_each_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given 40 tasks each on the queue twice, when two dispatchers drain the queue at
    once (their batched claims racing for the same records), then every task ran
    exactly once and counts one attempt."""
    runs: Counter[int] = Counter()

    @task(registry=registry)
    async def work(n: int) -> None:
        runs[n] += 1
        await asyncio.sleep(0.01)

    messages = [work.message(n) for n in range(40)]
    ids = queue.enqueue_many(messages)
    for message in messages:
        clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=message.body)

    both = await asyncio.gather(drain(aws_env, registry), drain(aws_env, registry))

    assert runs == Counter(range(40))
    assert sum(s.succeeded for s in both) == 40
    assert sum(s.duplicates for s in both) == 40
    assert [(r.status, r.attempts) for r in records(clients, aws_env, ids)] == [
        (Status.SUCCEEDED, 1)
    ] * 40


async def test_a_retried_task_is_claimed_from_the_record_its_refusal_returned(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task that fails twice (its record is retrying when the next delivery
    comes, so the first-attempt guess is refused), when drained, then every attempt
    was claimed in a batch (no UpdateItem claim), counted exactly, and the attempts the
    handler saw are 1, 2, 3."""
    seen: list[int] = []

    @task(registry=registry, retry=Retry(max_attempts=3, base_delay_s=1, max_delay_s=1))
    def flaky() -> str:
        seen.append(current_task().attempt)
        if len(seen) < 3:
            raise ConnectionError("not yet")
        return "ok"

    task_id = queue.enqueue(flaky.message())
    counter = ClaimCounter()

    await drain(aws_env, registry, counter=counter)

    assert seen == [1, 2, 3]
    (found,) = records(clients, aws_env, [task_id])
    assert (found.status, found.attempts, found.result) == (Status.SUCCEEDED, 3, "ok")
    assert found.first_failure_at is not None and found.last_error is not None
    assert counter.single_claims == 0


async def test_a_message_from_elsewhere_without_a_record_still_runs(
    aws_env: Settings, registry: Registry, clients
) -> None:
    """Given a message sent by another producer (its task has no record: a batched
    UPDATE never creates one), when drained, then the single claim creates the
    record and the task runs once."""
    runs: list[str] = []

    @task(registry=registry)
    def greet(name: str) -> str:
        runs.append(name)
        return name

    body = {"v": 1, "id": "from-elsewhere-1", "task": "greet", "args": ["x"], "kwargs": {}}
    clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=json.dumps(body))
    counter = ClaimCounter()

    stats = await drain(aws_env, registry, counter=counter)

    assert runs == ["x"] and stats.succeeded == 1
    (found,) = records(clients, aws_env, ["from-elsewhere-1"])
    assert (found.status, found.attempts) == (Status.SUCCEEDED, 1)
    assert counter.single_claims == 1


@pytest.fixture
def stock_moto_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A queue and table on moto 5.2.5 as released (no Dispatch patches)."""
    with LocalAWS.start(patch_moto=False) as stock:
        env = stock.env()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        options: dict[str, Any] = {
            "endpoint_url": stock.endpoint_url,
            "region_name": stock.region,
            "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        }
        sqs, dynamodb = boto3.client("sqs", **options), boto3.client("dynamodb", **options)
        try:
            resources = provision(sqs, dynamodb, prefix="stock")
        finally:
            sqs.close()
            dynamodb.close()
        for name, value in resources.as_env().items():
            monkeypatch.setenv(name, value)
        yield Settings.from_env()


async def test_an_endpoint_that_does_not_report_failed_conditions_gets_one_claim_per_task(
    stock_moto_env: Settings, registry: Registry
) -> None:
    """Given stock moto (it answers 500 to the probe's batch; other statements it
    applies without reporting a failed condition), when a dispatcher drains 8 tasks,
    then it says once, naming the endpoint and what went wrong, that claims go one
    by one, and every task ran once, claimed by its own UpdateItem."""
    runs: Counter[int] = Counter()

    @task(registry=registry)
    def work(n: int) -> None:
        runs[n] += 1

    queue = Queue(stock_moto_env)
    try:
        queue.enqueue_many([work.message(n) for n in range(8)])
    finally:
        queue.close()
    counter = ClaimCounter()

    with capture_logs() as logs:
        stats = await drain(stock_moto_env, registry, counter=counter)

    warnings = [e for e in logs if e["event"] == "batch_claims_unavailable"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["endpoint"] == stock_moto_env.endpoint_url
    assert warnings[0]["reason"]
    assert runs == Counter(range(8)) and stats.succeeded == 8
    assert counter.single_claims == 8
