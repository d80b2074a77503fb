"""The shared bucket and slots themselves, over HTTP to the emulator: several
dispatchers' token sources and slot holders on one item, without the loop."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from dispatch.core.config import Settings
from dispatch.store.aws import async_clients
from dispatch.throttle.limits import Permit, Resource
from dispatch.throttle.shared import Coordinator, SharedSlots, SharedTokenSource, _Background

# Timing-sensitive (start windows against a bucket's bound) or CPU-heavy (a browser):
# `make test` (--dist loadgroup) runs these modules on one worker, never side by side.
pytestmark = pytest.mark.xdist_group("timing")

# A token is taken and its time read in the same step: no scheduling jitter to allow.
EPSILON = 1e-6


def worst_excess(times: list[float], rate: float) -> float:
    """The largest ``count - rate * window`` over every window of the times."""
    ordered = sorted(times)
    worst = 0.0
    for i, start in enumerate(ordered):
        for j in range(i, len(ordered)):
            worst = max(worst, (j - i + 1) - rate * (ordered[j] - start))
    return worst


async def take_greedily(source: SharedTokenSource, until: float, taken: list[float]) -> None:
    """One eager consumer: takes every token the moment it is valid."""
    while time.time() < until:
        wait_s = source.try_take()
        if wait_s == 0.0:
            taken.append(time.time())
        else:
            await asyncio.sleep(min(wait_s, 0.02) * random.uniform(0.5, 1.5))


async def test_four_dispatchers_leasing_one_bucket_stay_within_rate_and_burst(
    aws_env: Settings,
) -> None:
    """Given four token sources (four dispatchers) leasing from one bucket of 40/s with
    a burst of 8, each with eager consumers, when they take tokens for 3 s, then in no
    window do more than 40 * window + 8 tokens go out in total, and the bucket is kept
    busy (at least 85 % of the rate is granted)."""
    resource = Resource("shared-bucket", rate_per_s=40, burst=8)
    taken: list[float] = []
    async with async_clients(aws_env) as clients:
        background = _Background()
        sources = [
            SharedTokenSource(
                resource,
                client=clients.dynamodb,
                table=aws_env.table,
                background=background,
                owner=f"dispatcher-{n}",
                max_horizon_s=1.0,
            )
            for n in range(4)
        ]
        # Two of them as if their event loops lagged: their leases are stamped well
        # ahead of the others' (the round trip they expect is long).
        for lagging in sources[:2]:
            lagging._rtt_s = 0.25
        started = time.time()
        until = started + 3.0
        await asyncio.gather(
            *(take_greedily(source, until, taken) for source in sources for _ in range(4))
        )
        await background.aclose()

    assert worst_excess(taken, 40) <= 8 + EPSILON
    assert len(taken) >= 0.85 * 40 * 3.0
    assert all(source.requests < len(taken) / 4 for source in sources)  # leases, not per task


async def test_a_dispatchers_own_lower_rate_never_holds_back_its_recovery(
    aws_env: Settings,
) -> None:
    """Given one dispatcher whose resource was slowed by backpressure (its lower rate
    written to the bucket item by its own leases), when its tasks then succeed, then its
    rate recovers above the rate it wrote: it never adopts its own earlier rate as if
    another dispatcher had slowed the resource down."""
    resource = Resource("recovering-api", rate_per_s=100, burst=10)
    async with async_clients(aws_env) as clients:
        coordinator = Coordinator(clients.dynamodb, aws_env.table, lease_horizon_s=0.5)
        throttle = coordinator.for_resource(resource)
        adopted: list[float] = []
        original_adopt = throttle.adopt_rate

        def spy(rate_per_s: float) -> bool:
            adopted.append(rate_per_s)
            return original_adopt(rate_per_s)

        throttle.adopt_rate = spy  # type: ignore[method-assign]
        assert throttle.on_backpressure()
        lowered = throttle.effective_rate_per_s
        assert lowered is not None and lowered < 100
        deadline = time.monotonic() + 20
        while (throttle.effective_rate_per_s or 0) <= lowered + 5:
            assert time.monotonic() < deadline, "the rate never recovered"
            answer = throttle.try_start()
            if isinstance(answer, Permit):
                answer.release()
                throttle.on_success()
            else:
                await asyncio.sleep(answer)
        await coordinator.aclose()

    assert adopted == []


async def test_another_dispatchers_lower_rate_is_adopted(aws_env: Settings) -> None:
    """Given dispatcher A slowed down by backpressure and leasing at its lower rate,
    when dispatcher B leases from the same bucket, then B adopts A's lower rate."""
    resource = Resource("slowed-api", rate_per_s=50, burst=5)
    async with async_clients(aws_env) as clients:
        a = Coordinator(clients.dynamodb, aws_env.table, owner="a", lease_horizon_s=0.5)
        b = Coordinator(clients.dynamodb, aws_env.table, owner="b", lease_horizon_s=0.5)
        throttle_a, throttle_b = a.for_resource(resource), b.for_resource(resource)
        assert throttle_a.on_backpressure()
        slowed = throttle_a.effective_rate_per_s
        for throttle in (throttle_a, throttle_b):
            deadline = time.monotonic() + 10
            while not isinstance(answer := throttle.try_start(), Permit):
                assert time.monotonic() < deadline, "no token was ever granted"
                await asyncio.sleep(answer)
            answer.release()
        await a.aclose()
        await b.aclose()

    assert throttle_b.effective_rate_per_s == slowed


