"""The enqueue API: one message, many messages, sync (boto3) and async (aiobotocore).

Each enqueue first writes the task's ``queued`` record, then sends the message,
so ``dispatch.status(task_id)`` answers as soon as ``enqueue`` returns and a
claim can always find the record. A lean task (``@task(track_state=False)``)
has no record: its enqueue is the SendMessageBatch alone. Batches go out 10
messages (and at most 1 MiB) per SendMessageBatch and 25 records per
BatchWriteItem. Entries SQS
refuses for a transient reason are sent again; entries refused for good are
reported in :class:`~dispatch.core.errors.PartialEnqueueError` with the ids of the
rest, and their records removed. Nothing is dropped silently.

The orchestration is written once, as a generator that yields AWS calls
(:class:`Call`) and pauses (:class:`Pause`); a small driver runs it on boto3 or
on aiobotocore.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.envelope import Message, is_lean_task_id
from dispatch.core.errors import EnqueueError, InvalidArgumentsError, PartialEnqueueError
from dispatch.core.signing import signature_attribute
from dispatch.producer.wake import ENV_LAMBDA_ENDPOINT_URL, Waker
from dispatch.store import state
from dispatch.store.aws import RequestCounter, async_clients, sync_clients, translate_error
from dispatch.store.aws_retry import Backoff
from dispatch.store.conditional import is_condition_failure, old_item

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from dispatch.store.aws import AsyncClients, SyncClients

__all__ = ["Queue", "default_queue", "enqueue_many", "enqueue_many_async", "set_default_queue"]

T = TypeVar("T")
_SEND_ATTEMPTS: Final = 6
# Between the rounds that send again what SQS refused for a transient reason, or
# what DynamoDB left unprocessed: a full-jitter pause of up to 0.05 s, 0.1 s, ... 2 s.
_ROUND_BACKOFF: Final = Backoff(tenacity.wait_exponential(multiplier=0.05, max=2.0))
# An idempotent task still marked pending_send after this long lost its producer
# between writing the record and sending the message; the next enqueue re-sends.
_ORPHAN_AFTER_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Call:
    """One AWS call for a driver to make."""

    service: str  # "sqs" | "dynamodb"
    operation: str  # the client method, e.g. "send_message_batch"
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait before the next call (backoff between partial-failure retries)."""

    seconds: float


Step = Call | Pause
Plan = Generator[Step, Any, T]


def enqueue_plan(
    settings: Settings, messages: Sequence[Message], now: float, *, scheduled: bool = False
) -> Plan[list[str]]:
    """Write records, send messages, clean up what could not be sent; returns the task ids.

    Every failure is caught per message and reported at the end, so one refused
    entry never leaves the others half done (a record without its message).
    Lean tasks (``track_state=False``) get no record: their messages are only sent.
    ``scheduled`` (the periodic enqueuer): a lean message's idempotency key is
    honoured with a ``sched#`` marker item instead of a task record.
    """
    lean = [is_lean_task_id(m.task_id) for m in messages]
    for m in messages:
        awaiting = getattr(m, "awaiting", None)  # a callback's message (compose.TaskMessage)
        if awaiting:
            raise InvalidArgumentsError(awaiting, task=m.envelope.task)
    _check_options(settings, messages, lean, scheduled=scheduled)
    failures = _Failures()
    plain: list[int] = []  # a queued record, batched
    keyed: list[int] = []  # a conditional record (or a marker), one by one
    bare: list[int] = []  # lean: the message only
    for i, m in enumerate(messages):
        if m.envelope.idempotency_key is None:
            (bare if lean[i] else plain).append(i)
        else:
            (bare if lean[i] and not scheduled else keyed).append(i)

    for chunk in state.chunks(plain, c.DDB_MAX_BATCH_WRITE):
        yield from _write_records(settings.table, messages, chunk, now, failures)

    fresh_keyed = yield from _write_keyed(
        settings.table, messages, keyed, lean=lean, now=now, failures=failures
    )
    to_send = [i for i in plain if i not in failures] + bare + fresh_keyed
    yield from _send_messages(settings, messages, sorted(to_send), failures)
    for i in fresh_keyed:
        if i not in failures:
            params = state.sent_params(settings.table, messages[i].task_id, marker=lean[i])
            yield Call("dynamodb", "update_item", params)
    unrecorded = set(bare)
    for i in sorted(failures.reasons):
        if i not in unrecorded:
            yield from _forget(settings.table, messages[i].task_id, marker=lean[i])
    if failures.reasons:
        if len(failures.reasons) == len(messages) and failures.errors:
            # Nothing went out and AWS said why (no table, no queue, no credentials):
            # that error is the clearest report.
            raise failures.errors[0]
        ids: list[str | None] = [
            None if i in failures else m.task_id for i, m in enumerate(messages)
        ]
        raise PartialEnqueueError(ids, failures.reasons)
    return [m.task_id for m in messages]


