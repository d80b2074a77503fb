"""A micro-batch stopped at a deadline while its claims are on the way (over real HTTP).

The dispatcher's DynamoDB client gets each UpdateItem answer seconds late (the
request is carried out at once; the answer waits), so the batch's claim has
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

from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import CLIENT_HOOKS, SyncClients, async_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry, task

LATE_S = 2.0


@contextmanager
def late_update_answers(late_s: float) -> Iterator[None]:
    """Every aiobotocore DynamoDB client made inside the block sends UpdateItem at once
    and hands its answer back ``late_s`` later."""

    def attach(client: Any) -> None:
        if client.meta.service_model.service_name != "dynamodb":
            return

        async def send_then_wait(request: Any, **_: Any) -> Any:
            answer = await client._endpoint._send(request)
            await answer.content
            await asyncio.sleep(late_s)
            return answer

        client.meta.events.register("before-send.dynamodb.UpdateItem", send_then_wait)

    hook: Callable[[Any], None] = attach
    CLIENT_HOOKS.append(hook)
    try:
        yield
    finally:
        CLIENT_HOOKS.remove(hook)


async def test_a_batch_claim_in_flight_at_the_deadline_is_given_back(
    aws_env: Settings, queue: Queue, clients: SyncClients
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
    with late_update_answers(LATE_S):
        async with async_clients(aws_env) as aio:
            dispatcher = Dispatcher(
                aws_env, clients=aio, registry=registry, options=DispatcherOptions(wait_time_s=1)
            )
            stats = await dispatcher.run(for_s=0.5, finish_by=time.time() + 1.0)
            await dispatcher.runner.aclose()

    record = SyncStateStore(clients.dynamodb, aws_env.table).get(task_id)
    assert stats.received == 1 and stats.started == 0
    assert ran == []
    assert record is not None
    assert (record.status, record.attempts) == (Status.QUEUED, 0)
