"""The dispatcher's view of what operators paused (``dispatch pause``), kept fresh.

:class:`PauseWatch` reads the queue's pauses item (:mod:`dispatch.store.pauses`)
once before the dispatcher receives anything and then every
``DispatcherOptions.pause_refresh_s`` (5 s): one strongly consistent GetItem a
period, so a pause or a resume reaches this dispatcher within the period. A read
that fails keeps what was last read (and logs it): a dispatcher never starts a
paused task because DynamoDB hiccupped, nor stops one because of it.

The same item carries the queue's cancel requests (``dispatch cancel`` of a
running task, :mod:`dispatch.store.cancels`): each read hands them to the
watch's :class:`~dispatch.loop.cancels.Cancels` (``PauseWatch.cancels``), so
cancelling adds no request to the period's one GetItem.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core.config import Settings
from dispatch.loop.cancels import Cancels
from dispatch.store.cancels import read_cancel_requests
from dispatch.store.pauses import NOTHING_PAUSED, Pause, Paused, pauses_key, read_paused
from dispatch.tasks.registry import TaskSpec

__all__ = ["PauseWatch"]

log = structlog.get_logger("dispatch.loop.pauses")


class PauseWatch:
    """What is paused, as last read, and the loop that keeps it fresh."""

    def __init__(
        self,
        dynamodb: Any,
        *,
        table: str,
        queue_url: str,
        every_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb = dynamodb
        self.cancels = Cancels(dynamodb, table, queue_url)  # the requests the item carries
        self._clock = clock
        self._table = table
        self._key = pauses_key(queue_url)
        self.every_s = every_s
        self.paused: Paused = NOTHING_PAUSED
        self.reads = 0

    @classmethod
    def of_queue(cls, dynamodb: Any, settings: Settings, every_s: float) -> PauseWatch:
        """The watch of the control item of ``settings``' queue, read every ``every_s``."""
        return cls(dynamodb, table=settings.table, queue_url=settings.queue_url, every_s=every_s)

    def of(self, spec: TaskSpec) -> Pause | None:
        """The pause that stops this task now (its own or its resource's), if any."""
        return self.paused.of(spec.name, spec.resource.name if spec.resource else None)

    async def refresh(self) -> None:
        """Read the pauses item once; on failure keep what was read before."""
        self.reads += 1
        try:
            answer = await self._dynamodb.get_item(
                TableName=self._table, Key=self._key, ConsistentRead=True
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("pauses_read_failed", error=str(exc))
            return
        before = self.paused
        self.paused = read_paused(answer.get("Item"))
        self.cancels.update(read_cancel_requests(answer.get("Item"), now=self._clock()))
        if self.paused != before:
            log.info("pauses_changed", paused=[p.to_dict() for p in self.paused.all()])

    async def refresh_forever(self) -> None:
        """Read again every ``every_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.every_s)
            await self.refresh()
