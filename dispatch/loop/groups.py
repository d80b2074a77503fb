"""FIFO message groups: the messages of one group run one at a time, in the order received.

On a FIFO queue SQS hands out a group's messages in order and no later one while
an earlier one is in flight, but one receive may bring several messages of a
group at once, and the dispatcher used to run them side by side (so a2 could
finish before a0). :class:`GroupLines` lines them up as they are received: a
message of a group starts once the one before it is gone from the queue (its
delete sent: it succeeded, was dead-lettered or was a duplicate). When one does
not go (a retry, a throttle deferral, a crash, a release at a deadline), the
later messages of its group that the dispatcher already holds go back at once,
unrun and with no attempt spent: SQS hands the group out again from that message
after its backoff, in order. Standard queues, and messages without a group, are
not lined up.

It is the :class:`~dispatch.loop.sqs.SqsActions` the stages use, so that it sees a
message's delete when it is sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dispatch.core.deadletter import DeadLetter
from dispatch.core.delivery import Delivery
from dispatch.loop.sqs import SqsActions

__all__ = ["GroupLines"]


class GroupLines:
    """Lines of held messages per FIFO group, and the SQS actions that end a turn."""

    def __init__(self, sqs: SqsActions, *, fifo: bool) -> None:
        self._sqs = sqs
        self._fifo = fifo
        self._lines: dict[str, deque[str]] = {}  # group -> receipts, in receive order
        self._group_of: dict[str, str] = {}  # receipt -> group, while lined up
        self._head: dict[str, asyncio.Event] = {}  # receipt -> set once it is first
        self._back: set[str] = set()  # lined-up receipts that must go back unrun

    def __len__(self) -> int:
        return len(self._group_of)

    def line_up(self, delivery: Delivery) -> None:
        """Take the message's place in its group's line (call in receive order)."""
        if not self._fifo or delivery.group is None:
            return
        line = self._lines.setdefault(delivery.group, deque())
        line.append(delivery.receipt)
        self._group_of[delivery.receipt] = delivery.group
        self._head[delivery.receipt] = asyncio.Event()
        if len(line) == 1:
            self._head[delivery.receipt].set()

    @asynccontextmanager
    async def turn(self, delivery: Delivery) -> AsyncIterator[bool]:
        """Wait for the message's turn; yields False when it must go back unrun (an
        earlier message of its group went back). Leaving ends the turn."""
        receipt = delivery.receipt
        if receipt not in self._group_of:
            yield True
            return
        try:
            await self._head[receipt].wait()
            yield receipt not in self._back
        finally:
            # A message whose delete was sent has left its line already (see delete).
            self._leave(receipt, gone=False)

    def _leave(self, receipt: str, *, gone: bool) -> None:
        group = self._group_of.pop(receipt, None)
        if group is None:
            return
        self._head.pop(receipt, None)
        self._back.discard(receipt)
        line = self._lines[group]
        line.remove(receipt)
        if not gone:
            # Its turn ended without a delete: everything behind it goes back too.
            self._back.update(line)
        if line:
            self._head[line[0]].set()
        else:
            del self._lines[group]

    # --- SqsActions ------------------------------------------------------------------

    async def delete(self, receipt: str) -> None:
        if receipt in self._group_of:
            # The next of the group may start now: this one is settled, its delete on
            # the way (a delete that fails is safe: the redelivery finds it settled).
            self._leave(receipt, gone=True)
        await self._sqs.delete(receipt)

    async def hide(self, receipt: str, seconds: int) -> None:
        await self._sqs.hide(receipt, seconds)

    async def send_again(self, delivery: Delivery, delay_s: int) -> bool:
        return await self._sqs.send_again(delivery, delay_s)

    async def dead_letter(self, letter: DeadLetter) -> bool:
        return await self._sqs.dead_letter(letter)

    async def flush(self) -> None:
        await self._sqs.flush()