def _write_keyed(
    table: str,
    messages: Sequence[Message],
    keyed: Sequence[int],
    *,
    lean: Sequence[bool],
    now: float,
    failures: _Failures,
) -> Plan[list[int]]:
    """Conditionally write each keyed message's record (a lean one's: its marker);
    returns those whose message must be sent: new, or orphaned by a dead producer."""
    fresh: list[int] = []
    put_here: set[str] = set()  # task ids whose record this call has written
    for i in keyed:
        try:
            yield Call(
                "dynamodb",
                "put_item",
                state.put_queued_params(table, messages[i].envelope, now, marker=lean[i]),
            )
        except (ClientError, BotoCoreError) as exc:
            if not is_condition_failure(exc):
                failures.note([i], translate_error(exc, "PutItem"))
                continue
            old = old_item(exc)
            record = state.TaskRecord.from_item(old) if old else None
            if record is None:
                continue  # enqueued before: same key, same task, no second message
            own = messages[i].task_id not in put_here and _is_own_write(record, now)
            if not (own or _is_orphan(record, now)):
                continue
        put_here.add(messages[i].task_id)
        fresh.append(i)
    return fresh


def _check_options(
    settings: Settings, messages: Sequence[Message], lean: Sequence[bool], *, scheduled: bool
) -> None:
    """Refuse, before anything is written or sent, options this queue cannot honour."""
    if settings.is_fifo and any(m.delay_s for m in messages):
        raise EnqueueError(
            "FIFO queues do not support per-message delays (SQS ignores DelaySeconds on them); "
            "enqueue without delay_s, or use a standard queue"
        )
    if settings.is_fifo or scheduled:
        return
    for message, is_lean in zip(messages, lean, strict=True):
        if is_lean and message.envelope.idempotency_key is not None:
            raise EnqueueError(
                f"task {message.envelope.task!r} is declared with track_state=False (lean: no "
                "task record), and idempotency_key= needs a record to recognise a repeat; "
                "declare the task with track_state=True, or use a FIFO queue, where SQS drops "
                "a repeat of the same key within its 5-minute deduplication interval"
            )


@dataclass(slots=True)
class _Failures:
    """Entries that did not make it, with why; and the AWS errors seen on the way."""

    reasons: dict[int, str] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)

    def note(self, indexes: Iterable[int], error: Exception) -> None:
        self.errors.append(error)
        for i in indexes:
            self.reasons.setdefault(i, str(error))

    def __contains__(self, index: object) -> bool:
        return index in self.reasons


def _is_orphan(record: state.TaskRecord, now: float) -> bool:
    created = record.created_at or now
    return (
        record.status is state.Status.QUEUED
        and record.pending_send
        and now - created > _ORPHAN_AFTER_S
    )


def _is_own_write(record: state.TaskRecord, now: float) -> bool:
    """The record this very enqueue wrote: the PutItem went through, its answer was
    lost, and the call retry's repeat was refused by it. Its message must still go
    out (were it another producer's in the same millisecond, the second message is
    a duplicate the claim drops)."""
    return (
        record.status is state.Status.QUEUED
        and record.pending_send
        and record.created_at is not None
        and abs(record.created_at - round(now, 3)) < 0.0005
    )


def _write_records(
    table: str,
    messages: Sequence[Message],
    chunk: Sequence[int],
    now: float,
    failures: _Failures,
) -> Plan[None]:
    """BatchWriteItem the queued records of ``chunk``; what never gets written fails."""
    by_id = {messages[i].task_id: i for i in chunk}
    requests: list[dict[str, Any]] = [
        {"PutRequest": {"Item": state.queued_item(messages[i].envelope, now)}} for i in chunk
    ]
    for attempt in range(1, _SEND_ATTEMPTS * 2 + 1):
        try:
            answer = yield Call("dynamodb", "batch_write_item", {"RequestItems": {table: requests}})
        except (ClientError, BotoCoreError) as exc:
            failures.note(chunk, translate_error(exc, "BatchWriteItem"))
            return
        requests = list(answer.get("UnprocessedItems", {}).get(table, []))
        if not requests:
            return
        yield Pause(_ROUND_BACKOFF.pause_s(attempt))
    left = [by_id[r["PutRequest"]["Item"]["task_id"]["S"]] for r in requests]
    reason = "DynamoDB left the task record unprocessed after retries"
    for i in left:
        failures.reasons[i] = reason


