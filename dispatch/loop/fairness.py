"""The fair line of a keyed resource: per-key limits, and starts shared round robin across keys.

For a resource with ``per_key=KeyLimits(...)`` the gate's one first-come line is
replaced by one line per key (:class:`KeyedLine`). A scheduler coroutine runs
while any waits: it goes round the keys that have waiters, and starts the head of a
key when the key's own bucket and cap allow it (:class:`~dispatch.throttle.per_key.KeyLimiter`)
*and* the resource's global throttle grants a permit. A key that is saturated is
skipped (it never holds up the keys behind it); a key that just started goes to the
back of the round, so while keys compete for the global limit each gets one start
per round, whatever its backlog. When the global throttle refuses, the key at the
front keeps its place: it is first when the next token comes.

The waiting room is shared fairly too: a key may hold at most what its own limits
can start within the horizon, and at most half the dispatcher's ``max_in_flight``;
once the resource's room is full a key may still wait up to its equal share of the
room. What is beyond is deferred as backlog,
hidden until the key's own turn (a per-key forecast at the key's rate), so one
key's flood never fills the room other keys need. Waiting is never failing: a
waiter that gets no start within two horizons is deferred, its attempt given back.

The key's state is per dispatcher; key leases (on by default) make one dispatcher
at a time the owner of each active key (:mod:`dispatch.loop.key_owners`), so a key
not owned here (its lease lapsed or another's) skips its turns. With key leases off,
several dispatchers sharing a keyed resource each apply the per-key limits on their
own (docs/throttle.md, "Per-key limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, Final

import structlog

from dispatch.core.resource import KeyLimits
from dispatch.throttle.limits import Permit, ResourceThrottle
from dispatch.throttle.per_key import KeyLimiter
from dispatch.throttle.status import busiest_first

__all__ = ["KeyedLine"]

log = structlog.get_logger("dispatch.loop.fairness")

POLL_S: Final = 0.25
"""The scheduler looks again at least this often while tasks wait (a stop, a token)."""
WAIT_ROOM_FILL: Final = 0.8
"""As the gate's room: a key's room holds what it can start within 80 % of the horizon."""
ASSUMED_HOLD_S: Final = 1.0
"""A key limited by a cap alone is assumed to start one task per slot per second."""
DEMAND_AHEAD_S: Final = 1.0
"""A key's demand on the resource's bucket: what it may start now and over this long."""
RECEIVE_RESERVE: Final = 0.25
"""The share of ``max_in_flight`` a keyed room never fills: with every place taken by
waiters of keys that are waiting for their own tokens, nothing more is received, and a
key whose messages ran out here waits for a place to free (measured: 100 keys at 1/s on
2 dispatchers ran at 0.86/s each with the whole of ``max_in_flight``, 0.96/s without it)."""
KEY_SHARE_OF_IN_FLIGHT: Final = 0.5
"""The most of a dispatcher's ``max_in_flight`` one key's waiters may take: the rest
stays for the other keys (and resources), whose messages a flood would otherwise
leave unreceived behind its own."""


class KeyedLine:
    """The waiters of one keyed resource in this dispatcher, and who starts next."""

    def __init__(
        self,
        throttle: ResourceThrottle,
        limits: KeyLimits,
        *,
        horizon_s: float,
        stopping: asyncio.Event,
        max_in_flight: int | None = None,
        owned: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owned = owned  # with key owners on: whether a key may start here now
        self._throttle = throttle
        self.keys = KeyLimiter(limits, clock=clock)
        self._horizon_s = horizon_s
        self._max_in_flight = max_in_flight
        self._stopping = stopping
        self._clock = clock
        self._lines: dict[str, deque[asyncio.Future[Permit | float]]] = {}
        self._ring: deque[str] = deque()  # keys with waiters, in round-robin order
        self._held: dict[Permit, str] = {}  # running tasks' permits -> their key
        self.waiting: Counter[str] = Counter()  # messages in the room, per key
        self._due: dict[str, float] = {}  # per key: when its last deferred message is due
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.warned_shared = False

    # --- the waiting room ------------------------------------------------------------

    def busiest(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` keys with the most tasks waiting and running here, then the most
        started: ``{"key", "waiting", "in_flight", "started"}`` each."""
        keys = set(self.waiting) | set(self.keys.active_keys())
        rows: list[dict[str, Any]] = [
            {
                "key": key,
                "waiting": self.waiting[key],
                "in_flight": self.keys.in_flight(key),
                "started": self.keys.started(key),
            }
            for key in keys
        ]
        return busiest_first(rows, count)

    def key_room(self) -> int:
        """How many messages one key may hold here: what its own limits start within
        most of the horizon, and at most :data:`KEY_SHARE_OF_IN_FLIGHT` of the
        dispatcher's ``max_in_flight`` (at least one), so a flooding key never takes
        every place the dispatcher has and other keys' messages are still received."""
        limits = self.keys.limits
        horizon_s = self._horizon_s * WAIT_ROOM_FILL
        cap = limits.max_concurrency or 0
        if limits.rate_per_s is None:
            own = math.floor(cap / ASSUMED_HOLD_S * horizon_s) + cap
        else:
            own = math.floor(limits.rate_per_s * horizon_s) + cap
        if self._max_in_flight is not None:
            own = min(own, math.floor(self._max_in_flight * KEY_SHARE_OF_IN_FLIGHT))
        return max(1, own)

    def room(self, resource_room: int) -> int:
        """The resource's waiting room for keyed messages: ``resource_room``, and never
        more than ``max_in_flight`` less :data:`RECEIVE_RESERVE` of it (beyond it, the
        equal shares of :meth:`may_wait` would be shares of places the dispatcher does
        not have, and a room that fills every place stops the receives that bring the
        next message of a key whose waiters ran out)."""
        if self._max_in_flight is None:
            return resource_room
        places = math.floor(self._max_in_flight * (1 - RECEIVE_RESERVE))
        return max(1, min(resource_room, places))

    def busy(self, key: str) -> bool:
        """Whether tasks of ``key`` wait or run here, or its bucket has not refilled since
        its last start here (handing it to another dispatcher then could start it
        beyond its limits)."""
        return bool(self.waiting.get(key)) or not self.keys.settled(key)

    def active(self) -> list[str]:
        """Every key :meth:`busy` here."""
        return [key for key in {*self.waiting, *self.keys.active_keys()} if self.busy(key)]

    def may_wait(self, key: str, *, room: int, in_room: int) -> bool:
        """Whether a message of ``key`` may join the room (else it is backlog): its key
        holds less than its own room, and the resource's room has space or the key
        holds less than an equal share of it among the keys waiting."""
        mine = self.waiting[key]
        if mine >= self.key_room():
            return False
        if in_room < room:
            return True
        keys = len(self.waiting) + (0 if mine else 1)
        return mine < max(1, room // keys)

    def backlog_turn_s(self, key: str, *, elsewhere: bool = False, pace: float = 1.0) -> float:
        """Seconds to hide a message of ``key`` deferred as backlog: after the key's
        room has half drained and every message of the key deferred before it, at
        the rate the limits allow the key (its own, or the resource's when lower; a
        cap alone counts one start per slot per second). Not its share among the
        keys waiting now: as for the gate's turn, a message back early is only
        deferred again, where a share measured while others competed would hide it
        long after they are gone.

        With key leases, only some of what comes back reaches the key's owner, so the
        messages come back at ``pace`` times the key's rate (the key owners' pace:
        owned here, after the same lead; ``elsewhere``, owned by another dispatcher,
        from now)."""
        limits = self.keys.limits
        rate = limits.rate_per_s or (limits.max_concurrency or 1) / ASSUMED_HOLD_S
        resource_rate = self._throttle.limit_rate_per_s()
        if resource_rate is not None:
            rate = min(rate, resource_rate)
        now = self._clock()
        if len(self._due) > 2 * max(1, len(self.waiting)) + 64:
            self._due = {k: due for k, due in self._due.items() if due > now}
        lead_s = 0.0 if elsewhere else self.key_room() / 2 / rate
        start = max(now + lead_s, self._due.get(key, -math.inf))
        due = start + 1.0 / rate / pace
        self._due[key] = due
        return due - now

    @contextlib.contextmanager
    def queued(self, key: str, count: int = 1) -> Iterator[None]:
        """Count ``count`` messages of ``key`` in the room for the block."""
        self.waiting[key] += count
        try:
            yield
        finally:
            self.waiting[key] -= count
            if self.waiting[key] <= 0:
                del self.waiting[key]

    # --- starting ----------------------------------------------------------------------

    async def acquire(self, key: str) -> Permit | float:
        """A permit for a task of ``key`` (the key's token and slot taken with it), or
        the seconds until one is likely when it cannot start within the horizon."""
        line = self._lines.get(key)
        own_s = self.keys.turn_s(key, len(line) if line is not None else 0)
        if own_s > self._horizon_s:
            return own_s  # the key's own rate: its token is beyond the horizon
        future: asyncio.Future[Permit | float] = asyncio.get_running_loop().create_future()
        if line is None:
            line = self._lines[key] = deque()
            self._ring.append(key)
        line.append(future)
        self._kick()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=2 * self._horizon_s)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()
            future.cancel()
            return max(self.keys.wait_s(key), POLL_S)
        except BaseException:
            if future.done() and not future.cancelled():
                answer = future.result()
                if isinstance(answer, Permit):
                    self.released(answer)
                    answer.release()
            future.cancel()
            raise

    def released(self, permit: Permit) -> None:
        """A task of this resource ended: its key's slot goes back; the line looks again."""
        key = self._held.pop(permit, None)
        if key is not None:
            self.keys.release(key)
        if self._ring:
            self._wake.set()

    def _kick(self) -> None:
        self._wake.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self._schedule()
        except Exception:  # never leave waiters hanging: they are deferred instead
            log.exception("keyed_line_failed", resource=self._throttle.resource.name)
            self._answer_all(POLL_S)

    async def _schedule(self) -> None:
        while self._ring:
            self._wake.clear()
            if self._stopping.is_set():
                self._answer_all(0.0)
                return
            pause_s = self._start_what_may()
            if not self._ring:
                return
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(pause_s, POLL_S))

    def _start_what_may(self) -> float:
        """Start waiters round robin while both limits allow; the seconds until it is
        worth looking again."""
        pause_s = math.inf
        skipped = 0
        ready: float | None = None
        while self._ring and skipped < len(self._ring):
            key = self._ring[0]
            line = self._lines[key]
            while line and line[0].done():  # a waiter that gave up
                line.popleft()
            if not line:
                self._ring.popleft()
                del self._lines[key]
                continue
            key_wait_s = self.keys.wait_s(key)
            if self._owned is not None and not self._owned(key):
                key_wait_s = POLL_S  # its lease lapsed here: fail closed
            if key_wait_s > 0.0:  # saturated: skipped, never in the others' way
                pause_s = min(pause_s, key_wait_s)
                self._ring.rotate(-1)
                skipped += 1
                continue
            if ready is None:
                ready = self._ready()
            answer = self._throttle.try_start(max(1, int(ready)))
            if not isinstance(answer, Permit):
                if answer > self._horizon_s:  # the resource's own next token is too far
                    self._answer_all(answer)
                return min(pause_s, answer)  # the front key keeps its turn
            self.keys.start(key)
            self._held[answer] = key
            line.popleft().set_result(answer)
            self._ring.rotate(-1)
            skipped = 0
        return pause_s

    def _ready(self) -> float:
        """How many of the room's messages their keys' own limits let start within the
        next second: the demand a shared bucket leases for. Not every message: one
        key's 50 at 1/s want one or two tokens, and tokens leased for the rest would
        come due long before they may start and be dropped, while another
        dispatcher's keys wait for them."""
        rate = self.keys.limits.rate_per_s
        ahead = math.inf if rate is None else rate * DEMAND_AHEAD_S
        return sum(
            min(count, self.keys.may_start(key, count) + ahead)
            for key, count in self.waiting.items()
            if self._owned is None or self._owned(key)
        )

    def _answer_all(self, wait_s: float) -> None:
        """Send every waiter away (deferred): stopping, or no token within the horizon."""
        for line in self._lines.values():
            for future in line:
                if not future.done():
                    future.set_result(wait_s)
        self._lines.clear()
        self._ring.clear()

    def note_shared(self, name: str) -> None:
        """Warn, once, that another dispatcher uses this keyed resource: per-key limits
        are applied by each dispatcher on its own."""
        if not self.warned_shared:
            self.warned_shared = True
            log.warning(
                "per_key_limits_per_dispatcher",
                resource=name,
                detail="another dispatcher shares this resource: its global limits are "
                "shared, but each dispatcher applies the per-key limits on its own, so a "
                "key may get up to N times its limits with N dispatchers: key leases are "
                "off here (DispatcherOptions(key_leases=False); docs/throttle.md, "
                "'Per-key limits')",
            )
