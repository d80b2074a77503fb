"""The throttle: how fast, and how many at once, tasks may start against a resource.

The model
---------
A task declares the :class:`Resource` it uses (a connection pool, a backend, a
partner API). The dispatcher keeps one :class:`ResourceThrottle` per resource, in a
:class:`Throttle` registry, and asks it before starting each task. A
:class:`ResourceThrottle` combines three limits, each a small class of its own:

* **Rate** — a token bucket (:class:`TokenBucket`). It holds at most ``burst``
  tokens and refills continuously at ``rate_per_s`` tokens per second; starting a
  task takes one token. Over any window of ``w`` seconds it grants at most
  ``rate_per_s * w + burst`` tokens.
* **Concurrency** — a cap on tasks running at once (:class:`ConcurrencyLimiter`).
  A started task holds a slot, its :class:`Permit`, until it settles.
* **Adaptive rate** — AIMD (:class:`AdaptiveRate`). When the resource pushes back
  (a handler raised :class:`~dispatch.core.errors.Backpressure`, or Lambda answered
  TooManyRequests) the bucket's rate is multiplied by ``decrease_factor`` (at most
  once per cool-down); as tasks succeed it climbs back additively, never above the
  configured rate and never below a floor.

:meth:`ResourceThrottle.try_start` never blocks and never sleeps: it returns a
:class:`Permit`, or the number of seconds after which trying again may succeed. It
takes a token only when a slot is free, so a resource at its cap burns no tokens.
The caller (the dispatcher, on asyncio) does the waiting and reports each wait with
:meth:`ResourceThrottle.note_wait`, so "am I throttled?" has an answer:
:meth:`ResourceThrottle.snapshot` feeds logs, metrics and ``dispatch status``.

Time comes from an injected clock (:data:`Clock`: seconds as a ``float``, default
:func:`time.monotonic`), so everything here is deterministic under test.

The seam for a shared bucket
----------------------------
The rate limit sits behind the :class:`TokenSource` protocol. This module implements
the in-process one (:class:`TokenBucket`); the bucket shared by every dispatcher
through DynamoDB (DESIGN.md, "Throttle") plugs in with
``Throttle(token_source_factory=...)`` without changing :class:`ResourceThrottle`.
The concurrency cap and the adaptive rate are per process.

Threads
-------
:class:`ResourceThrottle` and :class:`Throttle` take a lock around every operation,
so a permit may be released from a worker thread. The building blocks
(:class:`TokenBucket`, :class:`ConcurrencyLimiter`, :class:`AdaptiveRate`) are not
thread-safe on their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol, Self, TypeAlias

from dispatch.core.errors import ConfigurationError
from dispatch.core.resource import (
    DEFAULT_BACKPRESSURE_COOLDOWN_S,
    DEFAULT_DECREASE_FACTOR,
    DEFAULT_FLOOR_FRACTION,
    DEFAULT_RECOVERY_S,
    MAX_RESOURCE_NAME_LENGTH,
    Resource,
    default_burst,
    require_positive_finite,
)

__all__ = [
    # configuration
    "Resource",
    # what the dispatcher uses
    "Throttle",
    "ResourceThrottle",
    "Permit",
    "ThrottleSnapshot",
    # the seam for a shared bucket
    "TokenSource",
    "SlotSource",
    "Clock",
    # building blocks
    "TokenBucket",
    "ConcurrencyLimiter",
    "AdaptiveRate",
    # documented defaults
    "CONCURRENCY_RETRY_HINT_S",
    "DEFAULT_BACKPRESSURE_COOLDOWN_S",
    "DEFAULT_DECREASE_FACTOR",
    "DEFAULT_FLOOR_FRACTION",
    "DEFAULT_RECOVERY_S",
    "MAX_RESOURCE_NAME_LENGTH",
    "START_JITTER_S",
]

Clock: TypeAlias = Callable[[], float]
"""Returns the current time in seconds; only differences between readings matter."""

START_JITTER_S: Final = 0.02
"""Kept out of a bucket's capacity for what happens between the permit and the call
reaching the resource (the event loop, the HTTP request): at 200/s, 4 tokens. The
shared bucket (:mod:`dispatch.throttle.shared`) and the per-key buckets
(:mod:`dispatch.throttle.per_key`) both keep it."""

CONCURRENCY_RETRY_HINT_S: Final = 0.05
"""Seconds to wait before trying again when a resource is at its concurrency cap.

