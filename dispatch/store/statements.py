"""Claims and successes of many tasks in one request: conditional PartiQL UPDATEs, 25 a batch.

A claim used to be one conditional ``UpdateItem`` per task: 71 % of the requests
of a drained queue, and most of the dispatcher's CPU per task. DynamoDB's
``BatchExecuteStatement`` runs up to 25 PartiQL statements in one request; each
``UPDATE ... WHERE <key> AND <condition>`` succeeds or fails on its own (a failed
condition comes back as that statement's ``ConditionalCheckFailed`` error, with
the item that refused it when ``ReturnValuesOnConditionCheckFailure`` is
``ALL_OLD``), the batch is not a transaction, and every statement is billed as
an ordinary write (``TransactWriteItems`` would bill two).

What a PartiQL ``UPDATE`` can say decided the claim's shape. Its ``SET`` takes a
value or one of ``LIST_APPEND``/``SET_ADD``/``SET_DELETE``: the documented forms
have no arithmetic (no ``attempts = attempts + 1``), no ``if_not_exists``, and no
``OR`` is needed if the claim states what it expects. A batched statement returns
no item on success (we rely on ``RETURNING`` nowhere: it is not documented for
batches). So a claim is a **compare-and-set** on the state it expects:

* first the **guess** that the record waits for its first attempt (``queued``,
  ``attempts`` 0, no failure yet), which every new task, every throttle give-back
  of a first attempt and every backlog deferral meets;
* where the guess is wrong, the refusal returns the record as it is, and when a
  new attempt may start from it the claim is sent again expecting exactly that
  record (its status, attempts and ``updated_at``, which every transition sets,
  and for a lapsed attempt its lease in the past), batched with the other claims
  of that moment. A record still changing under the claim after
  :data:`CLAIM_ROUNDS` rounds, a missing record, or an error the batch could not
  get past is claimed by the single conditional ``UpdateItem`` as before.

A claim that succeeds is therefore exactly the one ``UpdateItem`` would have
made: the record could start a new attempt, had ``attempts`` below
``max_attempts`` (checked on the record the claim expects), and gets the same
attributes, ``attempts`` one more than it had. A claim whose answer was lost and
was sent again finds its own ``claim_token`` on the record, as before.

Successes go the same way, each statement conditional on the attempt still
owning the record (``running`` with this delivery's message id): the settle costs
what the ``BatchWriteItem`` of whole items cost, and no longer needs the whole
item the guess never read.

An endpoint that is not DynamoDB (stock moto answers 500 to some statements and
reports no error for a failed condition, so two deliveries would both "claim" a
task) must never get batched claims: :func:`probe` checks once per process and
endpoint that a batch applies a statement whose condition holds, refuses one whose
condition fails (returning the old item) and creates nothing, before the first
batched claim; where it does not, claims go one ``UpdateItem`` each, with one
log line saying why.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.core.config import TABLE_NAME
from dispatch.core.envelope import Envelope
from dispatch.core.errors import ConfigurationError
from dispatch.core.record import ClaimAsk, Status, listed_value, listed_while_running
from dispatch.store import state
from dispatch.store.aws import error_code, translate_error
from dispatch.store.aws_retry import (
    THROTTLING_CODES,
    TRANSIENT_CODES,
    Backoff,
    attempts_at_most,
)
from dispatch.store.codec import number, read_number

__all__ = [
    "CLAIM_ROUNDS",
    "STATEMENTS_PER_REQUEST",
    "ProbeResult",
    "Statement",
    "claim_statement",
    "execute",
    "probe",
    "succeeded_statement",
]

STATEMENTS_PER_REQUEST: Final = 25
"""The most statements one BatchExecuteStatement takes."""
CLAIM_ROUNDS: Final = 3
"""Batched compare-and-set rounds a claim makes before the single UpdateItem decides."""
CONDITION_FAILED: Final = "ConditionalCheckFailed"
"""A statement's error code when its WHERE condition did not hold (or no item)."""
KEY_FIELD: Final = "_key"
"""Where an entry carries the key its statement addresses (never sent)."""

# Statement errors worth sending again: load or a passing fault, not the statement.
_RETRYABLE: Final = frozenset(
    {
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflict",
        "DuplicateItem",  # a second statement on an item sent in the same batch
    }
)
_STATEMENT_ATTEMPTS: Final = 5
_STATEMENT_BACKOFF: Final = Backoff(tenacity.wait_exponential(multiplier=0.05, max=1.0))


def _s(value: str) -> dict[str, str]:
    return {"S": value}


