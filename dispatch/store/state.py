"""The DynamoDB task-state store: one record per task, moved on by conditional writes.

One item per task, keyed ``pk = "task#<task id>"`` (docs/formats.md has every
attribute). Every transition is a conditional write, so two deliveries of one
message, or two dispatchers, can never both run a task or both settle it::

    queued ──claim──▶ running ──▶ succeeded
      ▲                 │  ▲
      │                 │  └──claim── retrying ◀─┐
      │                 ├──────────────────────▶─┘
      │                 └──▶ dead
      └── enqueue (written before the message is sent)

A lean task (``@task(track_state=False)``, id ``lean-...``) has no record: its
"claim" is :func:`lean_claim`, built from the message alone, and nothing is
written when it settles.

The request parameters are built by pure functions; :class:`StateStore`
(aiobotocore, for the dispatcher) and :class:`SyncStateStore` (boto3, for the
enqueue API and the CLI) only send them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import tenacity
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.errors import ConfigurationError, ResultError
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import (
    Claim,
    ClaimAsk,
    ClaimStatus,
    Status,
    TaskRecord,
    listed_value,
    listed_while_running,
)
from dispatch.core.result import result_json
from dispatch.store.aws import aws_errors
from dispatch.store.aws_retry import Backoff
from dispatch.store.codec import decimal, number
from dispatch.store.conditional import is_condition_failure, old_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodb import DynamoDBClient as AioDynamoDBClient

__all__ = [
    "Claim",
    "ClaimStatus",
    "StateStore",
    "Status",
    "SyncStateStore",
    "TaskRecord",
    "claim_token",
    "old_item",
    "task_key",
]

_SERIALIZER: Final = TypeSerializer()
# Time allowed after a handler's timeout before its "running" claim may be taken over.
LEASE_GRACE_S: Final = 30.0
# batch_write makes up to 6 BatchWriteItem rounds, each sending what the last left
# unprocessed, and pauses 0.05 s, 0.1 s, ... up to 1 s after each round that did.
_UNPROCESSED_ATTEMPTS: Final = 6
_UNPROCESSED_BACKOFF: Final = Backoff(
    tenacity.wait_exponential(multiplier=0.05, max=1.0), full_jitter=False
)


def task_key(task_id: str) -> dict[str, Any]:
    """The DynamoDB key of a task record."""
    return {c.TABLE_HASH_KEY: {"S": f"{c.TASK_KEY_PREFIX}{task_id}"}}


def marker_key(task_id: str) -> dict[str, Any]:
    """The DynamoDB key of a periodic lean task's enqueue marker (no task record is kept)."""
    return {c.TABLE_HASH_KEY: {"S": f"{c.SCHEDULE_KEY_PREFIX}{task_id}"}}


def _key(task_id: str, *, marker: bool) -> dict[str, Any]:
    return marker_key(task_id) if marker else task_key(task_id)


def _values(**values: Any) -> dict[str, Any]:
    """ExpressionAttributeValues from Python values (floats become Decimals)."""
    return {f":{name}": _SERIALIZER.serialize(_decimalize(value)) for name, value in values.items()}


def _decimalize(value: Any) -> Any:
    if isinstance(value, float):
        return decimal(value)
    if isinstance(value, dict):
        return {key: _decimalize(item) for key, item in value.items()}
    return value


def _ttl(now: float) -> int:
    return int(now) + c.RECORD_TTL_S


def record_ttl(now: float, due_at: float | None = None) -> int:
    """When a record written ``now`` may expire: the record lifetime after the task is
    due, so a task delayed for longer than that (``delay_s`` of any length) keeps its
    record, and its cancel, until it runs."""
    return _ttl(max(now, due_at or now))


# --- request builders (pure) ---------------------------------------------------