A slot frees when a running task settles, which no clock can predict, so a full cap
answers with this short hint: at most 50 ms of latency once a slot frees, and a poll
of an in-memory counter 20 times a second per saturated resource costs nothing.
"""
START_WINDOW_S: Final = 3.0
"""The window over which :meth:`ResourceThrottle.start_rate_per_s` measures starts, at
least; at low rates it is :data:`START_WINDOW_STARTS` starts' worth (at 0.5/s, 3 s
hold one or two starts: no measure of anything)."""
START_WINDOW_STARTS: Final = 4
ASSUMED_HOLD_S: Final = 1.0
"""How long a task is assumed to hold its slot before any has finished."""

_TOKEN_EPSILON: Final = 1e-9
"""A take succeeds when the bucket is within a billionth of a token of the amount.

Without it, sleeping exactly the wait a refused take returned could still fall short
by float rounding (of ``now - last``, of ``deficit / rate * rate``) and earn a second,
nanosecond-long wait. The tokens are still subtracted in full (the bucket may dip
below zero by this much), so the slack never accumulates across takes: the grant
bound is exceeded by at most this epsilon, not by epsilon per take.
"""


# --- the seam ------------------------------------------------------------------


class TokenSource(Protocol):
    """Where a :class:`ResourceThrottle` takes its tokens from: the rate limit's backend.

    :class:`TokenBucket` is the in-process implementation. A bucket shared by all
    dispatchers through DynamoDB will implement the same three operations; to keep
    :meth:`try_take` non-blocking (it is called on the event loop, under the
    throttle's lock) such a source serves tokens from an allotment leased in
    advance and refreshes the lease out of band, never with a request per take.
    """

    @property
    def tokens(self) -> float:
        """Tokens available now (for a shared source: the best local estimate)."""
        ...

    def try_take(self, n: float = 1.0, *, waiting: int = 1) -> float:
        """Take ``n`` tokens and return ``0.0``, or take nothing and return the
        seconds until ``n`` tokens will be available at the current rate.

        ``waiting`` is how many tasks wait for a token here now (this one
        included): a shared source sizes its next lease to it."""
        ...

    def set_rate(self, rate_per_s: float) -> None:
        """Refill at ``rate_per_s`` tokens per second from now on."""
        ...

    def idle(self) -> None:
        """No task waits for a token here now: a shared source hands leased tokens on
        to the dispatchers that have work, instead of letting them expire unused."""
        ...


class SlotSource(Protocol):
    """Where a :class:`ResourceThrottle` takes its concurrency slots from.

    :class:`ConcurrencyLimiter` is the in-process one; a cap shared by every
    dispatcher (slots leased from DynamoDB) implements the same operations, with
    :meth:`try_acquire` non-blocking like :meth:`TokenSource.try_take`.
    """

    @property
    def limit(self) -> int | None:
        """The cap (``None``: no cap)."""
        ...

    @property
    def in_flight(self) -> int:
        """Slots this process holds for running tasks."""
        ...

    def try_acquire(self) -> bool:
        """Take a slot if one is free here; never blocks."""
        ...

    def release(self) -> None:
        """Give back a slot taken by :meth:`try_acquire`."""
        ...

    def idle(self) -> None:
        """No task waits for a slot here now: a shared cap hands idle slots on to the
        dispatchers that wait for them, without waiting for them to age."""
        ...


# --- building blocks -------------------------------------------------------------


class TokenBucket:
    """The classic token bucket, starting full.

    Holds at most ``burst`` tokens and refills continuously at ``rate_per_s`` tokens
    per second. Over any window of ``w`` seconds it grants at most
    ``rate_per_s * w + burst`` tokens (while the rate is not raised). Implements
    :class:`TokenSource`. Not thread-safe on its own.
    """

    __slots__ = ("_burst", "_clock", "_last_s", "_rate_per_s", "_tokens")

    def __init__(self, rate_per_s: float, burst: float, *, clock: Clock = time.monotonic) -> None:
        require_positive_finite("rate_per_s", rate_per_s)
        require_positive_finite("burst", burst)
        self._rate_per_s = float(rate_per_s)
        self._burst = float(burst)
        self._clock = clock
        self._tokens = self._burst
        self._last_s = clock()

    @property
    def rate_per_s(self) -> float:
        """Tokens added per second."""
        return self._rate_per_s

    @property
    def burst(self) -> float:
        """The bucket's capacity, in tokens."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now (between 0 and ``burst``)."""
        elapsed_s = max(0.0, self._clock() - self._last_s)
        return max(0.0, min(self._burst, self._tokens + elapsed_s * self._rate_per_s))

    def try_take(self, n: float = 1.0, *, waiting: int = 1) -> float:
        """Take ``n`` tokens and return ``0.0``; or, when fewer than ``n`` are
        available, take nothing and return the seconds until there will be ``n``.

        The wait is exact: after that many seconds the same take succeeds. ``n``
        must be in ``(0, burst]`` (more could never be granted): else ``ValueError``.
        ``waiting`` is not needed in process: the bucket is the whole truth.
        """
        if not 0 < n <= self._burst:
            raise ValueError(f"n must be > 0 and <= burst={self._burst:g}, got {n!r}")
        self._refill()
        if self._tokens >= n - _TOKEN_EPSILON:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self._rate_per_s

    def idle(self) -> None:
        """Nothing to hand on: the bucket is this process's own."""

    def set_rate(self, rate_per_s: float) -> None:
        """Switch to ``rate_per_s`` tokens per second, after refilling at the old rate
        up to now (tokens earned so far are kept)."""
        require_positive_finite("rate_per_s", rate_per_s)
        self._refill()
        self._rate_per_s = float(rate_per_s)

    def _refill(self) -> None:
        now_s = self._clock()
        elapsed_s = now_s - self._last_s
        if elapsed_s > 0:  # a clock that steps back earns nothing and is not re-counted
            self._tokens = min(self._burst, self._tokens + elapsed_s * self._rate_per_s)
            self._last_s = now_s

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate_per_s={self._rate_per_s:g}, burst={self._burst:g}, "
            f"tokens={self.tokens:.3f})"
        )


