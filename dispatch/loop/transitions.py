"""The task record's transitions as the loop writes them: claim, give back, succeed, retry, die.

:class:`Transitions` is the seam between the loop and the state store (the
pipeline's unit tests use an in-memory one); :class:`RecordTransitions` writes
them to the DynamoDB table. Claims and successes are batched: the claims made at
one moment (a receive's, a micro-batch's) go in one BatchExecuteStatement of
conditional PartiQL UPDATEs per 25 (:mod:`dispatch.store.statements`), successes
likewise within ``flush_s``. Where the endpoint does not answer such batches as
DynamoDB does (checked once, before the first), or batching is switched off,
a claim is one conditional UpdateItem and successes go by BatchWriteItem.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

import structlog

from dispatch.core import constants as c
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import Claim, ClaimAsk, ClaimStatus, Status, TaskRecord
from dispatch.store import state, statements
from dispatch.store.batcher import Batcher, EntryResult

__all__ = ["RECORD_FLUSH_S", "REPROBE_S", "RecordTransitions", "Transitions"]

log = structlog.get_logger("dispatch.loop.transitions")

RECORD_FLUSH_S: Final = 0.05
"""The most a success waits for others to fill its batch (less when ``flush_s`` is).
Between a handler's return and its recorded success is the at-least-once window (a
dispatcher that dies in it leaves the task to run again), and DynamoDB bills the
writes, not the requests: a short window costs no unit more."""
REPROBE_S: Final = 300.0
"""After a probe that met a passing fault, claims go one by one for this long."""


def _no_key(_entry: dict[str, Any]) -> None:
    return None  # every statement is answered: none replaces another


class Transitions(Protocol):
    """The writes the loop makes to task records; each is conditional on owning the task."""

    async def claim(self, ask: ClaimAsk) -> Claim:
        """Start an attempt for this delivery, or say why not: never beyond
        ``max_attempts``, and (``require_record``) never from a missing record."""

    async def give_back(
        self, task_id: str, *, message_id: str, now: float, first_attempt: bool
    ) -> None:
        """Undo a claim that did not run: the attempt is not spent."""

    async def succeeded(self, claim: Claim, *, message_id: str, now: float, result: Any) -> bool:
        """The claimed attempt succeeded with ``result``; False when the record refused it
        (another owner, or a cancel requested while it ran)."""

    async def retrying(
        self,
        task_id: str,
        *,
        message_id: str,
        now: float,
        error: ErrorInfo,
        next_attempt_at: float,
        refund_attempt: bool,
    ) -> bool:
        """The attempt failed; the next one is due at ``next_attempt_at`` (False: refused)."""

    async def dead(
        self, task_id: str, *, message_id: str, now: float, error: ErrorInfo, reason: str
    ) -> bool:
        """The task is dead with ``reason`` (False: refused)."""

    async def cancelled(
        self, task_id: str, *, message_id: str, now: float, requested_only: bool = False
    ) -> bool:
        """The claimed attempt is cancelled (``requested_only``: if the record asks for
        it); False when the record refused."""

    async def rejected(
        self,
        task_id: str,
        task: str | None,
        *,
        now: float,
        reason: str,
        error: ErrorInfo | None = None,
    ) -> None:
        """A message that can never run names this task: dead (with why), unless
        already final."""

    async def exhausted(
        self, task_id: str, *, now: float, max_attempts: int, error: ErrorInfo
    ) -> None:
        """Every attempt is spent and the last never reported its outcome: dead."""

    async def flush(self) -> None:
        """Send the writes that wait in a batch now."""


class RecordTransitions:
    """:class:`Transitions` on the DynamoDB table."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        *,
        flush_s: float,
        batch_claims: bool = True,
    ) -> None:
        self.store = state.StateStore(dynamodb, table)
        self._dynamodb = dynamodb
        self._table = table

        async def write(entries: list[dict[str, Any]]) -> Any:
            return await state.batch_write(dynamodb, table, entries)

        async def execute(entries: list[dict[str, Any]]) -> Any:
            return await statements.execute(dynamodb, entries)

        record_flush_s = min(flush_s, RECORD_FLUSH_S)
        self._records = Batcher(
            "BatchWriteItem",
            write,
            flush_s=record_flush_s,
            max_entries=c.DDB_MAX_BATCH_WRITE,
            key_of=lambda entry: str(entry["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"]),
        )
        # Claims wait for nothing but the other claims of the same moment.
        self.claim_batches = Batcher(
            "BatchExecuteStatement",
            execute,
            flush_s=0.0,
            max_entries=statements.STATEMENTS_PER_REQUEST,
            key_of=_no_key,
        )
        self.success_batches = Batcher(
            "BatchExecuteStatement",
            execute,
            flush_s=record_flush_s,
            max_entries=statements.STATEMENTS_PER_REQUEST,
            key_of=_no_key,
        )
        self._batching: bool | None = None if batch_claims else False
        self._probing: asyncio.Task[bool] | None = None
        self._reprobe_at = 0.0
        self._warned = False

    @property
    def batching(self) -> bool | None:
        """Whether claims and successes go in batches (None: not known until the first claim)."""
        return self._batching

    async def _batched(self, now: float) -> bool:
        if self._batching is None or (self._batching is False and 0 < self._reprobe_at <= now):
            probing = self._probing
            if probing is None:
                probing = self._probing = asyncio.ensure_future(self._probe(now))
            try:
                return await asyncio.shield(probing)
            finally:
                if self._probing is probing and probing.done():
                    self._probing = None
        return self._batching

    async def _probe(self, now: float) -> bool:
        found = await statements.probe(self._dynamodb, self._table, now=now)
        self._batching = found.problem is None
        self._reprobe_at = 0.0 if found.final else now + REPROBE_S
        if found.problem is not None and not self._warned:
            self._warned = True
            log.warning(
                "batch_claims_unavailable",
                endpoint=statements.endpoint_of(self._dynamodb),
                reason=found.problem,
                fallback="one conditional UpdateItem per claim",
                again_in_s=None if found.final else REPROBE_S,
            )
        elif found.problem is None:
            log.debug("batch_claims_on", endpoint=statements.endpoint_of(self._dynamodb))
        return self._batching

    async def claim(self, ask: ClaimAsk) -> Claim:
        if await self._batched(ask.now):
            claim = await self._claim_batched(ask)
            if claim is not None:
                return claim
        return await self.store.claim(ask)

    async def _claim_batched(self, ask: ClaimAsk) -> Claim | None:
        """The claim as compare-and-set rounds in batches; None when the single
        conditional UpdateItem must decide (no record to create, a record still
        changing after the rounds, or a batch that failed)."""
        old: dict[str, Any] | None = None  # first, the guess: waiting for its first attempt
        for _ in range(statements.CLAIM_ROUNDS):
            statement = statements.claim_statement(self._table, ask, old=old)
            answer = await self.claim_batches.submit(statement.entry())
            if answer.ok:
                item = statement.applied_to(old or statements.guessed_item(ask.envelope))
                # The guess never read the record: its other attributes are unknown,
                # so the claim carries no item to write back whole.
                record = TaskRecord.from_item(item)
                return Claim(ClaimStatus.CLAIMED, record, item=item if old else {})
            if answer.code != statements.CONDITION_FAILED:
                return None
            if answer.item is None:  # no record
                if ask.require_record:
                    return Claim(ClaimStatus.NO_RECORD, state.missing_record(ask.envelope))
                return None  # the UpdateItem creates it (a message from elsewhere)
            record = TaskRecord.from_item(answer.item)
            own = record.status is Status.RUNNING and record.claim_token == ask.token
            spent = ask.max_attempts is not None and record.attempts >= ask.max_attempts
            if own or spent or not state.attempt_may_start(record, ask.now):
                return state.refused(ask, answer.item)
            old = answer.item
        return None

    async def give_back(
        self, task_id: str, *, message_id: str, now: float, first_attempt: bool
    ) -> None:
        await self.store.update(
            state.released_params(
                self._table, task_id, message_id=message_id, now=now, first_attempt=first_attempt
            )
        )

    async def succeeded(self, claim: Claim, *, message_id: str, now: float, result: Any) -> bool:
        task_id = claim.record.task_id
        if self._batching:
            answer = await self.success_batches.submit(
                statements.succeeded_statement(
                    self._table,
                    task_id,
                    message_id=message_id,
                    now=now,
                    result_json=state.stored_result(result),
                ).entry()
            )
            if answer.ok or _settled_already(answer, message_id):
                return True
            if answer.code == statements.CONDITION_FAILED:
                return False
        elif claim.item:
            item = state.succeeded_item(claim.item, now=now, result=result)
            written = await self._records.submit({"PutRequest": {"Item": item}})
            if written.ok:
                return True
        # The batch did not go through: write this one record on its own.
        params = state.succeeded_params(
            self._table, task_id, message_id=message_id, now=now, result=result
        )
        return await self.store.update(params)

    async def retrying(
        self,
        task_id: str,
        *,
        message_id: str,
        now: float,
        error: ErrorInfo,
        next_attempt_at: float,
        refund_attempt: bool,
    ) -> bool:
        return await self.store.update(
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
    ) -> bool:
        return await self.store.update(
            state.dead_params(
                self._table, task_id, message_id=message_id, now=now, error=error, reason=reason
            )
        )

    async def cancelled(
        self, task_id: str, *, message_id: str, now: float, requested_only: bool = False
    ) -> bool:
        return await self.store.update(
            state.cancelled_params(
                self._table,
                task_id,
                message_id=message_id,
                now=now,
                requested_only=requested_only,
            )
        )

    async def rejected(
        self,
        task_id: str,
        task: str | None,
        *,
        now: float,
        reason: str,
        error: ErrorInfo | None = None,
    ) -> None:
        await self.store.update(
            state.rejected_params(self._table, task_id, task, now=now, reason=reason, error=error)
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
        await asyncio.gather(
            self._records.flush(), self.claim_batches.flush(), self.success_batches.flush()
        )


def _settled_already(answer: EntryResult, message_id: str) -> bool:
    """A success refused because it is already written: the request was sent again
    after its first answer was lost."""
    old = TaskRecord.from_item(answer.item) if answer.item else None
    return old is not None and old.status is Status.SUCCEEDED and old.message_id == message_id
