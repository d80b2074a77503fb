"""The pure parts of the task-state store: request builders, records, claim classification.

The conditional writes are checked by *evaluating* each ConditionExpression against
items, with a small evaluator written here for the subset of DynamoDB's condition
language the module uses (comparisons, IN, attribute_exists/not_exists, AND, OR,
parentheses). So a test says "a claim is refused on a succeeded record", not
"the expression is this string".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import iso
from dispatch.store import state
from dispatch.store.state import ClaimStatus, Status, TaskRecord

NOW = 1_767_225_600.125  # 2026-01-01T00:00:00.125Z
NOW_ISO = "2026-01-01T00:00:00.125Z"
TABLE = "dispatch-state"
TASK_ID = "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa"
MESSAGE_ID = "msg-1"
ERROR = ErrorInfo(type="ValueError", message="bad n=7", traceback="Traceback ...")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


# --- a small evaluator for DynamoDB condition expressions -----------------------------------

_TOKEN = re.compile(r"\s*(\(|\)|,|<>|<=|>=|=|<|>|[#:]?[A-Za-z_][A-Za-z0-9_]*)")


class Condition:
    """Evaluates a ConditionExpression against an item (attribute-value form)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.text = params["ConditionExpression"]
        self.names = params.get("ExpressionAttributeNames", {})
        self.values = params.get("ExpressionAttributeValues", {})
        self.tokens = self._tokenize(self.text)

    @staticmethod
    def _tokenize(text: str) -> list[str]:
        tokens, position = [], 0
        while position < len(text.rstrip()):
            match = _TOKEN.match(text, position)
            assert match, f"cannot read {text[position:]!r}"
            tokens.append(match.group(1))
            position = match.end()
        return tokens

    def holds_for(self, item: dict[str, Any] | None) -> bool:
        """True when a write with this condition would succeed on ``item`` (None: absent)."""
        self.item = item or {}
        self.position = 0
        result = self._or()
        assert self.position == len(self.tokens), f"unparsed tail in {self.text!r}"
        return result

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self.tokens[self.position]
        assert expected is None or token.upper() == expected, (token, expected, self.text)
        self.position += 1
        return token

    def _or(self) -> bool:
        result = self._and()
        while (self._peek() or "").upper() == "OR":
            self._take()
            right = self._and()
            result = result or right
        return result

    def _and(self) -> bool:
        result = self._primary()
        while (self._peek() or "").upper() == "AND":
            self._take()
            right = self._primary()
            result = result and right
        return result

    def _primary(self) -> bool:
        if self._peek() == "(":
            self._take()
            result = self._or()
            self._take(")")
            return result
        word = self._take()
        if word in ("attribute_exists", "attribute_not_exists"):
            self._take("(")
            present = self._path(self._take()) in self.item
            self._take(")")
            return present if word == "attribute_exists" else not present
        left = self._operand(word)
        operator = self._take()
        if operator.upper() == "IN":
            self._take("(")
            options = [self._operand(self._take())]
            while self._peek() == ",":
                self._take()
                options.append(self._operand(self._take()))
            self._take(")")
            return left is not None and left in options
        right = self._operand(self._take())
        if left is None or right is None:
            return False
        compare: dict[str, Callable[[Any, Any], bool]] = {
            "=": lambda a, b: a == b,
            "<>": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }
        return compare[operator](left, right)

    def _path(self, token: str) -> str:
        return str(self.names[token]) if token.startswith("#") else token

    def _operand(self, token: str) -> Any:
        if token.startswith(":"):
            return _deserializer.deserialize(self.values[token])
        value = self.item.get(self._path(token))
        return None if value is None else _deserializer.deserialize(value)


def item(**attributes: Any) -> dict[str, Any]:
    """A task record item in attribute-value form (floats stored as numbers)."""
    attributes.setdefault(c.TABLE_HASH_KEY, f"{c.TASK_KEY_PREFIX}{TASK_ID}")
    return {
        key: _serializer.serialize(Decimal(repr(value)) if isinstance(value, float) else value)
        for key, value in attributes.items()
    }