def queued_item(envelope: Envelope, now: float, *, marker: bool = False) -> dict[str, Any]:
    """The item written at enqueue time (``marker``: a periodic lean task's marker)."""
    prefix = c.SCHEDULE_KEY_PREFIX if marker else c.TASK_KEY_PREFIX
    item: dict[str, Any] = {
        c.TABLE_HASH_KEY: f"{prefix}{envelope.id}",
        "task_id": envelope.id,
        "task": envelope.task,
        "status": Status.QUEUED.value,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        c.TABLE_TTL_ATTRIBUTE: record_ttl(now, envelope.eta),
    }
    if envelope.idempotency_key is not None:
        item["idempotency_key"] = envelope.idempotency_key
    return {key: _SERIALIZER.serialize(_decimalize(value)) for key, value in item.items()}


def put_queued_params(
    table: str, envelope: Envelope, now: float, *, marker: bool = False
) -> dict[str, Any]:
    """PutItem that creates an idempotent task's record only if its id is new.

    The record is marked ``pending_send`` until the message is on the queue, so
    a later enqueue with the same key can tell a task whose producer died
    between the two steps (it sends the message again) from one already queued.
    ``marker``: a periodic lean task keeps no record, so the same item goes under
    ``sched#<task id>`` instead, where no reader takes it for the task's state.
    """
    item = queued_item(envelope, now, marker=marker)
    item["pending_send"] = {"BOOL": True}
    return {
        "TableName": table,
        "Item": item,
        "ConditionExpression": "attribute_not_exists(pk)",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def sent_params(table: str, task_id: str, *, marker: bool = False) -> dict[str, Any]:
    """UpdateItem: the idempotent task's message is on the queue."""
    return {
        "TableName": table,
        "Key": _key(task_id, marker=marker),
        "UpdateExpression": "REMOVE pending_send",
        "ConditionExpression": "attribute_exists(pk)",
    }


def unsent_params(table: str, task_id: str, *, marker: bool = False) -> dict[str, Any]:
    """DeleteItem: the message could not be sent, so the queued record must not stay."""
    return {
        "TableName": table,
        "Key": _key(task_id, marker=marker),
        "ConditionExpression": "#s = :queued",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(queued=Status.QUEUED.value),
    }


def claim_token(receipt_handle: str) -> str:
    """The token a claim stores: short, and different for every receive of a message.

    A claim whose answer was lost and that is sent again (the AWS call retry)
    finds its own token on the record and knows the attempt is its own; a later
    delivery of the same message (a new receive, a new receipt handle) does not.
    """
    return hashlib.sha256(receipt_handle.encode()).hexdigest()[:24]


_CLAIMABLE: Final = (
    "attribute_not_exists(pk) OR #s IN (:queued, :retrying) "
    "OR (#s = :running AND lease_until < :now)"
)
"""A record a new attempt may start from: none yet, waiting, or a lapsed attempt's."""


def attempt_may_start(record: TaskRecord, now: float | None) -> bool:
    """Whether a new attempt may start from ``record`` (``_CLAIMABLE``, in Python):
    waiting for one, or running under a lease past ``now``."""
    if record.status in (Status.QUEUED, Status.RETRYING):
        return True
    lapsed = now is not None and (record.lease_until or 0) < now
    return record.status is Status.RUNNING and lapsed


def _claim_condition(max_attempts: int | None, *, require_record: bool) -> str:
    condition = f"attribute_exists(pk) AND ({_CLAIMABLE})" if require_record else _CLAIMABLE
    if max_attempts is None:
        return condition
    return f"({condition}) AND (attribute_not_exists(attempts) OR attempts < :max_attempts)"


def claim_params(
    table: str,
    envelope: Envelope,
    *,
    message_id: str,
    now: float,
    timeout_s: float,
    token: str | None = None,
    max_attempts: int | None = None,
    require_record: bool = False,
) -> dict[str, Any]:
    """UpdateItem that starts an attempt, if no other delivery owns the task.

    ``token`` (:func:`claim_token`) is stored with the claim, so that a repeat of
    this very request recognises the attempt as its own (:func:`claim_refused`).
    ``max_attempts``: no attempt beyond it is started, whatever happened to the
    ones before (an attempt that never reported its outcome still counts).
    ``require_record``: the message is older than a record lives, so a missing
    record is not a first sight (it expired) and the claim is refused.
    """
    listing, unlisting, listed = _claim_listing(timeout_s, now)
    params: dict[str, Any] = {
        "TableName": table,
        "Key": task_key(envelope.id),
        "UpdateExpression": (
            "SET #s = :running, attempts = if_not_exists(attempts, :zero) + :one, "
            "task_id = :id, task = :task, message_id = :mid, started_at = :now, "
            "updated_at = :now, lease_until = :lease, "
            "created_at = if_not_exists(created_at, :now), expires_at = :ttl"
            f"{listing} REMOVE next_attempt_at{unlisting}"
        ),
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(
            running=Status.RUNNING.value,
            queued=Status.QUEUED.value,
            retrying=Status.RETRYING.value,
            zero=0,
            one=1,
            id=envelope.id,
            task=envelope.task,
            mid=message_id,
            now=now,
            lease=now + timeout_s + LEASE_GRACE_S,
            ttl=_ttl(now),
        )
        | listed,
        "ReturnValues": "ALL_NEW",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    params["ConditionExpression"] = _claim_condition(max_attempts, require_record=require_record)
    if max_attempts is not None:
        params["ExpressionAttributeValues"].update(_values(max_attempts=max_attempts))
    if token is not None:
        params["UpdateExpression"] = params["UpdateExpression"].replace(
            " REMOVE ", ", claim_token = :token REMOVE ", 1
        )
        params["ExpressionAttributeValues"].update(_values(token=token))
    else:
        params["UpdateExpression"] += ", claim_token"
    return params


def _claim_listing(timeout_s: float, now: float) -> tuple[str, str, dict[str, Any]]:
    """A claim's SET and REMOVE parts for ``listed``, and the value it sets: listed as
    running only when :func:`listed_while_running`, else taken out of the indexes."""
    if listed_while_running(timeout_s):
        return (
            f", {c.LISTED_ATTRIBUTE} = :listed",
            "",
            _values(listed=listed_value(Status.RUNNING, now)),
        )
    return "", f", {c.LISTED_ATTRIBUTE}", {}


def lean_claim(
    envelope: Envelope, *, receive_count: int | None, max_attempts: int, now: float
) -> Claim:
    """The attempt a lean task's delivery makes, from the message alone: no record, no write.

    The attempt number is the message's ApproximateReceiveCount, so every receive
    counts, a throttle deferral or a release included. It is capped at
    ``max_attempts``: a delivery whose receives ran past the budget still runs,
    as the last attempt, instead of dying without having run.
    """
    attempt = max(1, min(receive_count or 1, max_attempts))
    record = TaskRecord(
        task_id=envelope.id,
        task=envelope.task,
        status=Status.RUNNING,
        attempts=attempt,
        started_at=now,
    )
    return Claim(ClaimStatus.CLAIMED, record)


def claim_refused(
    old: TaskRecord,
    *,
    message_id: str,
    token: str | None = None,
    item: dict[str, Any] | None = None,
    now: float | None = None,
    max_attempts: int | None = None,
) -> Claim:
    """Classify a refused claim from the record that refused it.

    A running record carrying this claim's own ``token`` was claimed by this very
    request, whose first answer was lost before a retry sent it again: the
    attempt is ours (``item``, the record as stored, is kept for settling). A
    record that a new attempt could start from, but whose ``max_attempts`` are
    spent (the last one never reported an outcome), is ``EXHAUSTED``.
    """
    if old.status is Status.RUNNING and token is not None and old.claim_token == token:
        return Claim(ClaimStatus.CLAIMED, old, item=dict(item or {}))
    if old.status in (Status.SUCCEEDED, Status.CANCELLED):
        return Claim(ClaimStatus.DONE, old)
    if old.status is Status.DEAD:
        return Claim(ClaimStatus.DEAD, old)
    if attempt_may_start(old, now) and max_attempts is not None and old.attempts >= max_attempts:
        return Claim(ClaimStatus.EXHAUSTED, old)
    if old.message_id == message_id:
        return Claim(ClaimStatus.BUSY, old)
    return Claim(ClaimStatus.DUPLICATE, old)


def refused(ask: ClaimAsk, old: dict[str, Any]) -> Claim:
    """:func:`claim_refused` for a claim refused by the stored item ``old``."""
    return claim_refused(
        TaskRecord.from_item(old),
        message_id=ask.message_id,
        token=ask.token,
        item=old,
        now=ask.now,
        max_attempts=ask.max_attempts,
    )


def _owned_update(
    table: str,
    task_id: str,
    message_id: str,
    *,
    set_clause: str,
    remove: str = "lease_until",
    **values: Any,
) -> dict[str, Any]:
    return {
        "TableName": table,
        "Key": task_key(task_id),
        "UpdateExpression": f"SET {set_clause} REMOVE {remove}",
        # A cancel requested while the attempt ran (dispatch.store.cancels) refuses
        # every outcome: the settler then records the task cancelled instead.
        "ConditionExpression": (
            "#s = :running AND message_id = :mid AND attribute_not_exists(cancel_requested)"
        ),
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(
            running=Status.RUNNING.value, mid=message_id, **values
        ),
    }


def cancelled_params(
    table: str, task_id: str, *, message_id: str, now: float, requested_only: bool = False
) -> dict[str, Any]:
    """UpdateItem: the owning attempt is cancelled (``dispatch cancel`` while it ran).

    ``requested_only``: only if a cancel is requested on the record (a settlement
    refused by the request's condition writes this instead).
    """
    condition = "#s = :running AND message_id = :mid"
    if requested_only:
        condition += " AND attribute_exists(cancel_requested)"
    return {
        "TableName": table,
        "Key": task_key(task_id),
        "UpdateExpression": (
            "SET #s = :cancelled, finished_at = :now, updated_at = :now, expires_at = :ttl, "
            f"{c.LISTED_ATTRIBUTE} = :listed REMOVE lease_until, next_attempt_at"
        ),
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(
            cancelled=Status.CANCELLED.value,
            running=Status.RUNNING.value,
            mid=message_id,
            now=now,
            ttl=_ttl(now),
            listed=listed_value(Status.CANCELLED, now),
        ),
    }


_UNLISTED: Final = f"lease_until, {c.LISTED_ATTRIBUTE}"
"""What a success removes: the lease, and the record from the listing indexes."""


def stored_result(result: Any) -> str | None:
    """A task's result as its record keeps it: compact JSON (None: nothing is kept).

    The worker already failed any attempt whose result is not JSON or is over
    ``MAX_RESULT_BYTES`` (:func:`dispatch.core.result.result_json`), so a succeeded
    outcome's result always fits; one that does not (an outcome from an older
    worker) is not written, rather than failing the write of the success itself.
    """
    if result is None:
        return None
    try:
        return result_json(result, task="?")
    except ResultError:
        return None


def succeeded_params(
    table: str, task_id: str, *, message_id: str, now: float, result: Any
) -> dict[str, Any]:
    """UpdateItem: the owning attempt succeeded (the result kept when small)."""
    encoded = stored_result(result)
    if encoded is not None:
        return _owned_update(
            table,
            task_id,
            message_id,
            set_clause="#s = :done, finished_at = :now, updated_at = :now, #r = :result",
            remove=_UNLISTED,
            done=Status.SUCCEEDED.value,
            now=now,
            result=encoded,
        ) | {"ExpressionAttributeNames": {"#s": "status", "#r": "result"}}
    return _owned_update(
        table,
        task_id,
        message_id,
        set_clause="#s = :done, finished_at = :now, updated_at = :now",
        remove=_UNLISTED,
        done=Status.SUCCEEDED.value,
        now=now,
    )


def succeeded_item(claimed: dict[str, Any], *, now: float, result: Any) -> dict[str, Any]:
    """The whole record of a task whose claimed attempt succeeded, for a batched PutItem.

    Batched writes cannot be conditional; the claim was, and only the claiming
    dispatcher settles, so the success of many tasks costs one BatchWriteItem per
    25 instead of one UpdateItem each.
    """
    dropped = ("lease_until", "next_attempt_at", c.LISTED_ATTRIBUTE)
    item = {k: v for k, v in claimed.items() if k not in dropped}
    item["status"] = {"S": Status.SUCCEEDED.value}
    item["finished_at"] = number(now)
    item["updated_at"] = item["finished_at"]
    item[c.TABLE_TTL_ATTRIBUTE] = number(_ttl(now))
    item.pop("result", None)
    encoded = stored_result(result)
    if encoded is not None:
        item["result"] = {"S": encoded}
    return item


def retrying_params(
    table: str,
    task_id: str,
    *,
    message_id: str,
    now: float,
    error: ErrorInfo,
    next_attempt_at: float,
    refund_attempt: bool = False,
) -> dict[str, Any]:
    """UpdateItem: the attempt failed and another follows at ``next_attempt_at``.

    ``refund_attempt`` takes the attempt back (backpressure is not the task's fault).
    """
    clause = (
        "#s = :retrying, last_error = :error, last_failure_at = :now, "
        "first_failure_at = if_not_exists(first_failure_at, :now), "
        "next_attempt_at = :next, updated_at = :now, expires_at = :ttl, "
        f"{c.LISTED_ATTRIBUTE} = :listed"
    )
    values: dict[str, Any] = {
        "retrying": Status.RETRYING.value,
        "error": error.to_dict(),
        "now": now,
        "next": next_attempt_at,
        "ttl": record_ttl(now, next_attempt_at),
        "listed": listed_value(Status.RETRYING, now),
    }
    if refund_attempt:
        clause += ", attempts = attempts - :one"
        values["one"] = 1
    return _owned_update(table, task_id, message_id, set_clause=clause, **values)


def released_params(
    table: str, task_id: str, *, message_id: str, now: float, first_attempt: bool = False
) -> dict[str, Any]:
    """UpdateItem: the claiming dispatcher gives the attempt back unfinished (a deadline,
    or the throttle could not start it); a first attempt goes back to ``queued``."""
    back_to = Status.QUEUED if first_attempt else Status.RETRYING
    listed = f", {c.LISTED_ATTRIBUTE} = :listed" if back_to.is_listed else ""
    unlisted = "" if back_to.is_listed else f", {c.LISTED_ATTRIBUTE}"
    params: dict[str, Any] = {
        "TableName": table,
        "Key": task_key(task_id),
        "UpdateExpression": (
            f"SET #s = :retrying, attempts = attempts - :one, updated_at = :now{listed} "
            f"REMOVE lease_until{unlisted}"
        ),
        "ConditionExpression": "#s = :running AND message_id = :mid",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(
            retrying=back_to.value,
            running=Status.RUNNING.value,
            one=1,
            now=now,
            mid=message_id,
        ),
    }
    if back_to.is_listed:
        params["ExpressionAttributeValues"].update(_values(listed=listed_value(back_to, now)))
    return params


def dead_params(
    table: str, task_id: str, *, message_id: str, now: float, error: ErrorInfo, reason: str
) -> dict[str, Any]:
    """UpdateItem: the owning attempt was the last one; the task is dead."""
    return _owned_update(
        table,
        task_id,
        message_id,
        set_clause=(
            "#s = :dead, last_error = :error, last_failure_at = :now, "
            "first_failure_at = if_not_exists(first_failure_at, :now), finished_at = :now, "
            f"updated_at = :now, dead_reason = :reason, {c.LISTED_ATTRIBUTE} = :listed"
        ),
        dead=Status.DEAD.value,
        listed=listed_value(Status.DEAD, now),
        error=error.to_dict(),
        now=now,
        reason=reason,
    )


def rejected_params(
    table: str,
    envelope_id: str,
    task: str | None,
    *,
    now: float,
    reason: str,
    error: ErrorInfo | None = None,
) -> dict[str, Any]:
    """UpdateItem: a message with a task id was refused before running (bad envelope),
    with why (``last_error``, what ``result()`` and ``dispatch task`` show).

    Never overwrites a final state: a malformed copy cannot undo a success.
    """
    return {
        "TableName": table,
        "Key": task_key(envelope_id),
        "UpdateExpression": (
            "SET #s = :dead, task_id = :id, task = :task, dead_reason = :reason, "
            "last_error = :error, "
            "finished_at = :now, updated_at = :now, created_at = if_not_exists(created_at, :now), "
            "attempts = if_not_exists(attempts, :zero), expires_at = :ttl, "
            f"{c.LISTED_ATTRIBUTE} = :listed"
        ),
        "ConditionExpression": "attribute_not_exists(pk) OR #s IN (:queued, :retrying)",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(
            dead=Status.DEAD.value,
            queued=Status.QUEUED.value,
            retrying=Status.RETRYING.value,
            id=envelope_id,
            task=task or c.UNNAMED_TASK,  # a GSI key: never empty
            reason=reason,
            error=(error or ErrorInfo(type="Rejected", message=reason)).to_dict(),
            now=now,
            zero=0,
            ttl=_ttl(now),
            listed=listed_value(Status.DEAD, now),
        ),
    }


def exhausted_params(
    table: str, task_id: str, *, now: float, max_attempts: int, error: ErrorInfo
) -> dict[str, Any]:
    """UpdateItem: every attempt was spent and the last one never reported its outcome
    (its dispatcher stopped mid-attempt, or the handler escaped it): the task is dead,
    unless a live attempt or a final state got there first."""
    return {
        "TableName": table,
        "Key": task_key(task_id),
        "UpdateExpression": (
            "SET #s = :dead, dead_reason = :reason, last_error = :error, "
            "finished_at = :now, updated_at = :now, expires_at = :ttl, "
            f"{c.LISTED_ATTRIBUTE} = :listed REMOVE lease_until"
        ),
        # The records a claim could start from, with every attempt spent.
        "ConditionExpression": f"attempts >= :max_attempts AND ({_CLAIMABLE})",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": _values(
            dead=Status.DEAD.value,
            queued=Status.QUEUED.value,
            retrying=Status.RETRYING.value,
            running=Status.RUNNING.value,
            reason="max_attempts",
            error=error.to_dict(),
            now=now,
            max_attempts=max_attempts,
            ttl=_ttl(now),
            listed=listed_value(Status.DEAD, now),
        ),
    }


def missing_record(envelope: Envelope) -> TaskRecord:
    """What a claim reports for a record that is not there (``ClaimStatus.NO_RECORD``)."""
    return TaskRecord(task_id=envelope.id, task=envelope.task, status=Status.QUEUED)


def _check_table(description: Mapping[str, Any], table: str) -> None:
    schema = description.get("KeySchema", [])
    expected = [{"AttributeName": c.TABLE_HASH_KEY, "KeyType": "HASH"}]
    if list(schema) != expected:
        raise ConfigurationError(
            f"table {table!r} has key schema {list(schema)}, expected a single string hash "
            f"key {c.TABLE_HASH_KEY!r} (create it with `dispatch init`)",
            setting=c.ENV_TABLE,
        )


# --- the stores ------------------------------------------------------------------


class StateStore:
    """Task records over aiobotocore (the dispatcher's side)."""

    def __init__(self, client: AioDynamoDBClient, table: str) -> None:
        self._client = client
        self.table = table

    async def check(self) -> None:
        """Fail fast, naming the problem, when the table is missing or has another key."""
        with aws_errors("DescribeTable"):
            answer = await self._client.describe_table(TableName=self.table)
        _check_table(answer["Table"], self.table)

    async def claim(self, ask: ClaimAsk) -> Claim:
        """Start an attempt for this delivery with one conditional UpdateItem, or say
        why not (:func:`claim_params`)."""
        params = claim_params(
            self.table,
            ask.envelope,
            message_id=ask.message_id,
            now=ask.now,
            timeout_s=ask.timeout_s,
            token=ask.token,
            max_attempts=ask.max_attempts,
            require_record=ask.require_record,
        )
        try:
            answer = await self._client.update_item(**params)
        except ClientError as exc:
            if not is_condition_failure(exc):
                with aws_errors("UpdateItem"):
                    raise
            old = old_item(exc) or await self._get_item(ask.envelope.id)
            if old is None and ask.require_record:
                return Claim(ClaimStatus.NO_RECORD, missing_record(ask.envelope))
            if old is None:  # deleted between the two calls; try once more
                return await self.claim(ask)
            return refused(ask, old)
        item = dict(answer["Attributes"])
        return Claim(ClaimStatus.CLAIMED, TaskRecord.from_item(item), item=item)

    async def update(self, params: dict[str, Any]) -> bool:
        """Send one owned transition; False when the condition no longer holds."""
        try:
            await self._client.update_item(**params)
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            with aws_errors("UpdateItem"):
                raise
        return True

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``, or None."""
        item = await self._get_item(task_id)
        return TaskRecord.from_item(item) if item else None

    async def _get_item(self, task_id: str) -> dict[str, Any] | None:
        with aws_errors("GetItem"):
            answer = await self._client.get_item(
                TableName=self.table, Key=task_key(task_id), ConsistentRead=True
            )
        item = answer.get("Item")
        return dict(item) if item else None


class SyncStateStore:
    """Task records over boto3 (the enqueue API and the CLI)."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self._client = client
        self.table = table

    def check(self) -> None:
        """Fail fast, naming the problem, when the table is missing or has another key."""
        with aws_errors("DescribeTable"):
            answer = self._client.describe_table(TableName=self.table)
        _check_table(answer["Table"], self.table)

    def get(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``, or None."""
        with aws_errors("GetItem"):
            answer = self._client.get_item(
                TableName=self.table, Key=task_key(task_id), ConsistentRead=True
            )
        item = answer.get("Item")
        return TaskRecord.from_item(item) if item else None


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
    """Split into lists of at most ``size`` (AWS batch limits)."""
    out: list[list[Any]] = []
    for item in items:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(item)
    return out


async def batch_write(client: Any, table: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """BatchWriteItem with retries of unprocessed items; answers like an SQS batch call."""
    ids = {str(e["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"]): e["Id"] for e in entries}
    requests = [{"PutRequest": e["PutRequest"]} for e in entries]
    for attempt in range(1, _UNPROCESSED_ATTEMPTS + 1):
        answer = await client.batch_write_item(RequestItems={table: requests})
        requests = list(answer.get("UnprocessedItems", {}).get(table, []))
        if not requests:
            return {"Failed": []}
        await asyncio.sleep(_UNPROCESSED_BACKOFF.pause_s(attempt))
    failed = [ids[str(r["PutRequest"]["Item"][c.TABLE_HASH_KEY]["S"])] for r in requests]
    return {
        "Failed": [{"Id": i, "Code": "Unprocessed", "Message": "left unprocessed"} for i in failed]
    }
