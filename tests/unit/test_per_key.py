"""Per-key limits without AWS: declaring them, computing and checking keys, the per-key
buckets under a fake clock, and the fair line that starts keys round robin."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from dispatch import KeyLimits, Resource, task
from dispatch.core.config import Settings
from dispatch.core.deadletter import Reason
from dispatch.core.delivery import Delivery
from dispatch.core.envelope import MessageOptions, decode
from dispatch.core.errors import ConfigurationError, InvalidArgumentsError, TaskDefinitionError
from dispatch.loop.admission import Admitted, Reject, admit
from dispatch.loop.fairness import KeyedLine
from dispatch.producer.enqueue import _entry
from dispatch.tasks.registry import Registry
from dispatch.throttle.limits import (
    CONCURRENCY_RETRY_HINT_S,
    START_JITTER_S,
    Permit,
    ResourceThrottle,
)
from dispatch.throttle.per_key import MAX_SPACING_SHARE, KeyLimiter

CRM = Resource(
    "crm-api",
    rate_per_s=100,
    burst=20,
    max_concurrency=40,
    per_key=KeyLimits(rate_per_s=5, burst=2, max_concurrency=2),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> Registry:
    return Registry()


# --- declaring ---------------------------------------------------------------------------


def test_key_limits_are_validated_naming_the_field() -> None:
    """Given bad per-key values, when declared, then ConfigurationError names the field;
    a key limit wider than the resource's is refused too."""
    with pytest.raises(ConfigurationError, match="KeyLimits: rate_per_s"):
        KeyLimits(rate_per_s=0)
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        KeyLimits()
    with pytest.raises(ConfigurationError, match="burst needs rate_per_s"):
        KeyLimits(burst=2, max_concurrency=1)
    with pytest.raises(ConfigurationError, match="per_key rate_per_s=20 exceeds"):
        Resource("r", rate_per_s=10, per_key=KeyLimits(rate_per_s=20))
    assert KeyLimits(rate_per_s=2.5).burst == 3


def test_key_needs_a_keyed_resource_and_a_keyed_resource_needs_a_key(registry: Registry) -> None:
    """Given key= on a task whose resource has no per_key (or per_key without key=, or a
    key that is not a parameter), when declared, then TaskDefinitionError names both."""
    plain = Resource("plain", rate_per_s=1)
    with pytest.raises(TaskDefinitionError, match=r"key='tenant'.*resource 'plain' without"):

        @task(registry=registry, resource=plain, key="tenant")
        def a(tenant: str) -> None: ...

    with pytest.raises(TaskDefinitionError, match=r"resource 'crm-api' has per_key.*needs key="):

        @task(registry=registry, resource=CRM)
        def b(tenant: str) -> None: ...

    with pytest.raises(TaskDefinitionError, match=r"key='tenant' is not a named parameter of c"):

        @task(registry=registry, resource=CRM, key="tenant")
        def c(customer: str) -> None: ...

    assert len(registry) == 0


# --- computing and checking keys at enqueue ---------------------------------------------


def test_the_key_is_computed_at_enqueue_and_carried_in_the_envelope(registry: Registry) -> None:
    """Given a task keyed by an argument and one keyed by a callable, when messages are
    built, then the envelope carries the key, and it survives the wire."""

    @task(registry=registry, resource=CRM, key="tenant")
    async def sync_contact(tenant: str, contact_id: int) -> None: ...

    @task(registry=registry, resource=CRM, key=lambda order: f"t-{order['tenant']}")
    def by_fn(order: dict[str, Any]) -> None: ...

    message = sync_contact.message("acme", contact_id=7)
    assert message.envelope.key == "acme"
    assert json.loads(message.body)["key"] == "acme"
    assert decode(message.body).key == "acme"
    assert by_fn.message({"tenant": "x"}).envelope.key == "t-x"
    old = json.dumps({"v": 1, "id": "i", "task": "sync_contact", "args": ["a", 1]})
    assert decode(old).key is None  # an old message without the field still reads


