"""Bad configuration is caught at start-up with an error that names the problem."""

from __future__ import annotations

import dataclasses

import pytest

from dispatch import task
from dispatch.core.config import Settings
from dispatch.core.errors import ConfigurationError
from dispatch.loop.dispatcher import Dispatcher
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, async_clients
from dispatch.tasks.registry import Registry


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
