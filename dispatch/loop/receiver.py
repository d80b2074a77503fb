"""Receiving: how many messages to ask SQS for, how often, and how many receives at once.

One receive at a time while receives come back short, so an idle or shallow
queue costs no more requests than with one; up to ``receive_concurrency`` out at
once while each brings a whole batch and none of it is throttle backlog. While
(nearly) every message received is backlog for a saturated resource, receives
slow down (a deep backlog is not received and deferred over and over).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any, Final

import structlog

from dispatch.core.delivery import Delivery
from dispatch.core.errors import ConfigurationError, DispatchError
from dispatch.core.signing import ATTR_SIGNATURE
from dispatch.loop.gate import ThrottleGate
from dispatch.loop.observe import Observer
from dispatch.loop.options import DispatcherOptions
from dispatch.store.aws import aws_errors

__all__ = ["Receiver"]

log = structlog.get_logger("dispatch.loop.receiver")

PACE_MAX_S: Final = 1.0
"""While (nearly) every message received is backlog for a saturated resource,
receives slow down to one per this many seconds at most; a receive with other
messages resets it."""
PACE_BACKLOG_SHARE: Final = 0.8
"""The share of a receive that must be backlog for the next receive to wait."""
DRAIN_WAIT_MAX_S: Final = 5
"""The longest poll while draining a queue whose messages are all hidden or held."""
EMPTY_SHORT_POLL_PAUSE_S: Final = 1.0
"""After a short poll (no long-poll wait) that found nothing, the next receive waits this long."""
_QUEUE_COUNTERS: Final = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


class Receiver:
    """The receives of one dispatcher on one queue."""

    def __init__(
        self,
        sqs: Any,
        *,
        queue_url: str,
        options: DispatcherOptions,
        gate: ThrottleGate,
        observer: Observer,
        stopping: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._options = options
        self._gate = gate
        self._observer = observer
        self._stopping = stopping
        self._clock = clock
        self.out: dict[asyncio.Future[list[Delivery]], int] = {}  # receive -> asked for
        self._pace_s = 0.0
        self._last_received = 0
        self._last_full = False
        self._empty_in_a_row = 0

    def may_receive_more(self) -> bool:
        """Whether to start another receive while ``len(self.out)`` are out."""
        if not self.out:
            return True
        return (
            len(self.out) < self._options.receive_concurrency
            and self._last_full
            and self._gate.backlogged == 0
            and self._pace_s == 0.0
        )

    def wait_s(self, *, until_empty: bool, deadline: float | None, linger_s: float = 0.0) -> int:
        """The long poll of the next receive: never past ``deadline``; ``linger_s``: how
        much longer an until-empty run keeps receiving after its last task.

        Draining (``until_empty``), the poll is short to notice the end, and doubles
        with each receive in a row that came back empty while the queue was not
        (messages hidden until their turn, or held by other dispatchers), up to
        :data:`DRAIN_WAIT_MAX_S`: a long poll returns as soon as a message is
        visible, so waiting longer costs no latency, only a later exit."""
        options = self._options
        if until_empty and linger_s > 0:
            # Lingering: long polls for what is left of it (a poll returns at once
            # when a message comes, so a long one costs no latency).
            wait_s = max(options.drain_wait_time_s, min(options.wait_time_s, math.ceil(linger_s)))
        elif until_empty:
            drain_s: int = options.drain_wait_time_s << min(self._empty_in_a_row, 8)
            wait_s = min(max(options.drain_wait_time_s, DRAIN_WAIT_MAX_S), drain_s)
        else:
            wait_s = options.wait_time_s
        if deadline is not None:
            wait_s = min(wait_s, max(0, math.floor(deadline - self._clock())))
        return wait_s

    async def start(self, room: int, wait_s: int, *, deadline: float | None) -> None:
        """Pace, then start a receive of up to ``room`` messages."""
        await self._pace()
        self.out[asyncio.ensure_future(self._receive(room, wait_s, deadline=deadline))] = room

    async def take(self) -> list[Delivery]:
        """Wait for a receive to come back; what the finished receives brought."""
        done, _ = await asyncio.wait(set(self.out), return_when=asyncio.FIRST_COMPLETED)
        deliveries: list[Delivery] = []
        for receive in done:
            asked = self.out.pop(receive)
            brought = receive.result()
            self._gate.receive_came_back()
            self._last_received = len(brought)
            self._last_full = len(brought) >= asked
            self._empty_in_a_row = 0 if brought else self._empty_in_a_row + 1
            deliveries.extend(brought)
        return deliveries

    async def last(self) -> list[Delivery]:
        """What the receives still out bring once they end (each long-polls no longer
        than the time left, and gives up at once when the dispatcher stops)."""
        deliveries: list[Delivery] = []
        for receive in self.out:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                deliveries.extend(await receive)
        self.out.clear()
        return deliveries

    async def queue_is_empty(self) -> bool:
        """No message visible, in flight or delayed."""
        with aws_errors("GetQueueAttributes"):
            answer = await self._sqs.get_queue_attributes(
                QueueUrl=self._queue_url, AttributeNames=list(_QUEUE_COUNTERS)
            )
        counts = answer.get("Attributes", {})
        return all(int(counts.get(name, "0")) == 0 for name in _QUEUE_COUNTERS)

    async def _pace(self) -> None:
        """Wait before receiving when the last receive brought (nearly) only backlog."""
        await asyncio.sleep(0)  # let the messages just received reach their backlog check
        backlogged = self._gate.backlogged
        if self._last_received and backlogged >= PACE_BACKLOG_SHARE * self._last_received:
            self._pace_s = min(PACE_MAX_S, max(0.05, self._pace_s * 2))
            # Deferred messages recalled into free room end the pause: they are due now.
            if await self._gate.recalled(self._pace_s) or self._stopping.is_set():
                self._pace_s = 0.0
        else:
            self._pace_s = 0.0

    async def _receive(self, room: int, wait_s: int, *, deadline: float | None) -> list[Delivery]:
        """Receive up to ``room`` messages, long-polling ``wait_s`` seconds.

        A short poll (``wait_s`` 0: the option, or the last second before
        ``deadline``) that brings nothing is followed by a pause of a second (or
        until ``deadline``), so an empty queue is not polled in a tight loop.
        """
        answer = await self._call(room, wait_s)
        if answer is None:
            return []
        deliveries = [Delivery.from_sqs(message) for message in answer.get("Messages", [])]
        if not deliveries and wait_s == 0:
            pause_s = EMPTY_SHORT_POLL_PAUSE_S
            if deadline is not None:
                pause_s = min(pause_s, max(0.0, deadline - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=pause_s)
        self._observer.received(deliveries, self._clock())
        return deliveries

    async def _call(self, room: int, wait_s: int) -> dict[str, Any] | None:
        """ReceiveMessage, given up when the dispatcher stops; None when it gave up or
        failed (after a pause)."""
        receive = asyncio.ensure_future(
            self._sqs.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=room,
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=self._options.visibility_timeout_s,
                MessageSystemAttributeNames=[
                    "ApproximateReceiveCount",
                    "SentTimestamp",
                    "MessageGroupId",
                ],
                MessageAttributeNames=[ATTR_SIGNATURE],
            )
        )
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({receive, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if receive not in done:
            # Stopping: a message SQS hands out now comes back after its visibility timeout.
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receive
            return None
        try:
            with aws_errors("ReceiveMessage"):
                answer: dict[str, Any] = receive.result()
        except ConfigurationError:
            raise
        except DispatchError as exc:
            log.error("receive_failed", error=str(exc))
            await asyncio.sleep(1.0)
            return None
        return answer
