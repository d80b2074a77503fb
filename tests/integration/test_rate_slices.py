"""A keyed resource's rate slices, over HTTP to the emulator: several dispatchers'
slices of one global rate in one item, without the loop."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from dispatch import KeyLimits, Resource
from dispatch.core.config import Settings
from dispatch.store.aws import async_clients
from dispatch.throttle.shared import _Background
from dispatch.throttle.slices import MARGIN_S, SLICE_TTL_S, RateSlices, divide
from tests.integration.test_shared_throttle import worst_excess

# Start windows against the global bound: on one xdist worker with the other timing tests.
pytestmark = pytest.mark.xdist_group("timing")

EPSILON = 1e-6
PER_KEY = KeyLimits(rate_per_s=1, burst=1, max_concurrency=1)


class Clock:
    """A clock the test moves by hand (epoch seconds, as the slices' own)."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def slices_of(
    aws_env: Settings, resource: Resource, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[Callable[[str], RateSlices], _Background]]:
    """A factory of dispatchers' slices of ``resource`` on the test's table."""
    async with async_clients(aws_env) as clients:
        background = _Background()

        def make(owner: str) -> RateSlices:
            return RateSlices(
                resource,
                client=clients.dynamodb,
                table=aws_env.table,
                background=background,
                owner=owner,
                clock=clock,
            )

        try:
            yield make, background
        finally:
            await background.aclose()


async def settle(background: _Background) -> None:
    """Let every refresh started so far finish."""
    while background._tasks:
        await asyncio.gather(*background._tasks)


def test_the_rate_is_divided_max_min_fairly_and_spare_follows_the_wants() -> None:
    """Given wants of 5, 50 and 50 for 40/s, then the smallest gets all it wants and
    the others share the rest equally; given wants adding up to less than the rate,
    each gets its want plus the spare in proportion."""
    assert divide(40, {"a": 5, "b": 50, "c": 50}) == {"a": 5, "b": 17.5, "c": 17.5}
    assert divide(40, {"a": 5, "b": 15}) == {"a": 10, "b": 30}
    assert divide(40, {"a": 0, "b": 0}) == {"a": 20, "b": 20}


async def test_two_dispatchers_converge_on_equal_slices_and_never_hold_more_than_the_rate(
    aws_env: Settings,
) -> None:
    """Given A alone (it holds the whole 40/s, burst 8), when B starts wanting as much,
    then B gets nothing until A's renewal (a third of its hold left) has shrunk A's
    slice to half, then half; at no step do the two slices add up to more than the
    rate or the burst."""
    clock = Clock()
    resource = Resource("sliced-even", rate_per_s=40, burst=8, per_key=PER_KEY)
    async with slices_of(aws_env, resource, clock) as (make, background):
        a, b = make("a"), make("b")
        steps: list[tuple[tuple[float, float], tuple[float, float]]] = []

        async def ask(source: RateSlices) -> None:
            source.try_take(waiting=50)
            await settle(background)
            steps.append((a.slice, b.slice))

        await ask(a)
        await ask(b)
        clock.now += SLICE_TTL_S * 2 / 3
        await ask(a)
        await ask(b)

    assert steps[0] == ((40, 8), (0, 0))
    assert steps[1] == ((40, 8), (0, 0))  # B may not grow into a slice A holds
    assert steps[-1] == ((20, 4), (20, 4))
    assert all(x[0] + y[0] <= 40 + EPSILON and x[1] + y[1] <= 8 + EPSILON for x, y in steps)


