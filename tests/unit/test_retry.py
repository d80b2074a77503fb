"""The retry policy: validation, the backoff delays (with and without jitter), custom waits."""

from __future__ import annotations

import math
from typing import Any

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core import constants as c
from dispatch.core.errors import PermanentError, TaskDefinitionError
from dispatch.core.retry import Retry

PROPERTY = settings(max_examples=300, deadline=None)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_attempts": 0}, "max_attempts=0"),
        ({"max_attempts": -3}, "max_attempts=-3"),
        ({"max_attempts": c.MAX_ATTEMPTS_LIMIT + 1}, f"max_attempts={c.MAX_ATTEMPTS_LIMIT + 1}"),
        ({"base_delay_s": -1.0}, "base_delay_s=-1.0"),
        ({"base_delay_s": math.inf}, "base_delay_s=inf"),
        ({"base_delay_s": math.nan}, "base_delay_s=nan"),
        ({"max_delay_s": math.inf}, "max_delay_s=inf"),
        ({"max_delay_s": -1.0}, "max_delay_s=-1.0"),
        ({"base_delay_s": 10.0, "max_delay_s": 5.0}, "max_delay_s=5.0"),
        ({"max_delay_s": c.SQS_MAX_VISIBILITY_S + 1}, "max_delay_s=43201"),
        ({"retry_on": ()}, "retry_on=()"),
        ({"retry_on": (ValueError, "TimeoutError")}, "retry_on="),
        ({"retry_on": (int,)}, "retry_on="),
    ],
    ids=repr,
)
def test_retry_refuses_bad_settings_naming_them(options: dict[str, Any], named: str) -> None:
    """Given a setting out of bounds (attempts, delays, 12 h cap, retry_on), when a Retry is
    made, then TaskDefinitionError names the setting and its value."""
    with pytest.raises(TaskDefinitionError) as caught:
        Retry(**options)

    assert named in str(caught.value)


def test_retry_accepts_the_boundaries() -> None:
    """Given the extreme allowed values, when a Retry is made, then it is accepted and
    behaves as its settings say (one attempt, no delay; the attempt and 12 h limits;
    a fixed delay retrying any exception)."""
    once = Retry(max_attempts=1, base_delay_s=0, max_delay_s=0)
    most = Retry(max_attempts=c.MAX_ATTEMPTS_LIMIT, max_delay_s=c.SQS_MAX_VISIBILITY_S)
    fixed = Retry(base_delay_s=5, max_delay_s=5, retry_on=(BaseException,))

    assert not once.has_attempts_left(1)
    assert once.delay_s(1) == 0
    assert most.has_attempts_left(c.MAX_ATTEMPTS_LIMIT - 1)
    assert not most.has_attempts_left(c.MAX_ATTEMPTS_LIMIT)
    assert most.delay_s(c.MAX_ATTEMPTS_LIMIT - 1) <= c.SQS_MAX_VISIBILITY_S
    assert {fixed.delay_s(n) for n in range(1, 6)} == {5}
    assert fixed.is_retryable(KeyboardInterrupt())


def test_retry_accepts_a_bare_exception_class_as_retry_on() -> None:
    """Given ``retry_on=ValueError`` (a class, not a tuple), when a Retry is made, then it
    means ``(ValueError,)``: a ValueError is retryable, a KeyError is not."""
    retry = Retry(retry_on=ValueError)  # type: ignore[arg-type]

    assert retry.retry_on == (ValueError,)
    assert retry.is_retryable(ValueError("x"))
    assert not retry.is_retryable(KeyError("x"))


def test_retry_refuses_a_retry_on_that_is_not_exception_classes() -> None:
    """Given ``retry_on=(ValueError, "oops")`` or ``retry_on=42``, when a Retry is made,
    then TaskDefinitionError names retry_on (not a TypeError from iterating)."""
    for bad in ((ValueError, "oops"), 42, ()):
        with pytest.raises(TaskDefinitionError, match="retry_on"):
            Retry(retry_on=bad)  # type: ignore[arg-type]


def test_retry_on_given_as_a_list_works_or_is_refused_up_front() -> None:
    """Given ``retry_on=[ValueError]`` (a list), when the Retry is made and later asked
    whether a ValueError is retryable, then either the declaration was refused with
    TaskDefinitionError or the answer is True; never a TypeError at run time."""
    try:
        policy = Retry(retry_on=[ValueError])  # type: ignore[arg-type]
    except TaskDefinitionError:
        return
    assert policy.is_retryable(ValueError("boom"))


# --- delays --------------------------------------------------------------------------------


@PROPERTY
@given(
    attempt=st.integers(min_value=1, max_value=c.MAX_ATTEMPTS_LIMIT),
    base=st.floats(min_value=0.0, max_value=600.0),
    spread=st.floats(min_value=0.0, max_value=float(c.SQS_MAX_VISIBILITY_S)),
)
def test_jittered_delay_stays_between_base_and_the_capped_exponential(
    attempt: int, base: float, spread: float
) -> None:
    """Given any attempt, base and max, when the jittered delay is drawn, then it lies in
    [ceil(base), ceil(min(max, base * 2^(attempt-1)))] whole seconds."""
    maximum = min(float(c.SQS_MAX_VISIBILITY_S), base + spread)
    policy = Retry(base_delay_s=base, max_delay_s=maximum)

    delay = policy.delay_s(attempt)

    ceiling = min(maximum, base * 2.0 ** (attempt - 1))
    assert isinstance(delay, int)
    assert math.ceil(base) <= delay <= math.ceil(ceiling)