@dataclass(frozen=True, slots=True)
class Statement:
    """One conditional PartiQL UPDATE of one record, and what it sets and removes."""

    text: str
    parameters: list[dict[str, Any]]
    key: str
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    removes: tuple[str, ...] = ()

    def entry(self) -> dict[str, Any]:
        """The BatchStatementRequest (plus the key, for batching; not sent)."""
        return {
            "Statement": self.text,
            "Parameters": self.parameters,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            KEY_FIELD: self.key,
        }

    def applied_to(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The item as it is once this statement applied to ``item``."""
        new = {k: v for k, v in item.items() if k not in self.removes}
        new.update(self.sets)
        return new


class _Update:
    """Builds ``UPDATE "table" SET "a"=? ... REMOVE "b" ... WHERE "pk"=? AND ...``."""

    def __init__(self, table: str, key: str) -> None:
        if not TABLE_NAME.fullmatch(table):
            raise ConfigurationError(
                f"table name {table!r}: DynamoDB table names are 3 to 255 of a-z, A-Z, "
                "0-9, '_', '-' and '.'",
                setting=c.ENV_TABLE,
            )
        self._table = table
        self._key = key
        self._sets: dict[str, dict[str, Any]] = {}
        self._removes: list[str] = []
        self._where: list[str] = [f'"{c.TABLE_HASH_KEY}"=?']
        self._where_values: list[dict[str, Any]] = [_s(key)]

    def set(self, name: str, value: dict[str, Any]) -> None:
        self._sets[name] = value

    def remove(self, name: str) -> None:
        self._removes.append(name)

    def where(self, name: str, op: str, value: dict[str, Any]) -> None:
        self._where.append(f'"{name}"{op}?')
        self._where_values.append(value)

    def where_missing(self, name: str, *, missing: bool = True) -> None:
        self._where.append(f'"{name}" IS {"" if missing else "NOT "}MISSING')

    def build(self) -> Statement:
        clauses = [f'SET "{name}"=?' for name in self._sets]
        clauses += [f'REMOVE "{name}"' for name in self._removes]
        text = f'UPDATE "{self._table}" {" ".join(clauses)} WHERE {" AND ".join(self._where)}'
        return Statement(
            text=text,
            parameters=[*self._sets.values(), *self._where_values],
            key=self._key,
            sets=dict(self._sets),
            removes=tuple(self._removes),
        )


def _expect(update: _Update, old: Mapping[str, Any], name: str) -> None:
    """The statement holds only while ``name`` is as in ``old`` (present and equal, or missing)."""
    if name in old:
        update.where(name, "=", dict(old[name]))
    else:
        update.where_missing(name)


def claim_statement(table: str, ask: ClaimAsk, *, old: Mapping[str, Any] | None) -> Statement:
    """The batched claim: start an attempt if the record is still ``old``.

    ``old`` None is the guess that the record waits for its first attempt:
    ``queued``, ``attempts`` 0, no failure recorded, created at enqueue. Otherwise
    ``old`` is the record a refusal returned, from which a new attempt may start
    (the caller checked, ``max_attempts`` included); the claim holds only if it has
    not changed since. The attributes set are those
    :func:`dispatch.store.state.claim_params` sets.
    """
    envelope, now = ask.envelope, ask.now
    key = f"{c.TASK_KEY_PREFIX}{envelope.id}"
    update = _Update(table, key)
    attempts_before = int(read_number((old or {}).get("attempts")))
    update.set("status", _s(Status.RUNNING.value))
    update.set("attempts", number(attempts_before + 1))
    update.set("task_id", _s(envelope.id))
    update.set("task", _s(envelope.task))
    update.set("message_id", _s(ask.message_id))
    update.set("started_at", number(now))
    update.set("updated_at", number(now))
    # Read when the statement is built, as the single claim does (a harness may shorten it).
    update.set("lease_until", number(now + ask.timeout_s + state.LEASE_GRACE_S))
    update.set(c.TABLE_TTL_ATTRIBUTE, number(state.record_ttl(now)))
    if listed_while_running(ask.timeout_s):
        update.set(c.LISTED_ATTRIBUTE, _s(listed_value(Status.RUNNING, now)))
    else:
        update.remove(c.LISTED_ATTRIBUTE)
    if ask.token is not None:
        update.set("claim_token", _s(ask.token))
    update.remove("next_attempt_at")
    if old is None:
        update.where("status", "=", _s(Status.QUEUED.value))
        update.where("attempts", "=", number(0))
        update.where_missing("first_failure_at")
        update.where_missing("last_error")
        update.where_missing("created_at", missing=False)
        update.where_missing("cancel_requested")  # the claim must see a request: read it
        return update.build()
    for name in ("status", "attempts", "updated_at"):
        _expect(update, old, name)
    if "created_at" not in old:
        update.set("created_at", number(now))
        update.where_missing("created_at")
    if old.get("status", {}).get("S") == Status.RUNNING.value:
        update.where("lease_until", "<", number(now))  # a lapsed attempt's lease
    return update.build()


def guessed_item(envelope: Envelope) -> dict[str, Any]:
    """The record the guess of :func:`claim_statement` expects (what the loop may know)."""
    return {
        c.TABLE_HASH_KEY: _s(f"{c.TASK_KEY_PREFIX}{envelope.id}"),
        "task_id": _s(envelope.id),
        "task": _s(envelope.task),
        "status": _s(Status.QUEUED.value),
        "attempts": number(0),
    }


def succeeded_statement(
    table: str, task_id: str, *, message_id: str, now: float, result_json: str | None
) -> Statement:
    """The batched success: the attempt that owns the record succeeded (the record
    as :func:`dispatch.store.state.succeeded_item` would write it)."""
    update = _Update(table, f"{c.TASK_KEY_PREFIX}{task_id}")
    update.set("status", _s(Status.SUCCEEDED.value))
    update.set("finished_at", number(now))
    update.set("updated_at", number(now))
    update.set(c.TABLE_TTL_ATTRIBUTE, number(state.record_ttl(now)))
    if result_json is not None:
        update.set("result", _s(result_json))
    update.remove("lease_until")
    update.remove("next_attempt_at")
    update.remove(c.LISTED_ATTRIBUTE)  # succeeded records leave the listing indexes
    if result_json is None:
        update.remove("result")
    update.where("status", "=", _s(Status.RUNNING.value))
    update.where("message_id", "=", _s(message_id))
    update.where_missing("cancel_requested")  # cancelled instead (dispatch.store.cancels)
    return update.build()


def _waves(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split so that no request addresses one item twice (DynamoDB refuses the second),
    keeping each item's statements in order."""
    waves: list[list[dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for entry in entries:
        index = seen.get(entry[KEY_FIELD], -1) + 1
        seen[entry[KEY_FIELD]] = index
        if index == len(waves):
            waves.append([])
        waves[index].append(entry)
    return waves


async def execute(client: Any, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """BatchExecuteStatement for a :class:`~dispatch.store.batcher.Batcher`: answers like
    an SQS batch call, a refused statement's old item under ``Item``.

    Statements refused for load (throttled, an internal error, a conflict) are sent
    again, up to 5 times with backoff; a refusal of the statement itself (its
    condition, a validation error) is the caller's answer.
    """
    failed: list[dict[str, Any]] = []
    pending = list(entries)
    for attempt in range(1, _STATEMENT_ATTEMPTS + 1):
        again: list[dict[str, Any]] = []
        for wave in _waves(pending):
            statements = [{k: v for k, v in e.items() if k not in ("Id", KEY_FIELD)} for e in wave]
            answer = await client.batch_execute_statement(Statements=statements)
            responses = list(answer.get("Responses", []))
            if len(responses) != len(wave):
                raise RuntimeError(
                    f"BatchExecuteStatement answered {len(responses)} responses to "
                    f"{len(wave)} statements"
                )
            for entry, response in zip(wave, responses, strict=True):
                error = response.get("Error")
                if not error:
                    continue
                code = str(error.get("Code", ""))
                if code in _RETRYABLE:
                    again.append(entry)
                    continue
                failed.append(
                    {
                        "Id": entry["Id"],
                        "Code": code,
                        "Message": str(error.get("Message", "")),
                        "Item": error.get("Item"),
                    }
                )
        if not again:
            return {"Failed": failed}
        pending = again
        if attempt < _STATEMENT_ATTEMPTS:
            await asyncio.sleep(_STATEMENT_BACKOFF.pause_s(attempt))
    failed += [
        {"Id": e["Id"], "Code": "Unprocessed", "Message": "refused for load 5 times"}
        for e in pending
    ]
    return {"Failed": failed}


# --- the probe -------------------------------------------------------------------------

_probed: dict[tuple[str, str], str | None] = {}
# What probe() found for a (endpoint, table): None (batches are answered as DynamoDB
# does) or what went wrong. Only answers that will not change are kept: a throttled
# or failed probe is made again later.

_PASSING_CODES: Final = THROTTLING_CODES | TRANSIENT_CODES
"""AWS's own answers for load or a passing fault (the retry policy's). A 500 without
an AWS error code (stock moto's HTML page for a statement it cannot run) is an
endpoint that does not speak PartiQL batches, and that answer is final."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What :func:`probe` found: ``problem`` None when batches may be used; ``final``
    False when the probe itself met a passing fault (ask again later)."""

    problem: str | None
    final: bool = True


def endpoint_of(client: Any) -> str:
    """The endpoint a client talks to (its region's AWS endpoint, or a local one)."""
    return str(getattr(getattr(client, "meta", None), "endpoint_url", "") or "")


def _passing(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        return error_code(exc) in _PASSING_CODES
    return isinstance(exc, BotoCoreError)  # no answer at all (connection, timeout)


def _said(exc: ClientError | BotoCoreError) -> str:
    """What a failed call said, in one short line."""
    said = " ".join(str(translate_error(exc, "BatchExecuteStatement")).split())
    if "<html" in said.lower():
        response = exc.response if isinstance(exc, ClientError) else {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"BatchExecuteStatement answered HTTP {status} with an HTML page, not an AWS answer"
    return said[:300]


async def probe(client: Any, table: str, *, now: float) -> ProbeResult:
    """Whether ``client``'s endpoint answers a batch of conditional UPDATEs as
    DynamoDB does (asked once per process, endpoint and table).

    Three items under ``probe#...`` keys (expiring within the hour, deleted after):
    one statement whose condition holds must apply, one whose condition fails must
    be refused with ``ConditionalCheckFailed`` and the old item, one for an item
    that does not exist must be refused and create nothing.
    """
    where = (endpoint_of(client), table)
    if where in _probed:
        return ProbeResult(_probed[where])
    try:
        problem = await _probe(client, table, now=now)
    except (ClientError, BotoCoreError) as exc:
        reason = f"the probe failed: {_said(exc)}"
        if _passing(exc):
            return ProbeResult(reason, final=False)
        problem = reason
    except Exception as exc:  # noqa: BLE001 - any surprise means: do not batch here
        problem = f"the probe failed: {exc!r}"
    _probed[where] = problem
    return ProbeResult(problem)


def forget_probes() -> None:
    """Forget what :func:`probe` found (for tests that change an endpoint's behaviour)."""
    _probed.clear()


async def _probe(client: Any, table: str, *, now: float) -> str | None:
    run = uuid.uuid4().hex[:16]
    applies, refused, missing = (f"probe#{run}-{n}" for n in ("applies", "refused", "missing"))
    expires = number(int(now) + 3600)

    def item(key: str) -> dict[str, Any]:
        return {
            c.TABLE_HASH_KEY: _s(key),
            "probe": _s("before"),
            "n": number(1),
            c.TABLE_TTL_ATTRIBUTE: expires,
        }

    holds = _Update(table, applies)
    holds.set("probe", _s("after"))
    holds.set("n", number(2))
    holds.remove("gone")
    holds.where("probe", "=", _s("before"))
    holds.where("n", "=", number(1))
    holds.where_missing("gone")
    fails = _Update(table, refused)
    fails.set("probe", _s("after"))
    fails.where("probe", "=", _s("other"))
    absent = _Update(table, missing)
    absent.set("probe", _s("after"))
    absent.where("n", "<", number(5))
    statements = [
        {k: v for k, v in u.build().entry().items() if k != KEY_FIELD}
        for u in (holds, fails, absent)
    ]
    await client.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": item(k)}} for k in (applies, refused)]}
    )
    try:
        # Two attempts: an endpoint that cannot answer a batch (stock moto answers 500)
        # is told apart in a moment instead of after the client's full retry budget.
        with attempts_at_most(2):
            answer = await client.batch_execute_statement(Statements=statements)
        found = [
            (
                await client.get_item(
                    TableName=table, Key={c.TABLE_HASH_KEY: _s(k)}, ConsistentRead=True
                )
            ).get("Item")
            for k in (applies, refused, missing)
        ]
    finally:
        await client.batch_write_item(
            RequestItems={
                table: [
                    {"DeleteRequest": {"Key": {c.TABLE_HASH_KEY: _s(k)}}}
                    for k in (applies, refused, missing)
                ]
            }
        )
    return _judge(list(answer.get("Responses", [])), found)


def _judge(responses: list[dict[str, Any]], found: list[dict[str, Any] | None]) -> str | None:
    """What the probe's answers got wrong, or None."""
    if len(responses) != 3:
        return f"a batch of 3 statements got {len(responses)} responses"
    applied, refused, missing = (response.get("Error") or {} for response in responses)
    after, before, created = (item or {} for item in found)
    checks = [
        (not applied, f"a statement whose condition held was refused: {applied}"),
        (
            refused.get("Code") == CONDITION_FAILED,
            "a statement whose condition failed was not reported as ConditionalCheckFailed",
        ),
        (
            (refused.get("Item") or {}).get("probe") == _s("before"),
            "a refused statement did not return the old item (ALL_OLD)",
        ),
        (
            missing.get("Code") == CONDITION_FAILED,
            "an UPDATE of an item that does not exist was not refused",
        ),
        (
            after.get("probe") == _s("after") and after.get("n") == number(2),
            "a statement reported as applied did not change the item",
        ),
        (before.get("probe") == _s("before"), "a refused statement changed the item"),
        (not created, "an UPDATE of an item that does not exist created it"),
    ]
    return next((problem for ok, problem in checks if not ok), None)
