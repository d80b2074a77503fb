"""AWS call faults, injected at the botocore level, against the embedded local AWS.

Every client Dispatch makes retries through one policy (dispatch.store.aws_retry); the
fault injector (dispatch.local.faults) makes requests fail the ways AWS does, so
the real code path (retry, translation, the dispatcher's handling) runs over
real HTTP.
"""

from __future__ import annotations

import itertools

import pytest
from botocore.exceptions import ClientError

from dispatch import task
from dispatch.core.config import Settings
from dispatch.local.faults import FaultInjector, FaultKind, install_from_env
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import async_clients, sync_client, sync_clients
from dispatch.store.aws_retry import CallRetry, attempts_at_most
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain, queue_counts


@pytest.mark.parametrize("kind", list(FaultKind))
def test_a_boto3_call_survives_two_faults_of_every_kind(aws_env: Settings, kind: FaultKind) -> None:
    """Given a boto3 client whose first two requests fail (each kind in turn), when it
    calls DynamoDB, then the call succeeds, after two retries except for a slow answer
    (late, not failed)."""
    injector = FaultInjector(rate=1.0, kinds=(kind,), limit=2, slow_s=0.01)
    with injector.installed():
        clients = sync_clients(aws_env)
    try:
        answer = clients.dynamodb.describe_table(TableName=aws_env.table)
    finally:
        clients.sqs.close()
        clients.dynamodb.close()

    assert answer["Table"]["TableName"] == aws_env.table
    retries = 0 if kind is FaultKind.SLOW else 2  # a slow answer is late, not failed
    assert injector.counts == {kind: max(1, retries)}
    assert answer["ResponseMetadata"]["RetryAttempts"] == retries


@pytest.mark.parametrize("kind", list(FaultKind))
async def test_an_aiobotocore_call_survives_two_faults_of_every_kind(
    aws_env: Settings, kind: FaultKind
) -> None:
    """Given the dispatcher's aiobotocore clients with the same faults, when one reads
    the queue's attributes, then the call succeeds after the same retries."""
    injector = FaultInjector(rate=1.0, kinds=(kind,), limit=2, slow_s=0.01)
    with injector.installed():
        async with async_clients(aws_env) as aio:
            answer = await aio.sqs.get_queue_attributes(
                QueueUrl=aws_env.queue_url, AttributeNames=["QueueArn"]
            )

    assert "QueueArn" in answer["Attributes"]
    retries = 0 if kind is FaultKind.SLOW else 2  # a slow answer is late, not failed
    assert injector.counts == {kind: max(1, retries)}
    assert answer["ResponseMetadata"]["RetryAttempts"] == retries


def test_an_answer_is_not_retried(aws_env: Settings) -> None:
    """Given a conditional write whose condition fails, when sent, then it fails at
    once with the condition's error: an answer, not a fault, is never repeated."""
    dynamodb = sync_client("dynamodb", aws_env)
    try:
        with pytest.raises(ClientError) as caught:
            dynamodb.put_item(
                TableName=aws_env.table,
                Item={"pk": {"S": "x"}},
                ConditionExpression="attribute_exists(pk)",
            )
    finally:
        dynamodb.close()

    assert caught.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 0


def test_a_failing_call_stops_at_its_total_time_bound(aws_env: Settings) -> None:
    """Given every request throttled and a policy of 100 attempts but 1 s in all, on a
    clock that moves 0.25 s at each look, when a call is made, then it gives up with
    the throttling error after 4 attempts: the time bound, not the attempt cap."""
    ticks = itertools.count()
    policy = CallRetry(
        max_attempts=100,
        max_total_s=1.0,
        base_delay_s=0.001,
        max_delay_s=0.001,
        clock=lambda: next(ticks) * 0.25,
    )
    injector = FaultInjector(rate=1.0, kinds=(FaultKind.THROTTLE,))
    dynamodb = sync_client("dynamodb", aws_env, retry=policy)
    injector.attach(dynamodb)
    try:
        with pytest.raises(ClientError) as caught:
            dynamodb.describe_table(TableName=aws_env.table)
    finally:
        dynamodb.close()

    assert caught.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert injector.total == 4


