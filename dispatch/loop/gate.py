"""The throttle gate: where claimed tasks wait for their resource's permit, and who is sent away.

Per resource, one waiter at a time asks the throttle (an ``asyncio.Lock`` is first
come, first served): the rest queue behind it instead of all waking for every
token, and a finished task wakes the head at once. The waiting room holds about
what the resource can start within the throttle horizon; a message beyond it is
deferred before its claim (backlog), and a waiter whose permit would come after
the horizon is deferred after it (throttled). Waiting is never failing: no
attempt is spent.

A deferred message is hidden until its turn in this dispatcher's line: the work
ahead of it (waiters, and messages deferred before it) at the rate this
dispatcher starts the resource's tasks, less half a waiting room, so it is back
before the room runs dry. The line is a forecast; :class:`Deferrals` makes it
exact: whenever the waiting room has space for more, the earliest deferred
messages are recalled (visible again at once), so a resource never idles while
its work sits hidden.

A resource with per-key limits (``Resource(per_key=...)``) waits in a
:class:`~dispatch.loop.fairness.KeyedLine` instead: a line per key, started round
robin across keys, each key inside its own limits and the resource's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from dispatch.core import constants as c
from dispatch.core.delivery import Delivery
from dispatch.core.resource import Resource
from dispatch.loop.deferrals import Deferrals, hide_for_s
from dispatch.loop.fairness import KeyedLine
from dispatch.loop.key_owners import KeyOwners
from dispatch.loop.observe import Observer, Skip
from dispatch.loop.sqs import SqsActions, near_redrive_limit, send_fresh_copy
from dispatch.throttle.limits import Permit, ResourceThrottle

__all__ = ["ThrottleGate", "Throttles"]

WAIT_ROOM_FILL: Final = 0.8
"""The share of the throttle horizon the waiting room fills, so its last waiter
starts inside the horizon instead of timing out after its claim."""
RECALL_LEAD_S: Final = 1.5
"""Deferred messages are recalled once the waiting room holds less work than this."""
IDLE_AFTER_S: Final = 0.25
"""A resource whose waiting room stays empty this long is idle here: at 200/s the room
empties for a moment between two receives many times a second, which is not idle."""
RECALL_QUIET_S: Final = 1.0
"""No recall while receives brought messages beyond the waiting room this recently:
the queue itself still feeds the resource (a deep backlog visible on SQS), and a
recall would only add a request and a receive."""
BUSIEST_KEYS: Final = 5
"""Keys per keyed resource a dispatcher publishes for ``dispatch status`` and ``top``."""
FEED_EVERY_S: Final = 0.2
"""While messages are deferred, how often the waiting rooms are looked at for space."""
RECALL_BATCH: Final = c.SQS_MAX_BATCH_ENTRIES
"""Deferred messages are recalled ten at a time (one request), or as many as the room
has space for when it is smaller."""


class Throttles(Protocol):
    """Where a resource's throttle comes from (in-process, or shared through DynamoDB)."""

    def for_resource(self, resource: Resource) -> ResourceThrottle:
        """The throttle of ``resource``."""
        ...