@pytest.mark.parametrize(
    ("tenant", "why"),
    [
        (None, "must be a string of 1 to 128 characters"),
        (42, "must be a string of 1 to 128 characters"),
        ("", "must be a string of 1 to 128 characters"),
        ("x" * 129, "must be a string of 1 to 128 characters"),
        ("ümlaut", "ASCII letters, digits and punctuation"),
        ("with space", "ASCII letters, digits and punctuation"),
    ],
)
def test_a_bad_key_is_refused_at_enqueue_naming_task_key_and_why(
    registry: Registry, tenant: Any, why: str
) -> None:
    """Given a keyed task, when a call's key is missing, not a string, empty, too long
    or not printable ASCII, then InvalidArgumentsError names the task, the key and why."""

    @task(registry=registry, resource=CRM, key="tenant")
    def sync_contact(tenant: Any) -> None: ...

    with pytest.raises(InvalidArgumentsError, match=r"task 'sync_contact': key argument 'tenant'"):
        sync_contact.message(tenant)
    with pytest.raises(InvalidArgumentsError) as caught:
        sync_contact.message(tenant)
    assert why in str(caught.value)
    assert caught.value.task == "sync_contact"


def test_a_key_function_that_fails_is_refused_at_enqueue(registry: Registry) -> None:
    """Given a key callable that raises, when a message is built, then the error names it."""

    @task(registry=registry, resource=CRM, key=lambda order: order["tenant"])
    def place(order: dict[str, Any]) -> None: ...

    with pytest.raises(InvalidArgumentsError, match=r"key function .* raised KeyError"):
        place.message({})


def test_a_foreign_message_without_a_valid_key_is_rejected_as_bad_arguments(
    registry: Registry,
) -> None:
    """Given a keyed task, when a foreign message's arguments give no valid key, then
    admission rejects it as bad_arguments naming the key; a good one is admitted with it."""

    @task(registry=registry, resource=CRM, key="tenant")
    def sync_contact(tenant: Any) -> None: ...

    def delivery(tenant: Any) -> Delivery:
        body = json.dumps({"v": 1, "id": "f1", "task": "sync_contact", "args": [tenant]})
        return Delivery(receipt="r", message_id="m", body=body)

    rejected = admit(delivery(""), registry=registry, signing_keys=(), now=0.0)
    assert isinstance(rejected, Reject) and rejected.reason is Reason.BAD_ARGUMENTS
    assert "key argument 'tenant'" in str(rejected.error)
    admitted = admit(delivery("acme"), registry=registry, signing_keys=(), now=0.0)
    assert isinstance(admitted, Admitted) and admitted.key == "acme"


def test_the_key_is_the_message_group_on_a_standard_queue_only(registry: Registry) -> None:
    """Given a keyed message, when its SendMessageBatch entry is made, then a standard
    queue gets the key as MessageGroupId and a FIFO queue keeps its group."""

    @task(registry=registry, resource=CRM, key="tenant")
    def sync_contact(tenant: str) -> None: ...

    standard = Settings(queue_url="http://x/q", dlq_url="http://x/d", table="t")
    fifo = Settings(queue_url="http://x/q.fifo", dlq_url="http://x/d.fifo", table="t")
    message = sync_contact.message("acme")
    assert _entry(standard, message, 0)["MessageGroupId"] == "acme"
    assert _entry(fifo, message, 0)["MessageGroupId"] == "default"
    grouped = sync_contact.with_options(group="g1").message("acme")
    assert _entry(fifo, grouped, 0)["MessageGroupId"] == "g1"
    assert MessageOptions().group is None


# --- the per-key buckets (fake clock) ----------------------------------------------------


def test_each_key_has_its_own_cap_and_bucket() -> None:
    """Given per-key limits of 1/s, burst 2, cap 2, when key a starts twice, then a waits
    (its cap, then its rate) while key b may start at once. The bucket keeps the 20 ms
    start margin out of its burst: the second start of the burst comes 20 ms after the
    first."""
    clock = FakeClock()
    keys = KeyLimiter(KeyLimits(rate_per_s=1, burst=2, max_concurrency=2), clock=clock)
    keys.start("a")
    assert keys.wait_s("a") == pytest.approx(0.02)
    clock.now += 0.02
    keys.start("a")
    assert keys.wait_s("a") == CONCURRENCY_RETRY_HINT_S
    assert keys.wait_s("b") == 0.0
    keys.release("a")
    assert keys.wait_s("a") == pytest.approx(1.0)  # its bucket is empty: 1 s to a token
    clock.now += 1.0
    assert keys.wait_s("a") == 0.0


