"""Per-key limits: a token bucket and a concurrency cap for each key of one resource.

A resource declared with ``per_key=KeyLimits(...)`` limits each key (a tenant, a
customer) on its own, inside the resource's global limits (which
:class:`~dispatch.throttle.limits.ResourceThrottle` keeps). :class:`KeyLimiter` holds
the per-key state of one resource in this process: it says whether a key may start
now (:meth:`KeyLimiter.wait_s`), takes the key's token and slot when it does, and
gives the slot back when the task ends. The caller (the dispatcher's fair line,
:mod:`dispatch.loop.fairness`) asks the global throttle too: a start needs both.

Memory follows the active keys, not all keys: a key's state is created on its first
start and dropped once nothing of it is in flight and its bucket has refilled (a full
bucket and no slot held is exactly a new key's state, so forgetting it changes
nothing). Each bucket keeps the shared bucket's start margin (:func:`key_bucket`).
Time comes from an injected clock, as in :mod:`dispatch.throttle.limits`.
Not thread-safe: the dispatcher uses it from its event loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

from dispatch.core.resource import KeyLimits
from dispatch.throttle.limits import (
    CONCURRENCY_RETRY_HINT_S,
    START_JITTER_S,
    Clock,
    ConcurrencyLimiter,
    TokenBucket,
)

__all__ = ["MAX_SPACING_SHARE", "SWEEP_EVERY_S", "KeyLimiter", "key_bucket"]

SWEEP_EVERY_S: Final = 1.0
"""How often, at most, idle keys' state is looked for and dropped."""
MAX_SPACING_SHARE: Final = 0.025
"""A bucket with no burst to spare spaces its tokens by the start margin, but never by
more than this share of an interval (at 50/s with a burst of 1, 0.5 ms, not 20)."""
_TOKEN_SLACK: Final = 1e-9  # as TokenBucket.try_take: float rounding is not a wait


@dataclass(slots=True)
class _KeyState:
    bucket: TokenBucket | None
    slots: ConcurrencyLimiter
    started: int = 0  # tasks started since the key's state was made