def envelope(**fields: Any) -> Envelope:
    """An envelope for the test task."""
    return Envelope(id=TASK_ID, task="charge", kwargs={"order_id": "42"}, enqueued_at=NOW, **fields)


def values_of(params: dict[str, Any]) -> dict[str, Any]:
    """ExpressionAttributeValues as Python values."""
    return {
        key: _deserializer.deserialize(value)
        for key, value in params["ExpressionAttributeValues"].items()
    }


def every_status() -> Iterator[Status]:
    """Each status a record can have."""
    return iter(Status)


# --- the items written at enqueue ------------------------------------------------------------


def test_queued_item_is_the_documented_record() -> None:
    """Given an envelope with an idempotency key, when the queued item is built, then it has
    the key, status queued, zero attempts, creation times and a TTL 14 days on."""
    written = {
        key: _deserializer.deserialize(value)
        for key, value in state.queued_item(envelope(idempotency_key="k"), NOW).items()
    }

    assert written == {
        "pk": f"task#{TASK_ID}",
        "task_id": TASK_ID,
        "task": "charge",
        "status": "queued",
        "attempts": 0,
        "created_at": Decimal("1767225600.125"),
        "updated_at": Decimal("1767225600.125"),
        "expires_at": int(NOW) + 14 * 24 * 3600,
        "idempotency_key": "k",
    }


def test_queued_item_without_a_key_has_no_idempotency_attribute() -> None:
    """Given an envelope without a key, when the queued item is built, then no key."""
    assert "idempotency_key" not in state.queued_item(envelope(), NOW)


def test_put_queued_creates_only_a_new_record_marked_pending_send() -> None:
    """Given an idempotent envelope, when its PutItem is built, then it writes only when no
    record exists, marks pending_send and asks for the old item on failure."""
    params = state.put_queued_params(TABLE, envelope(idempotency_key="k"), NOW)

    assert params["TableName"] == TABLE
    assert params["Item"]["pending_send"] == {"BOOL": True}
    assert params["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"
    condition = Condition(params)
    assert condition.holds_for(None)
    assert not condition.holds_for(item(status="queued"))


def test_sent_removes_pending_send_of_an_existing_record_only() -> None:
    """Given a sent idempotent message, when its UpdateItem is built, then it removes
    pending_send and never creates a record."""
    params = state.sent_params(TABLE, TASK_ID)

    assert params["Key"] == {"pk": {"S": f"task#{TASK_ID}"}}
    assert params["UpdateExpression"] == "REMOVE pending_send"
    assert Condition(params).holds_for(item(status="queued", pending_send=True))
    assert not Condition(params).holds_for(None)


@pytest.mark.parametrize("status", list(Status))
def test_unsent_deletes_the_record_only_while_it_is_queued(status: Status) -> None:
    """Given a record in each status, when the DeleteItem for an unsent message is built,
    then it deletes only a queued record (never one a dispatcher already touched)."""
    params = state.unsent_params(TABLE, TASK_ID)

    assert params["Key"] == state.task_key(TASK_ID)
    assert Condition(params).holds_for(item(status=status.value)) is (status is Status.QUEUED)


# --- the claim -------------------------------------------------------------------------------


def claim(now: float = NOW, timeout_s: float = 60.0) -> dict[str, Any]:
    """The claim UpdateItem for the test envelope."""
    return state.claim_params(
        TABLE, envelope(), message_id=MESSAGE_ID, now=now, timeout_s=timeout_s
    )


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.DEAD, Status.CANCELLED])
def test_claim_refuses_a_final_state(status: Status) -> None:
    """Given a record in a final state (even with an expired lease), when a claim is tried,
    then the condition refuses it."""
    record = item(status=status.value, lease_until=NOW - 1_000, message_id="old")

    assert not Condition(claim()).holds_for(record)


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RETRYING])
def test_claim_takes_a_queued_or_retrying_record(status: Status) -> None:
    """Given a queued or retrying record, when a claim is tried, then it succeeds."""
    assert Condition(claim()).holds_for(item(status=status.value))


def test_claim_creates_a_missing_record() -> None:
    """Given no record (a producer that wrote none), when a claim is tried, then it
    succeeds."""
    assert Condition(claim()).holds_for(None)