async def test_a_holder_above_its_fair_share_hands_slots_over_as_tasks_end(
    aws_env: Settings,
) -> None:
    """Given dispatcher A holding all 4 slots of a resource and dispatcher B waiting for
    one, when A learns of B (its renewal) and two of its tasks end, then those two slots
    go back to the pool instead of staying with A, and B gets them."""
    resource = Resource("fair-pool", max_concurrency=4)
    async with async_clients(aws_env) as clients:
        background = _Background()

        def holder(owner: str) -> SharedSlots:
            return SharedSlots(
                resource,
                client=clients.dynamodb,
                table=aws_env.table,
                owner=owner,
                background=background,
            )

        a, b = holder("a"), holder("b")

        async def acquire(slots: SharedSlots, n: int) -> None:
            deadline = time.monotonic() + 10
            got = 0
            while got < n:
                assert time.monotonic() < deadline, f"{n} slots never came"
                if slots.try_acquire():
                    got += 1
                else:
                    await asyncio.sleep(0.02)

        await acquire(a, 4)
        assert not b.try_acquire()  # refused at the cap: B now waits
        await asyncio.gather(*background._tasks)
        await a.maintain()  # A's renewal tells it someone waits: fair share 2
        a.release()
        a.release()
        await asyncio.gather(*background._tasks)
        await acquire(b, 2)
        await background.aclose()

        assert (a.granted, a.in_flight) == (2, 2)
        assert (b.granted, b.in_flight) == (2, 2)


async def test_an_idle_holder_hands_its_slots_to_a_waiting_dispatcher_at_once(
    aws_env: Settings,
) -> None:
    """Given A holding 2 idle slots (its work is done) while B, holding the other 2,
    waits for more, when A is told it is idle, then it gives them back without
    waiting for them to age a second, and B takes them: at the end of a backlog a
    second of idle slots is a second lost."""
    resource = Resource("handover-pool", max_concurrency=4)
    async with async_clients(aws_env) as clients:
        background = _Background()
        a, b = _holders(resource, clients.dynamodb, aws_env.table, background)
        await _acquire(a, 2, background)
        await _acquire(b, 2, background)
        await _b_waits_and_a_learns_it(a, b, background)
        a.release()
        a.release()
        a.idle()
        await asyncio.gather(*background._tasks)
        await _acquire(b, 2, background)
        await background.aclose()

    assert (a.granted, b.granted) == (0, 4)


async def test_tokens_given_back_reach_the_next_lease_and_never_get_overwritten(
    aws_env: Settings,
) -> None:
    """Given A holding two seconds of a 10/s bucket for tasks it no longer has, when A
    goes idle while B leases from the same bucket, then the tokens go back: a
    dispatcher leasing next (C) gets a whole second's worth at once instead of
    waiting for A's reservation to pass, and the give-back moves the item's version
    on, so a lease conditional on the version before it (B's) fails and reads them
    instead of overwriting them with a level computed without them."""
    resource = Resource("handover-bucket", rate_per_s=10, burst=2)
    async with async_clients(aws_env) as clients:
        background = _Background()

        def source(owner: str) -> SharedTokenSource:
            return SharedTokenSource(
                resource,
                client=clients.dynamodb,
                table=aws_env.table,
                background=background,
                owner=owner,
                max_horizon_s=2.5,
            )

        a, c = source("a"), source("c")
        assert a.try_take(waiting=20) > 0  # A leases for 20 waiting tasks: 2 s of tokens
        await asyncio.gather(*background._tasks)
        key = {"pk": {"S": "bucket#handover-bucket"}}
        before = (await clients.dynamodb.get_item(TableName=aws_env.table, Key=key))["Item"]
        a._others_seen_at = time.time()  # A has seen another dispatcher lease (a conflict)
        a.idle()
        await asyncio.gather(*background._tasks)
        stale_lease_refused = False
        try:
            await clients.dynamodb.update_item(
                TableName=aws_env.table,
                Key=key,
                UpdateExpression="SET #tokens = :zero",
                ConditionExpression="#updated = :seen",
                ExpressionAttributeNames={"#tokens": "tokens", "#updated": "updated_at"},
                ExpressionAttributeValues={":zero": {"N": "0"}, ":seen": before["updated_at"]},
            )
        except clients.dynamodb.exceptions.ConditionalCheckFailedException:
            stale_lease_refused = True
        started = time.time()
        c.try_take(waiting=20)
        await asyncio.gather(*background._tasks)
        await background.aclose()

    assert stale_lease_refused
    assert sum(1 for t in c._valid if t <= started + 1.0) >= 8


def _holders(
    resource: Resource, dynamodb: Any, table: str, background: _Background
) -> tuple[SharedSlots, SharedSlots]:
    """Dispatchers ``a`` and ``b`` holding slots of ``resource``."""
    a, b = (
        SharedSlots(resource, client=dynamodb, table=table, owner=owner, background=background)
        for owner in ("a", "b")
    )
    return a, b


async def _b_waits_and_a_learns_it(a: SharedSlots, b: SharedSlots, background: _Background) -> None:
    """B is refused at the cap (it waits); A's renewal tells A so: its fair share is set."""
    assert not b.try_acquire()
    await asyncio.gather(*background._tasks)
    await a.maintain()


async def _acquire(slots: SharedSlots, n: int, background: _Background) -> None:
    deadline = time.monotonic() + 10
    got = 0
    while got < n:
        assert time.monotonic() < deadline, f"{n} slots never came"
        if slots.try_acquire():
            got += 1
        else:
            await asyncio.gather(*background._tasks)
            await asyncio.sleep(0.02)