class ConcurrencyLimiter:
    """Counts tasks in flight against an optional cap (``None``: count, never refuse).

    Not thread-safe on its own.
    """

    __slots__ = ("_in_flight", "_limit")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
        self._limit = limit
        self._in_flight = 0

    @property
    def limit(self) -> int | None:
        """The cap, or ``None`` for none."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots held now."""
        return self._in_flight

    @property
    def is_full(self) -> bool:
        """True when :meth:`try_acquire` would refuse."""
        return self._limit is not None and self._in_flight >= self._limit

    def try_acquire(self) -> bool:
        """Hold one more slot and return True, or return False when at the cap."""
        if self.is_full:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        """Give a slot back; more releases than acquisitions raise ``RuntimeError``."""
        if self._in_flight == 0:
            raise RuntimeError("ConcurrencyLimiter.release() called with nothing in flight")
        self._in_flight -= 1

    def idle(self) -> None:
        """Nothing to hand on: every slot of this process is its own."""

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter(limit={self._limit}, in_flight={self._in_flight})"


class AdaptiveRate:
    """AIMD: the rate a resource can take right now, between a floor and the configured rate.

    * :meth:`on_backpressure` multiplies the rate by ``decrease_factor``, at most once
      per ``cooldown_s`` (default :data:`DEFAULT_BACKPRESSURE_COOLDOWN_S`, 1 s), and
      never below ``floor_rate_per_s`` (default :data:`DEFAULT_FLOOR_FRACTION` of the
      configured rate, 5 %).
    * :meth:`on_success` raises it by ``increase_per_s`` (tokens/s gained per second,
      default ``configured / DEFAULT_RECOVERY_S``) for every second since the last
      success or backpressure signal, never above the configured rate.

    Recovery is additive in time but driven by successes: however many tasks run, a
    resource that keeps answering climbs back at ``increase_per_s`` per second; one
    that only fails (timeouts, errors) earns nothing; and seconds before an overload
    signal never count, even within the cool-down. Not thread-safe on its own.
    """

    __slots__ = (
        "_clock",
        "_configured_rate_per_s",
        "_cooldown_s",
        "_credit_from_s",
        "_decrease_factor",
        "_floor_rate_per_s",
        "_increase_per_s",
        "_last_decrease_s",
        "_rate_per_s",
    )

    def __init__(
        self,
        configured_rate_per_s: float,
        *,
        floor_rate_per_s: float | None = None,
        decrease_factor: float = DEFAULT_DECREASE_FACTOR,
        increase_per_s: float | None = None,
        cooldown_s: float = DEFAULT_BACKPRESSURE_COOLDOWN_S,
        clock: Clock = time.monotonic,
    ) -> None:
        require_positive_finite("configured_rate_per_s", configured_rate_per_s)
        if floor_rate_per_s is None:
            floor_rate_per_s = configured_rate_per_s * DEFAULT_FLOOR_FRACTION
        require_positive_finite("floor_rate_per_s", floor_rate_per_s)
        if floor_rate_per_s > configured_rate_per_s:
            raise ValueError(
                f"floor_rate_per_s={floor_rate_per_s:g} exceeds "
                f"configured_rate_per_s={configured_rate_per_s:g}"
            )
        if not 0 < decrease_factor < 1:
            raise ValueError(f"decrease_factor must be in (0, 1), got {decrease_factor!r}")
        if increase_per_s is None:
            increase_per_s = configured_rate_per_s / DEFAULT_RECOVERY_S
        require_positive_finite("increase_per_s", increase_per_s)
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ValueError(f"cooldown_s must be a finite number >= 0, got {cooldown_s!r}")
        self._configured_rate_per_s = float(configured_rate_per_s)
        self._floor_rate_per_s = float(floor_rate_per_s)
        self._decrease_factor = float(decrease_factor)
        self._increase_per_s = float(increase_per_s)
        self._cooldown_s = float(cooldown_s)
        self._clock = clock
        self._rate_per_s = self._configured_rate_per_s
        self._last_decrease_s = -math.inf
        self._credit_from_s = clock()

    @property
    def effective_rate_per_s(self) -> float:
        """The rate to use now, in tokens per second."""
        return self._rate_per_s

    @property
    def configured_rate_per_s(self) -> float:
        """The ceiling: the resource's configured rate."""
        return self._configured_rate_per_s

    @property
    def floor_rate_per_s(self) -> float:
        """The rate never drops below this."""
        return self._floor_rate_per_s

    @property
    def increase_per_s(self) -> float:
        """Tokens/s regained per second of successes."""
        return self._increase_per_s

    def on_backpressure(self) -> bool:
        """The resource said it is overloaded: lower the rate, unless it was lowered
        less than ``cooldown_s`` ago. Returns True when this signal lowered it (or
        would have, at the floor), False when the cool-down absorbed it."""
        now_s = self._clock()
        self._credit_from_s = max(self._credit_from_s, now_s)
        if now_s - self._last_decrease_s < self._cooldown_s:
            return False
        self._last_decrease_s = now_s
        self._rate_per_s = max(self._floor_rate_per_s, self._rate_per_s * self._decrease_factor)
        return True

    def adopt(self, rate_per_s: float) -> bool:
        """Take a lower rate decided elsewhere (another dispatcher saw the overload).

        Only decreases are adopted, never below the floor; the adoption starts a
        cool-down like a local decrease. Returns True when the rate changed.
        """
        lowered = max(self._floor_rate_per_s, min(self._configured_rate_per_s, rate_per_s))
        if lowered >= self._rate_per_s:
            return False
        now_s = self._clock()
        self._rate_per_s = lowered
        self._last_decrease_s = now_s
        self._credit_from_s = max(self._credit_from_s, now_s)
        return True

    def on_success(self) -> None:
        """A task using the resource succeeded: credit the seconds since the last
        signal toward recovery, at ``increase_per_s`` per second."""
        now_s = self._clock()
        elapsed_s = now_s - self._credit_from_s
        if elapsed_s > 0:
            if self._rate_per_s < self._configured_rate_per_s:
                self._rate_per_s = min(
                    self._configured_rate_per_s,
                    self._rate_per_s + elapsed_s * self._increase_per_s,
                )
            self._credit_from_s = now_s

    def __repr__(self) -> str:
        return (
            f"AdaptiveRate(effective={self._rate_per_s:g}/s, "
            f"configured={self._configured_rate_per_s:g}/s, floor={self._floor_rate_per_s:g}/s)"
        )


