"""Per-key limits in the loop, over HTTP to the emulator: fairness, per-key cap and rate,
key validation at enqueue, foreign messages without a key, the key as MessageGroupId."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from functools import partial
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from structlog.testing import capture_logs

from dispatch import InvalidArgumentsError, KeyLimits, Resource, current_task, task
from dispatch.core.config import Settings, queue_name
from dispatch.core.deadletter import parse_attributes
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, async_clients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain, queue_counts, receive_all, until
from tests.integration.test_throttle import max_in_any_window

# Timing-sensitive (start windows against a bucket's bound) or CPU-heavy (a browser):
# `make test` (--dist loadgroup) runs these modules on one worker, never side by side.
pytestmark = pytest.mark.xdist_group("timing")


class KeyedCalls:
    """A keyed task ``call(tenant, n)`` that holds for ``hold_s``, and what it saw: each
    tenant's start times, its peak of calls at once, and how often each call ran."""

    def __init__(self, registry: Registry, resource: Resource, *, hold_s: float) -> None:
        self.starts: defaultdict[str, list[float]] = defaultdict(list)
        self.peak: Counter[str] = Counter()
        self.ran: Counter[tuple[str, int]] = Counter()
        running: Counter[str] = Counter()

        @task(registry=registry, resource=resource, key="tenant")
        async def call(tenant: str, n: int) -> None:
            self.starts[tenant].append(time.time())
            self.ran[(tenant, n)] += 1
            running[tenant] += 1
            self.peak[tenant] = max(self.peak[tenant], running[tenant])
            await asyncio.sleep(hold_s)
            running[tenant] -= 1

        self.call = call


