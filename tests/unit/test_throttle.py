"""The in-process throttle: token bucket, concurrency cap, adaptive rate, registry.

Every test runs on a :class:`FakeClock` that moves only when told to: no real sleeps.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core.errors import ConfigurationError
from dispatch.throttle.limits import (
    CONCURRENCY_RETRY_HINT_S,
    DEFAULT_BACKPRESSURE_COOLDOWN_S,
    AdaptiveRate,
    ConcurrencyLimiter,
    Permit,
    Resource,
    ResourceThrottle,
    Throttle,
    TokenBucket,
)

# Float slack for the grant bound: far above rounding (about 1e-10 token at these
# magnitudes) and far below a token.
GRANT_EPSILON = 1e-6

PROPERTY = settings(max_examples=150, deadline=None)

rates_per_s = st.floats(min_value=0.1, max_value=500.0)
bursts = st.integers(min_value=1, max_value=50)


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now_s += seconds


class RecordingSource:
    """A token source that always grants and remembers the rates it was given."""

    def __init__(self) -> None:
        self.taken = 0.0
        self.rates_per_s: list[float] = []

    @property
    def tokens(self) -> float:
        return 42.0

    def try_take(self, n: float = 1.0, *, waiting: int = 1) -> float:
        self.taken += n
        return 0.0

    def set_rate(self, rate_per_s: float) -> None:
        self.rates_per_s.append(rate_per_s)


# --- Resource ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"rate_per_s": -1.0}, "rate_per_s"),
        ({"rate_per_s": math.nan}, "rate_per_s"),
        ({"rate_per_s": math.inf}, "rate_per_s"),
        ({"rate_per_s": "50"}, "rate_per_s"),
        ({"rate_per_s": True}, "rate_per_s"),
        ({"rate_per_s": 10**400}, "rate_per_s"),
        ({"rate_per_s": 10, "burst": 0}, "burst"),
        ({"rate_per_s": 10, "burst": 2.5}, "burst"),
        ({"max_concurrency": 5, "burst": 3}, "burst"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -3}, "max_concurrency"),
        ({"max_concurrency": 1.5}, "max_concurrency"),
        ({"rate_per_s": 10, "min_rate_per_s": 0}, "min_rate_per_s"),
        ({"rate_per_s": 10, "min_rate_per_s": 10.5}, "min_rate_per_s"),
        ({"rate_per_s": 10, "min_rate_per_s": math.nan}, "min_rate_per_s"),
        ({"max_concurrency": 5, "min_rate_per_s": 1}, "min_rate_per_s"),
        ({}, "rate_per_s"),
    ],
)
def test_bad_resource_value_names_resource_and_field(kwargs: dict[str, object], field: str) -> None:
    """Given a bad value, Resource raises ConfigurationError naming the resource and field."""
    with pytest.raises(ConfigurationError, match=field) as caught:
        Resource("orders-db", **kwargs)  # type: ignore[arg-type]
    assert "orders-db" in str(caught.value)
    assert caught.value.setting == field


@pytest.mark.parametrize("name", ["", "a" * 65, "orders db", "orders/db", "café", "a#b", 42])
def test_bad_resource_name_is_refused(name: object) -> None:
    """A name that is empty, over 64 characters or outside [A-Za-z0-9._:-] is refused."""
    with pytest.raises(ConfigurationError, match="name") as caught:
        Resource(name, rate_per_s=1)  # type: ignore[arg-type]
    assert caught.value.setting == "name"


@pytest.mark.parametrize(
    ("resource", "burst"),
    [
        (Resource("orders-db", rate_per_s=50, burst=10, max_concurrency=20), 10),
        (Resource("partner-api", rate_per_s=0.5), 1),
        (Resource("rate-2.5", rate_per_s=2.5), 3),
        (Resource("rate-50", rate_per_s=50), 50),
        (Resource("pg.pool:1_a", max_concurrency=1), None),
        (Resource("a" * 64, rate_per_s=10, max_concurrency=1, min_rate_per_s=10), 10),
    ],
)
def test_good_resources_construct_with_default_burst(resource: Resource, burst: int | None) -> None:
    """Fractional rates, a cap of 1 and a cap alone are valid; burst defaults to
    max(1, ceil(rate)) when a rate is given and stays None without one."""
    assert resource.burst == burst


def test_resource_is_hashable_and_equal_by_value() -> None:
    """Resources equal in value (an int rate vs a float, a default burst spelled out)
    are equal and hash alike; frozen, so they cannot be changed after creation."""
    a = Resource("orders-db", rate_per_s=50, max_concurrency=20)
    b = Resource("orders-db", rate_per_s=50.0, burst=50, max_concurrency=20)
    assert a == b
    assert len({a, b}) == 1
    assert a != Resource("orders-db", rate_per_s=50, max_concurrency=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.rate_per_s = 1.0  # type: ignore[misc]


def test_resource_options_are_keyword_only() -> None:
    """Only the name is positional: Resource("x", 50) is refused."""
    with pytest.raises(TypeError):
        Resource("x", 50)  # type: ignore[call-arg]


# --- TokenBucket -------------------------------------------------------------------


@PROPERTY
@given(
    rate_per_s=rates_per_s,
    burst=bursts,
    steps=st.lists(
        st.tuples(
            st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=3.0)),
            st.booleans(),
            st.one_of(st.just(None), st.floats(min_value=0.01, max_value=1.0)),
        ),
        max_size=120,
    ),
)
def test_bucket_never_grants_more_than_rate_times_window_plus_burst(
    rate_per_s: float, burst: int, steps: list[tuple[float, bool, float | None]]
) -> None:
    """Given random gaps (in token intervals), greedy waits and take sizes, the tokens
    granted in every window [t_i, t_j] of the history are <= rate * (t_j - t_i) + burst."""
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s, burst, clock=clock)
    times_s: list[float] = []
    granted: list[float] = []
    last_wait_s = 0.0
    for gap_tokens, follow_wait, fraction in steps:
        # Either sleep exactly the last wait (the most a caller can squeeze out) or a gap.
        clock.advance(last_wait_s if follow_wait else gap_tokens / rate_per_s)
        n = 1.0 if fraction is None else fraction * burst
        last_wait_s = bucket.try_take(n)
        if last_wait_s == 0.0:
            times_s.append(clock())
            granted.append(n)
    prefix = [0.0, *accumulate(granted)]
    for i, start_s in enumerate(times_s):
        for j in range(i, len(times_s)):
            in_window = prefix[j + 1] - prefix[i]
            bound = rate_per_s * (times_s[j] - start_s) + burst
            assert in_window <= bound + GRANT_EPSILON, (i, j, in_window, bound)


@PROPERTY
@given(
    rate_per_s=rates_per_s,
    burst=bursts,
    gaps_s=st.lists(st.floats(min_value=0.0, max_value=2.0), max_size=20),
    fraction=st.floats(min_value=0.01, max_value=1.0),
)
def test_bucket_wait_is_exact(
    rate_per_s: float, burst: int, gaps_s: list[float], fraction: float
) -> None:
    """When a take is refused, advancing the clock by the returned wait makes the same
    take succeed, and advancing a millionth of a token's time less does not."""
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s, burst, clock=clock)
    for gap_s in gaps_s:  # a random history
        clock.advance(gap_s)
        bucket.try_take(1.0)
    n = fraction * burst
    while (wait_s := bucket.try_take(n)) == 0.0:  # drain until a take is refused
        pass
    assert wait_s > 0

    short_s = min(wait_s, 1e-6 / rate_per_s)
    clock.advance(wait_s - short_s)
    remaining_s = bucket.try_take(n)
    assert remaining_s > 0, "a little short of the wait is still refused"
    assert remaining_s == pytest.approx(short_s, rel=1e-3, abs=1e-12)

    clock.advance(short_s)
    assert bucket.try_take(n) == 0.0