def test_jittered_delays_actually_vary() -> None:
    """Given the default jittered policy, when many delays are drawn for attempt 6, then
    they are not all equal (full jitter decorrelates a burst of retries)."""
    policy = Retry(base_delay_s=1, max_delay_s=300)

    assert len({policy.delay_s(6) for _ in range(200)}) > 5


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 50), (20, 50), (50, 50)],
)
def test_delay_without_jitter_is_exponential_and_capped(attempt: int, expected: int) -> None:
    """Given jitter off, base 2 s and max 50 s, when the delay after attempt n is asked,
    then it is exactly 2 * 2^(n-1), capped at 50."""
    policy = Retry(max_attempts=50, base_delay_s=2, max_delay_s=50, jitter=False)

    assert policy.delay_s(attempt) == expected


def test_delay_without_jitter_rounds_fractions_up() -> None:
    """Given a fractional base, when the delay is asked, then it is rounded up to a whole
    second (SQS visibility has a one-second grain)."""
    policy = Retry(base_delay_s=0.3, max_delay_s=10, jitter=False)

    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 1, 2, 3, 5, 10]


@PROPERTY
@given(
    attempt=st.integers(min_value=1, max_value=c.MAX_ATTEMPTS_LIMIT),
    base=st.floats(min_value=0.0, max_value=600.0),
    spread=st.floats(min_value=0.0, max_value=float(c.SQS_MAX_VISIBILITY_S)),
)
def test_delay_without_jitter_matches_the_formula(attempt: int, base: float, spread: float) -> None:
    """Given any attempt, base and max with jitter off, when the delay is asked, then it is
    ceil(min(max, base * 2^(attempt-1)))."""
    maximum = min(float(c.SQS_MAX_VISIBILITY_S), base + spread)
    policy = Retry(base_delay_s=base, max_delay_s=maximum, jitter=False)

    assert policy.delay_s(attempt) == math.ceil(min(maximum, base * 2.0 ** (attempt - 1)))


def test_a_custom_tenacity_wait_is_used() -> None:
    """Given ``wait=tenacity.wait_fixed(7)``, when delays are asked, then every one is 7 s,
    whatever base/max say."""
    policy = Retry(base_delay_s=1, max_delay_s=2, wait=tenacity.wait_fixed(7))

    assert [policy.delay_s(n) for n in (1, 2, 3, 10)] == [7, 7, 7, 7]
    assert policy.strategy() is policy.wait


def test_a_composed_tenacity_wait_sees_the_attempt_number() -> None:
    """Given a composed wait (fixed 3 s plus 2 s per attempt), when delays are asked, then
    the attempt number reaches the strategy."""
    policy = Retry(wait=tenacity.wait_fixed(3) + tenacity.wait_incrementing(start=0, increment=2))

    assert [policy.delay_s(n) for n in (1, 2, 3)] == [3, 5, 7]


def test_a_custom_wait_is_capped_at_twelve_hours() -> None:
    """Given a custom wait longer than SQS can hide a message, when the delay is asked,
    then it is capped at 12 hours."""
    policy = Retry(wait=tenacity.wait_fixed(100_000))

    assert policy.delay_s(1) == c.SQS_MAX_VISIBILITY_S


@pytest.mark.parametrize("attempt", [0, -1])
def test_delay_refuses_an_attempt_below_one(attempt: int) -> None:
    """Given an attempt number below 1, when the delay is asked, then ValueError."""
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        Retry().delay_s(attempt)


# --- attempts and retryable exceptions -----------------------------------------------------


def test_has_attempts_left_counts_the_first_run() -> None:
    """Given max_attempts=3, when asked after 0..4 runs, then attempts remain after 0, 1
    and 2 runs only; max_attempts=1 never retries."""
    policy = Retry(max_attempts=3)

    assert [policy.has_attempts_left(n) for n in range(5)] == [True, True, True, False, False]
    assert not Retry(max_attempts=1).has_attempts_left(1)


def test_is_retryable_follows_retry_on_including_subclasses() -> None:
    """Given retry_on=(ConnectionError, ValueError), when exceptions are checked, then those
    types and their subclasses are retryable and others are not."""
    policy = Retry(retry_on=(ConnectionError, ValueError))

    assert policy.is_retryable(ConnectionResetError())
    assert policy.is_retryable(UnicodeDecodeError("utf-8", b"", 0, 1, "bad"))
    assert not policy.is_retryable(KeyError("k"))
    assert not policy.is_retryable(RuntimeError())


def test_default_retry_on_covers_every_exception_but_not_base_exceptions() -> None:
    """Given the default policy, when exceptions are checked, then any Exception (even a
    PermanentError, which the runtime handles first) is retryable and KeyboardInterrupt
    is not."""
    policy = Retry()

    assert policy.is_retryable(KeyError("k"))
    assert policy.is_retryable(PermanentError("no"))
    assert not policy.is_retryable(KeyboardInterrupt())


def test_retry_is_frozen_and_compares_by_value() -> None:
    """Given two equal policies, when compared, then they are equal, and a policy cannot be
    changed after creation."""
    policy = Retry(max_attempts=4, base_delay_s=2)

    assert policy == Retry(max_attempts=4, base_delay_s=2)
    with pytest.raises(AttributeError):
        policy.max_attempts = 9  # type: ignore[misc]