def test_a_call_limited_to_two_attempts_answers_after_two(aws_env: Settings) -> None:
    """Given every request failing with a server error, when a call is made inside
    attempts_at_most(2) (the batched-claims probe's limit), then it fails after two
    attempts, where the same client's policy makes eight outside it."""
    policy = CallRetry(max_attempts=8, base_delay_s=0.001, max_delay_s=0.001)
    injector = FaultInjector(rate=1.0, kinds=(FaultKind.SERVER_ERROR,))
    dynamodb = sync_client("dynamodb", aws_env, retry=policy)
    injector.attach(dynamodb)
    try:
        with attempts_at_most(2), pytest.raises(ClientError):
            dynamodb.describe_table(TableName=aws_env.table)
        limited = injector.total
        with pytest.raises(ClientError):
            dynamodb.describe_table(TableName=aws_env.table)
    finally:
        dynamodb.close()

    assert (limited, injector.total - limited) == (2, 8)


async def test_a_send_repeated_after_a_lost_answer_runs_the_task_once(
    aws_env: Settings, registry: Registry, clients
) -> None:
    """Given an enqueue whose SendMessageBatch answer is lost (the message was sent, and
    the retry sends it again), when the dispatcher drains the queue, then the handler
    ran once and the second copy was dropped by the claim as a duplicate."""
    runs: list[int] = []

    @task(registry=registry)
    def once(n: int) -> int:
        runs.append(n)
        return n

    injector = FaultInjector(
        rate=1.0,
        kinds=(FaultKind.LOST_RESPONSE,),
        limit=1,
        operations=frozenset({"SendMessageBatch", "SendMessage"}),
    )
    queue = Queue(aws_env)
    try:
        with injector.installed():  # the queue makes its clients on first use
            task_id = queue.enqueue(once.message(7))
    finally:
        queue.close()
    assert injector.total == 1
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 2

    stats = await drain(aws_env, registry)

    assert runs == [7]
    assert stats.duplicates == 1
    record = SyncStateStore(clients.dynamodb, aws_env.table).get(task_id)
    assert record is not None and (record.status, record.attempts) == (Status.SUCCEEDED, 1)


CLAIM_REQUESTS = {  # batch_claims -> (operation, what its body says when it claims)
    True: ("BatchExecuteStatement", b'\\"claim_token\\"=?'),
    False: ("UpdateItem", b"claim_token = :token"),
}


@pytest.mark.parametrize("batch_claims", [True, False], ids=["batched", "single"])
async def test_a_claim_repeated_after_a_lost_answer_is_recognised_as_its_own(
    aws_env: Settings, registry: Registry, queue: Queue, clients, batch_claims: bool
) -> None:
    """Given a dispatcher whose claim (a batch of statements, or one UpdateItem) is
    carried out but whose answer is lost (so the call retry sends the same claim
    again and its condition fails), when it drains the queue, then the repeat knows
    the running record as its own claim: each task runs at once, once, with one
    attempt counted, instead of waiting out a lease."""
    runs: list[str] = []

    @task(registry=registry, timeout_s=60)
    def work(name: str) -> str:
        runs.append(name)
        return name

    ids = queue.enqueue_many([work.message(name) for name in "abc"])
    operation, claim_text = CLAIM_REQUESTS[batch_claims]
    injector = FaultInjector(
        rate=1.0,
        kinds=(FaultKind.LOST_RESPONSE,),
        limit=1,
        operations=frozenset({operation}),
        match=lambda _operation, body: claim_text in body,
    )
    with injector.installed():
        stats = await drain(aws_env, registry, batch_claims=batch_claims)

    assert injector.counts == {FaultKind.LOST_RESPONSE: 1}
    assert sorted(runs) == ["a", "b", "c"]
    assert (stats.succeeded, stats.deferred, stats.duplicates) == (3, 0, 0)
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    for task_id in ids:
        record = store.get(task_id)
        assert record is not None and (record.status, record.attempts) == (Status.SUCCEEDED, 1)