def test_bucket_starts_full_then_waits_one_interval_per_token() -> None:
    """Given a full bucket of 3 at 2 tokens/s, three takes succeed at once, the fourth
    is told 0.5 s, and after 0.5 s it succeeds."""
    clock = FakeClock()
    bucket = TokenBucket(2.0, 3, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.5)
    assert bucket.tokens == 0.0
    clock.advance(0.5)
    assert bucket.try_take() == 0.0


def test_bucket_refill_stops_at_burst() -> None:
    """Given a long quiet spell, the bucket holds burst tokens, not more."""
    clock = FakeClock()
    bucket = TokenBucket(10.0, 4, clock=clock)
    bucket.try_take(4)
    clock.advance(3_600)
    assert bucket.tokens == 4.0
    assert bucket.try_take(4) == 0.0
    assert bucket.try_take() == pytest.approx(0.1)


def test_refused_take_takes_nothing() -> None:
    """A refused take leaves the tokens as they were."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2, clock=clock)
    bucket.try_take(1.5)
    assert bucket.try_take(1.0) == pytest.approx(0.5)
    assert bucket.tokens == pytest.approx(0.5)


def test_set_rate_refills_at_old_rate_up_to_now() -> None:
    """Given an empty bucket at 10/s, 0.05 s later (0.5 token earned) a switch to 1/s
    keeps the half token: the next token is 0.5 s away at the new rate."""
    clock = FakeClock()
    bucket = TokenBucket(10.0, 1, clock=clock)
    bucket.try_take()
    clock.advance(0.05)
    bucket.set_rate(1.0)
    assert bucket.rate_per_s == 1.0
    assert bucket.try_take() == pytest.approx(0.5)


@pytest.mark.parametrize("n", [0.0, -1.0, 3.5, math.nan])
def test_take_outside_zero_to_burst_is_refused(n: float) -> None:
    """A take of nothing, a negative amount or more than burst (never grantable) raises."""
    bucket = TokenBucket(1.0, 3, clock=FakeClock())
    with pytest.raises(ValueError, match="burst"):
        bucket.try_take(n)


# --- ConcurrencyLimiter -----------------------------------------------------------------


@PROPERTY
@given(limit=st.integers(min_value=1, max_value=6), ops=st.lists(st.booleans(), max_size=80))
def test_limiter_never_exceeds_limit(limit: int, ops: list[bool]) -> None:
    """Under random acquire (True) / release (False) orders, in_flight matches a simple
    count, never exceeds the limit, and a release with nothing held raises."""
    limiter = ConcurrencyLimiter(limit)
    held = 0
    for acquire in ops:
        if acquire:
            assert limiter.try_acquire() == (held < limit)
            held = min(limit, held + 1)
        elif held == 0:
            with pytest.raises(RuntimeError):
                limiter.release()
        else:
            limiter.release()
            held -= 1
        assert limiter.in_flight == held <= limit


def test_limiter_without_limit_counts_but_never_refuses() -> None:
    """A limiter with limit None grants every acquire and still counts them."""
    limiter = ConcurrencyLimiter(None)
    assert all(limiter.try_acquire() for _ in range(1_000))
    assert limiter.in_flight == 1_000
    assert not limiter.is_full


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_limiter_refuses_a_bad_limit(limit: object) -> None:
    """A limit below 1 or not an integer raises ValueError."""
    with pytest.raises(ValueError, match="limit"):
        ConcurrencyLimiter(limit)  # type: ignore[arg-type]


# --- AdaptiveRate ----------------------------------------------------------------------


@PROPERTY
@given(
    configured=st.floats(min_value=0.1, max_value=500.0),
    floor_fraction=st.floats(min_value=0.01, max_value=1.0),
    factor=st.floats(min_value=0.1, max_value=0.9),
    recovery_s=st.floats(min_value=1.0, max_value=120.0),
    cooldown_s=st.floats(min_value=0.0, max_value=5.0),
    ops=st.lists(
        st.tuples(st.sampled_from(["backpressure", "success", "wait"]), st.floats(0.0, 3.0)),
        max_size=80,
    ),
)
def test_adaptive_rate_stays_in_bounds_decreases_multiplicatively_recovers_additively(
    *,
    configured: float,
    floor_fraction: float,
    factor: float,
    recovery_s: float,
    cooldown_s: float,
    ops: list[tuple[str, float]],
) -> None:
    """Under random backpressure / success / time, the rate stays within [floor,
    configured]; backpressure multiplies it by the factor once per cool-down (clamped
    at the floor); a success adds increase_per_s for each second since the last signal."""
    clock = FakeClock()
    floor = configured * floor_fraction
    increase_per_s = configured / recovery_s
    rate = AdaptiveRate(
        configured,
        floor_rate_per_s=floor,
        decrease_factor=factor,
        increase_per_s=increase_per_s,
        cooldown_s=cooldown_s,
        clock=clock,
    )
    last_signal_s = clock()
    last_decrease_s = -math.inf
    for op, gap_s in ops:
        clock.advance(gap_s)
        before = rate.effective_rate_per_s
        if op == "backpressure":
            lowered = rate.on_backpressure()
            if clock() - last_decrease_s < cooldown_s:
                assert not lowered
                assert rate.effective_rate_per_s == before
            else:
                assert lowered
                assert rate.effective_rate_per_s == pytest.approx(max(floor, before * factor))
                last_decrease_s = clock()
            last_signal_s = clock()
        elif op == "success":
            rate.on_success()
            expected = min(configured, before + increase_per_s * (clock() - last_signal_s))
            assert rate.effective_rate_per_s == pytest.approx(expected)
            last_signal_s = clock()
        else:
            assert rate.effective_rate_per_s == before, "time alone changes nothing"
        assert floor <= rate.effective_rate_per_s <= configured


def test_adaptive_rate_concrete_figures() -> None:
    """Given 100/s, floor 5/s, halving, +10/s per second and a 1 s cool-down:
    backpressure → 50; again 0.5 s later → still 50 (cool-down); 1.5 s after the first
    → 25; a success 2 s later → 45; 1 s later → 55; 10 s later → 100 (never above)."""
    clock = FakeClock()
    rate = AdaptiveRate(
        100.0, floor_rate_per_s=5.0, increase_per_s=10.0, cooldown_s=1.0, clock=clock
    )
    assert rate.on_backpressure()
    assert rate.effective_rate_per_s == 50.0
    clock.advance(0.5)
    assert not rate.on_backpressure()
    assert rate.effective_rate_per_s == 50.0
    clock.advance(1.0)
    assert rate.on_backpressure()
    assert rate.effective_rate_per_s == 25.0
    clock.advance(2.0)
    rate.on_success()
    assert rate.effective_rate_per_s == pytest.approx(45.0)
    clock.advance(1.0)
    rate.on_success()
    assert rate.effective_rate_per_s == pytest.approx(55.0)
    clock.advance(10.0)
    rate.on_success()
    assert rate.effective_rate_per_s == 100.0


def test_one_burst_of_backpressure_halves_once() -> None:
    """A hundred Backpressure signals at the same instant lower the rate once, not to
    the floor; sustained backpressure, one per second, reaches the floor and stops."""
    clock = FakeClock()
    rate = AdaptiveRate(100.0, clock=clock)
    assert sum(rate.on_backpressure() for _ in range(100)) == 1
    assert rate.effective_rate_per_s == 50.0
    seen = []
    for _ in range(6):
        clock.advance(DEFAULT_BACKPRESSURE_COOLDOWN_S)
        rate.on_backpressure()
        seen.append(rate.effective_rate_per_s)
    assert seen == [25.0, 12.5, 6.25, 5.0, 5.0, 5.0]  # the default floor: 5 % of 100


def test_recovery_needs_successes_and_ignores_time_before_an_overload_signal() -> None:
    """Time alone does not raise the rate; a success credits only the time since the
    last signal, including a backpressure absorbed by the cool-down."""
    clock = FakeClock()
    rate = AdaptiveRate(90.0, increase_per_s=3.0, cooldown_s=10.0, clock=clock)
    assert rate.floor_rate_per_s == pytest.approx(4.5)
    rate.on_backpressure()
    clock.advance(4.0)
    assert rate.effective_rate_per_s == 45.0
    assert not rate.on_backpressure()  # within the cool-down: rate unchanged...
    clock.advance(2.0)
    rate.on_success()  # ...but the 4 s before it earn nothing
    assert rate.effective_rate_per_s == pytest.approx(51.0)


def test_adaptive_defaults() -> None:
    """Defaults: floor 5 % of the configured rate, recovery of configured / 30 per second."""
    rate = AdaptiveRate(60.0, clock=FakeClock())
    assert rate.floor_rate_per_s == pytest.approx(3.0)
    assert rate.increase_per_s == pytest.approx(2.0)
    assert rate.effective_rate_per_s == rate.configured_rate_per_s == 60.0


# --- ResourceThrottle ----------------------------------------------------------------


@PROPERTY
@given(
    rate_per_s=st.one_of(st.none(), st.floats(min_value=0.5, max_value=100.0)),
    cap=st.integers(min_value=1, max_value=5),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["start", "release", "release_again", "wait"]),
            st.integers(min_value=0, max_value=10),
            st.floats(min_value=0.0, max_value=0.5),
        ),
        max_size=80,
    ),
)
def test_throttle_respects_cap_and_full_cap_burns_no_tokens(
    rate_per_s: float | None, cap: int, ops: list[tuple[str, int, float]]
) -> None:
    """Under random start / release / double release / time orders, never more than
    the cap is in flight, in_flight counts unreleased permits, and a start refused at
    the cap returns the retry hint and leaves the tokens untouched."""
    clock = FakeClock()
    throttle = ResourceThrottle(
        Resource("db", rate_per_s=rate_per_s, max_concurrency=cap), clock=clock
    )
    held: list[Permit] = []
    released: list[Permit] = []
    for op, index, gap_s in ops:
        if op == "start":
            at_cap = throttle.in_flight == cap
            tokens_before = throttle.tokens
            result = throttle.try_start()
            if at_cap:
                assert result == CONCURRENCY_RETRY_HINT_S
                assert throttle.tokens == tokens_before
            if isinstance(result, Permit):
                held.append(result)
            else:
                assert result > 0
        elif op == "release" and held:
            permit = held.pop(index % len(held))
            permit.release()
            released.append(permit)
        elif op == "release_again" and released:
            released[index % len(released)].release()
        else:
            clock.advance(gap_s)
        assert throttle.in_flight == len(held) <= cap
    assert throttle.snapshot().peak_in_flight <= cap


def test_full_cap_keeps_tokens_and_hints_a_retry() -> None:
    """Given a cap of 1 held, a start is refused with the documented hint and no token
    is spent; once the permit is released, the next start takes the token."""
    clock = FakeClock()
    throttle = ResourceThrottle(
        Resource("db", rate_per_s=10, burst=5, max_concurrency=1), clock=clock
    )
    permit = throttle.try_start()
    assert isinstance(permit, Permit)
    for _ in range(10):
        assert throttle.try_start() == CONCURRENCY_RETRY_HINT_S
    assert throttle.tokens == 4.0
    permit.release()
    assert isinstance(throttle.try_start(), Permit)
    assert throttle.tokens == 3.0


def test_out_of_tokens_returns_exact_wait_and_holds_no_slot() -> None:
    """Given a 2/s rate and burst 1, the second start is told 0.5 s and takes no slot."""
    clock = FakeClock()
    throttle = ResourceThrottle(
        Resource("api", rate_per_s=2, burst=1, max_concurrency=10), clock=clock
    )
    assert isinstance(throttle.try_start(), Permit)
    assert throttle.try_start() == pytest.approx(0.5)
    assert throttle.in_flight == 1
    clock.advance(0.5)
    assert isinstance(throttle.try_start(), Permit)


def test_cap_only_resource() -> None:
    """A cap without a rate: no tokens, no rate; the cap alone refuses, and
    backpressure has no rate to lower (it is still counted)."""
    throttle = ResourceThrottle(Resource("pool", max_concurrency=2), clock=FakeClock())
    permits = [throttle.try_start(), throttle.try_start()]
    assert all(isinstance(p, Permit) for p in permits)
    assert throttle.try_start() == CONCURRENCY_RETRY_HINT_S
    assert throttle.tokens is None
    assert throttle.effective_rate_per_s is None
    assert throttle.on_backpressure() is False
    assert throttle.snapshot().backpressure_signals == 1


def test_permit_release_is_idempotent_and_a_context_manager() -> None:
    """Releasing a permit twice frees one slot; leaving a `with` block releases it."""
    throttle = ResourceThrottle(Resource("pool", max_concurrency=3), clock=FakeClock())
    first, second = throttle.try_start(), throttle.try_start()
    assert isinstance(first, Permit)
    assert isinstance(second, Permit)
    first.release()
    first.release()
    assert first.released
    assert throttle.in_flight == 1
    with second:
        assert not second.released
    assert second.released
    assert throttle.in_flight == 0


def test_backpressure_slows_the_bucket_and_success_speeds_it_up() -> None:
    """Given 10/s with burst 1 and min 2/s: after backpressure the next token is
    1/5 s away (rate halved to 5/s); successes bring the rate back up."""
    clock = FakeClock()
    throttle = ResourceThrottle(
        Resource("api", rate_per_s=10, burst=1, min_rate_per_s=2), clock=clock
    )
    permit = throttle.try_start()
    assert isinstance(permit, Permit)
    permit.release()
    assert throttle.on_backpressure() is True
    assert throttle.effective_rate_per_s == 5.0
    assert throttle.try_start() == pytest.approx(0.2)
    for _ in range(4):  # sustained overload stops at min_rate_per_s
        clock.advance(DEFAULT_BACKPRESSURE_COOLDOWN_S)
        throttle.on_backpressure()
    assert throttle.effective_rate_per_s == 2.0
    clock.advance(3.0)
    throttle.on_success()  # default recovery: 10 / 30 per second
    assert throttle.effective_rate_per_s == pytest.approx(3.0)


def test_wait_counters_and_snapshot() -> None:
    """note_wait accumulates waits and seconds; the snapshot reports them with the
    configuration, the live state and the started / peak counters."""
    clock = FakeClock()
    throttle = ResourceThrottle(
        Resource("orders-db", rate_per_s=50, burst=10, max_concurrency=20), clock=clock
    )
    permits = [throttle.try_start() for _ in range(3)]
    throttle.note_wait(0.25)
    throttle.note_wait(0.75)
    snap = throttle.snapshot()
    assert snap.name == "orders-db"
    assert (snap.configured_rate_per_s, snap.effective_rate_per_s) == (50.0, 50.0)
    assert snap.tokens == 7.0
    assert (snap.in_flight, snap.max_concurrency, snap.peak_in_flight) == (3, 20, 3)
    assert (snap.started, snap.waits, snap.wait_total_s) == (3, 2, 1.0)
    assert snap.mean_wait_s == 0.5
    assert all(isinstance(p, Permit) for p in permits)


@pytest.mark.parametrize("wait_s", [-0.1, math.nan, math.inf])
def test_note_wait_refuses_impossible_durations(wait_s: float) -> None:
    """A negative, NaN or infinite wait is a caller bug and raises ValueError."""
    throttle = ResourceThrottle(Resource("pool", max_concurrency=1), clock=FakeClock())
    with pytest.raises(ValueError, match="wait_s"):
        throttle.note_wait(wait_s)


# --- Throttle (registry) -------------------------------------------------------------


def test_registry_returns_one_throttle_per_resource() -> None:
    """The same resource, or an equal one, maps to the same ResourceThrottle."""
    registry = Throttle(clock=FakeClock())
    first = registry.for_resource(Resource("db", rate_per_s=5))
    assert registry.for_resource(Resource("db", rate_per_s=5.0, burst=5)) is first
    assert registry.for_resource(Resource("api", max_concurrency=1)) is not first
    assert len(registry) == 2


def test_registry_refuses_one_name_with_two_configurations() -> None:
    """Declaring a name again with other settings raises ConfigurationError naming both."""
    registry = Throttle(clock=FakeClock())
    registry.for_resource(Resource("db", rate_per_s=50))
    with pytest.raises(ConfigurationError, match="'db'") as caught:
        registry.for_resource(Resource("db", rate_per_s=10))
    assert "rate_per_s=50.0" in str(caught.value)
    assert "rate_per_s=10.0" in str(caught.value)


def test_registry_snapshots_are_sorted_by_name() -> None:
    """snapshots() lists every resource's state, sorted by name."""
    registry = Throttle(clock=FakeClock())
    registry.for_resource(Resource("zeta", max_concurrency=1))
    registry.for_resource(Resource("alpha", rate_per_s=1))
    assert [s.name for s in registry.snapshots()] == ["alpha", "zeta"]


