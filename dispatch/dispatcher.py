"""The loop: poll → validate → claim → run → settle.

One :class:`Dispatcher` polls the queue with long polls of up to 10 messages,
receiving only as many as it has room to start. Each message is handled in its
own asyncio task:

1. decode and validate the envelope; a bad one is dead-lettered at once with
   the reason (never retried, never crashing the loop);
2. claim the attempt in DynamoDB (a conditional write), so a duplicate delivery
   of a finished task is deleted without running it again (a lean task, id
   ``lean-...``, has no record: its attempt is the message's receive count);
3. hand it to the runner (the in-process :class:`~workers.pool.WorkerPool`, or
   Lambda in the cloud topology);
4. settle: success → record + delete; retryable failure → record + hide the
   *same* message for the backoff delay; last attempt or permanent failure →
   record + dead-letter copy with the reason + delete.

While a message is held its visibility is extended (a heartbeat), so a long
task is never delivered twice while it runs. Deletes and visibility changes
go out in batches of 10 (:mod:`dispatch.batcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from dispatch import constants as c
from dispatch import state
from dispatch.activity import TaskActivity
from dispatch.aws import AsyncClients, aws_errors
from dispatch.batcher import Batcher, EntryResult
from dispatch.config import Settings
from dispatch.context import TaskContext
from dispatch.deadletter import DeadLetter, Reason
from dispatch.envelope import Envelope, decode, is_lean_task_id, resolve
from dispatch.errors import ConfigurationError, DispatchError, EnvelopeError
from dispatch.metrics import FLUSH_EVERY_S, Metrics, metrics_from_env
from dispatch.microbatch import MicroBatcher
from dispatch.periodic import PeriodicEnqueuer
from dispatch.registry import Registry, TaskSpec, default_registry
from dispatch.shared_throttle import Coordinator
from dispatch.signing import ATTR_SIGNATURE, verify
from dispatch.throttle import Permit, Resource, ResourceThrottle, ThrottleSnapshot
from dispatch.throttle_status import PUBLISH_EVERY_S, publish_params
from workers.outcome import ErrorInfo, Outcome, OutcomeKind

if TYPE_CHECKING:
    from workers.pool import TaskRunner

__all__ = ["Dispatcher", "DispatcherOptions", "RunStats"]

log = structlog.get_logger("dispatch.dispatcher")

_WAIT_ROOM_FILL: Final = 0.8
"""The share of the throttle horizon the waiting room fills, so its last waiter
starts inside the horizon instead of timing out after its claim."""
_RECEIVE_PACE_MAX_S: Final = 1.0
"""While (nearly) every message received is backlog for a saturated resource,
receives slow down to one per this many seconds at most (a deep backlog is not
received and deferred over and over); a receive with other messages resets it."""
_PACE_BACKLOG_SHARE: Final = 0.8
"""The share of a receive that must be backlog for the next receive to wait."""
_EMPTY_SHORT_POLL_PAUSE_S: Final = 1.0
"""After a short poll (no long-poll wait) that found nothing, the next receive waits this long."""
_MAX_RECEIVE_CONCURRENCY: Final = 10
"""The most receives one dispatcher keeps out at once (``receive_concurrency``)."""
_QUEUE_COUNTERS: Final = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


@dataclass(frozen=True, slots=True)
class DispatcherOptions:
    """How the loop polls and holds messages."""

    max_in_flight: int = 64  # messages held at once (waiting to start or running)
    wait_time_s: int = c.SQS_MAX_WAIT_S  # long-poll length
    drain_wait_time_s: int = 1  # long-poll length in --until-empty mode, to notice the end
    visibility_timeout_s: int = 30  # hidden for this long at receive; extended while held
    flush_s: float = 0.2  # how long a batch (deletes, visibility changes, records) may wait to fill
    throttle_horizon_s: float = 5.0  # a task that cannot start within this is deferred
    receive_concurrency: int = 3  # receives out at once while each brings a whole batch

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight={self.max_in_flight}: must be >= 1")
        if not 0 <= self.wait_time_s <= c.SQS_MAX_WAIT_S:
            raise ConfigurationError(f"wait_time_s={self.wait_time_s}: must be 0 to 20")
        if not 2 <= self.visibility_timeout_s <= c.SQS_MAX_VISIBILITY_S:
            raise ConfigurationError(
                f"visibility_timeout_s={self.visibility_timeout_s}: must be 2 to 43200"
            )
        if not 1 <= self.receive_concurrency <= _MAX_RECEIVE_CONCURRENCY:
            raise ConfigurationError(
                f"receive_concurrency={self.receive_concurrency}: "
                f"must be 1 to {_MAX_RECEIVE_CONCURRENCY}"
            )


@dataclass(slots=True)
class RunStats:
    """What one run of the loop did."""

    received: int = 0
    started: int = 0
    succeeded: int = 0
    retried: int = 0
    backpressure: int = 0
    dead: int = 0
    rejected: int = 0
    duplicates: int = 0
    deferred: int = 0
    postponed: int = 0
    released: int = 0
    peak_in_flight: int = 0
    throttle_wait_s: float = 0.0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def wall_s(self) -> float:
        """Seconds the run took."""
        return max(0.0, self.finished_at - self.started_at)


@dataclass(slots=True)
class _Held:
    receipt: str
    message_id: str
    visible_until: float
    settling: bool = False


class Dispatcher:
    """Runs the poll → claim → run → settle loop against one queue, DLQ and table."""

    def __init__(
        self,
        settings: Settings,
        *,
        clients: AsyncClients,
        registry: Registry | None = None,
        runner: TaskRunner | None = None,
        options: DispatcherOptions | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or DispatcherOptions()
        self.registry = default_registry if registry is None else registry
        if runner is None:
            # Imported here: workers depends on dispatch, not the other way round at import time.
            from workers.pool import WorkerPool

            runner = WorkerPool(max_workers=self.options.max_in_flight)
        self.runner: TaskRunner = runner
        self.stats = RunStats()
        self._activity = TaskActivity(clock=clock)
        self._clients = clients
        self._clock = clock
        self._state = state.StateStore(clients.dynamodb, settings.table)
        self._held: dict[str, _Held] = {}
        self._claimed: dict[str, str] = {}  # receipt handle -> task id, while claimed here
        self._periodic = PeriodicEnqueuer(self.registry, settings, clients, clock=clock)
        self._batches = MicroBatcher(self)  # items of @task(batch_size=...) tasks
        queue_name = settings.queue_url.rsplit("/", 1)[-1]
        self._metrics = metrics if metrics is not None else metrics_from_env(queue_name)
        self._wait_since_flush: dict[str, float] = defaultdict(float)
        self._releasing = False
        self._coordinator = Coordinator(
            clients.dynamodb,
            settings.table,
            lease_horizon_s=self.options.throttle_horizon_s / 2,
        )
        self._waiting: Counter[str] = Counter()
        self._backlogged = 0  # messages deferred as backlog since the last receive
        self._last_published: dict[str, Any] | None = None  # activity as last published
        self._released: dict[str, asyncio.Event] = {}  # per resource: set when a slot frees
        self._gates: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._receive_pace_s = 0.0
        self._last_received = 0
        self._last_receive_full = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        sqs: Any = clients.sqs
        queue, dlq = settings.queue_url, settings.dlq_url
        flush_s = self.options.flush_s

        async def delete(entries: list[dict[str, Any]]) -> Any:
            return await sqs.delete_message_batch(QueueUrl=queue, Entries=entries)

        async def hide(entries: list[dict[str, Any]]) -> Any:
            return await sqs.change_message_visibility_batch(QueueUrl=queue, Entries=entries)

        async def send_dlq(entries: list[dict[str, Any]]) -> Any:
            return await sqs.send_message_batch(QueueUrl=dlq, Entries=entries)

        async def send_main(entries: list[dict[str, Any]]) -> Any:
            return await sqs.send_message_batch(QueueUrl=queue, Entries=entries)

        dynamodb: Any = clients.dynamodb
        table = settings.table

        async def write_records(entries: list[dict[str, Any]]) -> Any:
            return await _batch_write(dynamodb, table, entries)

        self._records = Batcher(
            "BatchWriteItem",
            write_records,
            flush_s=flush_s,
            max_entries=c.DDB_MAX_BATCH_WRITE,
            key_of=lambda entry: str(entry["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"]),
        )
        self._deletes = Batcher("DeleteMessageBatch", delete, flush_s=flush_s)
        self._visibility = Batcher("ChangeMessageVisibilityBatch", hide, flush_s=flush_s)
        self._dlq = Batcher("SendMessageBatch(dlq)", send_dlq, flush_s=flush_s, size_of=_entry_size)
        self._requeue = Batcher("SendMessageBatch", send_main, flush_s=flush_s, size_of=_entry_size)

    # --- the loop -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop receiving; in-flight tasks finish and are settled."""
        self._stop.set()

    def throttle_snapshots(self) -> tuple[ThrottleSnapshot, ...]:
        """Per resource: configured and effective rate, tokens, in flight vs cap, waits."""
        return self._coordinator.throttle.snapshots()

    @property
    def coordination_requests(self) -> int:
        """DynamoDB requests spent on the shared throttle so far."""
        return self._coordinator.requests

    async def check(self) -> None:
        """Fail fast, naming what is wrong, when the queue, DLQ or table is unusable."""
        sqs: Any = self._clients.sqs
        for name, url in (
            (c.ENV_QUEUE_URL, self.settings.queue_url),
            (c.ENV_DLQ_URL, self.settings.dlq_url),
        ):
            try:
                with aws_errors("GetQueueAttributes"):
                    await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            except ConfigurationError as exc:
                raise ConfigurationError(f"{name}={url}: {exc}", setting=name) from exc
        await self._state.check()

    async def run(
        self,
        *,
        until_empty: bool = False,
        for_s: float | None = None,
        finish_by: float | None = None,
    ) -> RunStats:
        """Run until stopped, for ``for_s`` seconds, or (``until_empty``) until no
        message is visible, in flight or delayed and no task is running.

        Once receiving stops, tasks in flight finish and are settled. ``finish_by``
        (a time on this dispatcher's clock, e.g. a Lambda invocation's deadline less
        a margin) bounds that: whatever has not finished by then is released, its
        message visible again at once and its attempt given back, so nothing waits
        for a stale visibility timeout.
        """
        self.stats = RunStats(started_at=self._clock())
        deadline = None if for_s is None else self._clock() + for_s
        heartbeat = asyncio.create_task(self._heartbeat())
        publisher = asyncio.create_task(self._publish_loop())
        metrics = asyncio.create_task(self._metrics_loop())
        if self._periodic.has_schedules:
            await self._enqueue_periodic()
        scheduler = asyncio.create_task(self._schedule_loop())
        receiving: dict[asyncio.Future[list[dict[str, Any]]], int] = {}  # receive -> asked for
        ended = False
        try:
            while not self._stop.is_set():
                if deadline is not None and self._clock() >= deadline:
                    break
                room = min(c.SQS_MAX_BATCH_ENTRIES, self._room() - sum(receiving.values()))
                if room > 0 and self._may_receive_more(len(receiving)):
                    idle = not receiving and not self._held
                    if until_empty and idle and await self._queue_is_empty():
                        break
                    wait_s = self._poll_wait_s(until_empty=until_empty, deadline=deadline)
                    await self._pace_receives()
                    receive = self._receive(room, wait_s, deadline=deadline)
                    receiving[asyncio.ensure_future(receive)] = room
                elif receiving:
                    await self._take_received(receiving)
                else:
                    await self._wait_for_slot()
            ended = True
        finally:
            if not ended:
                self._stop.set()  # the receives still out give up at once
            for message in await self._last_received_messages(receiving):
                self._spawn(message)
            self._batches.flush()
            # Receiving has stopped: what still waits for the throttle is deferred
            # (its attempt given back) instead of starting late.
            self._stop.set()
            await self._finish(finish_by)
            await self._batches.aclose()
            for background in (heartbeat, publisher, scheduler, metrics):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await self._publish()
            await self._flush_metrics()
            await self._flush()
            await self._coordinator.aclose()
            self.stats.finished_at = self._clock()
        return self.stats

    def _poll_wait_s(self, *, until_empty: bool, deadline: float | None) -> int:
        wait_s = self.options.drain_wait_time_s if until_empty else self.options.wait_time_s
        if deadline is not None:
            wait_s = min(wait_s, max(0, math.floor(deadline - self._clock())))
        return wait_s

    async def _take_received(
        self, receiving: dict[asyncio.Future[list[dict[str, Any]]], int]
    ) -> None:
        """Wait for a receive to come back and start handling what it brought."""
        done, _ = await asyncio.wait(set(receiving), return_when=asyncio.FIRST_COMPLETED)
        for receive in done:
            asked = receiving.pop(receive)
            messages = receive.result()
            self._backlogged = 0
            self._last_received = len(messages)
            self._last_receive_full = len(messages) >= asked
            for message in messages:
                self._spawn(message)

    def _may_receive_more(self, receiving: int) -> bool:
        """Whether to start another receive while ``receiving`` are out.

        One receive at a time, as long as receives come back short: an idle or
        shallow queue costs no more requests than with one. While the last receive
        brought all it asked for and none of it was backlog, up to
        ``receive_concurrency`` are out at once, so the next batch is on its way
        while this one is handled (the receive's round trip no longer bounds a
        deep queue's drain).
        """
        if receiving == 0:
            return True
        return (
            receiving < self.options.receive_concurrency
            and self._last_receive_full
            and self._backlogged == 0
            and self._receive_pace_s == 0.0
        )

    async def _last_received_messages(
        self, receiving: dict[asyncio.Future[list[dict[str, Any]]], int]
    ) -> list[dict[str, Any]]:
        """What the receives still out bring once they end.

        Each was started with a long poll no longer than the time left (``for_s``,
        ``finish_by``), and gives up at once when the dispatcher is stopped.
        """
        messages: list[dict[str, Any]] = []
        for receive in receiving:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                messages.extend(await receive)
        return messages

    async def _finish(self, finish_by: float | None) -> None:
        """Let the tasks in flight finish; release those still running at ``finish_by``."""
        if not self._tasks:
            return
        timeout = None if finish_by is None else max(0.0, finish_by - self._clock())
        _, unfinished = await asyncio.wait(set(self._tasks), timeout=timeout)
        if unfinished:
            log.warning("releasing_unfinished_tasks", count=len(unfinished))
            self._releasing = True
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    def _room(self) -> int:
        """How many more messages this dispatcher may hold (receives take at most 10 of them).

        ``max_in_flight`` bounds the messages waiting to start or running; a message
        whose outcome is known and only waits for its batched settlement does not
        hold a place (at 200 tasks/s the settlement batches alone would fill 64),
        though all held messages together stay under twice ``max_in_flight``.
        """
        active = sum(1 for held in self._held.values() if not held.settling)
        return min(
            self.options.max_in_flight - active,
            2 * self.options.max_in_flight - len(self._held),
        )

    async def _pace_receives(self) -> None:
        """Wait before receiving when the last receive brought (nearly) only backlog."""
        await asyncio.sleep(0)  # let the messages just received reach their backlog check
        if self._last_received and self._backlogged >= _PACE_BACKLOG_SHARE * self._last_received:
            self._receive_pace_s = min(_RECEIVE_PACE_MAX_S, max(0.05, self._receive_pace_s * 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._receive_pace_s)
        else:
            self._receive_pace_s = 0.0

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot_freed.wait(), timeout=1.0)

    async def _flush(self) -> None:
        for batcher in (self._records, self._requeue, self._dlq, self._visibility, self._deletes):
            await batcher.flush()

    async def _queue_is_empty(self) -> bool:
        await self._flush()
        sqs: Any = self._clients.sqs
        with aws_errors("GetQueueAttributes"):
            answer = await sqs.get_queue_attributes(
                QueueUrl=self.settings.queue_url, AttributeNames=list(_QUEUE_COUNTERS)
            )
        counts = answer.get("Attributes", {})
        return all(int(counts.get(name, "0")) == 0 for name in _QUEUE_COUNTERS)

    async def _receive(
        self, room: int, wait_s: int, *, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        """Receive up to ``room`` messages, long-polling ``wait_s`` seconds.

        A short poll (``wait_s`` 0: the option, or the last second before
        ``deadline``) that brings nothing is followed by a pause of a second (or
        until ``deadline``), so an empty queue is not polled in a tight loop.
        """
        sqs: Any = self._clients.sqs
        receive = asyncio.ensure_future(
            sqs.receive_message(
                QueueUrl=self.settings.queue_url,
                MaxNumberOfMessages=room,
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=self.options.visibility_timeout_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=[ATTR_SIGNATURE],
            )
        )
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({receive, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if receive not in done:
            # Stopping: a message SQS hands out now comes back after its visibility timeout.
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receive
            return []
        try:
            with aws_errors("ReceiveMessage"):
                answer = receive.result()
        except ConfigurationError:
            raise
        except DispatchError as exc:
            log.error("receive_failed", error=str(exc))
            await asyncio.sleep(1.0)
            return []
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        if not messages and wait_s == 0:
            pause_s = _EMPTY_SHORT_POLL_PAUSE_S
            if deadline is not None:
                pause_s = min(pause_s, max(0.0, deadline - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=pause_s)
        self.stats.received += len(messages)
        now_ms = self._clock() * 1000
        for message in messages:
            sent = message.get("Attributes", {}).get("SentTimestamp")
            if sent is not None:
                age_s = max(0.0, (now_ms - int(sent)) / 1000)
                self._activity.saw_message_age(age_s)
                if self._metrics is not None:
                    self._metrics.saw_message_age(age_s)
        return messages

    def _spawn(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        self._held[receipt] = _Held(
            receipt=receipt,
            message_id=message["MessageId"],
            visible_until=self._clock() + self.options.visibility_timeout_s,
        )
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(self._held))
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        try:
            await self._process(message)
        except asyncio.CancelledError:
            if self._releasing:
                await self._release(message)
            raise
        except Exception:
            # Never crash the loop. The message stays on the queue and comes back
            # after its visibility timeout; the claim in DynamoDB keeps it safe.
            log.exception("message_handling_failed", message_id=message.get("MessageId"))
        finally:
            self._held.pop(receipt, None)
            self._slot_freed.set()

    async def _release(self, message: dict[str, Any]) -> None:
        """Give back a message this dispatcher cannot finish: attempt refunded, visible now."""
        receipt = message["ReceiptHandle"]
        envelope_id = self._claimed.pop(receipt, None)
        if envelope_id is not None:
            await self._state.update(
                state.released_params(
                    self.settings.table,
                    envelope_id,
                    message_id=message["MessageId"],
                    now=self._clock(),
                )
            )
        self.stats.released += 1
        await self._hide(receipt, 0)

    # --- one message ----------------------------------------------------------------

    async def _process(self, message: dict[str, Any]) -> None:
        admitted = await self._admit(message)
        if admitted is None:
            return
        envelope, spec = admitted
        bound = log.bind(task_id=envelope.id, task=envelope.task, message_id=message["MessageId"])
        if spec.batch is not None:
            await self._batches.add(message, envelope, spec, bound)
            return
        if spec.resource is None:
            claim = await self._claim(message, envelope, spec, bound)
            if claim is not None:
                await self._run(message, envelope, spec, claim, bound)
            return
        # The throttled order: check the backlog (no write), claim, then take the
        # permit right before running, so the resource sees starts exactly as the
        # throttle granted them, not spread by the claim's latency.
        throttle = self._coordinator.for_resource(spec.resource)
        name = spec.resource.name
        start_rate_per_s = throttle.start_rate_per_s()
        if self._waiting[name] >= self._wait_room(spec.resource, start_rate_per_s):
            # Hidden until the tasks waiting ahead of it have started: no write, no claim.
            self._backlogged += 1
            backlog_s = self._waiting[name] / (start_rate_per_s or 1.0)
            await self._defer(message, backlog_s, bound, reason="backlog")
            return
        self._waiting[name] += 1
        try:
            claim = await self._claim(message, envelope, spec, bound)
            if claim is None:
                return
            permit = await self._acquire(throttle, message, bound)
        finally:
            self._waiting[name] -= 1
        if permit is None:
            # Throttled is not failed: the attempt the claim counted is given back.
            await self._unclaim(message, envelope.id, first_attempt=claim.record.attempts == 1)
            return
        try:
            outcome = await self._run(message, envelope, spec, claim, bound, permit=permit)
        finally:
            permit.release()
        if outcome.succeeded:
            throttle.on_success()
        elif outcome.kind is OutcomeKind.BACKPRESSURE and throttle.on_backpressure():
            bound.info("resource_slowed", effective_rate_per_s=throttle.effective_rate_per_s)

    async def _admit(self, message: dict[str, Any]) -> tuple[Envelope, TaskSpec] | None:
        """The envelope and spec of a message that may run now; None when it was
        dead-lettered (bad signature, malformed, unknown task, bad arguments) or sent
        back to wait for its ``eta``."""
        if self.settings.signing_keys:
            problem = verify(
                self.settings.signing_keys, message["Body"], message.get("MessageAttributes", {})
            )
            if problem is not None:
                # Nothing in an unsigned body is trusted: no record is touched.
                await self._reject(message, EnvelopeError(problem), Reason.BAD_SIGNATURE)
                return None
        try:
            envelope = decode(message["Body"])
        except EnvelopeError as exc:
            await self._reject(message, exc, Reason.MALFORMED)
            return None
        if envelope.seconds_until_due(self._clock()) >= 1.0:
            await self._postpone(message, envelope)
            return None
        try:
            spec = resolve(envelope, self.registry)
        except EnvelopeError as exc:
            known = envelope.task in self.registry
            await self._reject(
                message, exc, Reason.BAD_ARGUMENTS if known else Reason.UNKNOWN_TASK, envelope
            )
            return None
        return envelope, spec

    async def _claim(
        self, message: dict[str, Any], envelope: Envelope, spec: TaskSpec, bound: Any
    ) -> state.Claim | None:
        """Claim the attempt in DynamoDB; None (after acting on it) when it must not run.

        The claim carries a token of this receive, so that a claim the AWS call retry
        sent twice (its first answer lost) is recognised as this delivery's own. A
        lean task (no record) is not claimed: its attempt is its receive count.
        """
        if is_lean_task_id(envelope.id):
            return state.lean_claim(
                envelope,
                receive_count=_receive_count(message),
                max_attempts=spec.retry.max_attempts,
                now=self._clock(),
            )
        receipt, message_id = message["ReceiptHandle"], message["MessageId"]
        claim = await self._state.claim(
            envelope,
            message_id=message_id,
            now=self._clock(),
            timeout_s=spec.timeout_s,
            token=state.claim_token(receipt),
        )
        record = claim.record
        if claim.status in (state.ClaimStatus.DONE, state.ClaimStatus.DUPLICATE):
            bound.info("duplicate_delivery", status=record.status.value, claim=claim.status.value)
            self.stats.duplicates += 1
            await self._delete(receipt)
            return None
        if claim.status is state.ClaimStatus.DEAD:
            if record.message_id == message_id:
                # This message's last settlement stopped between the record and the
                # dead-letter copy: make the copy now, from the record.
                await self._dead_letter_from_record(message, envelope, record)
            else:
                self.stats.duplicates += 1
                await self._delete(receipt)
            return None
        if claim.status is state.ClaimStatus.BUSY:
            hide_s = math.ceil((record.lease_until or self._clock()) - self._clock()) + 1
            bound.info("task_busy_elsewhere", hide_s=hide_s)
            self.stats.deferred += 1
            await self._hide(receipt, hide_s)
            return None
        self._claimed[receipt] = envelope.id
        return claim

    async def _unclaim(self, message: dict[str, Any], task_id: str, *, first_attempt: bool) -> None:
        """Give a claimed attempt back without running it (its message was deferred)."""
        if self._claimed.pop(message["ReceiptHandle"], None) is None:
            return  # a lean task: nothing was claimed
        await self._state.update(
            state.released_params(
                self.settings.table,
                task_id,
                message_id=message["MessageId"],
                now=self._clock(),
                first_attempt=first_attempt,
            )
        )

    async def _run(
        self,
        message: dict[str, Any],
        envelope: Envelope,
        spec: TaskSpec,
        claim: state.Claim,
        bound: Any,
        *,
        permit: Permit | None = None,
    ) -> Outcome:
        """Run the claimed attempt and settle it; the permit goes back as soon as the
        handler returns, not after the (batched) settlement: the resource is free."""
        receipt = message["ReceiptHandle"]
        record = claim.record
        bound = bound.bind(
            attempt=record.attempts, resource=spec.resource.name if spec.resource else None
        )
        context = TaskContext(
            task_id=envelope.id,
            task=envelope.task,
            attempt=record.attempts,
            max_attempts=spec.retry.max_attempts,
            enqueued_at=envelope.enqueued_at,
        )
        self.stats.started += 1
        self._count(envelope.task, "Dispatched")
        try:
            with self._activity.running(envelope.task):
                outcome = await self.runner.run(spec, envelope.args, envelope.kwargs, context)
        finally:
            if permit is not None:
                self._release_permit(permit)
        held = self._held.get(receipt)
        if held is not None:
            held.settling = True
            self._slot_freed.set()
        self._claimed.pop(receipt, None)
        await self._settle(
            message=message,
            envelope=envelope,
            spec=spec,
            record=record,
            item=claim.item,
            outcome=outcome,
            bound=bound,
        )
        return outcome

    # --- the throttle ---------------------------------------------------------------

    def _wait_room(self, resource: Resource, start_rate_per_s: float | None) -> int:
        """How many messages may wait here for this resource: about what it can start
        within the horizon (at this dispatcher's measured share of the rate, when
        several dispatchers share it). The rest are deferred at once, without a
        claim, so a saturated resource never fills the dispatcher's slots and
        blocks other resources' tasks, and no waiter claims a task it cannot start."""
        horizon_s = self.options.throttle_horizon_s * _WAIT_ROOM_FILL
        if start_rate_per_s is None:
            return max(1, resource.max_concurrency or 1)
        return max(1, math.floor(start_rate_per_s * horizon_s) + (resource.max_concurrency or 0))

    async def _acquire(
        self, throttle: ResourceThrottle, message: dict[str, Any], bound: Any
    ) -> Permit | None:
        """A permit to start now or soon; None when the message was deferred instead.

        Waiting is not failing: a wait never spends an attempt. A message that could
        not start within ``throttle_horizon_s`` is hidden until its turn is likely.
        """
        permit, wait_s = await self._wait_for_permit(throttle)
        if permit is None:
            await self._defer(message, wait_s, bound, reason="throttled")
        return permit

    async def _wait_for_permit(self, throttle: ResourceThrottle) -> tuple[Permit | None, float]:
        """A permit within the throttle horizon, or None and the seconds until one is
        likely; the wait is measured either way."""
        name = throttle.resource.name
        started = time.monotonic()
        # One waiter at a time asks the throttle (asyncio.Lock is first come, first
        # served): the rest queue behind it instead of all waking for every token.
        async with self._gates[name]:
            while True:
                answer = throttle.try_start()
                waited = time.monotonic() - started
                if isinstance(answer, Permit) or (
                    waited + answer > self.options.throttle_horizon_s or self._stop.is_set()
                ):
                    break
                await self._wait_for_release(name, answer)
        if waited > 0.001 or not isinstance(answer, Permit):
            throttle.note_wait(waited)
            self.stats.throttle_wait_s += waited
            self._wait_since_flush[name] += waited
        return (answer, 0.0) if isinstance(answer, Permit) else (None, answer)

    def _release_permit(self, permit: Permit) -> None:
        """Give a slot back and wake the tasks waiting for one of that resource."""
        permit.release()
        self._note_release(permit.resource_name)

    async def _wait_for_release(self, name: str, timeout_s: float) -> None:
        """Sleep ``timeout_s``, or less: until a task of resource ``name`` frees its slot."""
        released = self._released.setdefault(name, asyncio.Event())
        waits = {asyncio.ensure_future(released.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _note_release(self, name: str) -> None:
        """Wake the tasks waiting for a slot of resource ``name``."""
        released = self._released.pop(name, None)
        if released is not None:
            released.set()

    async def _defer(
        self, message: dict[str, Any], wait_s: float, bound: Any, *, reason: str
    ) -> None:
        """Hide a message the throttle cannot start soon; no attempt is spent.

        Each receive counts toward the queue's redrive limit, so a message deferred
        many times is sent again as a fresh copy instead (receive count back to 0).
        """
        delay_s = max(1, min(c.SQS_MAX_VISIBILITY_S, math.ceil(wait_s)))
        self.stats.deferred += 1
        bound.debug("task_deferred", reason=reason, delay_s=delay_s)
        if (_receive_count(message) or 0) >= c.REDRIVE_MAX_RECEIVE_COUNT // 2:
            entry = {
                "Id": "0",
                "MessageBody": message["Body"],
                "DelaySeconds": min(c.SQS_MAX_DELAY_S, delay_s),
                **_carried_entry(message),
            }
            result = await self._requeue.submit(entry)
            if result.ok:
                await self._delete(message["ReceiptHandle"])
            return
        await self._hide(message["ReceiptHandle"], delay_s)

    async def _settle(
        self,
        *,
        message: dict[str, Any],
        envelope: Envelope,
        spec: TaskSpec,
        record: state.TaskRecord,
        item: dict[str, Any],
        outcome: Outcome,
        bound: Any,
    ) -> None:
        receipt, message_id = message["ReceiptHandle"], message["MessageId"]
        table, now = self.settings.table, self._clock()
        tracked = not is_lean_task_id(envelope.id)  # a lean task has no record to write
        if outcome.succeeded and not tracked:
            self.stats.succeeded += 1
            self._count(envelope.task, "Succeeded")
            bound.debug("task_succeeded", duration_s=round(outcome.duration_s, 4))
            await self._delete(receipt)
            return
        if outcome.succeeded:
            written = await self._records.submit(
                {"PutRequest": {"Item": state.succeeded_item(item, now=now, result=outcome.result)}}
            )
            if not written.ok:
                # The batch did not go through: write this one record on its own.
                owned = await self._state.update(
                    state.succeeded_params(
                        table, envelope.id, message_id=message_id, now=now, result=outcome.result
                    )
                )
                if not owned:
                    bound.warning("settled_after_losing_claim", outcome="succeeded")
            self.stats.succeeded += 1
            self._count(envelope.task, "Succeeded")
            bound.debug("task_succeeded", duration_s=round(outcome.duration_s, 4))
            await self._delete(receipt)
            return

        error = outcome.error or ErrorInfo(type="Unknown", message="")
        backpressure = outcome.kind is OutcomeKind.BACKPRESSURE
        if backpressure or (
            outcome.kind is OutcomeKind.RETRYABLE and spec.retry.has_attempts_left(record.attempts)
        ):
            # Backpressure is the resource's fault, not the task's: its attempt is
            # given back, and it waits the resource's Retry-After (or the first step).
            if not backpressure:
                delay_s = spec.retry.delay_s(record.attempts)
            elif outcome.retry_after_s is not None:
                delay_s = math.ceil(outcome.retry_after_s)
            else:
                delay_s = spec.retry.delay_s(1)
            if tracked:
                await self._state.update(
                    state.retrying_params(
                        table,
                        envelope.id,
                        message_id=message_id,
                        now=now,
                        error=error,
                        next_attempt_at=now + delay_s,
                        refund_attempt=backpressure,
                    )
                )
            if backpressure:
                self.stats.backpressure += 1
            else:
                self.stats.retried += 1
            self._count(envelope.task, "Backpressure" if backpressure else "Retried")
            event = "task_backpressure" if backpressure else "task_retry"
            bound.info(event, delay_s=delay_s, error=error.summary())
            await self._hide(receipt, delay_s)
            return

        reason = {
            OutcomeKind.PERMANENT: Reason.PERMANENT_ERROR,
            OutcomeKind.NOT_RETRYABLE: Reason.NOT_RETRYABLE,
        }.get(outcome.kind, Reason.MAX_ATTEMPTS)
        if tracked:
            await self._state.update(
                state.dead_params(
                    table,
                    envelope.id,
                    message_id=message_id,
                    now=now,
                    error=error,
                    reason=reason.value,
                )
            )
        letter = DeadLetter(
            body=message["Body"],
            reason=reason,
            error=error,
            source_queue=self.settings.queue_url,
            source_message_id=message_id,
            dead_at=now,
            task_id=envelope.id,
            task=envelope.task,
            attempts=record.attempts,
            first_failure_at=record.first_failure_at or now,
            last_failure_at=now,
            receive_count=_receive_count(message),
            carried=_carried(message),
        )
        bound.warning(
            "task_dead", reason=reason.value, attempts=record.attempts, error=error.summary()
        )
        await self._send_dead_letter(letter, receipt)

    async def _dead_letter_from_record(
        self, message: dict[str, Any], envelope: Envelope, record: state.TaskRecord
    ) -> None:
        known = {member.value for member in Reason}
        dead_reason = record.dead_reason or ""
        reason = Reason(dead_reason) if dead_reason in known else Reason.MAX_ATTEMPTS
        letter = DeadLetter(
            body=message["Body"],
            reason=reason,
            error=record.last_error or ErrorInfo(type="Unknown", message=""),
            source_queue=self.settings.queue_url,
            source_message_id=message["MessageId"],
            dead_at=record.finished_at or self._clock(),
            task_id=envelope.id,
            task=envelope.task,
            attempts=record.attempts,
            first_failure_at=record.first_failure_at,
            last_failure_at=record.last_failure_at,
            receive_count=_receive_count(message),
            carried=_carried(message),
        )
        await self._send_dead_letter(letter, message["ReceiptHandle"])

    async def _reject(
        self,
        message: dict[str, Any],
        exc: EnvelopeError,
        reason: Reason,
        envelope: Envelope | None = None,
    ) -> None:
        """Dead-letter a message that can never run, with the reason; never retried."""
        now = self._clock()
        task_id = envelope.id if envelope else exc.task_id
        task = envelope.task if envelope else exc.task
        if task_id and not is_lean_task_id(task_id):
            await self._state.update(
                state.rejected_params(
                    self.settings.table, task_id, task, now=now, reason=reason.value
                )
            )
        log.warning(
            "message_rejected",
            reason=reason.value,
            detail=exc.reason,
            message_id=message["MessageId"],
            task_id=task_id,
            task=task,
        )
        self.stats.rejected += 1
        letter = DeadLetter(
            body=message["Body"],
            reason=reason,
            error=ErrorInfo(type=type(exc).__name__, message=exc.reason),
            source_queue=self.settings.queue_url,
            source_message_id=message["MessageId"],
            dead_at=now,
            task_id=task_id,
            task=task,
            first_failure_at=now,
            last_failure_at=now,
            receive_count=_receive_count(message),
            carried=_carried(message),
        )
        await self._send_dead_letter(letter, message["ReceiptHandle"])

    async def _send_dead_letter(self, letter: DeadLetter, receipt: str) -> None:
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
            return
        self.stats.dead += 1
        self.stats.dead_reasons[letter.reason.value] += 1
        self._count(letter.task or "(malformed)", "DeadLettered")
        await self._delete(receipt)

    async def _postpone(self, message: dict[str, Any], envelope: Envelope) -> None:
        """A delay longer than SQS's 15 minutes: send the message again, due later."""
        remaining = envelope.seconds_until_due(self._clock())
        entry = {
            "Id": "0",
            "MessageBody": message["Body"],
            "DelaySeconds": min(c.SQS_MAX_DELAY_S, math.ceil(remaining)),
            **_carried_entry(message),
        }
        result = await self._requeue.submit(entry)
        if not result.ok:
            log.error(
                "postpone_failed", code=result.code, error=result.message, task_id=envelope.id
            )
            return
        self.stats.postponed += 1
        await self._delete(message["ReceiptHandle"])

    # --- SQS settlement -------------------------------------------------------------------

    async def _delete(self, receipt: str) -> None:
        result = await self._deletes.submit({"ReceiptHandle": receipt})
        _log_entry_failure("delete", result)

    async def _hide(self, receipt: str, seconds: int) -> None:
        seconds = max(0, min(c.SQS_MAX_VISIBILITY_S, seconds))
        result = await self._visibility.submit(
            {"ReceiptHandle": receipt, "VisibilityTimeout": seconds}
        )
        _log_entry_failure("change_visibility", result)

    async def _schedule_loop(self) -> None:
        if not self._periodic.has_schedules:
            return
        while True:
            await asyncio.sleep(self._periodic.seconds_to_next_fire())
            await self._enqueue_periodic()

    async def _enqueue_periodic(self) -> None:
        try:
            await self._periodic.tick()
        except DispatchError as exc:
            log.error("periodic_enqueue_failed", error=str(exc))

    async def _metrics_loop(self) -> None:
        if self._metrics is None:
            return
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self._flush_metrics()

    async def _flush_metrics(self) -> None:
        if self._metrics is None:
            return
        waits, self._wait_since_flush = dict(self._wait_since_flush), defaultdict(float)
        await self._metrics.flush(self.throttle_snapshots(), waits)

    def _count(self, task: str, metric: str) -> None:
        self._activity.count(task, metric)
        if self._metrics is not None:
            self._metrics.count(task, metric)

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            await self._publish()

    async def _publish(self) -> None:
        """Log each resource's throttle state; publish it and the per-task activity for
        `dispatch status` and `dispatch top`."""
        snapshots = self.throttle_snapshots()
        for snapshot in snapshots:
            log.info("throttle_state", **_snapshot_fields(snapshot, self._waiting[snapshot.name]))
        activity = self._activity.snapshot()
        if not _has_news(activity, self._last_published, snapshots, self._waiting):
            return  # an idle dispatcher writes nothing: idle costs stay one request a tick
        self._last_published = activity
        put, directory = publish_params(
            self.settings.table,
            self._coordinator.owner,
            snapshots,
            self._waiting,
            self._clock(),
            activity=activity,
        )
        dynamodb: Any = self._clients.dynamodb
        try:
            with aws_errors("PutItem"):
                await dynamodb.put_item(**put)
                await dynamodb.update_item(**directory)
        except DispatchError as exc:
            log.warning("throttle_state_not_published", error=str(exc))

    async def _heartbeat(self) -> None:
        """Extend the visibility of held messages well before it runs out.

        Every third of the visibility timeout, any held message with less than two
        thirds of it left is hidden for a whole timeout again, so one late beat
        (a busy loop, a slow batch) still leaves a third of the timeout in hand.
        """
        timeout = self.options.visibility_timeout_s
        period = timeout / 3
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            due = [
                h
                for h in self._held.values()
                if not h.settling and h.visible_until - now <= 2 * period
            ]
            for held in due:
                held.visible_until = now + timeout
            if due:
                await asyncio.gather(
                    *(
                        self._visibility.submit(
                            {"ReceiptHandle": h.receipt, "VisibilityTimeout": timeout}
                        )
                        for h in due
                    )
                )


async def _batch_write(client: Any, table: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """BatchWriteItem with retries of unprocessed items; answers like an SQS batch call."""
    ids = {str(e["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"]): e["Id"] for e in entries}
    requests = [{"PutRequest": e["PutRequest"]} for e in entries]
    for attempt in range(6):
        answer = await client.batch_write_item(RequestItems={table: requests})
        requests = list(answer.get("UnprocessedItems", {}).get(table, []))
        if not requests:
            return {"Failed": []}
        await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
    failed = [ids[str(r["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"])] for r in requests]
    return {
        "Failed": [{"Id": i, "Code": "Unprocessed", "Message": "left unprocessed"} for i in failed]
    }


def _has_news(
    activity: dict[str, Any],
    last: dict[str, Any] | None,
    snapshots: tuple[ThrottleSnapshot, ...],
    waiting: Counter[str],
) -> bool:
    """Whether a dispatcher has anything to publish: a message received or a task
    counted since it last published, or work in flight or waiting."""
    if activity.get("oldest_message_age_s") is not None:
        return True
    if activity.get("tasks") != (last or {}).get("tasks", {}):
        return True  # counted something (a dispatch also moves dispatched_per_s)
    if any(counts.get("in_flight") for counts in activity.get("tasks", {}).values()):
        return True
    return any(s.in_flight or waiting[s.name] for s in snapshots)


def _snapshot_fields(snapshot: ThrottleSnapshot, waiting: int) -> dict[str, Any]:
    return {
        "resource": snapshot.name,
        "configured_rate_per_s": snapshot.configured_rate_per_s,
        "effective_rate_per_s": snapshot.effective_rate_per_s,
        "in_flight": snapshot.in_flight,
        "max_concurrency": snapshot.max_concurrency,
        "waiting": waiting,
        "waits": snapshot.waits,
        "mean_wait_s": round(snapshot.mean_wait_s, 4),
    }


def _carried(message: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The attributes a copy of this message must keep (its signature)."""
    signature = message.get("MessageAttributes", {}).get(ATTR_SIGNATURE)
    if not signature:
        return {}
    return {ATTR_SIGNATURE: {"DataType": "String", "StringValue": signature["StringValue"]}}


def _carried_entry(message: dict[str, Any]) -> dict[str, Any]:
    carried = _carried(message)
    return {"MessageAttributes": carried} if carried else {}


def _receive_count(message: dict[str, Any]) -> int | None:
    value = message.get("Attributes", {}).get("ApproximateReceiveCount")
    return int(value) if value is not None else None


def _entry_size(entry: dict[str, Any]) -> int:
    size = len(str(entry.get("MessageBody", "")).encode("utf-8"))
    for name, value in entry.get("MessageAttributes", {}).items():
        size += (
            len(name.encode())
            + len(str(value.get("StringValue", "")).encode())
            + len(value.get("DataType", ""))
        )
    return size


def _log_entry_failure(action: str, result: EntryResult) -> None:
    if not result.ok:
        # The message is settled by DynamoDB's record already; at worst it comes
        # back once and the claim deletes it without running it.
        log.warning("sqs_entry_failed", action=action, code=result.code, error=result.message)