def test_idle_keys_are_forgotten() -> None:
    """Given 5,000 keys that each started one task, when they end and their buckets
    refill, then their state is dropped (memory follows active keys only)."""
    clock = FakeClock()
    keys = KeyLimiter(KeyLimits(rate_per_s=10, burst=1, max_concurrency=1), clock=clock)
    for i in range(5000):
        keys.start(f"k{i}")
    keys.release("k0")
    assert len(keys) == 5000
    for i in range(1, 5000):
        keys.release(f"k{i}")
    clock.now += 0.05
    assert keys.forget_idle() == 0  # nothing held, but no bucket has refilled yet
    clock.now += 1.0
    keys.start("new")  # at most once a second, a start or a release sweeps
    assert len(keys) == 1  # refilled and nothing held: the state a new key starts with


@settings(max_examples=50, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(min_value=1, max_value=5),
    steps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_a_key_never_starts_more_than_rate_times_window_plus_burst(
    rate: float, burst: int, steps: list[float]
) -> None:
    """Given a key asked at arbitrary times, when it starts whenever it may, then in any
    window w it started at most rate * w + burst tasks."""
    clock = FakeClock()
    keys = KeyLimiter(KeyLimits(rate_per_s=rate, burst=burst), clock=clock)
    starts: list[float] = []
    for step in steps:
        clock.now += step
        if keys.wait_s("k") == 0.0:
            keys.start("k")
            starts.append(clock.now)
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= rate * (starts[j] - first) + burst + 1e-6


@settings(max_examples=80, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(min_value=1, max_value=5),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.7]), st.floats(min_value=0, max_value=1)),
        min_size=1,
        max_size=100,
    ),
)
def test_a_key_stays_within_its_bound_when_starts_reach_the_resource_late(
    rate: float, burst: int, steps: list[tuple[float, float]]
) -> None:
    """Given a key that starts the moment it may (after pauses now and then), each start
    reaching the resource up to the start margin (20 ms) after its permit, then in any
    window w the resource saw at most rate * w + burst of its starts (where the burst
    spares the margin: else the tokens are spaced by it, up to 2.5 % of an interval,
    which is what the bound can then absorb)."""
    clock = FakeClock()
    keys = KeyLimiter(KeyLimits(rate_per_s=rate, burst=burst), clock=clock)
    jitter_s = START_JITTER_S
    if burst - rate * START_JITTER_S < 1:
        jitter_s = min(START_JITTER_S, MAX_SPACING_SHARE / rate)
    seen: list[float] = []
    for pause_s, late in steps:
        clock.now += keys.wait_s("k")  # exactly when its token is due
        keys.start("k")
        seen.append(clock.now + late * jitter_s)
        clock.now += pause_s
    seen.sort()
    for i, first in enumerate(seen):
        for j in range(i, len(seen)):
            assert j - i + 1 <= rate * (seen[j] - first) + burst + 1e-6


# --- the fair line -------------------------------------------------------------------


async def _run_line(resource: Resource, keys: list[str], hold_s: float = 0.0) -> list[str]:
    """Every key of ``keys`` (in join order) acquires, holds, releases; the start order."""
    throttle = ResourceThrottle(resource)
    assert resource.per_key is not None
    line = KeyedLine(throttle, resource.per_key, horizon_s=30.0, stopping=asyncio.Event())
    order: list[str] = []

    async def one(key: str) -> None:
        permit = await line.acquire(key)
        assert isinstance(permit, Permit)
        order.append(key)
        await asyncio.sleep(hold_s)
        permit.release()
        line.released(permit)

    await asyncio.gather(*(one(key) for key in keys))
    return order


async def test_keys_competing_for_the_global_cap_start_round_robin() -> None:
    """Given a resource that runs one task at a time, when key a queues 6 tasks before
    keys b and c queue 2 each, then starts go a, b, c, a, b, c, a, a, a, a: no key gets
    a second turn while another waits."""
    resource = Resource("one", max_concurrency=1, per_key=KeyLimits(max_concurrency=1))
    order = await _run_line(resource, ["a"] * 6 + ["b"] * 2 + ["c"] * 2)
    assert order == ["a", "b", "c", "a", "b", "c", "a", "a", "a", "a"]