# --- what the dispatcher uses -----------------------------------------------------


class Permit:
    """A started task's concurrency slot: hold it while the task runs, then release it.

    :meth:`release` is idempotent (settling twice cannot free two slots) and may be
    called from any thread. A permit is also a context manager that releases on exit.
    Permits are made by :meth:`ResourceThrottle.try_start`, not by callers.
    """

    __slots__ = ("_owner", "_released", "resource_name", "started_at_s")

    def __init__(self, owner: ResourceThrottle, *, started_at_s: float) -> None:
        self._owner = owner
        self._released = False
        self.resource_name: str = owner.resource.name
        """The resource this slot belongs to."""
        self.started_at_s: float = started_at_s
        """The throttle clock's reading when the permit was granted, in seconds."""

    @property
    def released(self) -> bool:
        """True once the slot has been given back."""
        return self._released

    def release(self) -> None:
        """Give the slot back (again: no effect)."""
        self._owner._release(self)  # the permit and its throttle are one unit

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Permit {self.resource_name!r} {state}>"


@dataclass(frozen=True, slots=True)
class ThrottleSnapshot:
    """One resource's throttle at one moment, for logs, metrics and ``dispatch status``.

    Rates are in tokens per second; rate fields and ``tokens`` are ``None`` for a
    resource without a rate, ``max_concurrency`` is ``None`` without a cap.
    ``dataclasses.asdict(snapshot)`` gives the fields for a structured log line.
    """

    name: str
    configured_rate_per_s: float | None
    effective_rate_per_s: float | None
    tokens: float | None
    in_flight: int
    max_concurrency: int | None
    peak_in_flight: int
    """The most tasks in flight at once since the throttle was created."""
    started: int
    """Permits granted since the throttle was created."""
    waits: int
    """Tasks that had to wait before starting (as reported by ``note_wait``)."""
    wait_total_s: float
    """Seconds those tasks waited, in total."""
    backpressure_signals: int
    """Backpressure signals received (each may or may not have lowered the rate)."""
    mean_hold_s: float | None = None
    """How long a task holds its slot, on average lately (None before any has ended)."""

    @property
    def mean_wait_s(self) -> float:
        """Average wait of the tasks that waited, in seconds (0.0 when none did)."""
        return self.wait_total_s / self.waits if self.waits else 0.0


