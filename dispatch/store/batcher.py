"""Batching of SQS calls: DeleteMessageBatch, ChangeMessageVisibilityBatch, SendMessageBatch.

Settling tasks one by one would cost one SQS request per task per action. A
:class:`Batcher` collects entries for one batch action and sends them 10 at a
time, or after a short window (``flush_s``) when fewer are waiting. ``submit``
returns once the entry's batch has been answered, so callers keep their order
(record first, then delete). A later entry for the same receipt handle replaces
an earlier one still waiting (the last visibility change wins).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.store.aws import translate_error
from dispatch.store.aws_retry import Backoff

__all__ = ["Batcher", "EntryResult"]

log = structlog.get_logger("dispatch.store.batcher")

_CALL_ATTEMPTS: Final = 5
# A batch call that failed after the client's own retries is made again after a
# full-jitter pause of up to 0.1 s, 0.2 s, 0.4 s, 0.8 s.
_CALL_BACKOFF: Final = Backoff(tenacity.wait_exponential(multiplier=0.1))

SendBatch = Callable[[list[dict[str, Any]]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class EntryResult:
    """How SQS answered one entry."""

    ok: bool
    code: str = ""
    message: str = ""
    item: dict[str, Any] | None = None  # the item a refused conditional write returned


@dataclass(slots=True)
class _Pending:
    entry: dict[str, Any]
    future: asyncio.Future[EntryResult]


def _receipt_handle(entry: dict[str, Any]) -> str | None:
    handle = entry.get("ReceiptHandle")
    return str(handle) if handle is not None else None


class Batcher:
    """Sends entries of one batch action in groups of up to ``max_entries``.

    ``send`` gets the entries, each with an ``Id`` added, and answers like SQS:
    ``{"Failed": [{"Id": ..., "Code": ..., "Message": ...}]}`` for the entries
    that failed. ``key_of`` names the thing an entry is about (default: its SQS
    receipt handle); a later entry about the same thing replaces a waiting one.
    """

    def __init__(
        self,
        name: str,
        send: SendBatch,
        *,
        flush_s: float = 0.05,
        size_of: Callable[[dict[str, Any]], int] | None = None,
        max_entries: int = c.SQS_MAX_BATCH_ENTRIES,
        key_of: Callable[[dict[str, Any]], str | None] = _receipt_handle,
    ) -> None:
        self.name = name
        self._size_of = size_of
        self._max_entries = max_entries
        self._key_of = key_of
        self._send = send
        self._flush_s = flush_s
        self._pending: list[_Pending] = []
        self._timer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.calls = 0

    async def submit(self, entry: dict[str, Any]) -> EntryResult:
        """Queue one entry (without its ``Id``); wait for SQS's answer to it."""
        future: asyncio.Future[EntryResult] = asyncio.get_running_loop().create_future()
        key = self._key_of(entry)
        if key is not None:
            for waiting in self._pending:
                if self._key_of(waiting.entry) == key:
                    # Superseded: the newer entry decides; the older caller sees success.
                    waiting.future.set_result(EntryResult(ok=True, code="Superseded"))
                    self._pending.remove(waiting)
                    break
        self._pending.append(_Pending(entry, future))
        if len(self._pending) >= self._max_entries:
            self._start_send()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())
        return await future

    async def flush(self) -> None:
        """Send everything waiting now and wait for the answers."""
        while self._pending:
            self._start_send()
        if self._inflight:
            await asyncio.gather(*self._inflight)

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self._flush_s)
        finally:
            self._timer = None
        while self._pending:
            self._start_send()

    def _start_send(self) -> None:
        take = min(len(self._pending), self._max_entries)
        if self._size_of is not None:
            # SendMessageBatch also limits the sum of the bodies to 1 MiB.
            total = 0
            for i, waiting in enumerate(self._pending[:take]):
                total += self._size_of(waiting.entry)
                if total > c.SQS_MAX_BATCH_BYTES and i > 0:
                    take = i
                    break
        batch = self._pending[:take]
        del self._pending[:take]
        if not batch:
            return
        task = asyncio.create_task(self._send_batch(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    @staticmethod
    def _fail(batch: list[_Pending], code: str, message: str) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_result(EntryResult(ok=False, code=code, message=message))

    async def _send_batch(self, batch: list[_Pending]) -> None:
        entries = [dict(p.entry, Id=str(i)) for i, p in enumerate(batch)]
        answer: Any = None
        for attempt in range(_CALL_ATTEMPTS):
            try:
                self.calls += 1
                answer = await self._send(entries)
                break
            except (ClientError, BotoCoreError) as exc:
                error = translate_error(exc, self.name)
                if attempt == _CALL_ATTEMPTS - 1:
                    log.error(
                        "sqs_batch_failed", action=self.name, entries=len(entries), error=str(error)
                    )
                    code = getattr(error, "code", None) or "CallFailed"
                    self._fail(batch, code, str(error))
                    return
                log.info("sqs_batch_retry", action=self.name, attempt=attempt + 1, error=str(error))
                # The module's `random` draws the jitter (tests make it deterministic).
                await asyncio.sleep(_CALL_BACKOFF.pause_s(attempt + 1, uniform=random.uniform))
            except Exception as exc:
                # Not an AWS answer (a bug, a cancelled loop): every caller still
                # gets an answer, so nobody waits forever on an entry.
                log.exception("sqs_batch_crashed", action=self.name, entries=len(entries))
                self._fail(batch, "InternalError", repr(exc))
                return
        failed = {f["Id"]: f for f in answer.get("Failed", [])}
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            problem = failed.get(str(i))
            if problem is None:
                p.future.set_result(EntryResult(ok=True))
            else:
                item = problem.get("Item")
                p.future.set_result(
                    EntryResult(
                        ok=False,
                        code=str(problem.get("Code", "")),
                        message=str(problem.get("Message", "")),
                        item=dict(item) if item else None,
                    )
                )
