"""The task record's transitions as the loop writes them: claim, give back, succeed, retry, die.

:class:`Transitions` is the seam between the loop and the state store (the
pipeline's unit tests use an in-memory one); :class:`RecordTransitions` writes
them to the DynamoDB table through :class:`~dispatch.store.state.StateStore`,
successes batched with BatchWriteItem (the claim was conditional, and only the
claiming dispatcher settles).
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import Claim
from dispatch.store import state
from dispatch.store.batcher import Batcher

__all__ = ["RecordTransitions", "Transitions"]

log = structlog.get_logger("dispatch.loop.transitions")


class Transitions(Protocol):
    """The writes the loop makes to task records; each is conditional on owning the task."""

    async def claim(
        self,
        envelope: Envelope,
        *,
        message_id: str,
        now: float,
        timeout_s: float,
        token: str,
        max_attempts: int,
        require_record: bool,
    ) -> Claim:
        """Start an attempt for this delivery, or say why not: never beyond
        ``max_attempts``, and (``require_record``) never from a missing record."""

    async def give_back(
        self, task_id: str, *, message_id: str, now: float, first_attempt: bool
    ) -> None:
        """Undo a claim that did not run: the attempt is not spent."""

    async def succeeded(self, claim: Claim, *, message_id: str, now: float, result: Any) -> None:
        """The claimed attempt succeeded with ``result``."""

    async def retrying(
        self,
        task_id: str,
        *,
        message_id: str,
        now: float,
        error: ErrorInfo,
        next_attempt_at: float,
        refund_attempt: bool,
    ) -> None:
        """The attempt failed; the next one is due at ``next_attempt_at``."""

    async def dead(
        self, task_id: str, *, message_id: str, now: float, error: ErrorInfo, reason: str
    ) -> None:
        """The task is dead with ``reason``."""

    async def rejected(self, task_id: str, task: str | None, *, now: float, reason: str) -> None:
        """A message that can never run names this task: dead, unless already final."""

    async def exhausted(
        self, task_id: str, *, now: float, max_attempts: int, error: ErrorInfo
    ) -> None:
        """Every attempt is spent and the last never reported its outcome: dead."""

    async def flush(self) -> None:
        """Send the writes that wait in a batch now."""


class RecordTransitions:
    """:class:`Transitions` on the DynamoDB table."""

    def __init__(self, dynamodb: Any, table: str, *, flush_s: float) -> None:
        self.store = state.StateStore(dynamodb, table)
        self._table = table

        async def write(entries: list[dict[str, Any]]) -> Any:
            return await state.batch_write(dynamodb, table, entries)

        self._records = Batcher(
            "BatchWriteItem",
            write,
            flush_s=flush_s,
            max_entries=c.DDB_MAX_BATCH_WRITE,
            key_of=lambda entry: str(entry["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"]),
        )

    async def claim(
        self,
        envelope: Envelope,
        *,
        message_id: str,
        now: float,
        timeout_s: float,
        token: str,
        max_attempts: int,
        require_record: bool,
    ) -> Claim:
        return await self.store.claim(
            envelope,
            message_id=message_id,
            now=now,
            timeout_s=timeout_s,
            token=token,
            max_attempts=max_attempts,
            require_record=require_record,
        )

    async def give_back(
        self, task_id: str, *, message_id: str, now: float, first_attempt: bool
    ) -> None:
        await self.store.update(
            state.released_params(
                self._table, task_id, message_id=message_id, now=now, first_attempt=first_attempt
            )
        )

    async def succeeded(self, claim: Claim, *, message_id: str, now: float, result: Any) -> None:
        item = state.succeeded_item(claim.item, now=now, result=result)
        written = await self._records.submit({"PutRequest": {"Item": item}})
        if written.ok:
            return
        # The batch did not go through: write this one record on its own.
        params = state.succeeded_params(
            self._table, claim.record.task_id, message_id=message_id, now=now, result=result
        )
        if not await self.store.update(params):
            log.warning(
                "settled_after_losing_claim", task_id=claim.record.task_id, outcome="succeeded"
            )

    async def retrying(
        self,
        task_id: str,
        *,
        message_id: str,
        now: float,
        error: ErrorInfo,
        next_attempt_at: float,
        refund_attempt: bool,
    ) -> None:
        await self.store.update(
            state.retrying_params(
                self._table,
                task_id,
                message_id=message_id,
                now=now,
                error=error,
                next_attempt_at=next_attempt_at,
                refund_attempt=refund_attempt,
            )
        )

    async def dead(
        self, task_id: str, *, message_id: str, now: float, error: ErrorInfo, reason: str
    ) -> None:
        await self.store.update(
            state.dead_params(
                self._table, task_id, message_id=message_id, now=now, error=error, reason=reason
            )
        )

    async def rejected(self, task_id: str, task: str | None, *, now: float, reason: str) -> None:
        await self.store.update(
            state.rejected_params(self._table, task_id, task, now=now, reason=reason)
        )

    async def exhausted(
        self, task_id: str, *, now: float, max_attempts: int, error: ErrorInfo
    ) -> None:
        await self.store.update(
            state.exhausted_params(
                self._table, task_id, now=now, max_attempts=max_attempts, error=error
            )
        )

    async def flush(self) -> None:
        await self._records.flush()