def test_claim_takes_over_a_running_record_only_after_its_lease() -> None:
    """Given a running record, when a claim is tried, then it is refused while the lease is
    live (even at the lease's last instant) and allowed once it has passed."""
    condition = Condition(claim())

    assert not condition.holds_for(item(status="running", lease_until=NOW + 5))
    assert not condition.holds_for(item(status="running", lease_until=NOW))
    assert condition.holds_for(item(status="running", lease_until=NOW - 0.5))


def test_claim_sets_running_counts_the_attempt_and_leases_past_the_timeout() -> None:
    """Given a claim at NOW with a 60 s timeout, when built, then it sets status running,
    increments attempts from 0, records the message, and leases until NOW + 60 + grace."""
    params = claim()
    update = params["UpdateExpression"]
    values = values_of(params)

    assert "#s = :running" in update
    assert "attempts = if_not_exists(attempts, :zero) + :one" in update
    assert "message_id = :mid" in update
    assert "REMOVE next_attempt_at" in update
    assert values[":running"] == "running"
    assert values[":mid"] == MESSAGE_ID
    assert (values[":zero"], values[":one"]) == (0, 1)
    assert float(values[":lease"]) == pytest.approx(NOW + 60 + state.LEASE_GRACE_S)
    assert values[":ttl"] == int(NOW) + c.RECORD_TTL_S
    assert params["ReturnValues"] == "ALL_NEW"
    assert params["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"


def test_claim_values_are_decimals_rounded_to_milliseconds() -> None:
    """Given a time with sub-millisecond digits, when built, then numbers are sent to
    DynamoDB rounded to the millisecond."""
    params = claim(now=NOW + 0.0004)

    assert params["ExpressionAttributeValues"][":now"] == {"N": "1767225600.125"}


# --- owned transitions -----------------------------------------------------------------------


def owned_transitions() -> list[Any]:
    """Every transition only the claiming delivery may make, one pytest.param each."""
    owner = {"message_id": MESSAGE_ID, "now": NOW}
    return [
        pytest.param(
            state.succeeded_params(TABLE, TASK_ID, result=1, **owner),
            id="succeeded",
        ),
        pytest.param(
            state.succeeded_params(TABLE, TASK_ID, result="x" * 5_000, **owner),
            id="succeeded-large-result",
        ),
        pytest.param(
            state.retrying_params(TABLE, TASK_ID, error=ERROR, next_attempt_at=NOW, **owner),
            id="retrying",
        ),
        pytest.param(
            state.retrying_params(
                TABLE, TASK_ID, error=ERROR, next_attempt_at=NOW, refund_attempt=True, **owner
            ),
            id="retrying-refunded",
        ),
        pytest.param(
            state.dead_params(TABLE, TASK_ID, error=ERROR, reason="max_attempts", **owner),
            id="dead",
        ),
    ]


@pytest.mark.parametrize("params", owned_transitions())
def test_owned_updates_require_running_and_the_owning_message(params: dict[str, Any]) -> None:
    """Given each owned transition, when evaluated on records, then it applies only to a
    running record owned by this message: not another message's, not a settled one."""
    condition = Condition(params)

    assert condition.holds_for(item(status="running", message_id=MESSAGE_ID))
    assert not condition.holds_for(item(status="running", message_id="msg-2"))
    for status in every_status():
        if status is not Status.RUNNING:
            assert not condition.holds_for(item(status=status.value, message_id=MESSAGE_ID))
    assert not condition.holds_for(None)
    assert "REMOVE lease_until" in params["UpdateExpression"]


def test_succeeded_keeps_a_small_result_as_json() -> None:
    """Given a small result, when the success update is built, then the result is stored
    as compact JSON under ``result`` with status succeeded."""
    params = state.succeeded_params(
        TABLE, TASK_ID, message_id=MESSAGE_ID, now=NOW, result={"charged": 500}
    )
    values = values_of(params)

    assert values[":result"] == '{"charged":500}'
    assert values[":done"] == "succeeded"
    assert params["ExpressionAttributeNames"] == {"#s": "status", "#r": "result"}
    assert "#r = :result" in params["UpdateExpression"]


def test_succeeded_drops_a_result_over_the_limit_and_a_none_result() -> None:
    """Given a result over MAX_RESULT_BYTES, or None, when the success update is built, then
    no result is stored."""
    for result in ("x" * c.MAX_RESULT_BYTES, None):
        params = state.succeeded_params(
            TABLE, TASK_ID, message_id=MESSAGE_ID, now=NOW, result=result
        )
        assert ":result" not in params["ExpressionAttributeValues"]
        assert "result" not in params["UpdateExpression"]


def test_retrying_records_the_error_and_refunds_an_attempt_only_when_asked() -> None:
    """Given a failed attempt, when the retry update is built, then it stores the error and
    next attempt time; with refund_attempt it also takes the attempt back."""
    plain = state.retrying_params(
        TABLE, TASK_ID, message_id=MESSAGE_ID, now=NOW, error=ERROR, next_attempt_at=NOW + 30
    )
    refunded = state.retrying_params(
        TABLE,
        TASK_ID,
        message_id=MESSAGE_ID,
        now=NOW,
        error=ERROR,
        next_attempt_at=NOW + 30,
        refund_attempt=True,
    )

    assert values_of(plain)[":error"] == ERROR.to_dict()
    assert float(values_of(plain)[":next"]) == pytest.approx(NOW + 30)
    assert "attempts" not in plain["UpdateExpression"]
    assert "attempts = attempts - :one" in refunded["UpdateExpression"]
    assert values_of(refunded)[":one"] == 1


def test_dead_records_the_reason() -> None:
    """Given the last attempt failed, when the dead update is built, then it sets status
    dead with the reason and the error."""
    values = values_of(
        state.dead_params(
            TABLE, TASK_ID, message_id=MESSAGE_ID, now=NOW, error=ERROR, reason="not_retryable"
        )
    )

    assert values[":dead"] == "dead"
    assert values[":reason"] == "not_retryable"
    assert values[":error"] == ERROR.to_dict()


@pytest.mark.parametrize("status", list(Status))
def test_rejected_never_overwrites_a_final_or_running_state(status: Status) -> None:
    """Given a record in each status, when a malformed copy's rejection is evaluated, then
    it applies only to queued or retrying records (and to a missing record)."""
    params = state.rejected_params(TABLE, TASK_ID, None, now=NOW, reason="malformed")
    condition = Condition(params)

    assert condition.holds_for(item(status=status.value)) is (
        status in (Status.QUEUED, Status.RETRYING)
    )
    assert condition.holds_for(None)
    assert values_of(params)[":task"] == c.UNNAMED_TASK  # a GSI key is never empty


# --- records ----------------------------------------------------------------------------------


def full_item() -> dict[str, Any]:
    """A dead record with every attribute set, as DynamoDB returns it."""
    return item(
        task_id=TASK_ID,
        task="charge",
        status="dead",
        attempts=3,
        created_at=NOW,
        updated_at=NOW + 3,
        started_at=NOW + 2,
        finished_at=NOW + 3,
        first_failure_at=NOW + 1,
        last_failure_at=NOW + 3,
        next_attempt_at=NOW + 2.5,
        lease_until=NOW + 92,
        message_id=MESSAGE_ID,
        idempotency_key="order-42",
        last_error=ERROR.to_dict(),
        dead_reason="max_attempts",
        result=json.dumps({"partial": [1, 2]}),
        pending_send=False,
        expires_at=int(NOW) + c.RECORD_TTL_S,
    )


def test_from_item_reads_every_attribute() -> None:
    """Given an item with every attribute, when read, then each field has its Python type
    (floats for times, int attempts, ErrorInfo, decoded JSON result)."""
    record = TaskRecord.from_item(full_item())

    assert record == TaskRecord(
        task_id=TASK_ID,
        task="charge",
        status=Status.DEAD,
        attempts=3,
        created_at=NOW,
        updated_at=NOW + 3,
        started_at=NOW + 2,
        finished_at=NOW + 3,
        first_failure_at=NOW + 1,
        last_failure_at=NOW + 3,
        next_attempt_at=NOW + 2.5,
        lease_until=NOW + 92,
        message_id=MESSAGE_ID,
        idempotency_key="order-42",
        last_error=ERROR,
        dead_reason="max_attempts",
        result={"partial": [1, 2]},
        pending_send=False,
    )
    assert isinstance(record.attempts, int)
    assert isinstance(record.created_at, float)


def test_to_dict_gives_iso_8601_utc_times_with_milliseconds_and_z() -> None:
    """Given a full record, when shown, then times are ISO-8601 UTC with milliseconds and a
    Z, and the other fields are plain JSON values."""
    shown = TaskRecord.from_item(full_item()).to_dict()

    assert shown["created_at"] == NOW_ISO
    assert shown["updated_at"] == "2026-01-01T00:00:03.125Z"
    assert shown["next_attempt_at"] == "2026-01-01T00:00:02.625Z"
    assert shown["lease_until"] == "2026-01-01T00:01:32.125Z"
    assert shown["status"] == "dead"
    assert shown["last_error"] == ERROR.to_dict()
    assert shown["result"] == {"partial": [1, 2]}
    assert json.loads(json.dumps(shown)) == shown


def test_a_queued_item_round_trips_through_from_item_and_to_dict() -> None:
    """Given the item written at enqueue, when read back and shown, then the record says
    queued, 0 attempts, with the creation time in ISO form and nothing unset shown."""
    written = state.put_queued_params(TABLE, envelope(idempotency_key="k"), NOW)["Item"]

    record = TaskRecord.from_item(written)

    assert record.status is Status.QUEUED
    assert record.pending_send is True
    assert record.to_dict() == {
        "task_id": TASK_ID,
        "task": "charge",
        "status": "queued",
        "attempts": 0,
        "created_at": NOW_ISO,
        "updated_at": NOW_ISO,
        "idempotency_key": "k",
    }


def test_from_item_takes_the_id_from_the_key_when_task_id_is_absent() -> None:
    """Given an item with only pk and status, when read, then task_id comes from pk and the
    other fields take their defaults."""
    record = TaskRecord.from_item({"pk": {"S": "task#abc"}, "status": {"S": "retrying"}})

    assert record == TaskRecord(task_id="abc", task="", status=Status.RETRYING)


@pytest.mark.parametrize(
    ("epoch_s", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (NOW, NOW_ISO),
        (1_767_225_600.9999, "2026-01-01T00:00:00.999Z"),
    ],
)
def test_iso_formats_utc_milliseconds(epoch_s: float, expected: str) -> None:
    """Given epoch seconds, when formatted, then UTC with milliseconds and a trailing Z."""
    assert iso(epoch_s) == expected


# --- claim classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "owner", "expected"),
    [
        (Status.SUCCEEDED, MESSAGE_ID, ClaimStatus.DONE),
        (Status.SUCCEEDED, "other", ClaimStatus.DONE),
        (Status.CANCELLED, "other", ClaimStatus.DONE),
        (Status.DEAD, MESSAGE_ID, ClaimStatus.DEAD),
        (Status.DEAD, "other", ClaimStatus.DEAD),
        (Status.RUNNING, MESSAGE_ID, ClaimStatus.BUSY),
        (Status.RUNNING, "other", ClaimStatus.DUPLICATE),
        (Status.RUNNING, None, ClaimStatus.DUPLICATE),
        (Status.QUEUED, "other", ClaimStatus.DUPLICATE),
        (Status.RETRYING, "other", ClaimStatus.DUPLICATE),
    ],
)
def test_claim_refused_says_what_to_do_with_the_delivery(
    status: Status, owner: str | None, expected: ClaimStatus
) -> None:
    """Given the record that refused a claim, when classified, then succeeded/cancelled is
    done, dead is dead, running under this message is busy, and anything owned by another
    message is a duplicate; the record is passed along."""
    record = TaskRecord(task_id=TASK_ID, task="charge", status=status, message_id=owner)

    answer = state.claim_refused(record, message_id=MESSAGE_ID)

    assert answer.status is expected
    assert answer.record is record


