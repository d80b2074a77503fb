"""A console serving a queue with live tasks, for the console tests and the screenshots script.

:func:`serving` runs ``dispatch ui``'s application in this event loop on a free
loopback port; :func:`declare_tasks` declares a small workload (tasks that succeed,
die, retry later, and wait for a slow resource) and :func:`enqueue_workload` sends it;
:func:`running` keeps a real dispatcher receiving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from dispatch import PermanentError, Resource, Retry, task
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher
from dispatch.ops.console.app import Backend, ConsoleOptions
from dispatch.ops.console.guard import Guard, accepted_hosts
from dispatch.ops.console.server import build_app, serve
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import sync_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import running_dispatcher, wait_until

SLOW_RETRY = Retry(max_attempts=3, base_delay_s=600.0, max_delay_s=600.0, jitter=False)
WAREHOUSE = Resource("warehouse-api", rate_per_s=2, burst=1, max_concurrency=2)
SECRET = "hunter2-do-not-show"  # noqa: S105 - a marker no page may show, not a credential


@dataclass
class Workload:
    """The ids of what :func:`enqueue_workload` sent, by what becomes of them."""

    succeeded: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    throttled: list[str] = field(default_factory=list)
    delayed: list[str] = field(default_factory=list)


def declare_tasks(registry: Registry) -> dict[str, Any]:
    """Tasks that succeed (``charge``, its result holding a secret), die (``refund``,
    with a secret argument in its error), retry in ten minutes (``sync_crm``), wait for
    a 2/s resource (``reserve``) and wait to be run (``send_receipt``, sent delayed)."""

    @task(registry=registry)
    def charge(order_id: str, amount: int) -> dict[str, object]:
        return {"order_id": order_id, "charged": amount, "session_token": SECRET}

    @task(registry=registry)
    def refund(order_id: str, password: str) -> None:
        raise PermanentError(f"card processor refused order {order_id}: password={password}")

    @task(registry=registry, retry=SLOW_RETRY)
    def sync_crm(contact: str) -> None:
        raise ConnectionError(f"crm unreachable while syncing {contact}")

    @task(registry=registry, resource=WAREHOUSE)
    def reserve(sku: str) -> str:
        return sku

    @task(registry=registry)
    def send_receipt(order_id: str) -> None: ...

    return {
        "charge": charge,
        "refund": refund,
        "sync_crm": sync_crm,
        "reserve": reserve,
        "send_receipt": send_receipt,
    }


def enqueue_workload(queue: Queue, tasks: dict[str, Any], *, throttled: int = 12) -> Workload:
    """Send the workload: 6 charges, 3 refunds, 2 CRM syncs, ``throttled`` reservations
    and 2 receipts delayed by ten minutes."""
    sent = Workload()
    sent.succeeded = queue.enqueue_many(
        [tasks["charge"].message(order_id=f"o-{n}", amount=5 + n) for n in range(6)]
    )
    sent.dead = queue.enqueue_many(
        [tasks["refund"].message(order_id=f"r-{n}", password=SECRET) for n in range(3)]
    )
    sent.retrying = queue.enqueue_many(
        [tasks["sync_crm"].message(contact=f"c-{n}") for n in range(2)]
    )
    sent.throttled = queue.enqueue_many(
        [tasks["reserve"].message(sku=f"sku-{n}") for n in range(throttled)]
    )
    sent.delayed = queue.enqueue_many(
        [tasks["send_receipt"].message(order_id=f"o-{n}", delay_s=600) for n in range(2)]
    )
    return sent


def running(settings: Settings, registry: Registry) -> AbstractAsyncContextManager[Dispatcher]:
    """A dispatcher receiving (short polls) until the block ends."""
    return running_dispatcher(settings, registry, pause_refresh_s=0.5)


@contextlib.asynccontextmanager
async def serving(
    queue: Queue, registry: Registry, *, allow_actions: bool = False
) -> AsyncIterator[str]:
    """The console over ``queue`` on a free loopback port, as ``dispatch ui --port 0``
    serves it; yields its URL."""
    hosts = accepted_hosts("127.0.0.1", allow_remote=False)
    options = ConsoleOptions(host="127.0.0.1", port=0, allow_actions=allow_actions, hosts=hosts)
    app = build_app(Backend(queue=queue, registry=registry, options=options, guard=Guard(hosts)))
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(app, host="127.0.0.1", port=0, stop=stop, on_ready=ready.set_result)
    )
    try:
        yield await asyncio.wait_for(ready, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=30)


def settled(settings: Settings, sent: Workload) -> bool:
    """Whether every task of the workload is where the workload sends it: charges and
    reservations succeeded, refunds dead, CRM syncs retrying (receipts stay queued)."""
    store = SyncStateStore(sync_clients(settings).dynamodb, settings.table)

    def all_are(ids: list[str], status: Status) -> bool:
        return all((r := store.get(i)) is not None and r.status is status for i in ids)

    return (
        all_are(sent.succeeded + sent.throttled, Status.SUCCEEDED)
        and all_are(sent.dead, Status.DEAD)
        and all_are(sent.retrying, Status.RETRYING)
    )


async def run_until_settled(settings: Settings, registry: Registry, sent: Workload) -> None:
    """Run a dispatcher until the workload is settled (the delayed and retrying messages
    keep the queue from ever being empty), then stop it."""
    async with running(settings, registry):
        await asyncio.to_thread(
            wait_until, lambda: settled(settings, sent), what="the workload to settle"
        )