def test_the_environment_variable_installs_an_injector_on_new_clients(
    aws_env: Settings, tmp_path
) -> None:
    """Given DISPATCH_LOCAL_FAULTS naming a rate, kinds and a log file, when a client is
    made after install_from_env, then its requests are faulted and each fault is
    logged as one line."""
    from dispatch.store.aws import CLIENT_HOOKS

    log = tmp_path / "faults.log"
    config = f'{{"rate": 1.0, "kinds": ["unavailable"], "seed": 3, "log": "{log}"}}'
    injector = install_from_env({"DISPATCH_LOCAL_FAULTS": config})
    assert injector is not None
    try:
        dynamodb = sync_client("dynamodb", aws_env, retry=CallRetry(max_attempts=3))
    finally:
        CLIENT_HOOKS.remove(injector.attach)
    try:
        with pytest.raises(ClientError) as caught:
            dynamodb.describe_table(TableName=aws_env.table)
    finally:
        dynamodb.close()

    assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert injector.counts == {FaultKind.UNAVAILABLE: 3}
    assert [line.split()[2:] for line in log.read_text().splitlines()] == [
        ["unavailable", "DescribeTable"]
    ] * 3
    assert install_from_env({}) is None


async def test_an_idempotent_enqueue_repeated_after_a_lost_answer_still_sends_its_message(
    aws_env: Settings, registry: Registry, clients
) -> None:
    """Given an enqueue with an idempotency key whose record PutItem is carried out but
    whose answer is lost (the retry's condition then fails on the record it wrote
    itself), when the dispatcher drains the queue, then the message was sent all
    the same and the task ran once; a second enqueue with the key adds nothing."""
    runs: list[str] = []

    @task(registry=registry)
    def pay(order: str) -> str:
        runs.append(order)
        return order

    injector = FaultInjector(
        rate=1.0, kinds=(FaultKind.LOST_RESPONSE,), limit=1, operations=frozenset({"PutItem"})
    )
    queue = Queue(aws_env)
    try:
        with injector.installed():
            task_id = queue.enqueue(pay.message("o-1", idempotency_key="order-1"))
        again = queue.enqueue(pay.message("o-1", idempotency_key="order-1"))
    finally:
        queue.close()
    assert injector.total == 1
    assert again == task_id

    stats = await drain(aws_env, registry)

    assert runs == ["o-1"]
    assert stats.succeeded == 1
    record = SyncStateStore(clients.dynamodb, aws_env.table).get(task_id)
    assert record is not None and record.status is Status.SUCCEEDED


async def test_a_dispatcher_lease_taken_by_a_repeated_put_is_recognised_as_its_own(
    aws_env: Settings,
) -> None:
    """Given the Lambda dispatcher's lease PutItem carried out but its answer lost (the
    retry's condition then fails on the lease it wrote), when a dispatcher acquires
    the only slot, then it gets that slot instead of finding it busy until it ends."""
    import time

    from dispatch.aws_lambda.slots import Leases

    injector = FaultInjector(
        rate=1.0, kinds=(FaultKind.LOST_RESPONSE,), limit=1, operations=frozenset({"PutItem"})
    )
    with injector.installed():
        async with async_clients(aws_env) as aio:
            leases = Leases(
                aio.dynamodb, aws_env.table, queue_url=aws_env.queue_url, cap=1, clock=time.time
            )
            lease = await leases.acquire(holder="invocation-1", until=time.time() + 60)
            other = await leases.acquire(holder="invocation-2", until=time.time() + 60)

    assert injector.total == 1
    assert lease is not None and lease.holder == "invocation-1"
    assert other is None