async def test_a_saturated_key_never_delays_the_other_keys() -> None:
    """Given a key cap of 2 and a global cap of 10, when key a queues 6 tasks of 0.1 s
    ahead of 3 of key b, then at most 2 of a run at once and b starts in a's first round."""
    resource = Resource("wide", max_concurrency=10, per_key=KeyLimits(max_concurrency=2))
    running: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    throttle = ResourceThrottle(resource)
    assert resource.per_key is not None
    line = KeyedLine(throttle, resource.per_key, horizon_s=30.0, stopping=asyncio.Event())
    order: list[str] = []

    async def one(key: str) -> None:
        permit = await line.acquire(key)
        assert isinstance(permit, Permit)
        order.append(key)
        running[key] += 1
        peak[key] = max(peak[key], running[key])
        await asyncio.sleep(0.1)
        running[key] -= 1
        permit.release()
        line.released(permit)

    await asyncio.gather(*(one(key) for key in ["a"] * 6 + ["b"] * 3))
    assert peak == {"a": 2, "b": 2}
    assert order[:4].count("b") == 2  # b did not wait behind a's backlog


async def test_a_stopping_dispatcher_sends_every_key_waiter_away() -> None:
    """Given waiters of two keys behind a full resource, when the dispatcher stops, then
    each gets no permit (it is deferred, its attempt given back) and none is left."""
    resource = Resource("full", max_concurrency=1, per_key=KeyLimits(max_concurrency=1))
    throttle = ResourceThrottle(resource)
    stopping = asyncio.Event()
    assert resource.per_key is not None
    line = KeyedLine(throttle, resource.per_key, horizon_s=30.0, stopping=stopping)
    first = await line.acquire("a")
    assert isinstance(first, Permit)
    waiting = [asyncio.ensure_future(line.acquire(key)) for key in ("a", "b", "b")]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)

    stopping.set()
    answers = await asyncio.wait_for(asyncio.gather(*waiting), timeout=2)

    assert not any(isinstance(answer, Permit) for answer in answers)


def test_a_shared_keyed_resource_is_warned_about_once() -> None:
    """Given a keyed line, when another dispatcher is seen on its resource twice, then one
    warning says per-key limits are per dispatcher."""
    throttle = ResourceThrottle(CRM)
    assert CRM.per_key is not None
    line = KeyedLine(throttle, CRM.per_key, horizon_s=5.0, stopping=asyncio.Event())
    with capture_logs() as logs:
        line.note_shared("crm-api")
        line.note_shared("crm-api")
    assert [entry["event"] for entry in logs] == ["per_key_limits_per_dispatcher"]
    assert logs[0]["log_level"] == "warning" and logs[0]["resource"] == "crm-api"


def test_a_key_holds_at_most_its_room_and_its_share_of_a_full_room() -> None:
    """Given a key room of 6 (2/s over 80 % of a 2.5 s horizon, plus a cap of 2), when
    key a fills it, then a's next message is backlog; when the resource's room (10) is
    full, a new key b may still wait up to its equal share (10 // 2 = 5)."""
    resource = Resource(
        "r", rate_per_s=4, per_key=KeyLimits(rate_per_s=2, burst=1, max_concurrency=2)
    )
    assert resource.per_key is not None
    line = KeyedLine(
        ResourceThrottle(resource), resource.per_key, horizon_s=2.5, stopping=asyncio.Event()
    )
    assert line.key_room() == 6
    with line.queued("a", 6):
        assert not line.may_wait("a", room=10, in_room=6)
        assert line.may_wait("b", room=10, in_room=6)
        with line.queued("b", 4):
            assert line.may_wait("b", room=10, in_room=10)  # b holds 4 < 10 // 2
            with line.queued("b"):
                assert not line.may_wait("b", room=10, in_room=11)  # b holds its share
    assert not line.waiting  # counts drop to nothing: no entry per idle key


