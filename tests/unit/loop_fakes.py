"""In-memory stand-ins for the loop's seams: the state store and the SQS actions.

Real classes with behaviour (conditional claims, give-backs, final states; SQS
actions recorded per receipt), in the spirit of dramatiq's StubBroker, so the
pipeline (admit → claim → gate → run → settle) is tested in milliseconds. The
token and slot sources are the throttle's own in-process ones on a manual clock.
The integration tests still run the same stages against the local AWS over HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dispatch.core import constants as c
from dispatch.core.deadletter import DeadLetter
from dispatch.core.delivery import Delivery
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import Claim, ClaimAsk, ClaimStatus, Status, TaskRecord
from dispatch.loop.activity import TaskActivity
from dispatch.loop.claims import Claims
from dispatch.loop.gate import ThrottleGate
from dispatch.loop.holding import Holding
from dispatch.loop.observe import ActivityObserver, Observers, StatsObserver
from dispatch.loop.options import RunStats
from dispatch.loop.pipeline import Pipeline
from dispatch.loop.settle import Settler
from dispatch.store import state
from dispatch.tasks.registry import Registry
from dispatch.throttle.limits import Throttle
from dispatch_workers.pool import WorkerPool

QUEUE_URL = "http://127.0.0.1/000000000000/tasks"


class ManualClock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryTransitions:
    """Task records in a dict, with the table's conditions (docs/formats.md)."""

    def __init__(self, *, lease_s: float = 60.0) -> None:
        self.records: dict[str, TaskRecord] = {}
        self.lease_s = lease_s
        self.calls: list[str] = []
        self.claim_gate: asyncio.Event | None = None  # when set: claims wait for it

    async def claim(self, ask: ClaimAsk) -> Claim:
        envelope, message_id, now, token = ask.envelope, ask.message_id, ask.now, ask.token
        max_attempts = ask.max_attempts or 1_000_000
        self.calls.append("claim")
        if self.claim_gate is not None:
            await self.claim_gate.wait()
        old = self.records.get(envelope.id)
        if old is None and ask.require_record:
            return Claim(ClaimStatus.NO_RECORD, state.missing_record(envelope))
        claimable = old is None or (
            state.attempt_may_start(old, now) and old.attempts < max_attempts
        )
        if not claimable:
            assert old is not None
            return state.claim_refused(
                old, message_id=message_id, token=token, item={}, now=now, max_attempts=max_attempts
            )
        record = TaskRecord(
            task_id=envelope.id,
            task=envelope.task,
            status=Status.RUNNING,
            attempts=(old.attempts if old else 0) + 1,
            started_at=now,
            lease_until=now + ask.timeout_s + self.lease_s,
            message_id=message_id,
            claim_token=token,
            first_failure_at=old.first_failure_at if old else None,
        )
        self.records[envelope.id] = record
        return Claim(ClaimStatus.CLAIMED, record, item={"task_id": envelope.id})

    def _owned(self, task_id: str, message_id: str) -> TaskRecord | None:
        record = self.records.get(task_id)
        if record is None or record.status is not Status.RUNNING:
            return None
        return record if record.message_id == message_id else None

    def _set(self, record: TaskRecord, **changes: Any) -> None:
        self.records[record.task_id] = dataclasses.replace(record, **changes)

    async def give_back(
        self, task_id: str, *, message_id: str, now: float, first_attempt: bool
    ) -> None:
        self.calls.append("give_back")
        record = self._owned(task_id, message_id)
        if record is not None:
            status = Status.QUEUED if first_attempt else Status.RETRYING
            self._set(record, status=status, attempts=record.attempts - 1, lease_until=None)

    async def succeeded(self, claim: Claim, *, message_id: str, now: float, result: Any) -> None:
        self.calls.append("succeeded")
        record = self.records[claim.record.task_id]
        self._set(record, status=Status.SUCCEEDED, finished_at=now, result=result)

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
        self.calls.append("retrying")
        record = self._owned(task_id, message_id)
        if record is not None:
            self._set(
                record,
                status=Status.RETRYING,
                attempts=record.attempts - (1 if refund_attempt else 0),
                last_error=error,
                next_attempt_at=next_attempt_at,
                first_failure_at=record.first_failure_at or now,
            )

    async def dead(
        self, task_id: str, *, message_id: str, now: float, error: ErrorInfo, reason: str
    ) -> None:
        self.calls.append("dead")
        record = self._owned(task_id, message_id)
        if record is not None:
            self._set(record, status=Status.DEAD, last_error=error, dead_reason=reason)

    async def rejected(
        self,
        task_id: str,
        task: str | None,
        *,
        now: float,
        reason: str,
        error: ErrorInfo | None = None,
    ) -> None:
        self.calls.append("rejected")
        old = self.records.get(task_id)
        if old is None or not old.status.is_final:
            self.records[task_id] = TaskRecord(
                task_id=task_id,
                task=task or "",
                status=Status.DEAD,
                dead_reason=reason,
                last_error=error,
            )

    async def exhausted(
        self, task_id: str, *, now: float, max_attempts: int, error: ErrorInfo
    ) -> None:
        self.calls.append("exhausted")
        record = self.records.get(task_id)
        lapsed = record is not None and record.status is Status.RUNNING
        lapsed = lapsed and record is not None and (record.lease_until or 0) < now
        if (
            record is not None
            and record.attempts >= max_attempts
            and (record.status in (Status.QUEUED, Status.RETRYING) or lapsed)
        ):
            self._set(record, status=Status.DEAD, last_error=error, dead_reason="max_attempts")

    async def flush(self) -> None:
        return None


