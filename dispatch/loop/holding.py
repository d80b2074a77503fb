"""Holding: the messages a dispatcher holds, its room for more, and their heartbeat.

A message is held from its receive until its settlement is sent. While held, its
visibility is extended (the heartbeat), so a long task is never delivered twice
while it runs. ``max_in_flight`` bounds the held messages that wait to start or
run; one whose outcome is known and only waits for its batched settlement does
not take a place (at 200 tasks/s the settlement batches alone would fill 64),
though all held messages together stay under twice ``max_in_flight``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from dispatch.core.delivery import Delivery
from dispatch.loop.sqs import SqsActions

__all__ = ["Held", "Holding"]


@dataclass(slots=True)
class Held:
    """One held message: when its visibility runs out, and whether it is settling."""

    receipt: str
    message_id: str
    visible_until: float
    settling: bool = False


class Holding:
    """The held messages of one dispatcher, keyed by receipt handle."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        visibility_timeout_s: int,
        clock: Callable[[], float],
    ) -> None:
        self._max_in_flight = max_in_flight
        self._visibility_timeout_s = visibility_timeout_s
        self._clock = clock
        self._held: dict[str, Held] = {}
        self._freed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, delivery: Delivery) -> None:
        """Hold a message just received (hidden for one visibility timeout)."""
        self._held[delivery.receipt] = Held(
            receipt=delivery.receipt,
            message_id=delivery.message_id,
            visible_until=self._clock() + self._visibility_timeout_s,
        )

    def settling(self, receipt: str) -> None:
        """The message's outcome is known: it no longer takes a place."""
        held = self._held.get(receipt)
        if held is not None:
            held.settling = True
            self._freed.set()

    def drop(self, receipt: str) -> None:
        """The message is no longer held (settled, given back, or left to SQS)."""
        self._held.pop(receipt, None)
        self._freed.set()

    def room(self) -> int:
        """How many more messages may be held."""
        active = sum(1 for held in self._held.values() if not held.settling)
        return min(self._max_in_flight - active, 2 * self._max_in_flight - len(self._held))

    async def wait_for_room(self, timeout_s: float = 1.0) -> None:
        """Return once a place frees, or after ``timeout_s``."""
        self._freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), timeout=timeout_s)

    async def heartbeat(self, sqs: SqsActions) -> None:
        """Extend the visibility of held messages well before it runs out, forever.

        Every third of the visibility timeout, any held message with less than two
        thirds of it left is hidden for a whole timeout again, so one late beat
        (a busy loop, a slow batch) still leaves a third of the timeout in hand.
        """
        timeout = self._visibility_timeout_s
        period = timeout / 3
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            due = [
                held
                for held in self._held.values()
                if not held.settling and held.visible_until - now <= 2 * period
            ]
            for held in due:
                held.visible_until = now + timeout
            if due:
                await asyncio.gather(*(sqs.hide(held.receipt, timeout) for held in due))