def test_a_repeated_claim_recognises_its_own_token_and_nothing_else() -> None:
    """Given a running record claimed with this receive's token (the claim's answer was
    lost and the call retry sent it again), when the repeat is refused, then it is
    classified as claimed, with the stored item; a running record with another token
    (a later receive of the same message) stays busy, and a finished one stays done."""
    token = state.claim_token("receipt-1")
    stored = {"pk": {"S": f"task#{TASK_ID}"}, "claim_token": {"S": token}}
    running = TaskRecord(
        task_id=TASK_ID,
        task="charge",
        status=Status.RUNNING,
        message_id=MESSAGE_ID,
        claim_token=token,
        attempts=1,
    )

    mine = state.claim_refused(running, message_id=MESSAGE_ID, token=token, item=stored)
    later = state.claim_refused(
        running, message_id=MESSAGE_ID, token=state.claim_token("receipt-2"), item=stored
    )
    done = state.claim_refused(
        TaskRecord(task_id=TASK_ID, task="charge", status=Status.SUCCEEDED, claim_token=token),
        message_id=MESSAGE_ID,
        token=token,
    )

    assert (mine.status, mine.item, mine.record.attempts) == (ClaimStatus.CLAIMED, stored, 1)
    assert later.status is ClaimStatus.BUSY
    assert done.status is ClaimStatus.DONE
    assert state.claim_token("receipt-1") != state.claim_token("receipt-2")