class ResourceThrottle:
    """The throttle of one :class:`Resource`: rate, concurrency cap and adaptive rate.

    Ask :meth:`try_start` before starting a task; it returns a :class:`Permit` to hold
    until the task settles, or the seconds to wait before asking again. Report the
    task's outcome with :meth:`on_success` / :meth:`on_backpressure`, and each wait
    you made with :meth:`note_wait`. Every method is thread-safe.

    ``token_source`` replaces the in-process :class:`TokenBucket` (for a bucket shared
    across dispatchers); it is only meaningful for a resource with a rate.
    ``slot_source`` likewise replaces the in-process :class:`ConcurrencyLimiter`.
    """

    def __init__(
        self,
        resource: Resource,
        *,
        clock: Clock = time.monotonic,
        token_source: TokenSource | None = None,
        slot_source: SlotSource | None = None,
    ) -> None:
        self._resource = resource
        self._clock = clock
        self._lock = threading.Lock()
        self._limiter: SlotSource = (
            slot_source if slot_source is not None else ConcurrencyLimiter(resource.max_concurrency)
        )
        self._source: TokenSource | None = None
        self._adaptive: AdaptiveRate | None = None
        rate_per_s = resource.rate_per_s
        if rate_per_s is None:
            if token_source is not None:
                raise ValueError(f"Resource {resource.name!r} has no rate_per_s to take tokens for")
        else:
            burst = resource.burst if resource.burst is not None else default_burst(rate_per_s)
            self._source = (
                token_source
                if token_source is not None
                else TokenBucket(rate_per_s, burst, clock=clock)
            )
            self._adaptive = AdaptiveRate(
                rate_per_s, floor_rate_per_s=resource.min_rate_per_s, clock=clock
            )
        self._started = 0
        self._peak_in_flight = 0
        self._waits = 0
        self._wait_total_s = 0.0
        self._backpressure_signals = 0
        self._created_at = clock()
        self._recent_starts: deque[float] = deque()  # start times within START_WINDOW_S
        self._refused_at: float | None = None  # last time a start had to wait
        self._mean_hold_s: float | None = None  # how long tasks hold their slot (EWMA)

    @property
    def resource(self) -> Resource:
        """The configuration this throttle enforces."""
        return self._resource

    @property
    def in_flight(self) -> int:
        """Permits held now."""
        return self._limiter.in_flight

    @property
    def effective_rate_per_s(self) -> float | None:
        """The adaptive rate in tokens per second, ``None`` without a rate limit."""
        return self._adaptive.effective_rate_per_s if self._adaptive is not None else None

    @property
    def tokens(self) -> float | None:
        """Tokens available now, ``None`` without a rate limit."""
        with self._lock:
            return self._source.tokens if self._source is not None else None

    def try_start(self, waiting: int = 1) -> Permit | float:
        """A :class:`Permit` when a concurrency slot and a token are both available,
        else the seconds after which starting may be possible.

        The slot is checked first and the token taken only with a free slot, so a
        resource at its cap burns no tokens. At the cap the answer is
        :data:`CONCURRENCY_RETRY_HINT_S` (when a slot frees cannot be known);
        short of tokens it is the exact wait for the next one. ``waiting`` is how
        many tasks wait to start here (this one included): the demand a shared
        token source leases for, never more than the free slots.
        """
        with self._lock:
            now = self._clock()
            if not self._limiter.try_acquire():
                self._refused_at = now
                return CONCURRENCY_RETRY_HINT_S
            if self._source is not None:
                cap = self._limiter.limit
                if cap is not None:
                    waiting = min(waiting, cap - self._limiter.in_flight + 1)
                wait_s = self._source.try_take(1.0, waiting=max(1, waiting))
                if wait_s > 0.0:
                    self._limiter.release()
                    self._refused_at = now
                    return wait_s
            self._started += 1
            self._peak_in_flight = max(self._peak_in_flight, self._limiter.in_flight)
            self._recent_starts.append(now)
            self._forget_starts(now)
            return Permit(self, started_at_s=now)

    def start_rate_per_s(self) -> float | None:
        """How many tasks per second this throttle can be expected to start here.

        While tasks have been waiting (the throttle is the limit), it is the rate at
        which it actually started them over the last :data:`START_WINDOW_S`: this
        dispatcher's share when several dispatchers share the resource. Otherwise
        it is what the limits allow: the effective rate, and for a concurrency cap
        ``cap / mean hold time`` (:data:`ASSUMED_HOLD_S` until a task has ended).
        ``None`` for a resource with neither a rate nor a cap.
        """
        with self._lock:
            now = self._clock()
            window_s = self._window_s()
            self._forget_starts(now)
            elapsed_s = min(window_s, now - self._created_at)
            saturated = self._refused_at is not None and now - self._refused_at < window_s
            if saturated and elapsed_s >= window_s / 2 and self._recent_starts:
                return len(self._recent_starts) / elapsed_s
            return self._limit_rate_per_s()

    def limit_rate_per_s(self) -> float | None:
        """How many tasks per second the limits allow, across every dispatcher: the
        effective rate, and for a concurrency cap ``cap / mean hold time``
        (:data:`ASSUMED_HOLD_S` until a task has ended); ``None`` without either."""
        with self._lock:
            return self._limit_rate_per_s()

    def _limit_rate_per_s(self) -> float | None:
        bounds = []
        if self._adaptive is not None:
            bounds.append(self._adaptive.effective_rate_per_s)
        cap = self._limiter.limit
        if cap is not None:
            hold_s = ASSUMED_HOLD_S if self._mean_hold_s is None else self._mean_hold_s
            bounds.append(cap / max(hold_s, 0.001))
        return min(bounds) if bounds else None

    def _window_s(self) -> float:
        rate_per_s = self._adaptive.effective_rate_per_s if self._adaptive is not None else None
        if rate_per_s is None:
            return START_WINDOW_S
        return max(START_WINDOW_S, START_WINDOW_STARTS / rate_per_s)

    def _forget_starts(self, now: float) -> None:
        window_s = self._window_s()
        while self._recent_starts and self._recent_starts[0] < now - window_s:
            self._recent_starts.popleft()

    def on_success(self) -> None:
        """A task using this resource succeeded: let the adaptive rate recover."""
        with self._lock:
            if self._adaptive is not None:
                self._adaptive.on_success()
                self._apply_rate()

    def on_backpressure(self) -> bool:
        """The resource is overloaded: lower its rate (once per cool-down).

        Returns True when the rate was lowered. A resource without a rate has
        nothing to lower (the signal is still counted); its task is retried later.
        """
        with self._lock:
            self._backpressure_signals += 1
            if self._adaptive is None or not self._adaptive.on_backpressure():
                return False
            self._apply_rate()
            return True

    def idle(self) -> None:
        """No task waits to start here now (the caller's waiting room is empty): slots
        and leased tokens held for the next task may go to other dispatchers that have
        work for them."""
        with self._lock:
            self._limiter.idle()
            if self._source is not None:
                self._source.idle()

    def adopt_rate(self, rate_per_s: float) -> bool:
        """Adopt a lower effective rate decided by another dispatcher (see
        :meth:`AdaptiveRate.adopt`); True when the rate changed."""
        with self._lock:
            if self._adaptive is None or not self._adaptive.adopt(rate_per_s):
                return False
            self._apply_rate()
            return True

    def note_wait(self, wait_s: float) -> None:
        """Record that a task waited ``wait_s`` seconds in total before it started.

        Call it once per task that could not start at once, with the time measured
        by the caller; tasks that started at once are not reported.
        """
        if not (math.isfinite(wait_s) and wait_s >= 0):
            raise ValueError(f"wait_s must be a finite number >= 0, got {wait_s!r}")
        with self._lock:
            self._waits += 1
            self._wait_total_s += wait_s

    def snapshot(self) -> ThrottleSnapshot:
        """The current state and counters, as an immutable value."""
        with self._lock:
            return ThrottleSnapshot(
                name=self._resource.name,
                configured_rate_per_s=self._resource.rate_per_s,
                effective_rate_per_s=self.effective_rate_per_s,
                tokens=self._source.tokens if self._source is not None else None,
                in_flight=self._limiter.in_flight,
                max_concurrency=self._limiter.limit,
                peak_in_flight=self._peak_in_flight,
                started=self._started,
                waits=self._waits,
                wait_total_s=self._wait_total_s,
                backpressure_signals=self._backpressure_signals,
                mean_hold_s=self._mean_hold_s,
            )

    def _apply_rate(self) -> None:
        if self._adaptive is not None and self._source is not None:
            self._source.set_rate(self._adaptive.effective_rate_per_s)

    def _release(self, permit: Permit) -> None:
        with self._lock:
            if permit._released:  # the permit and its throttle are one unit
                return
            permit._released = True
            self._limiter.release()
            held_s = max(0.0, self._clock() - permit.started_at_s)
            self._mean_hold_s = (
                held_s if self._mean_hold_s is None else 0.9 * self._mean_hold_s + 0.1 * held_s
            )

    def __repr__(self) -> str:
        return f"<ResourceThrottle {self._resource.name!r} in_flight={self.in_flight}>"