def test_registry_uses_the_token_source_factory() -> None:
    """A token source from the factory replaces the local bucket: starts take from it
    and adaptive rate changes are pushed to it (the seam for a shared bucket)."""
    sources: dict[str, RecordingSource] = {}

    def factory(resource: Resource) -> RecordingSource:
        return sources.setdefault(resource.name, RecordingSource())

    registry = Throttle(clock=FakeClock(), token_source_factory=factory)
    throttle = registry.for_resource(Resource("shared", rate_per_s=100))
    registry.for_resource(Resource("cap-only", max_concurrency=1))
    assert list(sources) == ["shared"]  # a resource without a rate takes no tokens
    assert all(isinstance(throttle.try_start(), Permit) for _ in range(500))
    assert sources["shared"].taken == 500.0
    assert throttle.tokens == 42.0
    throttle.on_backpressure()
    assert sources["shared"].rates_per_s == [50.0]


# --- how many starts to expect (sizes the dispatcher's waiting room) ----------------


def test_start_rate_is_the_limit_until_tasks_have_to_wait() -> None:
    """Given a resource of 20/s that never made a task wait, its expected start rate
    is its (effective) rate: nothing has shown it to be lower."""
    throttle = ResourceThrottle(Resource("quiet", rate_per_s=20, burst=5), clock=FakeClock())
    assert throttle.start_rate_per_s() == 20