def test_a_claim_stores_its_token_and_a_tokenless_claim_clears_an_old_one() -> None:
    """Given a claim with a token, when built, then the token is set with the claim;
    without one, any earlier token is removed (it could only mislead)."""
    token = state.claim_token("r")
    with_token = state.claim_params(
        TABLE, envelope(), message_id=MESSAGE_ID, now=NOW, timeout_s=1.0, token=token
    )
    without = claim()

    assert "claim_token = :token" in with_token["UpdateExpression"]
    assert values_of(with_token)[":token"] == token
    removed = without["UpdateExpression"].partition(" REMOVE ")[2].split(", ")
    assert "claim_token" in removed and ":token" not in values_of(without)
    assert Condition(with_token).holds_for(item(status="queued"))


def test_status_is_final_only_for_the_end_states() -> None:
    """Given every status, when asked, then only succeeded, dead and cancelled are final."""
    assert {s for s in Status if s.is_final} == {Status.SUCCEEDED, Status.DEAD, Status.CANCELLED}


# --- chunks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "size", "lengths"),
    [(0, 25, []), (1, 25, [1]), (25, 25, [25]), (26, 25, [25, 1]), (60, 25, [25, 25, 10])],
)
def test_chunks_splits_in_order_at_the_size(count: int, size: int, lengths: list[int]) -> None:
    """Given ``count`` items, when chunked by ``size``, then the chunks have the expected
    lengths and concatenate back to the input, in order."""
    items = list(range(count))

    parts = state.chunks(iter(items), size)

    assert [len(part) for part in parts] == lengths
    assert [x for part in parts for x in part] == items