async def test_a_flooding_key_does_not_starve_the_others(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given key a's 50 tasks draining on a resource of 10/s (burst 1), when keys b, c
    and d enqueue 5 each behind them, then b..d all start long before a's backlog is
    done, interleaved with a (round robin: while they wait, a gets about one start in
    four), and every task succeeded on its first attempt (waiting is not failing)."""
    crm = Resource(
        "crm-api",
        rate_per_s=10,
        burst=1,
        per_key=KeyLimits(rate_per_s=10, burst=1, max_concurrency=2),
    )
    starts: list[str] = []
    attempts: Counter[int] = Counter()
    under_way = asyncio.Event()

    @task(registry=registry, resource=crm, key="tenant")
    async def sync_contact(tenant: str, n: int) -> None:
        starts.append(tenant)
        attempts[current_task().attempt] += 1
        if len(starts) >= 5:
            under_way.set()

    queue.enqueue_many([sync_contact.message("a", n) for n in range(50)])
    draining = asyncio.ensure_future(drain(aws_env, registry))
    await asyncio.wait_for(under_way.wait(), timeout=30)  # a's backlog fills the room
    others = [sync_contact.message(t, n) for n in range(5) for t in ("b", "c", "d")]
    await asyncio.to_thread(queue.enqueue_many, others)
    stats = await asyncio.wait_for(draining, timeout=90)

    assert stats.succeeded == 65
    assert attempts == {1: 65}
    late = [i for i, tenant in enumerate(starts) if tenant != "a"]
    assert len(late) == 15
    # First come, first served, b..d would start after the 40 of a waiting already.
    assert late[-1] < 35, "".join(starts)
    window = starts[late[0] : late[-1] + 1]
    assert window.count("a") <= len(late) // 3 + 3, "".join(starts)


async def test_a_flooding_key_leaves_room_for_the_others_in_a_small_dispatcher(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a dispatcher of max_in_flight 8 and key a's 60 tasks (its own limits would let
    it hold 40 waiters: 10/s over 4 s), when keys b, c and d enqueue 5 each behind a's
    backlog, then a holds at most half the dispatcher's places, the rest of a's backlog
    is deferred, and b..d are received and start long before a is done."""
    crm = Resource("crm-small", rate_per_s=20, burst=2, per_key=KeyLimits(rate_per_s=10, burst=1))
    starts: list[str] = []
    under_way = asyncio.Event()

    @task(registry=registry, resource=crm, key="tenant")
    async def sync_contact(tenant: str, n: int) -> None:
        starts.append(tenant)
        if len(starts) >= 3:
            under_way.set()

    queue.enqueue_many([sync_contact.message("a", n) for n in range(60)])
    draining = asyncio.ensure_future(drain(aws_env, registry, max_in_flight=8))
    await asyncio.wait_for(under_way.wait(), timeout=30)
    others = [sync_contact.message(t, n) for n in range(5) for t in ("b", "c", "d")]
    await asyncio.to_thread(queue.enqueue_many, others)
    stats = await asyncio.wait_for(draining, timeout=90)

    assert stats.succeeded == 75
    assert stats.deferred > 0
    late = [i for i, tenant in enumerate(starts) if tenant != "a"]
    assert len(late) == 15
    # With a's waiters in all 8 places, b..d would be received after a's 60.
    assert late[-1] < 30, "".join(starts)


async def test_each_key_stays_within_its_cap_and_rate(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given 4 keys with 10 tasks of 0.3 s each on a resource of 50/s whose keys get
    4/s, burst 2 and 2 at once, when drained, then no key ever runs more than 2 at once
    (and reaches 2: its starts 0.25 s apart overlap; without the cap its burst and rate
    would run 3), and in no window w does a key start more than 4 * w + 2 tasks."""
    api = Resource(
        "tenant-api",
        rate_per_s=50,
        burst=10,
        max_concurrency=20,
        per_key=KeyLimits(rate_per_s=4, burst=2, max_concurrency=2),
    )
    calls = KeyedCalls(registry, api, hold_s=0.3)
    call, starts, peak = calls.call, calls.starts, calls.peak

    keys = [f"k{i}" for i in range(4)]
    queue.enqueue_many([call.message(k, n) for n in range(10) for k in keys])
    stats = await asyncio.wait_for(drain(aws_env, registry), timeout=90)

    assert stats.succeeded == 40
    assert max(peak.values()) == 2
    for key in keys:
        assert len(starts[key]) == 10
        assert max_in_any_window(starts[key], 4) <= 2, key
    # The keys ran side by side, not one after another: each took about (10 - 2) / 4 s.
    assert max(max(s) for s in starts.values()) - min(min(s) for s in starts.values()) < 5


async def test_a_bad_key_is_refused_at_enqueue_and_nothing_is_sent(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a keyed task, when enqueued with an empty, non-string or over-long key (alone
    or among good messages), then InvalidArgumentsError names the task and the key, and
    the queue stays empty."""
    crm = Resource("crm-api", rate_per_s=10, per_key=KeyLimits(rate_per_s=1))

    @task(registry=registry, resource=crm, key="tenant")
    def sync_contact(tenant: Any, contact_id: int) -> None: ...

    for bad in ("", 7, "t" * 129, None):
        with pytest.raises(InvalidArgumentsError, match="'sync_contact': key argument 'tenant'"):
            sync_contact.enqueue(bad, contact_id=1)
    with pytest.raises(InvalidArgumentsError):
        queue.enqueue_many([sync_contact.message("ok", 1), sync_contact.message("", 2)])

    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_a_foreign_message_without_a_valid_key_is_dead_lettered_as_bad_arguments(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given foreign messages of a keyed task whose arguments give no valid key (an empty
    tenant, a number, a key function that fails), when drained, then each is
    dead-lettered at once as bad_arguments naming the key, and a good one runs."""
    crm = Resource("crm-api", rate_per_s=10, per_key=KeyLimits(rate_per_s=5))
    ran: list[str] = []

    @task(registry=registry, resource=crm, key=lambda order: order["tenant"])
    def place(order: dict[str, Any]) -> None:
        ran.append(order["tenant"])

    def body(task_id: str, order: dict[str, Any]) -> str:
        return json.dumps({"v": 1, "id": task_id, "task": "place", "args": [order]})

    bad = {
        body("f1", {"tenant": ""}): "key function",
        body("f2", {"tenant": 5}): "not a valid key",
        body("f3", {}): "raised KeyError",
    }
    for body in bad:
        clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=body)
    queue.enqueue(place.message({"tenant": "acme"}))

    stats = await asyncio.wait_for(drain(aws_env, registry), timeout=60)

    assert ran == ["acme"] and stats.succeeded == 1
    assert stats.rejected == 3 and stats.retried == 0
    letters = receive_all(clients, aws_env.dlq_url)
    assert sorted(m["Body"] for m in letters) == sorted(bad)
    for letter in letters:
        failure = parse_attributes(letter["MessageAttributes"])
        assert failure["reason"] == "bad_arguments"
        assert bad[letter["Body"]] in failure["error"]["message"]


async def test_the_key_is_sent_as_the_message_group_on_a_standard_queue(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a keyed task and an unkeyed one on a standard queue, when both are enqueued
    and received raw, then the keyed message carries its key as MessageGroupId (and in
    its body), and the unkeyed one has no group."""
    crm = Resource("crm-api", rate_per_s=10, per_key=KeyLimits(rate_per_s=1))

    @task(registry=registry, resource=crm, key="tenant")
    def sync_contact(tenant: str) -> None: ...

    @task(registry=registry)
    def plain() -> None: ...

    keyed_id = queue.enqueue(sync_contact.message("acme-corp"))
    queue.enqueue(plain.message())

    raw = clients.sqs.receive_message(
        QueueUrl=aws_env.queue_url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["MessageGroupId"],
    )["Messages"]
    groups = {json.loads(m["Body"])["id"]: m.get("Attributes", {}) for m in raw}
    assert groups[keyed_id].get("MessageGroupId") == "acme-corp"
    assert [a.get("MessageGroupId") for i, a in groups.items() if i != keyed_id] == [None]
    body = next(json.loads(m["Body"]) for m in raw if json.loads(m["Body"])["id"] == keyed_id)
    assert body["key"] == "acme-corp"


async def test_two_dispatchers_keep_the_global_limits_and_warn_per_key_is_per_dispatcher(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given two dispatchers draining 3 keys' tasks on a keyed resource of 10/s (burst 2,
    cap 2), when both run at once, then every task ran once, together they stay within
    the global rate and cap, and, key leases turned off, each dispatcher that saw the
    other warned (once) that per-key limits are then applied per dispatcher."""
    api = Resource(
        "keyed-shared",
        rate_per_s=10,
        burst=2,
        max_concurrency=2,
        per_key=KeyLimits(rate_per_s=10, burst=2, max_concurrency=1),
    )
    starts: list[float] = []
    ran: Counter[int] = Counter()
    running = 0
    peak = 0

    @task(registry=registry, resource=api, key="tenant")
    async def call(tenant: str, n: int) -> None:
        nonlocal running, peak
        starts.append(time.time())
        ran[n] += 1
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    queue.enqueue_many([call.message(t, i) for i in range(10) for t in ("x", "y", "z")])
    with capture_logs() as logs:
        first, second = await asyncio.wait_for(
            asyncio.gather(
                drain(aws_env, registry, throttle_horizon_s=1.0, key_leases=False),
                drain(aws_env, registry, throttle_horizon_s=1.0, key_leases=False),
            ),
            timeout=90,
        )

    assert first.succeeded + second.succeeded == 30
    assert len(ran) == 10 and set(ran.values()) == {3}
    assert peak <= 2
    assert max_in_any_window(starts, 10) <= 2
    warnings = [e for e in logs if e["event"] == "per_key_limits_per_dispatcher"]
    assert 1 <= len(warnings) <= 2
    assert {w["resource"] for w in warnings} == {"keyed-shared"}


# --- one owner per active key (key leases, on by default) ----------------------------


async def test_with_key_leases_two_dispatchers_never_run_a_key_beyond_its_cap(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given two dispatchers with key leases on (8 messages in flight each, so both hold
    some of each key), draining 2 keys of 12 tasks of 0.2 s each whose keys get a cap
    of 1, when both run at once, then no key ever runs two tasks at
    once (each key is owned by one dispatcher at a time; without the leases each
    dispatcher would apply the cap on its own), every task ran once, and once both have
    stopped no lease is left in the table and neither is a member any more."""
    api = Resource(
        "keyed-leased",
        rate_per_s=50,
        burst=5,
        per_key=KeyLimits(rate_per_s=20, burst=2, max_concurrency=1),
    )
    calls = KeyedCalls(registry, api, hold_s=0.2)
    call, peak, ran = calls.call, calls.peak, calls.ran

    queue.enqueue_many([call.message(t, i) for i in range(12) for t in ("x", "y")])
    first, second = await asyncio.wait_for(
        asyncio.gather(
            drain(aws_env, registry, max_in_flight=8),
            drain(aws_env, registry, max_in_flight=8),
        ),
        timeout=120,
    )

    assert first.succeeded + second.succeeded == 24
    assert len(ran) == 24 and set(ran.values()) == {1}
    assert peak == {"x": 1, "y": 1}
    items = clients.dynamodb.scan(TableName=aws_env.table)["Items"]
    assert [item for item in items if item["pk"]["S"].startswith("keylease#")] == []
    members = [
        name
        for item in items
        if item["pk"]["S"].startswith("keyowner#")
        for name in item
        if name.startswith("m#")
    ]
    assert members == []


class Partition:
    """Cuts one dispatcher's clients off the network (every request fails to connect),
    as when its host dies: nothing it does afterwards reaches AWS."""

    def __init__(self) -> None:
        self.cut = False

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send", self._on_send)

    def _on_send(self, **_: Any) -> None:
        if self.cut:
            raise EndpointConnectionError(endpoint_url="partitioned")


async def test_a_killed_key_owner_is_taken_over_after_its_lease_lapses(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given two dispatchers (3 s heartbeats), both members of the queue and leasing,
    that ran 12 keys' tasks, so that each holds the leases of the keys that prefer it,
    when the one holding more is killed (cut off the network, its loop cancelled: it
    gives nothing back) and 5 more tasks of each of its keys are enqueued, then the
    other runs them only once the dead one's heartbeat lapsed plus the 2 s margin
    (then alone on the queue, it says so in its heartbeat and runs every key), and no
    key ever ran two at once (their cap is 1)."""
    api = Resource("keyed-handover", rate_per_s=50, per_key=KeyLimits(max_concurrency=1))
    calls = KeyedCalls(registry, api, hold_s=0.05)
    call, starts, peak = calls.call, calls.starts, calls.peak

    keys = [f"t{i}" for i in range(12)]
    options = DispatcherOptions(key_lease_ttl_s=3.0, wait_time_s=1)
    cuts = {0: Partition(), 1: Partition()}
    async with async_clients(aws_env) as aio_0, async_clients(aws_env) as aio_1:
        pair = []
        for i, aio in enumerate((aio_0, aio_1)):
            cuts[i].attach(aio.sqs)
            cuts[i].attach(aio.dynamodb)
            pair.append(Dispatcher(aws_env, clients=aio, registry=registry, options=options))
        runs = [asyncio.ensure_future(d.run()) for d in pair]
        try:
            # Warm up until both are members that lease (the first one alone ran keys
            # unleased, then leased them once it saw the other).
            rounds = 0
            while not _both_leasing(clients, aws_env, pair):
                queue.enqueue_many([call.message(k, rounds) for k in keys])
                rounds += 1
                expected = 12 * rounds
                await until(partial(_ran, starts, expected), what="the warm-up round")
            queue.enqueue_many(
                [call.message(k, m) for m in range(rounds, rounds + 4) for k in keys]
            )
            await until(partial(_ran, starts, 12 * (rounds + 4)), what="48 more tasks")
            held = [_keys_held_by(clients, aws_env, d.id) for d in pair]
            victim = 0 if len(held[0]) >= len(held[1]) else 1
            one, two, held_by_one = pair[victim], pair[1 - victim], held[victim]
            assert held_by_one, "no dispatcher holds a key: nothing to take over"
            cuts[victim].cut = True
            killed_at = time.time()
            runs[victim].cancel()
            await asyncio.gather(runs[victim], return_exceptions=True)
            before = {k: len(starts[k]) for k in keys}
            queue.enqueue_many([call.message(k, m) for m in range(100, 105) for k in held_by_one])
            await until(
                lambda: all(len(starts[k]) == before[k] + 5 for k in held_by_one),
                what="the killed owner's keys' 5 tasks each",
            )
            key = {"pk": {"S": f"keyowner#{queue_name(aws_env.queue_url)}"}}
            members = clients.dynamodb.get_item(TableName=aws_env.table, Key=key)["Item"]
        finally:
            two.stop()
            await asyncio.wait_for(runs[1 - victim], timeout=60)
            for d in pair:
                await d.runner.aclose()

    assert max(peak.values()) == 1
    assert members[f"m#{two.id}"]["M"]["leasing"] == {"BOOL": False}  # alone, says so
    assert float(members[f"m#{one.id}"]["M"]["until"]["N"]) < killed_at + 3.0
    # Not before 1's heartbeat (renewed every second, valid 3 s) lapsed + the 2 s margin.
    assert min(starts[k][before[k]] for k in held_by_one) >= killed_at + 3.0


def _ran(starts: dict[str, list[float]], expected: int) -> bool:
    return sum(map(len, starts.values())) == expected


def _both_leasing(clients: SyncClients, settings: Settings, pair: list[Dispatcher]) -> bool:
    key = {"pk": {"S": f"keyowner#{queue_name(settings.queue_url)}"}}
    item = clients.dynamodb.get_item(TableName=settings.table, Key=key).get("Item", {})
    entries = [item.get(f"m#{d.id}", {}).get("M") for d in pair]
    return all(e is not None and e["leasing"]["BOOL"] for e in entries)


def _keys_held_by(clients: SyncClients, settings: Settings, owner: str) -> set[str]:
    prefix = "keylease#keyed-handover#"
    items = clients.dynamodb.scan(TableName=settings.table)["Items"]
    return {
        item["pk"]["S"][len(prefix) :]
        for item in items
        if item["pk"]["S"].startswith(prefix) and item["owner"]["S"] == owner
    }
