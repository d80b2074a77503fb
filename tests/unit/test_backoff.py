"""The pause between rounds of a loop that retries by itself (dispatch.store.aws_retry.Backoff).

Unprocessed BatchWriteItem items, entries SQS refused for a transient reason, failed
batch calls and refusals at a concurrency cap all wait with a :class:`Backoff`: a
tenacity wait strategy read at the round's number, with or without full jitter.
No real sleeps: the pauses are only computed.
"""

from __future__ import annotations

import tenacity

from dispatch.store.aws_retry import Backoff


def test_without_jitter_the_pause_doubles_from_the_base_up_to_the_cap() -> None:
    """Given a 0.05 s base capped at 1 s, when rounds 1 to 8 leave work undone, then the
    pauses are 0.05, 0.1, 0.2, 0.4, 0.8 s and then 1 s each (BatchWriteItem's rounds)."""
    backoff = Backoff(tenacity.wait_exponential(multiplier=0.05, max=1.0), full_jitter=False)

    pauses = [backoff.pause_s(attempt) for attempt in range(1, 9)]

    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_a_low_cap_is_reached_after_a_few_rounds() -> None:
    """Given a 0.05 s base capped at 0.25 s (a dispatcher refused at a slot cap), when it
    is refused again and again, then it waits 0.05, 0.1, 0.2, then 0.25 s each time."""
    backoff = Backoff(tenacity.wait_exponential(multiplier=0.05, max=0.25), full_jitter=False)

    assert [backoff.pause_s(n) for n in range(1, 7)] == [0.05, 0.1, 0.2, 0.25, 0.25, 0.25]


def test_full_jitter_draws_between_zero_and_the_round_bound() -> None:
    """Given full jitter, when a pause is asked for, then the draw is asked for between 0
    and the round's bound (0.05 s x 2^(n-1), capped at 2 s), and its answer is the pause."""
    backoff = Backoff(tenacity.wait_exponential(multiplier=0.05, max=2.0))
    asked: list[tuple[float, float]] = []

    def half(low: float, high: float) -> float:
        asked.append((low, high))
        return high / 2

    pauses = [backoff.pause_s(n, uniform=half) for n in (1, 2, 6, 7, 12)]

    assert asked == [(0.0, 0.05), (0.0, 0.1), (0.0, 1.6), (0.0, 2.0), (0.0, 2.0)]
    assert pauses == [0.025, 0.05, 0.8, 1.0, 1.0]


def test_full_jitter_by_default_spreads_over_the_whole_range() -> None:
    """Given full jitter and the default draw, when many pauses are drawn for one round,
    then each lies within [0, bound] and they spread over it (not a fixed step)."""
    backoff = Backoff(tenacity.wait_exponential(multiplier=0.1))

    draws = [backoff.pause_s(3) for _ in range(400)]

    assert all(0.0 <= d <= 0.4 for d in draws)
    assert min(draws) < 0.4 * 0.2 and max(draws) > 0.4 * 0.8