class KeyLimiter:
    """The per-key buckets and caps of one resource (``Resource(per_key=...)``)."""

    def __init__(self, limits: KeyLimits, *, clock: Clock = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._states: dict[str, _KeyState] = {}
        self._swept_at = clock()

    @property
    def limits(self) -> KeyLimits:
        """The limits each key gets."""
        return self._limits

    def __len__(self) -> int:
        """Keys whose state is kept now (active lately)."""
        return len(self._states)

    def in_flight(self, key: str) -> int:
        """Tasks of ``key`` holding a slot now."""
        state = self._states.get(key)
        return state.slots.in_flight if state is not None else 0

    def started(self, key: str) -> int:
        """Tasks of ``key`` started since its state was made (0 for a forgotten key)."""
        state = self._states.get(key)
        return state.started if state is not None else 0

    def active_keys(self) -> list[str]:
        """The keys whose state is kept now."""
        return list(self._states)

    def may_start(self, key: str, most: int) -> int:
        """How many of ``most`` tasks of ``key`` its own limits let start now (its
        bucket's whole tokens, its free slots)."""
        state = self._states.get(key)
        rate, burst, cap = (
            self._limits.rate_per_s,
            self._limits.burst,
            self._limits.max_concurrency,
        )
        if state is None:
            tokens = math.inf if rate is None else float(burst or math.ceil(rate))
            free = math.inf if cap is None else float(cap)
        else:
            tokens = math.inf if state.bucket is None else state.bucket.tokens + _TOKEN_SLACK
            free = math.inf if cap is None else float(cap - state.slots.in_flight)
        return int(min(float(most), tokens // 1, free))

    def settled(self, key: str) -> bool:
        """Whether ``key`` is as a new key would be: nothing of it holds a slot and its
        bucket has refilled (so another dispatcher may start it afresh within its
        limits)."""
        state = self._states.get(key)
        return state is None or _is_fresh(state)

    def wait_s(self, key: str) -> float:
        """0.0 when ``key`` may start a task now (a token and a slot of its own), else
        the seconds until it may (:data:`CONCURRENCY_RETRY_HINT_S` at its cap)."""
        state = self._states.get(key)
        if state is None:
            return 0.0
        if state.slots.is_full:
            return CONCURRENCY_RETRY_HINT_S
        if state.bucket is None:
            return 0.0
        deficit = 1.0 - state.bucket.tokens
        return 0.0 if deficit <= _TOKEN_SLACK else deficit / state.bucket.rate_per_s

    def turn_s(self, key: str, ahead: int) -> float:
        """Seconds until ``key``'s own rate lets a task start with ``ahead`` tasks of
        the key waiting before it (0 without a per-key rate)."""
        rate = self._limits.rate_per_s
        if rate is None:
            return 0.0
        state = self._states.get(key)
        tokens = state.bucket.tokens if state is not None and state.bucket is not None else None
        if tokens is None:
            tokens = float(self._limits.burst or 1)
        return max(0.0, (ahead + 1 - tokens) / rate)

    def start(self, key: str) -> None:
        """Take ``key``'s token and slot for a task that starts now (the caller asked
        :meth:`wait_s`); RuntimeError when the key may not start."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self._new_state()
        if not state.slots.try_acquire():
            raise RuntimeError(f"key {key!r} is at its cap")
        if state.bucket is not None and state.bucket.try_take(1.0) > 0.0:
            state.slots.release()
            raise RuntimeError(f"key {key!r} has no token")
        state.started += 1
        self._sweep()

    def release(self, key: str) -> None:
        """A task of ``key`` ended: its slot goes back."""
        state = self._states.get(key)
        if state is not None and state.slots.in_flight:
            state.slots.release()
        self._sweep()

    def forget_idle(self) -> int:
        """Drop the state of every key with nothing in flight and a full bucket (the
        state a new key starts with); returns how many were dropped."""
        idle = [key for key, state in self._states.items() if _is_fresh(state)]
        for key in idle:
            del self._states[key]
        self._swept_at = self._clock()
        return len(idle)

    def _sweep(self) -> None:
        if self._clock() - self._swept_at >= SWEEP_EVERY_S:
            self.forget_idle()

    def _new_state(self) -> _KeyState:
        rate, burst = self._limits.rate_per_s, self._limits.burst
        bucket = None
        if rate is not None:
            bucket = key_bucket(rate, burst or math.ceil(rate), clock=self._clock)
        return _KeyState(bucket=bucket, slots=ConcurrencyLimiter(self._limits.max_concurrency))


def key_bucket(rate_per_s: float, burst: int, *, clock: Clock = time.monotonic) -> TokenBucket:
    """A key's bucket, with the start margin the shared bucket keeps
    (:data:`~dispatch.throttle.limits.START_JITTER_S`), so the key's starts as the
    resource sees them stay within ``rate * w + burst`` although each reaches it a
    little after its permit.

    Where the burst can spare it, the margin comes out of the capacity (no token is
    lost: 50/s with a burst of 5 keeps 4); a burst that cannot (a burst of 1) spaces
    its tokens by the margin instead, at most :data:`MAX_SPACING_SHARE` of an interval
    (at 1/s, 1.02 s apart: 2 % under the rate, the price of an exact bound with no
    burst to absorb a late start)."""
    capacity = burst - rate_per_s * START_JITTER_S
    if capacity >= 1.0:
        return TokenBucket(rate_per_s, capacity, clock=clock)
    spacing_s = min(START_JITTER_S, MAX_SPACING_SHARE / rate_per_s)
    return TokenBucket(1.0 / (1.0 / rate_per_s + spacing_s), 1.0, clock=clock)


def _is_fresh(state: _KeyState) -> bool:
    if state.slots.in_flight:
        return False
    return state.bucket is None or state.bucket.tokens >= state.bucket.burst
