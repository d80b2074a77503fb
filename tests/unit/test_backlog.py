"""A queued backlog against a throttled resource: deferral until the message's turn, recall
into a waiting room that runs low, and everything handed back when the dispatcher stops.

On the in-memory fakes (tests/unit/loop_fakes.py) with a manual clock: every figure is
the throttle's own schedule, no wall clock. bench/throttle (the backlog section)
measures the same over HTTP with real dispatcher processes.
"""

from __future__ import annotations

import asyncio

import pytest

from dispatch.core.resource import KeyLimits, Resource
from dispatch.loop.deferrals import RECALL_MARGIN_S
from dispatch.loop.gate import RECALL_QUIET_S
from dispatch.tasks.registry import Registry, task
from dispatch.throttle.shared import SharedTokenSource
from tests.unit.loop_fakes import Loop, ManualClock, delivery_of, until

RATE = 10.0
HORIZON_S = 5.0
ROOM = 40  # 10/s x 80 % of a 5 s horizon


@pytest.fixture
def registry() -> Registry:
    """A fresh registry per test."""
    return Registry()


def _backlog(registry: Registry, count: int) -> tuple[Loop, Resource, list[str]]:
    api = Resource("partner-api", rate_per_s=RATE, burst=2)

    @task(registry=registry, resource=api)
    def call(n: int) -> None: ...

    loop = Loop(registry, horizon_s=HORIZON_S)
    receipts = [f"receipt-{n}" for n in range(1, count + 1)]
    loop.deliveries = [delivery_of(call.message(n=n), n=n) for n in range(1, count + 1)]  # type: ignore[attr-defined]
    return loop, api, receipts


async def test_backlog_is_hidden_until_its_turn_not_the_whole_line(registry: Registry) -> None:
    """Given a full waiting room (40 tasks at 10/s), each message beyond it is hidden until
    its own turn comes near: the first for 2 s (half a room of work ahead of it), later
    ones a little longer, and every one back before its token is due; never all for
    the 4 s the whole line takes, rounded up."""
    loop, api, receipts = _backlog(registry, 25)
    with loop.gate.queued(api.name, ROOM):
        for delivery in loop.deliveries:  # type: ignore[attr-defined]
            await loop.pipeline.process(delivery)
        hidden = [loop.sqs.hidden[r] for r in receipts]
    await loop.aclose()

    assert hidden[0] == 2  # (40 ahead - 20) / 10
    assert hidden == sorted(hidden)  # the line keeps its order
    for k, seconds in enumerate(hidden):
        token_due_s = (ROOM + k) / RATE  # the k-th deferred message's token
        # back before its token, by no more than half a room of work (whole seconds)
        assert token_due_s - ROOM / 2 / RATE - 1.0 <= seconds <= token_due_s - 1.0, k
    assert loop.stats.deferred == 25


async def test_a_waiting_room_that_runs_low_recalls_the_earliest_deferred(
    registry: Registry,
) -> None:
    """Given 15 messages deferred behind a full room and no more of that backlog
    received for a second (the queue no longer feeds it), when the room empties (the
    tasks started, or were given to another dispatcher), the ten due first are made
    visible at once (one batched request), the rest stay hidden until recalled or due."""
    loop, api, receipts = _backlog(registry, 15)
    with loop.gate.queued(api.name, ROOM):
        for delivery in loop.deliveries:  # type: ignore[attr-defined]
            await loop.pipeline.process(delivery)
        assert isinstance(loop.clock, ManualClock)
        loop.clock.advance(RECALL_QUIET_S)
    await until(lambda: loop.stats.recalled == 10)

    assert [loop.sqs.hidden[r] for r in receipts[:10]] == [0] * 10
    assert all(loop.sqs.hidden[r] > 0 for r in receipts[10:])
    await loop.aclose()


async def test_a_stopping_dispatcher_makes_what_it_deferred_visible(registry: Registry) -> None:
    """Given messages deferred behind a full room, a dispatcher that stops (a Lambda
    deadline, SIGTERM) makes them visible now for the dispatchers that go on, except
    one so close to its due time that its receipt may be stale by the time the request
    lands: those come back by themselves."""
    loop, api, receipts = _backlog(registry, 12)
    with loop.gate.queued(api.name, ROOM):
        for delivery in loop.deliveries:  # type: ignore[attr-defined]
            await loop.pipeline.process(delivery)
        hidden = [loop.sqs.hidden[r] for r in receipts]
        assert hidden == [2] * 10 + [3] * 2
        assert isinstance(loop.clock, ManualClock)
        loop.clock.advance(2 - RECALL_MARGIN_S / 2)  # the 2 s ones are nearly due
        loop.stopping.set()
    await loop.gate.aclose()
    await loop.aclose()

    assert [loop.sqs.hidden[r] for r in receipts] == [2] * 10 + [0] * 2
    assert loop.stats.recalled == 2


