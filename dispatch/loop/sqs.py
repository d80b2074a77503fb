"""SQS actions on held messages: delete, hide, copy back, dead-letter, each batched by 10.

The one place the loop changes a message's lifecycle on SQS. Every action goes
through a :class:`~dispatch.store.batcher.Batcher`, so settlements made at about
the same time share one request. :class:`SqsActions` is the seam: the pipeline's
unit tests use an in-memory one.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from dispatch.core import constants as c
from dispatch.core.deadletter import DeadLetter
from dispatch.core.delivery import Delivery
from dispatch.store.batcher import Batcher, EntryResult

__all__ = [
    "SqsActions",
    "SqsBatchers",
    "hide_or_send_again",
    "near_redrive_limit",
    "send_fresh_copy",
]

log = structlog.get_logger("dispatch.loop.sqs")


class SqsActions(Protocol):
    """What the stages may do to a message on SQS."""

    async def delete(self, receipt: str) -> None:
        """Delete a settled message (a lost delete is safe: the record settles a redelivery)."""

    async def hide(self, receipt: str, seconds: int) -> None:
        """Make a held message visible again in ``seconds`` (0: at once)."""

    async def send_again(self, delivery: Delivery, delay_s: int) -> bool:
        """Put a copy of the message on the queue, due in ``delay_s`` (at most SQS's 15
        minutes: a longer delay is cut to that); True once sent."""

    async def dead_letter(self, letter: DeadLetter) -> bool:
        """Put the dead letter on the DLQ; True once sent."""

    async def flush(self) -> None:
        """Send what waits in the batches now."""


class SqsBatchers:
    """:class:`SqsActions` on a queue and its DLQ, through one batcher per action."""

    def __init__(self, sqs: Any, *, queue_url: str, dlq_url: str, flush_s: float) -> None:
        async def delete(entries: list[dict[str, Any]]) -> Any:
            return await sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)

        async def hide(entries: list[dict[str, Any]]) -> Any:
            return await sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)

        async def send_dlq(entries: list[dict[str, Any]]) -> Any:
            return await sqs.send_message_batch(QueueUrl=dlq_url, Entries=entries)

        async def send_main(entries: list[dict[str, Any]]) -> Any:
            return await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)

        self._deletes = Batcher("DeleteMessageBatch", delete, flush_s=flush_s)
        self._visibility = Batcher("ChangeMessageVisibilityBatch", hide, flush_s=flush_s)
        self._dlq = Batcher("SendMessageBatch(dlq)", send_dlq, flush_s=flush_s, size_of=_size)
        self._requeue = Batcher("SendMessageBatch", send_main, flush_s=flush_s, size_of=_size)

    async def delete(self, receipt: str) -> None:
        _log_failure("delete", await self._deletes.submit({"ReceiptHandle": receipt}))

    async def hide(self, receipt: str, seconds: int) -> None:
        seconds = max(0, min(c.SQS_MAX_VISIBILITY_S, seconds))
        entry = {"ReceiptHandle": receipt, "VisibilityTimeout": seconds}
        _log_failure("change_visibility", await self._visibility.submit(entry))

    async def send_again(self, delivery: Delivery, delay_s: int) -> bool:
        delay_s = max(0, min(c.SQS_MAX_DELAY_S, delay_s))
        result = await self._requeue.submit(delivery.copy_entry(delay_s=delay_s))
        if not result.ok:
            log.error("send_again_failed", code=result.code, error=result.message)
        return result.ok

    async def dead_letter(self, letter: DeadLetter) -> bool:
        result = await self._dlq.submit(letter.send_entry("0"))
        if not result.ok:
            # Keep the message: it comes back after its visibility timeout and the
            # dead-letter copy is made again. Never delete what was not copied.
            log.error(
                "dead_letter_send_failed",
                code=result.code,
                error=result.message,
                task_id=letter.task_id,
            )
        return result.ok

    async def flush(self) -> None:
        for batcher in (self._requeue, self._dlq, self._visibility, self._deletes):
            await batcher.flush()


def _size(entry: dict[str, Any]) -> int:
    size = len(str(entry.get("MessageBody", "")).encode("utf-8"))
    for name, value in entry.get("MessageAttributes", {}).items():
        size += (
            len(name.encode())
            + len(str(value.get("StringValue", "")).encode())
            + len(value.get("DataType", ""))
        )
    return size


def _log_failure(action: str, result: EntryResult) -> None:
    if not result.ok:
        # The message is settled by DynamoDB's record already; at worst it comes
        # back once and the claim deletes it without running it.
        log.warning("sqs_entry_failed", action=action, code=result.code, error=result.message)


def near_redrive_limit(delivery: Delivery) -> bool:
    """Whether a message that must wait has been received often enough that hiding it
    again risks the queue's redrive limit (each receive counts toward it)."""
    return (delivery.receive_count or 0) >= c.REDRIVE_MAX_RECEIVE_COUNT // 2


async def send_fresh_copy(sqs: SqsActions, delivery: Delivery, delay_s: int) -> None:
    """Send the message again due in ``delay_s`` (receive count back to 0) and delete
    the old one, once the copy is sent."""
    if await sqs.send_again(delivery, delay_s):
        await sqs.delete(delivery.receipt)


async def hide_or_send_again(sqs: SqsActions, delivery: Delivery, delay_s: int) -> None:
    """Hide a message that must wait (no attempt spent) for ``delay_s``; near the
    redrive limit, a fresh copy instead (:func:`send_fresh_copy`)."""
    if near_redrive_limit(delivery):
        await send_fresh_copy(sqs, delivery, delay_s)
        return
    await sqs.hide(delivery.receipt, delay_s)