def test_start_rate_of_a_cap_is_cap_over_the_time_tasks_hold_a_slot() -> None:
    """Given a resource capped at 4 whose tasks hold their slot 50 ms, its expected
    start rate is 4 / 0.05 = 80/s (before any task has finished: 4 / 1 s assumed)."""
    clock = FakeClock()
    throttle = ResourceThrottle(Resource("pool", max_concurrency=4), clock=clock)
    assert throttle.start_rate_per_s() == 4
    for _ in range(20):
        permit = throttle.try_start()
        assert isinstance(permit, Permit)
        clock.advance(0.05)
        permit.release()
    assert throttle.start_rate_per_s() == pytest.approx(80)


def test_start_rate_while_saturated_is_the_rate_actually_achieved() -> None:
    """Given a resource of 100/s of which this dispatcher gets only 10/s (another
    dispatcher takes the rest: here its tokens simply come slowly), while tasks wait,
    the expected start rate is the 10/s measured, not the configured 100/s."""
    clock = FakeClock()
    source = TokenBucket(10.0, 1, clock=clock)  # what reaches this dispatcher
    throttle = ResourceThrottle(
        Resource("shared", rate_per_s=100, burst=1), clock=clock, token_source=source
    )
    for _ in range(300):  # 3 s of waiters asking every 10 ms
        answer = throttle.try_start()
        if isinstance(answer, Permit):
            answer.release()
        clock.advance(0.01)
    assert throttle.start_rate_per_s() == pytest.approx(10, rel=0.1)
