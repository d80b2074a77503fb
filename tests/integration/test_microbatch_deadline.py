"""A micro-batch stopped at a deadline while its claims are on the way (over real HTTP).

The dispatcher's DynamoDB client gets each claim's answer seconds late (the
request, a batch of statements or one UpdateItem, is carried out at once; the
answer waits), so the batch's claim has
landed but not answered when the run's ``finish_by`` releases the item and the
dispatcher stops the batch. The claim must be given back (record ``queued``,
attempt refunded), not left ``running`` with its attempt spent until its lease
runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import CLIENT_HOOKS, SyncClients, async_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry, task

LATE_S = 2.0


@contextmanager
def late_claim_answers(late_s: float, operation: str) -> Iterator[None]:
    """Every aiobotocore DynamoDB client made inside the block sends ``operation`` at
    once and, when the request claims, hands its answer back ``late_s`` later."""

    def attach(client: Any) -> None:
        if client.meta.service_model.service_name != "dynamodb":
            return

        async def send_then_wait(request: Any, **_: Any) -> Any:
            if b"claim_token" not in bytes(request.body or b""):
                return None  # not a claim: sent as usual
            answer = await client._endpoint._send(request)
            await answer.content
            await asyncio.sleep(late_s)
            return answer

        client.meta.events.register(f"before-send.dynamodb.{operation}", send_then_wait)

    hook: Callable[[Any], None] = attach
    CLIENT_HOOKS.append(hook)
    try:
        yield
    finally:
        CLIENT_HOOKS.remove(hook)


@pytest.mark.parametrize(
    ("batch_claims", "operation"),
    [(True, "BatchExecuteStatement"), (False, "UpdateItem")],
    ids=["batched", "single"],
)
async def test_a_batch_claim_in_flight_at_the_deadline_is_given_back(
    aws_env: Settings, queue: Queue, clients: SyncClients, batch_claims: bool, operation: str
) -> None:
    """Given claims whose answers come 2 s late and a run that must finish 1 s after it
    starts, when a batch item's claim is still unanswered at that deadline, then the claim
    is given back: the record is queued with no attempt spent, and the handler never ran."""
    ran: list[list[str]] = []
    registry = Registry()

    @task(registry=registry, batch_size=10, batch_window_s=0.05)
    def index(items: list[str]) -> None:
        ran.append(items)

    task_id = queue.enqueue(index.message("doc-1"))
    with late_claim_answers(LATE_S, operation):
        async with async_clients(aws_env) as aio:
            dispatcher = Dispatcher(
                aws_env,
                clients=aio,
                registry=registry,
                options=DispatcherOptions(wait_time_s=1, batch_claims=batch_claims),
            )
            stats = await dispatcher.run(for_s=0.5, finish_by=time.time() + 1.0)
            await dispatcher.runner.aclose()

    record = SyncStateStore(clients.dynamodb, aws_env.table).get(task_id)
    assert stats.received == 1 and stats.started == 0
    assert ran == []
    assert record is not None
    assert (record.status, record.attempts) == (Status.QUEUED, 0)
