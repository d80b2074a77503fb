"""Figures from timestamps: achieved rate, the worst window, concurrency, recovery.

Pure functions over lists of epoch seconds (backend arrivals, overloads, permit
times); no I/O, so they are easy to check by hand.

The window bound. A token bucket of rate ``r`` and burst ``b`` grants at most
``r * w + b`` tokens in any window of ``w`` seconds. Over the sorted times
``t_0 <= ... <= t_{n-1}`` the window ``[t_i, t_j]`` holds ``j - i + 1`` of them,
so its excess over the rate is ``(j + 1 - r t_j) - (i - r t_i)``: the worst
window ending at ``j`` pairs ``j`` with the smallest ``i - r t_i`` seen so far,
which makes the maximum over all ``n (n + 1) / 2`` windows one pass, and counting
the windows over ``r * w + b`` a pass with a sorted list.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SteadyRate",
    "WindowBound",
    "concurrency_series",
    "counts_per_second",
    "first_quiet",
    "steady_rate",
    "window_bound",
]

_EPSILON: Final = 1e-6
"""Slack for float rounding when comparing a window's count with ``r * w + b``."""


@dataclass(frozen=True, slots=True)
class SteadyRate:
    """The rate between ``start`` and ``end`` (epoch s), from ``count`` events."""

    rate_per_s: float
    start: float
    end: float
    count: int


def steady_rate(
    times: Sequence[float], *, skip_s: float = 1.0, end: float | None = None
) -> SteadyRate | None:
    """Events per second from ``skip_s`` after the first event to the last (or ``end``).

    Skipping the first second leaves the initial burst out: a bucket that starts
    full grants ``burst`` tokens at once, then ``rate`` per second. The rate is
    ``(count - 1) / (last - first)`` over the events in that window (intervals
    between events, so neither edge adds a partial interval). None with fewer than
    two events in the window.
    """
    ordered = sorted(times)
    if not ordered:
        return None
    start = ordered[0] + skip_s
    stop = ordered[-1] if end is None else end
    window = [t for t in ordered if start <= t <= stop]
    if len(window) < 2 or window[-1] <= window[0]:
        return None
    rate = (len(window) - 1) / (window[-1] - window[0])
    return SteadyRate(rate_per_s=rate, start=window[0], end=window[-1], count=len(window))


def counts_per_second(times: Sequence[float], *, start: float, end: float) -> list[int]:
    """How many events fell in each whole second ``[start + k, start + k + 1)`` before ``end``."""
    seconds = max(0, math.ceil(end - start))
    counts = [0] * seconds
    for t in times:
        k = math.floor(t - start)
        if 0 <= k < seconds:
            counts[k] += 1
    return counts


@dataclass(frozen=True, slots=True)
class WindowBound:
    """How close the events came to ``rate * w + burst`` in their worst window.

    ``worst`` is the largest ``count - rate * w`` over every window ``[t_i, t_j]``
    (what the bucket's burst has to cover); ``excess`` is ``worst - burst``
    (``<= 0``: the bound held). ``violations`` counts the windows over the bound,
    ``late_events`` the events that end at least one such window (the starts that
    came too early).
    """

    worst: float
    excess: float
    violations: int
    late_events: int
    worst_window_s: float


def window_bound(times: Sequence[float], *, rate_per_s: float, burst: float) -> WindowBound:
    """Check every window of ``times`` against ``rate_per_s * w + burst`` (see the module)."""
    ordered = sorted(times)
    if not ordered:
        return WindowBound(worst=0.0, excess=-burst, violations=0, late_events=0, worst_window_s=0)
    origin = ordered[0]  # keep the products small: full epoch seconds lose precision
    worst, worst_window_s = -math.inf, 0.0
    violations = late = 0
    lowest_i, lowest_b = 0, math.inf
    seen: list[float] = []  # i - r t_i for every i <= j, sorted
    for j, t in enumerate(ordered):
        b_j = j - rate_per_s * (t - origin)
        if b_j < lowest_b:
            lowest_i, lowest_b = j, b_j
        bisect.insort(seen, b_j)
        a_j = j + 1 - rate_per_s * (t - origin)
        if a_j - lowest_b > worst:
            worst, worst_window_s = a_j - lowest_b, t - ordered[lowest_i]
        over = bisect.bisect_left(seen, a_j - burst - _EPSILON)
        violations += over
        late += over > 0
    return WindowBound(
        worst=worst,
        excess=worst - burst,
        violations=violations,
        late_events=late,
        worst_window_s=worst_window_s,
    )


def concurrency_series(
    arrivals: Sequence[float], *, hold_s: float, start: float, end: float, step_s: float = 0.1
) -> list[int]:
    """The most requests in flight in each ``step_s`` slice, each held ``hold_s`` from arrival.

    An estimate for charts (the backend's own counter gives the exact peak): a
    request is in flight from its arrival for ``hold_s``, the time the backend holds it.
    """
    events = sorted([(t, 1) for t in arrivals] + [(t + hold_s, -1) for t in arrivals])
    slices = max(0, math.ceil((end - start) / step_s))
    series = [0] * slices
    level = 0
    for t, change in events:
        # An end and an arrival at the same instant: the end comes first (-1 < 1).
        level += change
        k = math.floor((t - start) / step_s)
        if 0 <= k < slices:
            series[k] = max(series[k], level)
    # Slices with no event keep the level of the last event before them.
    level = 0
    position = 0
    for k in range(slices):
        slice_start = start + k * step_s
        while position < len(events) and events[position][0] < slice_start:
            level += events[position][1]
            position += 1
        series[k] = max(series[k], level)
    return series


def first_quiet(
    times: Sequence[float], *, since: float, until: float, quiet_s: float = 2.0
) -> float | None:
    """Seconds from ``since`` to the last event before the first ``quiet_s`` without one.

    0.0 when no event follows ``since`` at all; None when events never pause for
    ``quiet_s`` before ``until`` (they had not stopped by the end of the run).
    """
    after = sorted(t for t in times if since <= t <= until)
    if not after:
        return 0.0 if until - since >= quiet_s else None
    for k, t in enumerate(after):
        following = after[k + 1] if k + 1 < len(after) else until
        if following - t >= quiet_s:
            return t - since
    return None
