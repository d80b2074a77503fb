"""Periodic tasks over the emulator: one run per fire time, however many dispatchers."""

from __future__ import annotations

import asyncio

from dispatch import task
from dispatch.core.config import Settings
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain


async def test_two_dispatchers_racing_enqueue_a_fire_time_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a task scheduled every minute and two dispatchers starting together, when
    both drain the queue, then the current fire time ran exactly once and a third
    dispatcher later in the same minute does not run it again."""
    runs: list[int] = []

    @task(registry=registry, schedule="rate(1 minute)")
    def heartbeat() -> None:
        runs.append(1)

    first, second = await asyncio.gather(drain(aws_env, registry), drain(aws_env, registry))
    third = await drain(aws_env, registry)

    # The minute may turn during the test: then a second fire time runs, once.
    assert len(runs) in (1, 2)
    assert first.succeeded + second.succeeded + third.succeeded == len(runs)
    records = clients.dynamodb.scan(TableName=aws_env.table)["Items"]
    fired = [r for r in records if r.get("task", {}).get("S") == "heartbeat"]
    assert len(fired) == len(runs)
    assert all(r["idempotency_key"]["S"].startswith("schedule:") for r in fired)
