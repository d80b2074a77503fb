"""The noisy-neighbour bench's "A gets the rest" figure (bench/throttle/keyed.py)."""

from __future__ import annotations

from bench.throttle.keyed import KeyedScenario, _rest_by_second


def _starts(per_second: list[int], at: float = 0.0) -> list[tuple[float, float]]:
    rows: list[tuple[float, float]] = []
    for second, n in enumerate(per_second):
        rows += [(at + second + i / (n + 1), 0.0) for i in range(1, n + 1)]
    return rows


def test_the_rest_is_counted_second_by_second_not_from_the_means() -> None:
    """Given B..K starting 95 then 10 in two seconds of a 100/s resource, and A (own
    limit 50/s) starting 5 then 50, then A got all that was left to it (5 + 50), though
    against the means (B..K 52.5/s, so a rest of 47.5/s) it would look 42 % short; and
    an A that started 5 then 20 got 25 of 55."""
    scenario = KeyedScenario(
        "neighbour-test", "neighbour", rate_per_s=100, burst=10, key_rate_per_s=50, key_burst=5
    )
    others = [_starts([95, 10])]
    full = _rest_by_second(scenario, (0.0, 2.0), others, _starts([5, 50]))
    short = _rest_by_second(scenario, (0.0, 2.0), others, _starts([5, 20]))
    assert full == {"a_rest_by_second": 55.0, "a_started_in_rest": 55, "a_share_of_rest": 1.0}
    assert short["a_share_of_rest"] == round(25 / 55, 3)
