"""A micro-batch stopped at a deadline while its claims are on the way (over real HTTP).

The local AWS holds every DynamoDB request for seconds (``round_trip_ms``), so the
batch's claim is still in flight when the run's ``finish_by`` releases the item
and the dispatcher stops the batch. The claim lands anyway; it must be given back
(record ``queued``, attempt refunded), not left ``running`` with its attempt spent
until its lease runs out.
"""

from __future__ import annotations

import time
import uuid

import boto3
import pytest

from dispatch.core.config import Settings
from dispatch.local.emulator import LocalAWS
from dispatch.local.provision import provision
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import async_clients, sync_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry, task

HELD_MS = 3_000


async def test_a_batch_claim_in_flight_at_the_deadline_is_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given DynamoDB answers after 3 s and a run that must finish 1.5 s after it starts,
    when a batch item's claim is still on the way at that deadline, then the claim is given
    back: the record is queued with no attempt spent, and the handler never ran."""
    ran: list[list[str]] = []
    registry = Registry()

    @task(registry=registry, batch_size=10, batch_window_s=0.05)
    def index(items: list[str]) -> None:
        ran.append(items)

    with LocalAWS.start(round_trip_ms={"dynamodb": HELD_MS}) as aws:
        for name, value in aws.env().items():
            monkeypatch.setenv(name, value)
        options = {
            "endpoint_url": aws.endpoint_url,
            "region_name": aws.region,
            "aws_access_key_id": aws.env()["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": aws.env()["AWS_SECRET_ACCESS_KEY"],
        }
        sqs, dynamodb = boto3.client("sqs", **options), boto3.client("dynamodb", **options)
        resources = provision(sqs, dynamodb, prefix=f"deadline-{uuid.uuid4().hex[:8]}")
        for name, value in resources.as_env().items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env()
        queue = Queue(settings)
        task_id = queue.enqueue(index.message("doc-1"))
        queue.close()

        async with async_clients(settings) as clients:
            dispatcher = Dispatcher(
                settings,
                clients=clients,
                registry=registry,
                options=DispatcherOptions(wait_time_s=1),
            )
            started = time.time()
            stats = await dispatcher.run(for_s=1.0, finish_by=started + 1.5)
            await dispatcher.runner.aclose()

        record = SyncStateStore(sync_clients(settings).dynamodb, settings.table).get(task_id)

    assert stats.received == 1 and stats.started == 0
    assert ran == []
    assert record is not None
    assert (record.status, record.attempts) == (Status.QUEUED, 0)
