"""Message signing over the emulator: only messages signed with our key run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dispatch import Retry, task
from dispatch.core.config import Settings
from dispatch.core.deadletter import parse_attributes
from dispatch.core.signing import ATTR_SIGNATURE, sign
from dispatch.ops.dlq import redrive
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain, receive_all


@pytest.fixture
def signed(aws_env: Settings) -> Settings:
    """The test's settings with a signing key (as DISPATCH_SIGNING_KEY would give)."""
    return dataclasses.replace(aws_env, signing_keys=("k-2026-11", "k-2026-10"))


async def test_only_messages_signed_with_a_configured_key_run(
    signed: Settings, registry: Registry, clients: SyncClients
) -> None:
    """Given signing on, when our producer enqueues a task, a foreign producer sends an
    unsigned one, another forges a signature, and an old key signed a fourth, then the
    ours and the old-key one run, and the other two are dead-lettered as bad_signature
    without running and without touching any task record."""
    ran: list[str] = []

    @task(registry=registry)
    def transfer(to: str) -> None:
        ran.append(to)

    ours = Queue(signed).enqueue(transfer.message(to="alice"))
    unsigned = transfer.message(to="mallory").body
    clients.sqs.send_message(QueueUrl=signed.queue_url, MessageBody=unsigned)
    forged = transfer.message(to="eve").body
    clients.sqs.send_message(
        QueueUrl=signed.queue_url,
        MessageBody=forged,
        MessageAttributes={
            ATTR_SIGNATURE: {"DataType": "String", "StringValue": sign("guess", forged)}
        },
    )
    rotated = transfer.message(to="bob").body
    clients.sqs.send_message(
        QueueUrl=signed.queue_url,
        MessageBody=rotated,
        MessageAttributes={
            ATTR_SIGNATURE: {"DataType": "String", "StringValue": sign("k-2026-10", rotated)}
        },
    )

    stats = await drain(signed, registry)

    assert sorted(ran) == ["alice", "bob"]
    assert stats.dead_reasons == {"bad_signature": 2}
    letters = receive_all(clients, signed.dlq_url)
    assert sorted(m["Body"] for m in letters) == sorted([unsigned, forged])
    assert {parse_attributes(m["MessageAttributes"])["reason"] for m in letters} == {
        "bad_signature"
    }
    records = clients.dynamodb.scan(TableName=signed.table)["Items"]
    ids = {r["task_id"]["S"] for r in records if "task_id" in r}
    assert ids == {ours, json.loads(rotated)["id"]}


async def test_a_signed_task_keeps_its_signature_through_the_dlq_and_redrive(
    signed: Settings, registry: Registry, clients: SyncClients
) -> None:
    """Given signing on and a signed task that died, when it is redriven after the fix,
    then its copy still verifies and it runs."""
    broken = [True]

    @task(registry=registry, retry=Retry(max_attempts=1))
    def sync() -> None:
        if broken[0]:
            raise ConnectionError("down")

    Queue(signed).enqueue(sync.message())
    assert (await drain(signed, registry)).dead == 1

    broken[0] = False
    assert len(redrive(clients, signed).redriven) == 1
    stats = await drain(signed, registry)

    assert stats.succeeded == 1 and stats.dead == 0