class ThrottleGate:
    """The waiting room of every resource of one dispatcher."""

    def __init__(
        self,
        throttles: Throttles,
        *,
        horizon_s: float,
        observer: Observer,
        sqs: SqsActions,
        stopping: asyncio.Event,
        clock: Callable[[], float] = time.time,
        shared_with_others: Callable[[str], bool] | None = None,
        max_in_flight: int | None = None,
        key_owners: KeyOwners | None = None,
    ) -> None:
        self._throttles = throttles
        self._max_in_flight = max_in_flight
        self.key_owners = key_owners
        self._shared_with_others = shared_with_others
        self._keyed: dict[str, KeyedLine] = {}  # per keyed resource: its fair line
        self._sqs = sqs
        self._horizon_s = horizon_s
        self._observer = observer
        self._stopping = stopping
        self._clock = clock
        self.waiting: Counter[str] = Counter()
        self.deferrals = Deferrals(sqs, clock=clock)
        self._deferring: Counter[str] = Counter()  # hides on their way, per resource
        self._backlog_seen_at: dict[str, float] = {}  # last receive of a message beyond the room
        self._backlogged = 0  # backlog received since the last receive came back (pacing)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._released: dict[str, asyncio.Event] = {}
        self._by_name: dict[str, ResourceThrottle] = {}
        self._recalling: dict[str, asyncio.Task[int]] = {}
        self._recalled = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self.arrivals: Counter[str] = Counter()  # admitted messages per resource
        self.admitted_total = 0  # admitted messages, every resource or none

    def admitted(self, resource: Resource | None) -> None:
        """Count an admitted message (for the share of the queue each resource has)."""
        self.admitted_total += 1
        if resource is not None:
            self.arrivals[resource.name] += 1

    def lined_up(self) -> dict[str, dict[str, int]]:
        """Per resource: messages waiting here, deferred (hidden, due back), admitted."""
        names = set(self.waiting) | set(self._by_name)
        return {
            name: {
                "waiting": self.waiting[name],
                "deferred": self.deferrals.hidden(name),
                "arrivals": self.arrivals[name],
                "admitted": self.admitted_total,
            }
            for name in names
        }

    def busiest_keys(self, count: int = BUSIEST_KEYS) -> dict[str, list[dict[str, Any]]]:
        """Per keyed resource, its busiest keys here (:meth:`KeyedLine.busiest`)."""
        return {name: line.busiest(count) for name, line in self._keyed.items()}

    def throttle(self, resource: Resource) -> ResourceThrottle:
        """The throttle of ``resource``."""
        throttle = self._throttles.for_resource(resource)
        self._by_name[resource.name] = throttle
        return throttle

    def keyed_line(self, throttle: ResourceThrottle) -> KeyedLine | None:
        """The fair line of a resource with per-key limits (None for any other)."""
        per_key = throttle.resource.per_key
        if per_key is None:
            return None
        name = throttle.resource.name
        line = self._keyed.get(name)
        if line is None:
            line = self._keyed[name] = KeyedLine(
                throttle,
                per_key,
                horizon_s=self._horizon_s,
                stopping=self._stopping,
                max_in_flight=self._max_in_flight,
                owned=self._owned_here(name),
            )
        if (
            self.key_owners is None
            and self._shared_with_others is not None
            and self._shared_with_others(name)
        ):
            line.note_shared(name)
        return line

    def _owned_here(self, name: str) -> Callable[[str], bool] | None:
        owners = self.key_owners
        if owners is None:
            return None
        return lambda key: owners.owns(name, key)

    @property
    def keyed_lines(self) -> Mapping[str, KeyedLine]:
        """The fair line of each keyed resource seen here, by resource name."""
        return self._keyed

    async def elsewhere_s(self, throttle: ResourceThrottle, key: str | None) -> float | None:
        """With key owners on (:mod:`dispatch.loop.key_owners`): seconds to hide a
        message whose key another dispatcher owns (or whose lease could not be
        read), None when it may run here.

        Hidden as the key's backlog would be here, paced for its owner
        (:meth:`KeyedLine.backlog_turn_s`, at least the owners' own hint): a flooding
        key's messages that land on a non-owner come back spread out, not all at once
        every second."""
        if self.key_owners is None or key is None or throttle.resource.per_key is None:
            return None
        hide_s = await self.key_owners.hide_s(throttle.resource.name, key)
        line = self.keyed_line(throttle)
        if hide_s is None or line is None:
            return hide_s
        return max(hide_s, line.backlog_turn_s(key, elsewhere=True, pace=self.key_owners.pace()))

    def backlog_delay_s(self, throttle: ResourceThrottle, key: str | None = None) -> float | None:
        """Seconds to hide a message that finds the waiting room full (or, for a keyed
        resource, its key's share of it); None when it may wait.

        Hidden until its turn (:meth:`turn_s`, or its key's): no write, no claim.
        """
        name = throttle.resource.name
        start_rate_per_s = throttle.start_rate_per_s()
        room = self.wait_room(throttle.resource, start_rate_per_s)
        line = self.keyed_line(throttle) if key is not None else None
        if line is not None and key is not None:
            room = line.room(room)
            if line.may_wait(key, room=room, in_room=self.waiting[name]):
                return None
            if self.waiting[name] >= room:
                # Only a full room paces receives: while it has space, the next receive
                # may bring other keys' messages (a flood of one key sits ahead of
                # them on a queue without SQS fair queues).
                self._backlogged += 1
            pace = 1.0 if self.key_owners is None else self.key_owners.pace()
            return line.backlog_turn_s(key, pace=pace)  # its key's turn (see defer)
        if self.waiting[name] < room:
            if self.waiting[name] + 1 > room / 2:
                # Joins a line already half a room long: for pacing receives it counts
                # as backlog (the resource has seconds of work; no hurry for more).
                self._backlogged += 1
            return None
        self._backlogged += 1
        self._backlog_seen_at[name] = self._clock()
        return self.turn_s(throttle)

    def turn_s(self, throttle: ResourceThrottle) -> float:
        """Seconds until a message that joins the resource's line now should be back:
        the work ahead of it here (waiting, and deferred before it), less half a
        waiting room, at the rate the limits allow.

        That rate, not this dispatcher's share of it: sharing the resource, a message
        comes back early and is deferred again (a visibility change, a tenth of a
        receive), where a share measured low (another dispatcher took the tokens for
        a while) would hide it for many times its turn, out of reach of the other
        dispatchers' recalls."""
        name = throttle.resource.name
        rate_per_s = throttle.limit_rate_per_s() or 1.0
        room = self.wait_room(throttle.resource, rate_per_s)
        ahead = self.waiting[name] + self.deferrals.pending(name) + self._deferring[name]
        return max(0.0, (ahead - room / 2) / rate_per_s)

    @property
    def backlogged(self) -> int:
        """Messages received since the last receive came back that were deferred as
        backlog, or joined a waiting room already half full."""
        return self._backlogged

    def receive_came_back(self) -> None:
        """A receive came back: count the backlog its messages find from zero."""
        self._backlogged = 0

    def wait_room(self, resource: Resource, start_rate_per_s: float | None) -> int:
        """How many messages may wait here for this resource: about what it can start
        within the horizon (at this dispatcher's measured share of the rate, when
        several dispatchers share it). The rest are deferred at once, without a
        claim, so a saturated resource never fills the dispatcher's slots and
        blocks other resources' tasks, and no waiter claims a task it cannot start."""
        return max(1, self._starts_within_horizon(resource, start_rate_per_s))

    def _starts_within_horizon(self, resource: Resource, start_rate_per_s: float | None) -> int:
        """How many tasks the resource can start within (most of) the horizon: at 0.1/s
        and a 5 s horizon, none (the waiting room still holds one)."""
        if start_rate_per_s is None:
            return resource.max_concurrency or 1
        horizon_s = self._horizon_s * WAIT_ROOM_FILL
        return math.floor(start_rate_per_s * horizon_s) + (resource.max_concurrency or 0)

    @contextlib.contextmanager
    def queued(self, name: str, count: int = 1, *, key: str | None = None) -> Iterator[None]:
        """Count ``count`` messages in resource ``name``'s waiting room (and its key's)
        for the block; as they leave it, recall deferred messages into the space."""
        self.waiting[name] += count
        line = self._keyed.get(name) if key is not None else None
        try:
            if line is not None and key is not None:
                with line.queued(key, count):
                    yield
            else:
                yield
        finally:
            self.waiting[name] -= count
            self._feed(name)
            if not self.waiting[name] and not self.deferrals.pending(name):
                asyncio.get_running_loop().call_later(IDLE_AFTER_S, self._still_idle, name)

    def _still_idle(self, name: str) -> None:
        """Nothing has waited for ``name`` for :data:`IDLE_AFTER_S`: its slots and leased
        tokens may go to the dispatchers that have work."""
        throttle = self._by_name.get(name)
        if throttle is not None and not self.waiting[name] and not self.deferrals.pending(name):
            throttle.idle()

    def arrived(self, name: str, message_id: str) -> None:
        """A message of resource ``name`` was received (a recalled one is back)."""
        self.deferrals.arrived(name, message_id)

    def _feed(self, name: str) -> None:
        """Recall deferred messages of ``name`` when its waiting room has space for them."""
        throttle = self._by_name.get(name)
        if throttle is None or name in self._recalling or self._stopping.is_set():
            return
        if self._clock() - self._backlog_seen_at.get(name, -math.inf) < RECALL_QUIET_S:
            return  # receives still bring this resource's backlog: the queue feeds it
        recallable = self.deferrals.recallable(name)
        if not recallable:
            return
        # Only when the waiting room runs low (less than RECALL_LEAD_S of work left: a
        # recalled message needs a flush and a receive to arrive), and only what could
        # start within the horizon: a message the throttle cannot start by then stays
        # hidden until its turn (at 0.1/s, the next token is 10 s away). Recalling at
        # the first free place would hand messages to other dispatchers whose rooms
        # are full, and they would defer them again.
        rate_per_s = throttle.limit_rate_per_s()
        room = self._starts_within_horizon(throttle.resource, rate_per_s)
        lined_up = self.waiting[name] + self.deferrals.in_transit(name)
        low = (rate_per_s or 0.0) * RECALL_LEAD_S + (throttle.resource.max_concurrency or 0)
        free = room - lined_up
        if lined_up >= max(1.0, low) or free < 1:
            return
        recall = asyncio.ensure_future(self.deferrals.recall(name, min(free, RECALL_BATCH)))
        self._recalling[name] = recall
        recall.add_done_callback(lambda _: self._recall_done(name))

    def _recall_done(self, name: str) -> None:
        recall = self._recalling.pop(name)
        if not recall.cancelled() and recall.exception() is None and recall.result():
            self._observer.recalled(name, recall.result())
            self._recalled.set()

    async def recalled(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for deferred messages to be recalled; True if they were."""
        self._recalled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._recalled.wait(), timeout=timeout_s)
        return self._recalled.is_set()

    async def stop_feeding(self) -> None:
        """Stop looking for space to recall deferred messages into (they stay hidden)."""
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)

    async def aclose(self) -> None:
        """The dispatcher stops: every message it deferred is made visible now, for
        the dispatchers that go on."""
        await self.stop_feeding()
        if self._recalling:
            await asyncio.gather(*self._recalling.values(), return_exceptions=True)
        for name, count in (await self.deferrals.recall_all()).items():
            self._observer.recalled(name, count)
        if self.key_owners is not None:
            await self.key_owners.aclose()

    async def acquire(
        self, throttle: ResourceThrottle, key: str | None = None
    ) -> tuple[Permit | None, float]:
        """A permit within the throttle horizon, or None and the seconds until one is
        likely; the wait is measured either way. A keyed task waits in its key's line."""
        line = self.keyed_line(throttle) if key is not None else None
        if line is not None and key is not None:
            started = time.monotonic()
            answer = await line.acquire(key)
            self._measured(throttle, time.monotonic() - started, answer)
            return (answer, 0.0) if isinstance(answer, Permit) else (None, answer)
        name = throttle.resource.name
        started = time.monotonic()
        alone = self.waiting[name] == 1
        async with self._locks[name]:
            if alone:
                # The first of a receive's messages to reach an empty line: the rest of
                # the receive (spawned with it) lines up behind it first, so the throttle
                # is asked with all of them waiting and a shared bucket leases the burst
                # for them at once (not one token, the rest a lease interval later).
                await asyncio.sleep(0)
            while True:
                answer = throttle.try_start(self.waiting[name])
                waited = time.monotonic() - started
                # The head of the line gives up only when its own token is beyond the
                # horizon (0.1/s), or after two horizons in all: behind other waiters its
                # turn comes as theirs do, and deferring a task whose token is near
                # wastes its claim and the token.
                if isinstance(answer, Permit) or (
                    answer > self._horizon_s
                    or waited + answer > 2 * self._horizon_s
                    or self._stopping.is_set()
                ):
                    break
                await self._wait_for_release(name, answer)
        self._measured(throttle, waited, answer)
        return (answer, 0.0) if isinstance(answer, Permit) else (None, answer)

    def _measured(self, throttle: ResourceThrottle, waited: float, answer: Permit | float) -> None:
        if waited > 0.001 or not isinstance(answer, Permit):
            throttle.note_wait(waited)
            self._observer.waited(throttle.resource.name, waited)

    def release(self, permit: Permit) -> None:
        """Give a slot back and wake the tasks waiting for one of that resource."""
        permit.release()
        line = self._keyed.get(permit.resource_name)
        if line is not None:
            line.released(permit)
        released = self._released.pop(permit.resource_name, None)
        if released is not None:
            released.set()

    async def defer(
        self,
        delivery: Delivery,
        throttle: ResourceThrottle,
        bound: FilteringBoundLogger,
        *,
        reason: str,
        at_least_s: float = 0.0,
        keyed: bool = False,
    ) -> None:
        """Hide a message the throttle cannot start soon, until its turn (at least
        ``at_least_s``); no attempt is spent. It may be recalled before then, except
        a ``keyed`` one: hidden for its key's turn (``at_least_s``; the resource's
        line, a flood's messages included, is not ahead of its key), it comes back
        then (a recall by resource would bring the flood back ahead of the others).

        Each receive counts toward the queue's redrive limit, so a message deferred
        many times is sent again as a fresh copy instead (receive count back to 0).
        """
        name = throttle.resource.name
        delay_s = hide_for_s(at_least_s if keyed else max(at_least_s, self.turn_s(throttle)))
        self._observer.skipped(Skip.DEFERRED)
        bound.debug("task_deferred", reason=reason, delay_s=delay_s)
        if near_redrive_limit(delivery):
            await send_fresh_copy(self._sqs, delivery, delay_s)
            return
        due_at = self._clock() + delay_s
        # In line from now (the next message deferred counts it ahead of itself), but
        # noted in the ledger once hidden: a recall never races the hide.
        self._deferring[name] += 1
        try:
            await self._sqs.hide(delivery.receipt, delay_s)
        finally:
            self._deferring[name] -= 1
        if keyed:
            return
        self.deferrals.add(
            name, message_id=delivery.message_id, receipt=delivery.receipt, due_at=due_at
        )
        if self._feeder is None or self._feeder.done():
            self._feeder = asyncio.ensure_future(self._feed_while_deferred())

    async def _feed_while_deferred(self) -> None:
        """While messages are deferred here, look every :data:`FEED_EVERY_S` whether a
        waiting room has run low: the last waiter may have left while a recall was on
        its way, or while recalled messages were still counted as coming back."""
        while not self._stopping.is_set():
            names = [name for name in self._by_name if self.deferrals.recallable(name)]
            if not names:
                return
            for name in names:
                self._feed(name)
            await asyncio.sleep(FEED_EVERY_S)

    async def _wait_for_release(self, name: str, timeout_s: float) -> None:
        """Sleep ``timeout_s``, or less: until a task of resource ``name`` frees its slot."""
        released = self._released.setdefault(name, asyncio.Event())
        waits = {
            asyncio.ensure_future(released.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