async def test_no_recall_while_the_queue_still_brings_the_backlog(registry: Registry) -> None:
    """Given messages deferred behind a full room a moment ago (receives still bring
    that resource's backlog: SQS holds more of it, visible), when the room empties,
    nothing is recalled: the queue feeds the resource, a recall would only cost a
    request and a receive."""
    loop, api, receipts = _backlog(registry, 15)
    with loop.gate.queued(api.name, ROOM):
        for delivery in loop.deliveries:  # type: ignore[attr-defined]
            await loop.pipeline.process(delivery)
    for _ in range(10):
        await asyncio.sleep(0)
    await loop.aclose()

    assert all(loop.sqs.hidden[r] > 0 for r in receipts)
    assert loop.stats.recalled == 0


async def test_a_message_the_throttle_cannot_start_soon_is_not_recalled(
    registry: Registry,
) -> None:
    """Given 0.1/s (the next token 10 s away), an empty waiting room does not recall the
    deferred message: it would only wait past the horizon and be deferred again."""
    slow = Resource("slow-api", rate_per_s=0.1, burst=1)

    @task(registry=registry, resource=slow)
    def call(n: int) -> None: ...

    loop = Loop(registry, horizon_s=HORIZON_S)
    await loop.pipeline.process(delivery_of(call.message(n=1), n=1))
    await loop.pipeline.process(delivery_of(call.message(n=2), n=2))
    for _ in range(10):
        await asyncio.sleep(0)
    await loop.aclose()

    assert loop.sqs.hidden == {"receipt-2": 10}
    assert loop.stats.recalled == 0


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "capacity"),
    [(10.0, 2, 1.6), (50.0, 10, 8.0), (200.0, 10, 2.0), (0.5, 1, 1.0)],
)
def test_the_shared_bucket_keeps_the_burst(rate_per_s: float, burst: int, capacity: float) -> None:
    """The shared bucket keeps ``rate x 40 ms`` of its burst for lateness and jitter, and
    no more: at 10/s a burst of 2 keeps 1.6 tokens (the second start 40 ms after the
    first), where rounding down to whole tokens used to keep one (100 ms later)."""
    resource = Resource("api", rate_per_s=rate_per_s, burst=burst)
    source = SharedTokenSource(
        resource,
        client=None,  # type: ignore[arg-type]  # no lease is made here
        table="t",
        background=None,  # type: ignore[arg-type]
        owner="me",
    )
    assert source.capacity == pytest.approx(capacity)


async def test_a_receive_lines_up_before_the_throttle_is_asked(registry: Registry) -> None:
    """Given one receive of 6 lean tasks (no claim to wait for) and an empty waiting
    room, the throttle is first asked with all 6 in line, so a shared bucket leases the
    burst for them at once, not one token for the first while the rest are still being
    admitted (their burst then came a lease interval later)."""
    api = Resource("partner-api", rate_per_s=RATE, burst=6)

    @task(registry=registry, resource=api, track_state=False)
    def call(n: int) -> None: ...

    loop = Loop(registry, horizon_s=HORIZON_S)
    throttle = loop.gate.throttle(api)
    asked: list[int] = []
    try_start = throttle.try_start

    def recording(waiting: int = 1) -> object:
        asked.append(waiting)
        return try_start(waiting)

    throttle.try_start = recording  # type: ignore[method-assign,assignment]
    deliveries = [delivery_of(call.message(n=n), n=n) for n in range(1, 7)]  # type: ignore[attr-defined]
    await asyncio.gather(*(loop.pipeline.process(d) for d in deliveries))
    await loop.aclose()

    assert asked[0] == 6
    assert loop.stats.deferred == 0  # a burst of 6: every one started


async def test_a_keyed_message_is_hidden_for_its_keys_turn_not_behind_a_flood(
    registry: Registry,
) -> None:
    """Given a keyed resource (10/s, each key 1/s) whose room holds 60 of key a's
    messages (the resource's line: 4.4 s of work beyond half a room), when key b's 6
    messages arrive behind b's full room of 4, then they are hidden for b's own turns
    (due 3 s out, then a second more each: half b's room, then b's rate), not for the
    resource's line: keys start round robin, so a's messages are not ahead of b's
    (hidden for the line, a neighbour's last tasks came long after a flood's)."""
    api = Resource("keyed-api", rate_per_s=RATE, burst=2, per_key=KeyLimits(rate_per_s=1, burst=1))

    @task(registry=registry, resource=api, key="tenant")
    def call(tenant: str, n: int) -> None: ...

    loop = Loop(registry, horizon_s=HORIZON_S)
    later = [delivery_of(call.message(tenant="b", n=n), n=n) for n in range(6)]  # type: ignore[attr-defined]
    throttle = loop.gate.throttle(api)
    assert loop.gate.keyed_line(throttle) is not None
    with loop.gate.queued(api.name, 60, key="a"), loop.gate.queued(api.name, 4, key="b"):
        line_s = loop.gate.turn_s(throttle)
        for delivery in later:
            await loop.pipeline.process(delivery)
        hidden_b = [loop.sqs.hidden[d.receipt] for d in later]
    await loop.aclose()

    assert line_s == pytest.approx((64 - ROOM / 2) / RATE)
    # Due 3, 4, ... 8 s out; hidden for whole seconds never past due (rounded down).
    assert hidden_b == [3, 3, 4, 5, 6, 7]