class Throttle:
    """The dispatcher's registry: one :class:`ResourceThrottle` per resource name.

    ``token_source_factory`` builds the token source of each resource with a rate
    (default: an in-process :class:`TokenBucket` on ``clock``); it is the seam for
    the bucket shared through DynamoDB.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        token_source_factory: Callable[[Resource], TokenSource] | None = None,
        slot_source_factory: Callable[[Resource], SlotSource] | None = None,
    ) -> None:
        self._clock = clock
        self._token_source_factory = token_source_factory
        self._slot_source_factory = slot_source_factory
        self._lock = threading.Lock()
        self._by_name: dict[str, ResourceThrottle] = {}

    def for_resource(self, resource: Resource) -> ResourceThrottle:
        """The throttle of ``resource``, created on first use.

        Two different configurations under one name would be two contradictory
        limits for the same thing: that raises
        :class:`~dispatch.core.errors.ConfigurationError` naming both.
        """
        with self._lock:
            existing = self._by_name.get(resource.name)
            if existing is not None:
                if existing.resource != resource:
                    raise ConfigurationError(
                        f"Resource {resource.name!r} is declared twice with different "
                        f"settings: {existing.resource!r} and {resource!r}",
                        setting="name",
                    )
                return existing
            token_source = None
            if resource.rate_per_s is not None and self._token_source_factory is not None:
                token_source = self._token_source_factory(resource)
            slot_source = None
            if resource.max_concurrency is not None and self._slot_source_factory is not None:
                slot_source = self._slot_source_factory(resource)
            created = ResourceThrottle(
                resource, clock=self._clock, token_source=token_source, slot_source=slot_source
            )
            self._by_name[resource.name] = created
            return created

    def snapshots(self) -> tuple[ThrottleSnapshot, ...]:
        """A snapshot of every resource's throttle, sorted by resource name."""
        with self._lock:
            throttles = sorted(self._by_name.values(), key=lambda t: t.resource.name)
        return tuple(t.snapshot() for t in throttles)

    def __len__(self) -> int:
        return len(self._by_name)