# --- lean tasks (no record) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("receive_count", "attempt"),
    [(None, 1), (1, 1), (2, 2), (3, 3), (4, 3), (60, 3)],
)
def test_a_lean_attempt_is_the_receive_count_capped_at_max_attempts(
    receive_count: int | None, attempt: int
) -> None:
    """Given a lean task's delivery with a receive count, when its attempt is made from the
    message alone, then it is the receive count (1 when SQS did not say), never more than
    max_attempts, so a delivery whose receives ran past the budget runs as the last
    attempt instead of dying unrun; the claim wrote nothing and says claimed."""
    claim = state.lean_claim(
        Envelope(id=f"{c.LEAN_TASK_ID_PREFIX}{TASK_ID}", task="charge"),
        receive_count=receive_count,
        max_attempts=3,
        now=NOW,
    )

    assert claim.status is ClaimStatus.CLAIMED
    assert (claim.record.status, claim.record.attempts) == (Status.RUNNING, attempt)
    assert claim.item == {}


def test_a_periodic_lean_marker_lives_under_its_own_prefix() -> None:
    """Given a periodic lean task's keyed envelope, when its enqueue guard is written, sent
    and cleaned up, then every request addresses ``sched#<id>``, never a ``task#`` record,
    and the put is conditional on the marker being new."""
    lean_id = f"{c.LEAN_TASK_ID_PREFIX}{TASK_ID}"
    keyed = Envelope(id=lean_id, task="tick", idempotency_key="schedule:2026-01-01T00:00:00+00:00")
    marker = {c.TABLE_HASH_KEY: {"S": f"{c.SCHEDULE_KEY_PREFIX}{lean_id}"}}

    put = state.put_queued_params("t", keyed, NOW, marker=True)
    sent = state.sent_params("t", lean_id, marker=True)
    unsent = state.unsent_params("t", lean_id, marker=True)

    assert put["Item"][c.TABLE_HASH_KEY] == marker[c.TABLE_HASH_KEY]
    assert put["ConditionExpression"] == "attribute_not_exists(pk)"
    assert sent["Key"] == marker
    assert unsent["Key"] == marker