async def test_the_busiest_keys_are_published_and_summed_over_dispatchers() -> None:
    """Given a keyed line where key a has 3 tasks waiting and 2 running, b 1 running and
    c nothing left, when the busiest keys are read, then a comes first, then b, then c
    (by waiting + running, then started); two dispatchers' published rows of one
    resource are summed by key, the busiest first, and `dispatch status` says so."""
    from dispatch.throttle.limits import ThrottleSnapshot
    from dispatch.throttle.status import (
        ResourceStatus,
        busiest_first,
        describe_busiest_keys,
        publish_params,
        sum_busiest_keys,
    )

    clock = FakeClock()
    line = KeyedLine(
        ResourceThrottle(CRM), CRM.per_key, horizon_s=5.0, stopping=asyncio.Event(), clock=clock
    )
    for key in ("a", "a", "b", "c"):
        line.keys.start(key)
        clock.now += 0.1
    line.keys.release("c")
    line.waiting["a"] = 3

    rows = line.busiest(5)

    assert [(r["key"], r["waiting"], r["in_flight"], r["started"]) for r in rows] == [
        ("a", 3, 2, 2),
        ("b", 0, 1, 1),
        ("c", 0, 0, 1),
    ]
    assert [r["key"] for r in line.busiest(1)] == ["a"]

    snapshot = ThrottleSnapshot("crm-api", 100.0, 100.0, 1.0, 3, 40, 3, 4, 0, 0.0, 0)
    put, _ = publish_params("t", "d1", [snapshot], {}, 1.0, keys={"crm-api": rows})
    published = json.loads(put["Item"]["resources"]["S"])["crm-api"]["keys"]
    other = [{"key": "b", "waiting": 9, "in_flight": 0, "started": 0}, {"bad": "row"}]
    summed = sum_busiest_keys([{"keys": published}, {"keys": other}, {}])
    assert published == rows
    assert summed == [
        {"key": "b", "waiting": 9, "in_flight": 1, "started": 1},
        {"key": "a", "waiting": 3, "in_flight": 2, "started": 2},
        {"key": "c", "waiting": 0, "in_flight": 0, "started": 1},
    ]
    assert busiest_first(summed, 1) == summed[:1]
    status = ResourceStatus(
        "crm-api", 100.0, 100.0, 1.0, 3, 40, None, 3, 0, 0.0, 4, 0, 2, busiest_keys=summed[:2]
    )
    assert describe_busiest_keys([status]) == [
        "busiest keys of crm-api: b (waiting 9, running 1, started 1), "
        "a (waiting 3, running 2, started 2)"
    ]


def test_a_key_takes_at_most_half_the_dispatchers_places() -> None:
    """Given a key whose own limits would let it hold 200 messages (50/s over 80 % of a
    5 s horizon) in a dispatcher of max_in_flight 64, when key a floods, then a holds
    at most 32 (the rest is backlog) and another key b may still wait beside it; the
    resource's room for keyed messages is never larger than max_in_flight less the
    quarter kept free for receiving (48): a room filling every place would stop the
    receives that bring a starved key its next message."""
    resource = Resource("r", rate_per_s=100, burst=10, per_key=KeyLimits(rate_per_s=50, burst=5))
    assert resource.per_key is not None
    unbounded = KeyedLine(
        ResourceThrottle(resource), resource.per_key, horizon_s=5.0, stopping=asyncio.Event()
    )
    line = KeyedLine(
        ResourceThrottle(resource),
        resource.per_key,
        horizon_s=5.0,
        stopping=asyncio.Event(),
        max_in_flight=64,
    )
    assert unbounded.key_room() == 200 and unbounded.room(400) == 400
    assert line.key_room() == 32 and line.room(400) == 48
    with line.queued("a", 32):
        assert not line.may_wait("a", room=line.room(400), in_room=32)
        assert line.may_wait("b", room=line.room(400), in_room=32)


async def test_the_demand_asked_of_the_bucket_is_the_keys_that_may_start_now() -> None:
    """Given key a with 20 waiters at its own 1/s (burst 1) and key b with one, when the
    line asks the resource for tokens, then it asks for what they may start within a
    second (a: 1 now + 1, b: 1), never for 21: a shared bucket leasing for every
    waiter would take tokens that come due before a's waiters may start (dropped),
    while other dispatchers' keys wait for them."""
    asked: list[int] = []

    class Recording(ResourceThrottle):
        def try_start(self, waiting: int = 1) -> Permit | float:
            asked.append(waiting)
            return super().try_start(waiting)

    resource = Resource("slow-keys", rate_per_s=100, per_key=KeyLimits(rate_per_s=1, burst=1))
    assert resource.per_key is not None
    line = KeyedLine(
        Recording(resource), resource.per_key, horizon_s=30.0, stopping=asyncio.Event()
    )
    line.waiting.update({"a": 20, "b": 1})  # the room, as the gate counts it
    waiters = [asyncio.ensure_future(line.acquire(k)) for k in ["a"] * 20 + ["b"]]
    done, _ = await asyncio.wait(waiters, timeout=0.5)
    assert {w.result().__class__ for w in done} == {Permit}
    assert max(asked) == 3
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