def _send_batches(messages: Sequence[Message], indexes: Sequence[int]) -> list[list[int]]:
    """Group indexes into batches of at most 10 entries and 1 MiB."""
    batches: list[list[int]] = []
    size = 0
    for i in indexes:
        msg_size = messages[i].size_bytes
        if (
            not batches
            or len(batches[-1]) >= c.SQS_MAX_BATCH_ENTRIES
            or size + msg_size > c.SQS_MAX_BATCH_BYTES
        ):
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += msg_size
    return batches


def _entry(settings: Settings, message: Message, index: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Id": str(index),
        "MessageBody": message.body,
        "DelaySeconds": message.sqs_delay_seconds(),
    }
    signature = signature_attribute(settings.signing_keys, message.body)
    if signature:
        entry["MessageAttributes"] = signature
    if settings.is_fifo:
        entry["MessageGroupId"] = message.envelope.group or "default"
        entry["MessageDeduplicationId"] = message.task_id
        del entry["DelaySeconds"]  # FIFO queues take delays per queue only
    elif message.envelope.key is not None:
        # A keyed task on a standard queue: the key is its SQS fair-queue tenant, so SQS
        # keeps other keys' dwell time low while one key has a backlog (docs/throttle.md).
        entry["MessageGroupId"] = message.envelope.key
    return entry


def _send_messages(
    settings: Settings, messages: Sequence[Message], indexes: Sequence[int], failures: _Failures
) -> Plan[None]:
    batches = _send_batches(messages, indexes)
    for position, batch in enumerate(batches):
        pending = batch
        for attempt in range(_SEND_ATTEMPTS):
            entries = [_entry(settings, messages[i], i) for i in pending]
            try:
                answer = yield Call(
                    "sqs",
                    "send_message_batch",
                    {"QueueUrl": settings.queue_url, "Entries": entries},
                )
            except (ClientError, BotoCoreError) as exc:
                # The whole call failed after the client's retries (dispatch.store.aws_retry):
                # this batch and every later one are not on the queue.
                unsent = pending + [i for later in batches[position + 1 :] for i in later]
                failures.note(unsent, translate_error(exc, "SendMessageBatch"))
                return
            retry: list[int] = []
            for failed in answer.get("Failed", []):
                i = int(failed["Id"])
                if failed.get("SenderFault") or attempt == _SEND_ATTEMPTS - 1:
                    failures.reasons[i] = f"{failed.get('Code', '?')}: {failed.get('Message', '')}"
                else:
                    retry.append(i)
            if not retry:
                break
            pending = retry
            yield Pause(_ROUND_BACKOFF.pause_s(attempt + 1))


def _forget(table: str, task_id: str, *, marker: bool) -> Plan[None]:
    try:
        yield Call("dynamodb", "delete_item", state.unsent_params(table, task_id, marker=marker))
    except ClientError as exc:
        if not is_condition_failure(exc):
            raise


def run_sync(plan: Plan[T], clients: SyncClients) -> T:
    """Drive a plan on boto3 clients."""
    try:
        step = next(plan)
        while True:
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                step = plan.send(None)
                continue
            client = clients.sqs if step.service == "sqs" else clients.dynamodb
            try:
                answer = getattr(client, step.operation)(**step.params)
            except (ClientError, BotoCoreError) as exc:
                step = plan.throw(exc)
                continue
            step = plan.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except (ClientError, BotoCoreError) as exc:
        raise translate_error(exc, _operation_name(exc)) from exc


async def run_async(plan: Plan[T], clients: AsyncClients) -> T:
    """Drive a plan on aiobotocore clients."""
    try:
        step = next(plan)
        while True:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                step = plan.send(None)
                continue
            client: Any = clients.sqs if step.service == "sqs" else clients.dynamodb
            try:
                answer = await getattr(client, step.operation)(**step.params)
            except (ClientError, BotoCoreError) as exc:
                step = plan.throw(exc)
                continue
            step = plan.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except (ClientError, BotoCoreError) as exc:
        raise translate_error(exc, _operation_name(exc)) from exc