@dataclass
class MemorySqs:
    """SQS actions recorded per receipt; ``dead_letter_fails`` makes DLQ sends fail."""

    deleted: list[str] = field(default_factory=list)
    hidden: dict[str, int] = field(default_factory=dict)
    sent_again: list[tuple[str, int]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dead_letter_fails: bool = False

    async def delete(self, receipt: str) -> None:
        self.deleted.append(receipt)

    async def hide(self, receipt: str, seconds: int) -> None:
        self.hidden[receipt] = seconds

    async def send_again(self, delivery: Delivery, delay_s: int) -> bool:
        self.sent_again.append((delivery.body, min(c.SQS_MAX_DELAY_S, delay_s)))
        return True

    async def dead_letter(self, letter: DeadLetter) -> bool:
        if self.dead_letter_fails:
            return False
        self.dead_letters.append(letter)
        return True

    async def flush(self) -> None:
        return None


class Loop:
    """The pipeline's stages wired to the fakes, as the Dispatcher wires the real ones."""

    def __init__(
        self,
        registry: Registry,
        *,
        clock: ManualClock | None = None,
        horizon_s: float = 5.0,
        signing_keys: tuple[str, ...] = (),
        throttle_clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        self.stats = RunStats()
        self.activity = TaskActivity(clock=self.clock)
        self.observers = Observers(StatsObserver(self.stats), ActivityObserver(self.activity))
        self.transitions = MemoryTransitions()
        self.sqs = MemorySqs()
        self.stopping = asyncio.Event()
        self.throttle = Throttle(clock=throttle_clock or self.clock)
        self.runner = WorkerPool(max_workers=8)
        self.holding = Holding(max_in_flight=8, visibility_timeout_s=30, clock=self.clock)
        self.gate = ThrottleGate(
            self.throttle,
            horizon_s=horizon_s,
            observer=self.observers,
            sqs=self.sqs,
            stopping=self.stopping,
            clock=self.clock,
        )
        self.settler = Settler(
            transitions=self.transitions,
            sqs=self.sqs,
            observer=self.observers,
            queue_url=QUEUE_URL,
            clock=self.clock,
        )
        self.claims = Claims(
            transitions=self.transitions,
            sqs=self.sqs,
            settler=self.settler,
            observer=self.observers,
            clock=self.clock,
        )
        self.pipeline = Pipeline(
            registry=registry,
            signing_keys=signing_keys,
            runner=self.runner,
            claims=self.claims,
            gate=self.gate,
            settler=self.settler,
            sqs=self.sqs,
            holding=self.holding,
            observer=self.observers,
            clock=self.clock,
        )

    async def aclose(self) -> None:
        await self.gate.stop_feeding()
        await self.pipeline.batches.aclose()
        await self.runner.aclose()


def delivery_of(message: Any, *, n: int = 1, receive_count: int = 1) -> Delivery:
    """A delivery of a built :class:`~dispatch.core.envelope.Message` (or a raw body)."""
    body = message if isinstance(message, str) else message.body
    return Delivery(
        receipt=f"receipt-{n}", message_id=f"message-{n}", body=body, receive_count=receive_count
    )


async def until(condition: Callable[[], object], *, turns: int = 1_000) -> None:
    """Let the event loop run until ``condition()`` holds (bounded: no wall clock)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")
