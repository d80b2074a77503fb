"""Batched claims and successes as PartiQL statements: what each statement says and does.

Each statement's WHERE clause is *evaluated* against items by a small evaluator
written here for the subset Dispatch sends (``"a"=?``, ``"a"<?``, ``IS [NOT] MISSING``,
AND), and its SET/REMOVE applied, so the tests say "the batched claim takes exactly
the records the UpdateItem claim takes, and leaves them exactly as it does", not
"the statement is this string". The UpdateItem claim's condition is evaluated with
the evaluator of test_state_items.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
import tenacity

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.errors import ConfigurationError
from dispatch.core.record import ClaimAsk, Status, TaskRecord
from dispatch.store import state, statements
from dispatch.store.aws_retry import Backoff
from dispatch.store.codec import number
from dispatch.store.statements import Statement, claim_statement, succeeded_statement
from tests.unit.test_state_items import Condition

NOW = 1_767_225_600.125
TABLE = "dispatch-state"
TOKEN = "t" * 24
MID = "message-1"


def envelope() -> Envelope:
    return Envelope(id="abc", task="charge", enqueued_at=NOW - 5)


def ask(now: float = NOW, timeout_s: float = 60) -> ClaimAsk:
    return ClaimAsk(envelope(), message_id=MID, now=now, timeout_s=timeout_s, token=TOKEN)


_PREDICATE = re.compile(r'^"(\w+)"\s*(=|<|IS MISSING|IS NOT MISSING)\s*(\?)?$')


def _compare(stored: dict[str, Any], op: str, value: dict[str, Any]) -> bool:
    (kind, left), (other, right) = next(iter(stored.items())), next(iter(value.items()))
    if kind != other:
        return False
    if kind == "N":
        a, b = Decimal(left), Decimal(right)
        return a == b if op == "=" else a < b
    return left == right if op == "=" else left < right


def holds(statement: Statement, item: dict[str, Any] | None) -> bool:
    """Whether the statement's WHERE clause holds for ``item`` (None: no item; an
    UPDATE never applies then)."""
    if item is None:
        return False
    where = statement.text.split(" WHERE ", 1)[1]
    values = iter(statement.parameters[len(statement.sets) :])
    for predicate in where.split(" AND "):
        match = _PREDICATE.match(predicate.strip())
        assert match, predicate
        name, op, placeholder = match.groups()
        if op == "IS MISSING":
            ok = name not in item
        elif op == "IS NOT MISSING":
            ok = name in item
        else:
            assert placeholder
            value = next(values)
            ok = name in item and _compare(item[name], op, value)
        if not ok:
            return False
    return True


def queued_item(**extra: Any) -> dict[str, Any]:
    item = {
        c.TABLE_HASH_KEY: {"S": "task#abc"},
        "task_id": {"S": "abc"},
        "task": {"S": "charge"},
        "status": {"S": "queued"},
        "attempts": number(0),
        "created_at": number(NOW - 5),
        "updated_at": number(NOW - 5),
        c.TABLE_TTL_ATTRIBUTE: number(int(NOW) + 100),
    }
    item.update(extra)
    return item


def records() -> dict[str, dict[str, Any]]:
    """Records a claim may meet, by name."""
    error = {"M": {"type": {"S": "E"}, "message": {"S": "boom"}}}
    return {
        "queued": queued_item(),
        "queued, pending send": queued_item(pending_send={"BOOL": True}),
        "retrying": queued_item(
            status={"S": "retrying"},
            attempts=number(2),
            last_error=error,
            first_failure_at=number(NOW - 4),
            updated_at=number(NOW - 3),
        ),
        "retrying, spent": queued_item(status={"S": "retrying"}, attempts=number(5)),
        "redriven": queued_item(last_error=error, first_failure_at=number(NOW - 100)),
        "running": queued_item(
            status={"S": "running"}, attempts=number(1), lease_until=number(NOW + 60)
        ),
        "running, lapsed": queued_item(
            status={"S": "running"}, attempts=number(1), lease_until=number(NOW - 1)
        ),
        "succeeded": queued_item(status={"S": "succeeded"}, attempts=number(1)),
        "dead": queued_item(status={"S": "dead"}, attempts=number(3)),
        "cancelled": queued_item(status={"S": "cancelled"}),
        "foreign, no attempts": {
            k: v for k, v in queued_item().items() if k not in ("attempts", "created_at")
        },
    }


def batched_claim(
    item: dict[str, Any] | None, max_attempts: int = 5, timeout_s: float = 60
) -> dict[str, Any] | None:
    """The claim protocol of RecordTransitions, on one item: the guess, then a
    compare-and-set on the record a refusal returned when an attempt may start from it.
    Returns the item as the claim leaves it, or None when no claim was made."""
    old: dict[str, Any] | None = None
    for _ in range(statements.CLAIM_ROUNDS):
        statement = claim_statement(TABLE, ask(now=NOW, timeout_s=timeout_s), old=old)
        if holds(statement, item):
            assert item is not None
            return statement.applied_to(item)
        if item is None:
            return None
        record = TaskRecord.from_item(item)
        waiting = record.status in (Status.QUEUED, Status.RETRYING) or (
            record.status is Status.RUNNING and (record.lease_until or 0) < NOW
        )
        if not waiting or record.attempts >= max_attempts:
            return None
        old = item
    return None


def update_item_claim(item: dict[str, Any] | None, timeout_s: float = 60) -> dict[str, Any] | None:
    """What the single UpdateItem claim does to ``item`` (None: refused)."""
    params = state.claim_params(
        TABLE,
        envelope(),
        message_id=MID,
        now=NOW,
        timeout_s=timeout_s,
        token=TOKEN,
        max_attempts=5,
    )
    if item is None or not Condition(params).holds_for(item):
        return None
    values = params["ExpressionAttributeValues"]
    new = dict(item)
    new.pop("next_attempt_at", None)
    new.update(
        status=values[":running"],
        attempts=number(int(Decimal(item.get("attempts", number(0))["N"])) + 1),
        task_id=values[":id"],
        task=values[":task"],
        message_id=values[":mid"],
        started_at=values[":now"],
        updated_at=values[":now"],
        lease_until=values[":lease"],
        expires_at=values[":ttl"],
        claim_token=values[":token"],
    )
    if ":listed" in values:  # a long task is listed while running; a short one is not
        new["listed"] = values[":listed"]
    else:
        new.pop("listed", None)
    new.setdefault("created_at", values[":now"])
    return new


@pytest.mark.parametrize("timeout_s", [60, 600], ids=["short task", "long task"])
@pytest.mark.parametrize("name", list(records()))
def test_a_batched_claim_takes_what_the_update_item_claim_takes_and_leaves_the_same_record(
    name: str, timeout_s: float
) -> None:
    item = records()[name]

    assert batched_claim(item, timeout_s=timeout_s) == update_item_claim(item, timeout_s)


def test_the_guess_holds_only_for_a_record_waiting_for_its_first_attempt() -> None:
    guess = claim_statement(TABLE, ask(now=NOW), old=None)

    held = [name for name, item in records().items() if holds(guess, item)]

    assert held == ["queued", "queued, pending send"]
    assert not holds(guess, None)


def test_a_compare_and_set_fails_once_the_record_changed() -> None:
    old = records()["retrying"]
    cas = claim_statement(TABLE, ask(now=NOW), old=old)
    claimed_by_another = dict(old, status={"S": "running"}, attempts=number(3))
    given_back = dict(old, updated_at=number(NOW - 1))  # same status and attempts, later write

    assert holds(cas, old)
    assert not holds(cas, claimed_by_another)
    assert not holds(cas, given_back)


def test_a_lapsed_attempt_is_taken_over_only_while_its_lease_is_past() -> None:
    old = records()["running, lapsed"]
    later = claim_statement(TABLE, ask(now=NOW), old=old)
    early = claim_statement(TABLE, ask(now=NOW - 2), old=old)

    assert holds(later, old)
    assert not holds(early, old)


def test_every_placeholder_has_its_parameter() -> None:
    for old in (None, *records().values()):
        statement = claim_statement(TABLE, ask(now=NOW), old=old)
        assert statement.text.count("?") == len(statement.parameters)
        assert statement.text.split(" WHERE ")[0].split()[:3] == ["UPDATE", f'"{TABLE}"', "SET"]
        assert statement.entry()["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"


@pytest.mark.parametrize("result", [None, {"total": 3}, "x" * (c.MAX_RESULT_BYTES + 1)])
def test_a_batched_success_writes_what_the_whole_item_put_writes(result: Any) -> None:
    claimed = update_item_claim(records()["retrying"])
    assert claimed is not None
    claimed["result"] = {"S": '"stale"'}
    success = succeeded_statement(
        TABLE, "abc", message_id=MID, now=NOW + 1, result_json=state.stored_result(result)
    )

    assert holds(success, claimed)
    assert success.applied_to(claimed) == state.succeeded_item(claimed, now=NOW + 1, result=result)


def test_a_batched_success_needs_the_attempt_to_still_own_the_record() -> None:
    claimed = update_item_claim(records()["queued"])
    assert claimed is not None
    success = succeeded_statement(TABLE, "abc", message_id=MID, now=NOW + 1, result_json=None)
    taken_over = dict(claimed, message_id={"S": "message-2"})
    cancelled = dict(claimed, status={"S": "cancelled"})

    assert not holds(success, taken_over)
    assert not holds(success, cancelled)


def test_a_table_name_that_could_break_the_statement_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="table name"):
        claim_statement('tasks" SET "x', ask(), old=None)


def test_a_request_never_addresses_one_item_twice() -> None:
    entries = [{"Id": str(i), statements.KEY_FIELD: key} for i, key in enumerate("abacab")]

    waves = statements._waves(entries)

    assert [[e[statements.KEY_FIELD] for e in wave] for wave in waves] == [
        ["a", "b", "c"],
        ["a", "b"],
        ["a"],
    ]


class ScriptedEndpoint:
    """A BatchExecuteStatement endpoint answering from a script: per call, the error
    code (or None) for each statement sent. Records what each call carried."""

    def __init__(self, script: list[list[str | None]]) -> None:
        self.script = script
        self.calls: list[list[dict[str, Any]]] = []

    async def batch_execute_statement(self, *, Statements: list[dict[str, Any]]) -> Any:
        self.calls.append(Statements)
        codes = self.script.pop(0)
        return {
            "Responses": [
                {"TableName": TABLE} if code is None else {"Error": {"Code": code, "Message": code}}
                for code in codes
            ]
        }


def entries(n: int) -> list[dict[str, Any]]:
    return [{"Id": str(i), "Statement": f"s{i}", statements.KEY_FIELD: f"k{i}"} for i in range(n)]


async def test_statements_refused_for_load_are_sent_again_alone(monkeypatch) -> None:
    monkeypatch.setattr(statements, "_STATEMENT_BACKOFF", Backoff(tenacity.wait_none()))
    endpoint = ScriptedEndpoint([["ThrottlingError", None, "ConditionalCheckFailed"], [None]])

    answer = await statements.execute(endpoint, entries(3))

    assert [c["Statement"] for c in endpoint.calls[1]] == ["s0"]
    assert all(statements.KEY_FIELD not in s and "Id" not in s for s in endpoint.calls[0])
    assert [(f["Id"], f["Code"]) for f in answer["Failed"]] == [("2", "ConditionalCheckFailed")]


async def test_a_short_answer_is_an_error_not_a_silent_success() -> None:
    endpoint = ScriptedEndpoint([[None]])

    with pytest.raises(RuntimeError, match="1 responses to 2 statements"):
        await statements.execute(endpoint, entries(2))


def good_probe() -> tuple[list[dict[str, Any]], list[dict[str, Any] | None]]:
    responses = [
        {"TableName": TABLE},
        {"Error": {"Code": "ConditionalCheckFailed", "Item": {"probe": {"S": "before"}}}},
        {"Error": {"Code": "ConditionalCheckFailed"}},
    ]
    found: list[dict[str, Any] | None] = [
        {"probe": {"S": "after"}, "n": {"N": "2"}},
        {"probe": {"S": "before"}},
        None,
    ]
    return responses, found


def test_the_probe_accepts_dynamodb_answers() -> None:
    assert statements._judge(*good_probe()) is None


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda r, f: r[1].pop("Error"), "not reported as ConditionalCheckFailed"),
        (lambda r, f: r[1]["Error"].pop("Item"), "did not return the old item"),
        (lambda r, f: r[2].pop("Error"), "does not exist was not refused"),
        (lambda r, f: f.__setitem__(0, {"probe": {"S": "before"}}), "did not change the item"),
        (lambda r, f: f.__setitem__(1, {"probe": {"S": "after"}}), "refused statement changed"),
        (lambda r, f: f.__setitem__(2, {"probe": {"S": "after"}}), "created it"),
        (lambda r, f: r.pop(), "got 2 responses"),
    ],
)
def test_the_probe_names_what_an_endpoint_gets_wrong(spoil: Any, problem: str) -> None:
    responses, found = good_probe()
    spoil(responses, found)

    judged = statements._judge(responses, found)

    assert judged is not None and problem in judged