# --- attempts that never reported, records that must outlive a long wait --------------------


@pytest.mark.parametrize(
    ("status", "attempts", "lease_until", "starts"),
    [
        (Status.QUEUED, 0, None, True),
        (Status.RETRYING, 2, None, True),
        (Status.RETRYING, 3, None, False),
        (Status.RUNNING, 2, NOW - 1, True),  # a lapsed attempt, one left
        (Status.RUNNING, 3, NOW - 1, False),  # the last attempt lapsed without an outcome
    ],
)
def test_a_claim_never_starts_an_attempt_beyond_max_attempts(
    status: Status, attempts: int, lease_until: float | None, starts: bool
) -> None:
    """Given max_attempts 3, a claim starts an attempt only while fewer than 3 were
    started, whatever became of them; refused with all spent, it is EXHAUSTED (the
    task is dead-lettered), never BUSY or a duplicate."""
    params = state.claim_params(
        TABLE, envelope(), message_id=MESSAGE_ID, now=NOW, timeout_s=60.0, max_attempts=3
    )
    stored = {"status": status.value, "attempts": attempts, "message_id": "earlier"}
    if lease_until is not None:
        stored["lease_until"] = lease_until

    assert Condition(params).holds_for(item(**stored)) is starts
    assert Condition(params).holds_for(None)  # a first sight
    if not starts:
        record = TaskRecord(
            task_id=TASK_ID,
            task="charge",
            status=status,
            attempts=attempts,
            lease_until=lease_until,
            message_id="earlier",
        )
        refused = state.claim_refused(record, message_id=MESSAGE_ID, now=NOW, max_attempts=3)
        assert refused.status is ClaimStatus.EXHAUSTED


def test_an_old_message_claims_only_an_existing_record() -> None:
    """A message older than a record lives requires its record: missing, it expired."""
    params = state.claim_params(
        TABLE, envelope(), message_id=MESSAGE_ID, now=NOW, timeout_s=60.0, require_record=True
    )

    assert not Condition(params).holds_for(None)
    assert Condition(params).holds_for(item(status=Status.QUEUED.value, attempts=0))


def test_a_record_lives_a_record_lifetime_past_the_tasks_due_time() -> None:
    """A task delayed 30 days keeps its record 14 days past its due time; a retry keeps
    it 14 days past the next attempt; an ordinary task 14 days past its enqueue."""
    due = NOW + 30 * 86_400
    delayed = state.queued_item(envelope(eta=due), NOW)
    plain = state.queued_item(envelope(), NOW)
    retrying = state.retrying_params(
        TABLE,
        TASK_ID,
        message_id=MESSAGE_ID,
        now=NOW,
        error=ErrorInfo(type="E", message="m"),
        next_attempt_at=due,
    )

    assert int(delayed[c.TABLE_TTL_ATTRIBUTE]["N"]) == int(due) + c.RECORD_TTL_S
    assert int(plain[c.TABLE_TTL_ATTRIBUTE]["N"]) == int(NOW) + c.RECORD_TTL_S
    assert values_of(retrying)[":ttl"] == int(due) + c.RECORD_TTL_S