async def test_a_dispatcher_that_wants_little_gets_it_and_the_busy_one_the_rest(
    aws_env: Settings,
) -> None:
    """Given A holding the whole 40/s for 50 waiting tasks, when B has 3 waiting, then
    after both renewed B holds 3/s and A 37/s, and the burst of 8 is split so that
    each has a whole token and the rest follows the rates."""
    clock = Clock()
    resource = Resource("sliced-uneven", rate_per_s=40, burst=8, per_key=PER_KEY)
    async with slices_of(aws_env, resource, clock) as (make, background):
        a, b = make("a"), make("b")
        a.try_take(waiting=50)
        await settle(background)
        b.try_take(waiting=3)
        await settle(background)
        clock.now += SLICE_TTL_S * 2 / 3
        a.try_take(waiting=50)
        await settle(background)
        b.try_take(waiting=3)
        await settle(background)

    assert a.slice == pytest.approx((37, 1 + 6 * 37 / 40))
    assert b.slice == pytest.approx((3, 1 + 6 * 3 / 40))


async def test_a_slice_given_back_is_taken_at_the_next_refresh(aws_env: Settings) -> None:
    """Given A holding the whole rate, when A stops (gives its slice back), then B's
    next refresh gets the whole rate, without waiting for A's slice to lapse."""
    clock = Clock()
    resource = Resource("sliced-handover", rate_per_s=40, burst=8, per_key=PER_KEY)
    async with slices_of(aws_env, resource, clock) as (make, background):
        a, b = make("a"), make("b")
        a.try_take(waiting=50)
        await settle(background)
        b.try_take(waiting=50)
        await settle(background)
        assert b.slice == (0, 0)
        await a.give_back()
        clock.now += 1.0
        b.try_take(waiting=50)
        await settle(background)

    assert a.slice == (0, 0)
    assert b.slice == (40, 8)


async def test_a_killed_dispatchers_slice_counts_until_it_lapses_past_the_margin(
    aws_env: Settings,
) -> None:
    """Given A holding the whole rate and then killed (it never writes again), then B
    gets nothing while A's slice is held or lapsed less than the margin ago (clocks
    may differ), and the whole rate once it lapsed longer ago."""
    clock = Clock()
    resource = Resource("sliced-lapse", rate_per_s=40, burst=8, per_key=PER_KEY)
    async with slices_of(aws_env, resource, clock) as (make, background):
        a, b = make("a"), make("b")
        a.try_take(waiting=50)
        await settle(background)
        seen: list[tuple[float, float]] = []
        for moved in (1.0, SLICE_TTL_S + MARGIN_S - 1.0 - 0.1, 1.0):
            clock.now += moved
            b.try_take(waiting=50)
            await settle(background)
            seen.append(b.slice)

    assert seen == [(0, 0), (0, 0), (40, 8)]


async def take_greedily(source: RateSlices, until: float, taken: list[float]) -> None:
    """One eager consumer: takes every token the moment its slice has one."""
    while time.time() < until:
        wait_s = source.try_take(waiting=20)
        if wait_s == 0.0:
            taken.append(time.time())
        else:
            await asyncio.sleep(min(wait_s, 0.02) * random.uniform(0.5, 1.5))
        source.maintain()


async def test_four_dispatchers_slicing_one_rate_stay_within_rate_and_burst(
    aws_env: Settings,
) -> None:
    """Given four dispatchers' slices of one keyed resource (40/s, burst 8), each with
    eager consumers, when they take tokens for 4 s while their slices shift, then in
    no window do more than 40 * window + 8 tokens go out in total, most of the rate
    is used, and each slice costs a few requests a second, not one per task."""
    resource = Resource("sliced-greedy", rate_per_s=40, burst=8, per_key=PER_KEY)
    taken: list[float] = []
    async with slices_of(aws_env, resource) as (make, _):
        sources = [make(f"dispatcher-{n}") for n in range(4)]
        until = time.time() + 4.0
        await asyncio.gather(
            *(take_greedily(source, until, taken) for source in sources for _ in range(3))
        )
        for source in sources:
            await source.give_back()

    assert worst_excess(taken, 40) <= 8 + EPSILON
    assert len(taken) >= 0.75 * 40 * 4.0
    # A refresh a second, sooner while its fair part grows, and a retry per
    # conflict among the four writers: a few a second, not one per task.
    assert all(source.requests <= 5 * 4 for source in sources)