def _operation_name(exc: BaseException) -> str:
    return str(getattr(exc, "operation_name", "") or "AWS call")


class Queue:
    """Enqueues tasks on the queue and table named by ``settings``.

    Sync calls use boto3 clients made on first use; async calls use aiobotocore
    clients made on first use in the running event loop, closed by :meth:`aclose`.
    """

    def __init__(self, settings: Settings, *, counter: RequestCounter | None = None) -> None:
        self.settings = settings
        self._counter = counter
        self.waker = (
            Waker(
                settings,
                settings.wake_function,
                lambda_endpoint_url=os.environ.get(ENV_LAMBDA_ENDPOINT_URL) or None,
            )
            if settings.wake_function
            else None
        )
        self._sync: SyncClients | None = None
        self._async: AsyncClients | None = None
        self._async_cm: AbstractAsyncContextManager[AsyncClients] | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_env(cls) -> Queue:
        """A queue configured from the environment (``DISPATCH_*``, ``AWS_*``)."""
        return cls(Settings.from_env())

    def sync_clients(self) -> SyncClients:
        """The boto3 clients this queue uses (made on first use)."""
        if self._sync is None:
            self._sync = sync_clients(self.settings, counter=self._counter)
        return self._sync

    async def aclients(self) -> AsyncClients:
        """The aiobotocore clients this queue uses in the running event loop (made on
        first use there, closed by :meth:`aclose`)."""
        return await self._aclients()

    async def _aclients(self) -> AsyncClients:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async_cm = async_clients(self.settings, counter=self._counter)
            self._async = await self._async_cm.__aenter__()
            self._async_loop = loop
        return self._async

    def enqueue(self, message: Message) -> str:
        """Send one message; returns its task id."""
        return self.enqueue_many([message])[0]

    def enqueue_many(self, messages: Iterable[Message]) -> list[str]:
        """Send many messages in batches; returns the task ids in input order."""
        batch = list(messages)
        if not batch:
            return []
        ids = run_sync(enqueue_plan(self.settings, batch, time.time()), self.sync_clients())
        if self.waker is not None:
            self.waker.after_send(self.sync_clients().dynamodb)
        return ids

    async def enqueue_async(self, message: Message) -> str:
        """Send one message (aiobotocore); returns its task id."""
        return (await self.enqueue_many_async([message]))[0]

    async def enqueue_many_async(self, messages: Iterable[Message]) -> list[str]:
        """Send many messages in batches (aiobotocore); returns the task ids."""
        batch = list(messages)
        if not batch:
            return []
        ids = await run_async(
            enqueue_plan(self.settings, batch, time.time()), await self._aclients()
        )
        if self.waker is not None and self.waker.due():
            await asyncio.to_thread(self.waker.after_send, self.sync_clients().dynamodb)
        return ids

    def close(self) -> None:
        """Close the boto3 clients, if any were made."""
        if self._sync is not None:
            sync, self._sync = self._sync, None
            sync.sqs.close()
            sync.dynamodb.close()
        if self.waker is not None:
            self.waker.close()

    async def aclose(self) -> None:
        """Close the aiobotocore clients, if any were opened."""
        if self._async_cm is not None:
            cm, self._async_cm, self._async = self._async_cm, None, None
            await cm.__aexit__(None, None, None)


_default: Queue | None = None


def default_queue() -> Queue:
    """The queue configured from the environment, made on first use."""
    global _default  # noqa: PLW0603 - one lazily made default, resettable by set_default_queue
    if _default is None:
        _default = Queue.from_env()
    return _default


def set_default_queue(queue: Queue | None) -> None:
    """Replace the default queue (None: rebuild from the environment on next use)."""
    global _default  # noqa: PLW0603 - see default_queue
    _default = queue


def enqueue_many(messages: Iterable[Message]) -> list[str]:
    """Enqueue many messages (from ``task.message(...)``) on the default queue."""
    return default_queue().enqueue_many(messages)


async def enqueue_many_async(messages: Iterable[Message]) -> list[str]:
    """Enqueue many messages on the default queue (aiobotocore)."""
    return await default_queue().enqueue_many_async(messages)
