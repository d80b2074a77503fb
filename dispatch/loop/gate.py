"""The throttle gate: where claimed tasks wait for their resource's permit, and who is sent away.

Per resource, one waiter at a time asks the throttle (an ``asyncio.Lock`` is first
come, first served): the rest queue behind it instead of all waking for every
token, and a finished task wakes the head at once. The waiting room holds about
what the resource can start within the throttle horizon; a message beyond it is
deferred before its claim (backlog), and a waiter whose permit would come after
the horizon is deferred after it (throttled). Waiting is never failing: no
attempt is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Final, Protocol

from structlog.typing import FilteringBoundLogger

from dispatch.core import constants as c
from dispatch.core.delivery import Delivery
from dispatch.core.resource import Resource
from dispatch.loop.observe import Observer, Skip
from dispatch.loop.sqs import SqsActions
from dispatch.throttle.limits import Permit, ResourceThrottle

__all__ = ["ThrottleGate", "Throttles"]

WAIT_ROOM_FILL: Final = 0.8
"""The share of the throttle horizon the waiting room fills, so its last waiter
starts inside the horizon instead of timing out after its claim."""


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
    ) -> None:
        self._throttles = throttles
        self._sqs = sqs
        self._horizon_s = horizon_s
        self._observer = observer
        self._stopping = stopping
        self.waiting: Counter[str] = Counter()
        self._backlogged = 0  # messages deferred as backlog since the last receive came back
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._released: dict[str, asyncio.Event] = {}

    def throttle(self, resource: Resource) -> ResourceThrottle:
        """The throttle of ``resource``."""
        return self._throttles.for_resource(resource)

    def backlog_delay_s(self, throttle: ResourceThrottle) -> float | None:
        """Seconds to hide a message that finds the waiting room full; None when it may wait.

        Hidden until the tasks waiting ahead of it have started: no write, no claim.
        """
        name = throttle.resource.name
        start_rate_per_s = throttle.start_rate_per_s()
        if self.waiting[name] < self.wait_room(throttle.resource, start_rate_per_s):
            return None
        self._backlogged += 1
        return self.waiting[name] / (start_rate_per_s or 1.0)

    @property
    def backlogged(self) -> int:
        """Messages deferred as backlog since the last receive came back."""
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
        horizon_s = self._horizon_s * WAIT_ROOM_FILL
        if start_rate_per_s is None:
            return max(1, resource.max_concurrency or 1)
        return max(1, math.floor(start_rate_per_s * horizon_s) + (resource.max_concurrency or 0))

    @contextlib.contextmanager
    def queued(self, name: str, count: int = 1) -> Iterator[None]:
        """Count ``count`` messages in resource ``name``'s waiting room for the block."""
        self.waiting[name] += count
        try:
            yield
        finally:
            self.waiting[name] -= count

    async def acquire(self, throttle: ResourceThrottle) -> tuple[Permit | None, float]:
        """A permit within the throttle horizon, or None and the seconds until one is
        likely; the wait is measured either way."""
        name = throttle.resource.name
        started = time.monotonic()
        async with self._locks[name]:
            while True:
                answer = throttle.try_start()
                waited = time.monotonic() - started
                if isinstance(answer, Permit) or (
                    waited + answer > self._horizon_s or self._stopping.is_set()
                ):
                    break
                await self._wait_for_release(name, answer)
        if waited > 0.001 or not isinstance(answer, Permit):
            throttle.note_wait(waited)
            self._observer.waited(name, waited)
        return (answer, 0.0) if isinstance(answer, Permit) else (None, answer)

    def release(self, permit: Permit) -> None:
        """Give a slot back and wake the tasks waiting for one of that resource."""
        permit.release()
        released = self._released.pop(permit.resource_name, None)
        if released is not None:
            released.set()

    async def defer(
        self, delivery: Delivery, wait_s: float, bound: FilteringBoundLogger, *, reason: str
    ) -> None:
        """Hide a message the throttle cannot start soon; no attempt is spent.

        Each receive counts toward the queue's redrive limit, so a message deferred
        many times is sent again as a fresh copy instead (receive count back to 0).
        """
        delay_s = max(1, min(c.SQS_MAX_VISIBILITY_S, math.ceil(wait_s)))
        self._observer.skipped(Skip.DEFERRED)
        bound.debug("task_deferred", reason=reason, delay_s=delay_s)
        if (delivery.receive_count or 0) >= c.REDRIVE_MAX_RECEIVE_COUNT // 2:
            if await self._sqs.send_again(delivery, delay_s):
                await self._sqs.delete(delivery.receipt)
            return
        await self._sqs.hide(delivery.receipt, delay_s)

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
