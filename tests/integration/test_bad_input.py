"""Bad input is caught where it enters, with an error that names the problem.

Bad configuration at start-up; a foreign message that could never be stored at
admission, dead-lettered as ``malformed`` instead of looping on the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from dispatch import task
from dispatch.core.config import Settings
from dispatch.core.deadletter import parse_attributes
from dispatch.core.errors import ConfigurationError
from dispatch.loop.dispatcher import Dispatcher
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.state import SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain, queue_counts, receive_all


async def test_a_queue_that_does_not_exist_is_named_at_start_up(aws_env: Settings) -> None:
    """Given DISPATCH_QUEUE_URL pointing at a queue that does not exist, when the
    dispatcher starts, then ConfigurationError names the variable and the URL."""
    wrong = dataclasses.replace(aws_env, queue_url=aws_env.queue_url + "-typo")

    async with async_clients(wrong) as aio:
        with pytest.raises(ConfigurationError, match=r"DISPATCH_QUEUE_URL=.*-typo") as caught:
            await Dispatcher(wrong, clients=aio).check()

    assert caught.value.setting == "DISPATCH_QUEUE_URL"


async def test_a_missing_table_and_a_table_with_another_key_are_named(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given DISPATCH_TABLE naming a missing table, or a table keyed on 'id' instead of
    'pk', when the dispatcher starts, then ConfigurationError says which and what
    schema Dispatch needs."""
    missing = dataclasses.replace(aws_env, table="no-such-table")
    clients.dynamodb.create_table(
        TableName="someone-elses",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    foreign = dataclasses.replace(aws_env, table="someone-elses")

    async with async_clients(aws_env) as aio:
        with pytest.raises(
            ConfigurationError, match=r"DescribeTable: .*no-such-table.*dispatch init"
        ):
            await Dispatcher(missing, clients=aio).check()
        with pytest.raises(ConfigurationError, match=r"'someone-elses' has key schema .*'pk'"):
            await Dispatcher(foreign, clients=aio).check()


def test_missing_credentials_are_a_configuration_error(
    aws_env: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    """Given no AWS credentials anywhere, when a task is enqueued, then the error is a
    ConfigurationError that says how to provide credentials, and nothing is sent."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path) + "/none")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path) + "/none")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    @task(registry=registry)
    def ping() -> None: ...

    with pytest.raises(ConfigurationError, match="no AWS credentials found"):
        Queue(aws_env).enqueue(ping.message())


# Bodies as a foreign producer writes them: the JSON text itself holds the escapes, so
# json.loads gives Python strings with lone surrogates, which DynamoDB refuses to store.
UNSTORABLE = {
    '{"v":1,"id":"\\ud800-lone","task":"charge","args":["1"]}': "'id' is not valid Unicode",
    '{"v":1,"id":"t-2","task":"ch\\udfffarge","args":["1"]}': "'task' is not valid Unicode",
    '{"v":1,"id":"t-3","task":"charge","args":["1"],"idempotency_key":"\\udbff"}': (
        "'idempotency_key' is not valid Unicode"
    ),
    '{"v":1,"id":"t-4","task":"charge","args":["\\ud83d"]}': "positional argument 0",
    '{"v":1,"id":"t-5","task":"charge","args":["1"],"enqueued_at":' + "9" * 400 + "}": (
        "'enqueued_at' must be a number"
    ),
    '{"v":1,"id":"' + "x" * 129 + '","task":"charge","args":["1"]}': "1 to 128 characters",
}


async def test_a_foreign_message_that_could_never_be_stored_is_dead_lettered_as_malformed(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given foreign bodies whose id, task name, idempotency key or argument holds a lone
    surrogate (valid JSON escapes, but no DynamoDB key or attribute can hold one), an
    over-long id and an enqueue time too large for a float, around a good task, when the
    dispatcher drains the queue, then each bad one is dead-lettered at once as
    ``malformed`` naming the field, the good task runs, and nothing is left looping."""
    ran = threading.Event()

    @task(registry=registry)
    def charge(order_id: str) -> None:
        ran.set()

    for body in UNSTORABLE:
        clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=body)
    queue.enqueue(charge.message("ok"))

    # Unchecked, such a message fails its claim and comes back forever: bound the wait so
    # a regression fails here instead of hanging.
    stats = await asyncio.wait_for(drain(aws_env, registry), timeout=60)

    assert ran.is_set() and stats.succeeded == 1
    assert stats.rejected == len(UNSTORABLE) and stats.retried == 0
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}
    letters = receive_all(clients, aws_env.dlq_url)
    assert sorted(m["Body"] for m in letters) == sorted(UNSTORABLE)
    for letter in letters:
        failure = parse_attributes(letter["MessageAttributes"])
        assert failure["reason"] == "malformed"
        assert UNSTORABLE[letter["Body"]] in failure["error"]["message"]
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    for readable_id in ("t-2", "t-3", "t-4", "t-5"):
        # The id was storable, so the rejection is recorded under it (task name only
        # where that could be stored too).
        rejected = store.get(readable_id)
        assert rejected is not None and rejected.dead_reason == "malformed"
