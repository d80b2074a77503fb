"""The embedded local AWS's DynamoDB UpdateItem over real HTTP: moto's semantics, atomic.

dispatch.local.moto_dynamodb_patches remembers parsed expressions and the
structural checks they passed, and makes each DynamoDB request atomic. These
tests talk to the emulator with plain boto3 clients and check that nothing a
client can observe changed: the same expression text with other values and other
names, conditional failures and the old item they return, every kind of update
action, moto's validation errors word for word, and, side by side with a stock
moto 5.2.5 emulator, the same answers to a long script of requests.

Two concurrency tests fail against moto 5.2.5 as released: moto's UpdateItem reads,
checks and writes an item in separate steps, so concurrent updates can lose
increments and two conditional claims can both win. To see it, run

    DISPATCH_LOCAL_AWS_STOCK_MOTO=1 pytest tests/integration/test_local_aws_dynamodb.py -k conc
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import moto
import pytest
from botocore.exceptions import ClientError

from dispatch.core.envelope import Envelope
from dispatch.core.outcome import ErrorInfo
from dispatch.local import moto_dynamodb_patches
from dispatch.local.emulator import LocalAWS
from dispatch.store import state

Outcome = tuple[Any, ...]
NOW = 1_800_000_000.0  # a fixed clock: both emulators must receive identical requests


@pytest.fixture(scope="module")
def dynamodb(local_aws: LocalAWS) -> Any:
    """A boto3 DynamoDB client on the session's (patched) emulator."""
    return local_aws.client("dynamodb", max_pool_connections=32)


def _create_table(client: Any, name: str, key: str = "pk") -> str:
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture
def table(dynamodb: Any) -> Iterator[str]:
    """A fresh table keyed by the string ``pk``, deleted afterwards."""
    name = _create_table(dynamodb, f"ddb-{uuid.uuid4().hex[:12]}")
    yield name
    dynamodb.delete_table(TableName=name)


def _key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}}


def _item(client: Any, table: str, pk: str) -> dict[str, Any]:
    return dict(client.get_item(TableName=table, Key=_key(pk), ConsistentRead=True).get("Item", {}))


def _n(value: float) -> dict[str, str]:
    return {"N": str(value)}


def _outcome(client: Any, **params: Any) -> Outcome:
    """What a client can observe of one UpdateItem: the answer, or the error and its item."""
    try:
        answer = client.update_item(**params)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return ("error", error.get("Code"), error.get("Message"), exc.response.get("Item"))
    return ("ok", answer.get("Attributes"))


def _validation_error(client: Any, **params: Any) -> str:
    outcome = _outcome(client, **params)
    assert outcome[:2] == ("error", "ValidationException"), outcome
    return str(outcome[2])


# --- (a) the same expression text, other values and names -----------------------------------
def test_one_expression_text_with_different_values_and_names(dynamodb: Any, table: str) -> None:
    """Given one UpdateExpression and ConditionExpression text, when it is sent for
    several items with different values and different ExpressionAttributeNames maps,
    then each item gets its own values, under the attributes its own map names."""
    update = "SET #a = :v, #b = if_not_exists(#b, :zero) + :one"
    condition = "attribute_not_exists(#a) OR #a <> :v"
    for i, (first, second) in enumerate([("x", "y"), ("y", "x"), ("colour", "size")]):
        for round_ in range(2):
            value = f"value-{i}-{round_}"
            assert _outcome(
                dynamodb,
                TableName=table,
                Key=_key(f"item-{i}"),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#a": first, "#b": second},
                ExpressionAttributeValues={":v": {"S": value}, ":zero": _n(0), ":one": _n(i + 1)},
            ) == ("ok", None)
        assert _item(dynamodb, table, f"item-{i}") == {
            "pk": {"S": f"item-{i}"},
            first: {"S": f"value-{i}-1"},
            second: {"N": str(2 * (i + 1))},
        }


def test_condition_text_reads_the_attribute_its_names_map_names(dynamodb: Any, table: str) -> None:
    """Given an item with two attributes, when one condition text is evaluated with a
    names map pointing at either, then it passes or fails on the attribute named."""
    dynamodb.put_item(TableName=table, Item={**_key("k"), "red": _n(1), "blue": _n(2)})
    params = {
        "TableName": table,
        "Key": _key("k"),
        "UpdateExpression": "SET seen = :v",
        "ConditionExpression": "#c = :v",
        "ExpressionAttributeValues": {":v": _n(1)},
    }
    assert _outcome(dynamodb, **params, ExpressionAttributeNames={"#c": "red"}) == ("ok", None)
    failed = _outcome(dynamodb, **params, ExpressionAttributeNames={"#c": "blue"})
    assert failed[:3] == (
        "error",
        "ConditionalCheckFailedException",
        "The conditional request failed",
    )
    assert _outcome(dynamodb, **params, ExpressionAttributeNames={"#c": "red"}) == ("ok", None)


# --- (b) conditional failures -------------------------------------------------------------
def test_failed_claim_returns_the_old_item_every_time(dynamodb: Any, table: str) -> None:
    """Given a task claimed by one delivery, when other deliveries claim it (the
    dispatcher's claim expression, repeatedly), then each fails with
    ConditionalCheckFailedException carrying the stored item (ALL_OLD), and without
    ReturnValuesOnConditionCheckFailure it carries none."""
    envelope = Envelope(id="t-1", task="demo.add")
    claimed = dynamodb.update_item(
        **state.claim_params(table, envelope, message_id="m-1", now=NOW, timeout_s=30.0)
    )["Attributes"]
    assert claimed["status"] == {"S": "running"}
    assert claimed["attempts"] == {"N": "1"}
    stored = _item(dynamodb, table, "task#t-1")
    for n in range(3):
        params = state.claim_params(table, envelope, message_id=f"m-{n + 2}", now=NOW, timeout_s=30)
        outcome = _outcome(dynamodb, **params)
        assert outcome == (
            "error",
            "ConditionalCheckFailedException",
            "The conditional request failed",
            stored,
        )
        params.pop("ReturnValuesOnConditionCheckFailure")
        outcome = _outcome(dynamodb, **params)
        assert outcome == (
            "error",
            "ConditionalCheckFailedException",
            "The conditional request failed",
            None,
        )
    assert _item(dynamodb, table, "task#t-1") == stored


def test_dispatch_task_lifecycle_expressions(dynamodb: Any, table: str) -> None:
    """Given Dispatch's own request builders, when a task is claimed, retried,
    released, claimed again and settled, then each record is what state.py intends
    and a write by a delivery that does not own the task fails its condition."""
    envelope = Envelope(id="t-2", task="demo.add")
    error = ErrorInfo(type="ValueError", message="boom")
    dynamodb.update_item(
        **state.claim_params(table, envelope, message_id="m-1", now=NOW, timeout_s=5)
    )
    dynamodb.update_item(
        **state.retrying_params(
            table, "t-2", message_id="m-1", now=NOW + 1, error=error, next_attempt_at=NOW + 10
        )
    )
    record = state.TaskRecord.from_item(_item(dynamodb, table, "task#t-2"))
    assert (record.status, record.attempts, record.next_attempt_at) == ("retrying", 1, NOW + 10)
    assert record.first_failure_at == NOW + 1
    assert record.lease_until is None

    dynamodb.update_item(
        **state.claim_params(table, envelope, message_id="m-2", now=NOW + 10, timeout_s=5)
    )
    dynamodb.update_item(**state.released_params(table, "t-2", message_id="m-2", now=NOW + 11))
    record = state.TaskRecord.from_item(_item(dynamodb, table, "task#t-2"))
    assert (record.status, record.attempts, record.lease_until) == ("retrying", 1, None)

    dynamodb.update_item(
        **state.claim_params(table, envelope, message_id="m-3", now=NOW + 12, timeout_s=5)
    )
    stranger = state.succeeded_params(table, "t-2", message_id="m-1", now=NOW + 13, result=1)
    assert _outcome(dynamodb, **stranger)[1] == "ConditionalCheckFailedException"
    dynamodb.update_item(
        **state.succeeded_params(table, "t-2", message_id="m-3", now=NOW + 13, result={"sum": 3})
    )
    record = state.TaskRecord.from_item(_item(dynamodb, table, "task#t-2"))
    assert (record.status, record.attempts, record.result) == ("succeeded", 2, {"sum": 3})
    assert (record.finished_at, record.first_failure_at, record.lease_until) == (
        NOW + 13,
        NOW + 1,
        None,
    )
    again = state.claim_params(table, envelope, message_id="m-4", now=NOW + 14, timeout_s=5)
    assert _outcome(dynamodb, **again)[3]["status"] == {"S": "succeeded"}


# --- (c) the update actions ----------------------------------------------------------------
def test_if_not_exists_and_arithmetic(dynamodb: Any, table: str) -> None:
    """Given a counter created by if_not_exists, when it is incremented and
    decremented with SET a = a + :n and a - :n, then it counts, and arithmetic on a
    missing or non-numeric attribute fails with moto's errors."""
    dynamodb.put_item(TableName=table, Item=_key("c"))
    inc = {
        "TableName": table,
        "Key": _key("c"),
        "UpdateExpression": "SET n = if_not_exists(n, :zero) + :one",
        "ExpressionAttributeValues": {":zero": _n(0), ":one": _n(1)},
        "ReturnValues": "UPDATED_NEW",
    }
    assert [_outcome(dynamodb, **inc) for _ in range(3)] == [
        ("ok", {"n": _n(i)}) for i in (1, 2, 3)
    ]
    for expression, value, expected in [("SET n = n + :k", 10, 13), ("SET n = n - :k", 4, 9)]:
        answer = _outcome(
            dynamodb,
            TableName=table,
            Key=_key("c"),
            UpdateExpression=expression,
            ExpressionAttributeValues={":k": _n(value)},
            ReturnValues="ALL_NEW",
        )
        assert answer == ("ok", {"pk": {"S": "c"}, "n": _n(expected)})
    dynamodb.put_item(TableName=table, Item={**_key("s"), "s": {"S": "text"}})
    missing = _validation_error(
        dynamodb,
        TableName=table,
        Key=_key("s"),
        UpdateExpression="SET n = nope + :k",
        ExpressionAttributeValues={":k": _n(1)},
    )
    assert (
        missing == "The provided expression refers to an attribute that does not exist in the item"
    )
    wrong_type = _validation_error(
        dynamodb,
        TableName=table,
        Key=_key("s"),
        UpdateExpression="SET n = s + :k",
        ExpressionAttributeValues={":k": _n(1)},
    )
    assert wrong_type == (
        "Invalid UpdateExpression: Incorrect operand type for operator or function; "
        "operator or function: +, operand type: S"
    )


def test_remove_attributes_nested_paths_and_list_elements(dynamodb: Any, table: str) -> None:
    """Given an item with a map, a list and plain attributes, when REMOVE takes a
    top-level attribute, a map entry (by names) and list elements, then exactly
    those are gone (list indexes refer to the list before the update)."""
    dynamodb.put_item(
        TableName=table,
        Item={
            **_key("r"),
            "a": _n(1),
            "b": _n(2),
            "m": {"M": {"keep": _n(1), "drop": _n(2)}},
            "l": {"L": [_n(0), _n(1), _n(2), _n(3)]},
        },
    )
    dynamodb.update_item(
        TableName=table,
        Key=_key("r"),
        UpdateExpression="REMOVE a, #m.#d, l[0], l[2]",
        ExpressionAttributeNames={"#m": "m", "#d": "drop"},
    )
    assert _item(dynamodb, table, "r") == {
        **_key("r"),
        "b": _n(2),
        "m": {"M": {"keep": _n(1)}},
        "l": {"L": [_n(1), _n(3)]},
    }


def test_nested_map_paths_with_placeholders(dynamodb: Any, table: str) -> None:
    """Given the shared slot item (a ``holders`` map), when several owners write
    ``SET #h.#me = :v`` with their own #me, one is reclaimed with a condition on
    ``#h.#other.#u``, then the map holds what each wrote; and a path through a map
    that does not exist fails with moto's message."""
    dynamodb.update_item(
        TableName=table,
        Key=_key("slots#db"),
        UpdateExpression="SET held = :zero, #h = :empty, #w = :empty",
        ConditionExpression="attribute_not_exists(held)",
        ExpressionAttributeNames={"#h": "holders", "#w": "waiters"},
        ExpressionAttributeValues={":zero": _n(0), ":empty": {"M": {}}},
    )
    for i, owner in enumerate(["d-1", "d-2", "d-3"]):
        dynamodb.update_item(
            TableName=table,
            Key=_key("slots#db"),
            UpdateExpression="SET held = if_not_exists(held, :zero) + :k, #h.#me = :entry",
            ConditionExpression="(attribute_not_exists(held) AND :k <= :cap) OR held <= :room",
            ExpressionAttributeNames={"#h": "holders", "#me": owner},
            ExpressionAttributeValues={
                ":zero": _n(0),
                ":k": _n(2),
                ":cap": _n(10),
                ":room": _n(8),
                ":entry": {"M": {"n": _n(2), "until": _n(100 + i)}},
            },
        )
    reclaim = {
        "TableName": table,
        "Key": _key("slots#db"),
        "UpdateExpression": "SET held = held - :n REMOVE #h.#other",
        "ConditionExpression": "#h.#other.#u = :until",
        "ExpressionAttributeNames": {"#h": "holders", "#other": "d-2", "#u": "until"},
        "ExpressionAttributeValues": {":n": _n(2), ":until": _n(999)},
    }
    assert _outcome(dynamodb, **reclaim)[1] == "ConditionalCheckFailedException"
    reclaim["ExpressionAttributeValues"] = {":n": _n(2), ":until": _n(101)}
    assert _outcome(dynamodb, **reclaim) == ("ok", None)
    item = _item(dynamodb, table, "slots#db")
    assert item["held"] == _n(4)
    assert item["holders"]["M"] == {
        "d-1": {"M": {"n": _n(2), "until": _n(100)}},
        "d-3": {"M": {"n": _n(2), "until": _n(102)}},
    }
    message = _validation_error(
        dynamodb,
        TableName=table,
        Key=_key("slots#db"),
        UpdateExpression="SET #x.#me = :v",
        ExpressionAttributeNames={"#x": "nothing", "#me": "d-1"},
        ExpressionAttributeValues={":v": _n(1)},
    )
    assert message == "The document path provided in the update expression is invalid for update"


def test_add_to_numbers_and_sets_and_delete_from_sets(dynamodb: Any, table: str) -> None:
    """Given ADD and DELETE, when they run on absent and present numbers and string
    sets (the bucket's give-back is ``ADD #tokens :unused``), then numbers add up and
    sets take the union and the difference."""
    for values in (
        {":n": _n(1.5), ":s": {"SS": ["a", "b"]}},
        {":n": _n(2), ":s": {"SS": ["b", "c"]}},
    ):
        dynamodb.update_item(
            TableName=table,
            Key=_key("bucket#x"),
            UpdateExpression="ADD #tokens :n, tags :s",
            ExpressionAttributeNames={"#tokens": "tokens"},
            ExpressionAttributeValues=values,
        )
    item = _item(dynamodb, table, "bucket#x")
    assert Decimal(item["tokens"]["N"]) == Decimal("3.5")
    assert sorted(item["tags"]["SS"]) == ["a", "b", "c"]
    dynamodb.update_item(
        TableName=table,
        Key=_key("bucket#x"),
        UpdateExpression="DELETE tags :s",
        ExpressionAttributeValues={":s": {"SS": ["a", "c"]}},
    )
    assert _item(dynamodb, table, "bucket#x")["tags"] == {"SS": ["b"]}


def test_list_append(dynamodb: Any, table: str) -> None:
    """Given list_append with the list first or last, when it runs repeatedly, then
    elements are appended or prepended; on a missing or non-list attribute it fails
    with moto's messages."""
    dynamodb.put_item(TableName=table, Item={**_key("l"), "l": {"L": [_n(1)]}, "s": {"S": "x"}})
    for expression, values in [
        ("SET l = list_append(l, :v)", [_n(2)]),
        ("SET l = list_append(:v, l)", [_n(0)]),
        ("SET l = list_append(l, :v)", [_n(3), _n(4)]),
    ]:
        dynamodb.update_item(
            TableName=table,
            Key=_key("l"),
            UpdateExpression=expression,
            ExpressionAttributeValues={":v": {"L": values}},
        )
    assert _item(dynamodb, table, "l")["l"] == {"L": [_n(i) for i in range(5)]}
    params = {"TableName": table, "Key": _key("l"), "ExpressionAttributeValues": {":v": {"L": []}}}
    missing = _validation_error(
        dynamodb, UpdateExpression="SET m = list_append(nope, :v)", **params
    )
    assert (
        missing == "The provided expression refers to an attribute that does not exist in the item"
    )
    not_list = _validation_error(dynamodb, UpdateExpression="SET m = list_append(s, :v)", **params)
    assert not_list == (
        "Invalid UpdateExpression: Incorrect operand type for operator or function; "
        "operator or function: list_append, operand type: S"
    )


# --- (d) invalid expressions ---------------------------------------------------------------
_OVERLAP = (
    "1 validation error detected: Invalid UpdateExpression: Two document paths overlap "
    "with each other; must remove or rewrite one of these paths; "
)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "reserved keyword without an alias",
        {"UpdateExpression": "SET capacity = :v", "ExpressionAttributeValues": {":v": _n(1)}},
        "Invalid UpdateExpression: Attribute name is a reserved keyword; "
        "reserved keyword: capacity",
    ),
    (
        "reserved keyword in the condition",
        {
            "UpdateExpression": "SET #c = :v",
            "ConditionExpression": "capacity = :v",
            "ExpressionAttributeNames": {"#c": "capacity"},
            "ExpressionAttributeValues": {":v": _n(1)},
        },
        "Invalid ConditionExpression: Attribute name is a reserved keyword; "
        "reserved keyword: capacity",
    ),
    (
        "the same path twice",
        {
            "UpdateExpression": "SET a = :v, a = :w",
            "ExpressionAttributeValues": {":v": _n(1), ":w": _n(2)},
        },
        _OVERLAP + "path one: [a], path two: [a]",
    ),
    (
        "a path inside another",
        {
            "UpdateExpression": "SET m.a = :v, m = :w",
            "ExpressionAttributeValues": {":v": _n(1), ":w": {"M": {}}},
        },
        _OVERLAP + "path one: [m, a], path two: [m]",
    ),
    (
        "two names for one attribute",
        {
            "UpdateExpression": "SET #a = :v, #b = :w",
            "ExpressionAttributeNames": {"#a": "x", "#b": "x"},
            "ExpressionAttributeValues": {":v": _n(1), ":w": _n(2)},
        },
        _OVERLAP + "path one: [x], path two: [x]",
    ),
    (
        "two SET clauses",
        {
            "UpdateExpression": "SET a = :v SET b = :w",
            "ExpressionAttributeValues": {":v": _n(1), ":w": _n(2)},
        },
        '1 validation error detected: Invalid UpdateExpression: The "SET" section can only be used '
        "once in an update expression;",
    ),
    (
        "the key attribute",
        {
            "UpdateExpression": "SET #k = :v",
            "ExpressionAttributeNames": {"#k": "pk"},
            "ExpressionAttributeValues": {":v": {"S": "x"}},
        },
        "One or more parameter values were invalid: Cannot update attribute pk. "
        "This attribute is part of the key",
    ),
    (
        "a syntax error",
        {"UpdateExpression": "SET = :v", "ExpressionAttributeValues": {":v": _n(1)}},
        'Invalid UpdateExpression: Syntax error; token: "=", near: "SET = :v"',
    ),
    (
        "redundant parentheses in the condition",
        {
            "UpdateExpression": "SET a = :v",
            "ConditionExpression": "((a = :v))",
            "ExpressionAttributeValues": {":v": _n(1)},
        },
        "Invalid ConditionExpression: The expression has redundant parentheses;",
    ),
    (
        "a value the expressions do not use",
        {"UpdateExpression": "SET a = :v", "ExpressionAttributeValues": {":v": _n(1), ":u": _n(2)}},
        "1 validation error detected: Value provided in ExpressionAttributeValues unused in "
        "expressions: keys: {:u}",
    ),
]


@pytest.mark.parametrize(("case", "params", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_expressions_raise_motos_validation_errors(
    dynamodb: Any, table: str, case: str, params: dict[str, Any], message: str
) -> None:
    """Given an invalid UpdateItem, when it is sent three times (nothing about a
    failed expression is remembered), then each time it fails with moto's
    ValidationException and message, and the item is unchanged."""
    dynamodb.put_item(TableName=table, Item={**_key("k"), "a": _n(0)})
    for _ in range(3):
        assert _validation_error(dynamodb, TableName=table, Key=_key("k"), **params) == message
    assert _item(dynamodb, table, "k") == {**_key("k"), "a": _n(0)}


def test_remembered_checks_follow_the_names_map_and_the_table_key(
    dynamodb: Any, table: str
) -> None:
    """Given an UpdateExpression text that passed its checks, when it is sent again
    with a names map that makes two paths overlap, or that names a key attribute,
    or to a table whose key it updates, then moto's error is raised each time."""
    update = "SET #a = :v, #b = :w"
    values = {":v": _n(1), ":w": _n(2)}
    ok = {
        "TableName": table,
        "Key": _key("k"),
        "UpdateExpression": update,
        "ExpressionAttributeValues": values,
    }
    assert _outcome(dynamodb, **ok, ExpressionAttributeNames={"#a": "x", "#b": "y"}) == ("ok", None)
    overlap = _validation_error(dynamodb, **ok, ExpressionAttributeNames={"#a": "x", "#b": "x"})
    assert overlap == _OVERLAP + "path one: [x], path two: [x]"
    key = _validation_error(dynamodb, **ok, ExpressionAttributeNames={"#a": "x", "#b": "pk"})
    assert key.startswith("One or more parameter values were invalid: Cannot update attribute pk.")
    assert _outcome(dynamodb, **ok, ExpressionAttributeNames={"#a": "x", "#b": "y"}) == ("ok", None)

    other = _create_table(dynamodb, f"ddb-{uuid.uuid4().hex[:12]}", key="x")
    try:
        message = _validation_error(
            dynamodb,
            TableName=other,
            Key={"x": {"S": "k"}},
            UpdateExpression=update,
            ExpressionAttributeNames={"#a": "x", "#b": "y"},
            ExpressionAttributeValues=values,
        )
        assert message.startswith(
            "One or more parameter values were invalid: Cannot update attribute x."
        )
    finally:
        dynamodb.delete_table(TableName=other)


# --- (e) the same answers as stock moto --------------------------------------------------------
def _script(table: str) -> Iterator[dict[str, Any]]:
    """UpdateItem requests covering Dispatch's expressions and moto's features, each
    expression text repeated with other values and names, errors included."""
    error = ErrorInfo(type="RuntimeError", message="nope")
    for i in range(4):
        envelope = Envelope(id=f"t{i % 2}", task="demo.add")
        yield state.claim_params(table, envelope, message_id=f"m{i}", now=NOW + i, timeout_s=1)
        yield state.claim_params(table, envelope, message_id=f"m{i}", now=NOW + 40 + i, timeout_s=1)
        yield state.retrying_params(
            table,
            envelope.id,
            message_id=f"m{i}",
            now=NOW + 41 + i,
            error=error,
            next_attempt_at=NOW + 50,
        )
        yield state.retrying_params(
            table,
            envelope.id,
            message_id=f"m{i}",
            now=NOW + 41,
            error=error,
            next_attempt_at=NOW,
            refund_attempt=True,
        )
        yield state.released_params(
            table, envelope.id, message_id=f"m{i}", now=NOW + 42, first_attempt=i == 0
        )
        yield state.dead_params(
            table, envelope.id, message_id=f"m{i}", now=NOW + 43, error=error, reason="max"
        )
        yield state.succeeded_params(
            table, envelope.id, message_id=f"m{i}", now=NOW + 44, result=[i]
        )
        yield state.succeeded_params(
            table, envelope.id, message_id=f"m{i}", now=NOW + 44, result="x" * 5000
        )
        yield state.rejected_params(table, f"r{i % 2}", None, now=NOW, reason="bad envelope")
        yield state.sent_params(table, f"t{i % 2}")
    for i in range(3):
        names = {"#a": ["x", "y", "z"][i], "#b": ["y", "z", "x"][i]}
        for return_values in ("NONE", "ALL_OLD", "ALL_NEW", "UPDATED_OLD", "UPDATED_NEW"):
            yield {
                "TableName": table,
                "Key": _key(f"g{i % 2}"),
                "UpdateExpression": (
                    "SET #a = if_not_exists(#a, :zero) + :k, #b = :v REMOVE gone ADD c :k"
                ),
                "ConditionExpression": "attribute_not_exists(#b) OR #b <> :never",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {
                    ":zero": _n(0),
                    ":k": _n(i + 1),
                    ":v": {"S": f"v{i}"},
                    ":never": {"S": "-"},
                },
                "ReturnValues": return_values,
            }
        yield {
            "TableName": table,
            "Key": _key("g0"),
            "UpdateExpression": "SET l = list_append(if_not_exists(l, :empty), :v), m.#k = :v",
            "ExpressionAttributeNames": {"#k": f"k{i}"},
            "ExpressionAttributeValues": {":empty": {"L": []}, ":v": {"L": [_n(i)]}},
        }
        yield {
            "TableName": table,
            "Key": _key("g0"),
            "UpdateExpression": "SET m = if_not_exists(m, :m), tags = :t",
            "ExpressionAttributeValues": {":m": {"M": {}}, ":t": {"SS": ["a", f"b{i}"]}},
            "ReturnValues": "UPDATED_NEW",
        }
        yield {
            "TableName": table,
            "Key": _key("g0"),
            "UpdateExpression": "ADD tags :t DELETE tags :d",
            "ExpressionAttributeValues": {":t": {"SS": [f"c{i}"]}, ":d": {"SS": ["a"]}},
        }
        yield {
            "TableName": table,
            "Key": _key("g1"),
            "UpdateExpression": "SET #v = :v",
            "ConditionExpression": "size(#v) < :n AND (begins_with(#b, :p) OR contains(#b, :p))",
            "ExpressionAttributeNames": {"#v": "x", "#b": "y"},
            "ExpressionAttributeValues": {":v": {"S": "abc" * i}, ":n": _n(5), ":p": {"S": "v"}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        yield {
            "TableName": table,
            "Key": _key("g1"),
            "UpdateExpression": "SET n = n - :k",
            "ConditionExpression": "n BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":k": _n(1), ":lo": _n(0), ":hi": _n(100)},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    for _, params, _ in INVALID:
        yield {"TableName": table, "Key": _key("g0"), **params}


@pytest.fixture(scope="module")
def stock_aws() -> Iterator[LocalAWS]:
    """A second emulator: moto 5.2.5 as released, for side-by-side answers."""
    with LocalAWS.start(patch_moto=False) as aws:
        yield aws


def test_same_answers_and_items_as_stock_moto(
    dynamodb: Any, table: str, stock_aws: LocalAWS
) -> None:
    """Given the same script of UpdateItem requests (Dispatch's state and throttle
    expressions, moto's update features, every ReturnValues, passing and failing
    conditions, invalid expressions), when it runs on the patched emulator and on
    stock moto 5.2.5, then every answer (attributes, error code, message, old item)
    and every item left in the table are the same."""
    stock = stock_aws.client("dynamodb", max_pool_connections=32)
    _create_table(stock, table)
    try:
        patched_outcomes = [_outcome(dynamodb, **params) for params in _script(table)]
        stock_outcomes = [_outcome(stock, **params) for params in _script(table)]
        assert len(patched_outcomes) >= 80
        kinds = {outcome[:2] for outcome in patched_outcomes if outcome[0] == "error"}
        assert {
            ("error", "ConditionalCheckFailedException"),
            ("error", "ValidationException"),
        } <= kinds
        for n, (patched, expected) in enumerate(zip(patched_outcomes, stock_outcomes, strict=True)):
            assert patched == expected, f"request {n} differs"
        assert _scan(dynamodb, table) == _scan(stock, table)
    finally:
        stock.delete_table(TableName=table)


_CONDITIONS = [
    "attribute_not_exists(pk)",
    "attribute_exists(#s) AND #s IN (:a, :b)",
    "NOT (#s = :a) OR n BETWEEN :lo AND :hi",
    "size(l) > :lo AND l[1] = :one AND m.#k.deep <> :a",
    "begins_with(#s, :a) OR contains(tags, :b) OR attribute_type(n, :type)",
    "(#s = :a OR #s = :b) AND (n < :hi)",
]


def _other_calls(table: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """PutItem, DeleteItem and Scan requests whose conditions and filters reuse texts."""
    for i in range(6):
        item = {
            **_key(f"c{i % 3}"),
            "status": {"S": ["queued", "running", "dead"][i % 3]},
            "n": _n(i),
            "l": {"L": [_n(0), _n(1), _n(i)]},
            "m": {"M": {"inner": {"M": {"deep": {"S": f"d{i}"}}}}},
            "tags": {"SS": ["queued", f"t{i}"]},
        }
        for n, condition in enumerate(_CONDITIONS):
            names = {"#s": "status", "#k": "inner"}
            values = {
                ":a": {"S": ["queued", "running"][(i + n) % 2]},
                ":b": {"S": "dead"},
                ":lo": _n(i % 2),
                ":hi": _n(3 + i),
                ":one": _n(1),
                ":type": {"S": ["N", "S"][i % 2]},
            }
            used_names = {k: v for k, v in names.items() if k in condition}
            used_values = {k: v for k, v in values.items() if k in condition}
            optional = {"ExpressionAttributeNames": used_names} if used_names else {}
            if used_values:
                optional["ExpressionAttributeValues"] = used_values
            yield "scan", {"TableName": table, "FilterExpression": condition, **optional}
            yield (
                "put_item",
                {
                    "TableName": table,
                    "Item": item,
                    "ConditionExpression": condition,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    **optional,
                },
            )
            yield (
                "delete_item",
                {
                    "TableName": table,
                    "Key": _key(f"c{(i + 1) % 3}"),
                    "ConditionExpression": condition,
                    "ReturnValues": "ALL_OLD",
                    **optional,
                },
            )
    yield "put_item", {"TableName": table, "Item": _key("x"), "ConditionExpression": "#u = :v"}


def _call(client: Any, operation: str, params: dict[str, Any]) -> Outcome:
    try:
        answer = getattr(client, operation)(**params)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return ("error", error.get("Code"), error.get("Message"), exc.response.get("Item"))
    if operation == "scan":
        items = sorted(answer["Items"], key=lambda item: json.dumps(item, sort_keys=True))
        return ("ok", items, answer["Count"], answer["ScannedCount"])
    return ("ok", answer.get("Attributes"))


def test_conditions_and_filters_of_other_calls_match_stock_moto(
    dynamodb: Any, table: str, stock_aws: LocalAWS
) -> None:
    """Given PutItem and DeleteItem conditions and Scan filters (the other users of
    the condition parser), each text sent with other values, when they run on the
    patched emulator and on stock moto 5.2.5, then every answer and the table agree."""
    stock = stock_aws.client("dynamodb", max_pool_connections=32)
    _create_table(stock, table)
    try:
        patched = [_call(dynamodb, op, params) for op, params in _other_calls(table)]
        expected = [_call(stock, op, params) for op, params in _other_calls(table)]
        assert {outcome[0] for outcome in patched} == {"ok", "error"}
        for n, (answer, reference) in enumerate(zip(patched, expected, strict=True)):
            assert answer == reference, f"request {n} differs"
        assert _scan(dynamodb, table) == _scan(stock, table)
    finally:
        stock.delete_table(TableName=table)


def _scan(client: Any, table: str) -> list[dict[str, Any]]:
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


# --- (f) concurrency ----------------------------------------------------------------------------
def _in_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run work(0..n-1) in n threads started together; the exceptions they raised."""
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_concurrent_updates_of_one_item_lose_nothing(dynamodb: Any, table: str) -> None:
    """Given 16 threads each sending 40 UpdateItems with one expression text to one
    item (SET n = if_not_exists(n, :zero) + :one, ADD a :one, each thread also
    counting under its own name), when they all finish, then every counter is exact.
    (Stock moto 5.2.5 loses a few increments per thousand.)"""
    threads, rounds = 16, 40

    def work(i: int) -> None:
        for _ in range(rounds):
            dynamodb.update_item(
                TableName=table,
                Key=_key("counter"),
                UpdateExpression=(
                    "SET n = if_not_exists(n, :zero) + :one, "
                    "#mine = if_not_exists(#mine, :zero) + :one ADD a :one"
                ),
                ExpressionAttributeNames={"#mine": f"thread_{i}"},
                ExpressionAttributeValues={":zero": _n(0), ":one": _n(1)},
            )

    assert _in_threads(threads, work) == []
    item = _item(dynamodb, table, "counter")
    assert item["n"] == item["a"] == _n(threads * rounds)
    assert {name: value for name, value in item.items() if name.startswith("thread_")} == {
        f"thread_{i}": _n(rounds) for i in range(threads)
    }


def test_concurrent_updates_with_their_own_names_and_values_do_not_mix(
    dynamodb: Any, table: str
) -> None:
    """Given 12 threads sending one expression text to their own items with their
    own names and values (and a condition that holds only for their own value),
    when they all finish, then each item holds exactly its thread's attributes."""
    threads, rounds = 12, 30
    update = "SET #owner = :me, #count = if_not_exists(#count, :zero) + :one"
    condition = "attribute_not_exists(#owner) OR #owner = :me"

    def work(i: int) -> None:
        for _ in range(rounds):
            dynamodb.update_item(
                TableName=table,
                Key=_key(f"own-{i}"),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#owner": f"owner_{i}", "#count": f"count_{i}"},
                ExpressionAttributeValues={
                    ":me": {"S": f"thread-{i}"},
                    ":zero": _n(0),
                    ":one": _n(1),
                },
            )

    assert _in_threads(threads, work) == []
    for i in range(threads):
        assert _item(dynamodb, table, f"own-{i}") == {
            **_key(f"own-{i}"),
            f"owner_{i}": {"S": f"thread-{i}"},
            f"count_{i}": _n(rounds),
        }


def test_concurrent_claims_of_one_task_let_exactly_one_win(dynamodb: Any, table: str) -> None:
    """Given 12 deliveries of one task claiming it at once (the dispatcher's claim),
    for each of 10 tasks, then exactly one claim per task succeeds and every other
    one fails its condition, returning the winner's record."""
    deliveries = 12
    for task in range(10):
        envelope = Envelope(id=f"race-{task}", task="demo.add")
        outcomes: list[Outcome] = [()] * deliveries

        def work(i: int, envelope: Envelope = envelope, outcomes: list[Outcome] = outcomes) -> None:
            params = state.claim_params(table, envelope, message_id=f"m-{i}", now=NOW, timeout_s=30)
            outcomes[i] = _outcome(dynamodb, **params)

        assert _in_threads(deliveries, work) == []
        winners = [i for i, outcome in enumerate(outcomes) if outcome[0] == "ok"]
        assert len(winners) == 1, outcomes
        stored = _item(dynamodb, table, f"task#race-{task}")
        assert stored["message_id"] == {"S": f"m-{winners[0]}"}
        assert stored["attempts"] == _n(1)
        for i, outcome in enumerate(outcomes):
            if i != winners[0]:
                assert outcome == (
                    "error",
                    "ConditionalCheckFailedException",
                    "The conditional request failed",
                    stored,
                )


# --- (g) the patches themselves -----------------------------------------------------------------
_COPY_CHECK = """
import copy, json, sys
from dispatch.local import moto_dynamodb_patches as patches
patches.apply()
from moto.dynamodb.parsing.ast_nodes import Node
from moto.dynamodb.parsing.expressions import UpdateExpressionParser

def shape(node, parent=None):
    if not isinstance(node, Node):
        return repr(node)
    assert node.parent is parent
    extra = sorted(set(vars(node)) - {"children", "parent", "_dispatch_source"})
    children = [shape(c, node) for c in node.children or []]
    return [type(node).__name__, [(k, repr(getattr(node, k))) for k in extra], children]

def nodes(node):
    if isinstance(node, Node):
        yield id(node)
        for child in node.children or []:
            yield from nodes(child)

for text in json.loads(sys.argv[1]):
    tree = UpdateExpressionParser.make(text)
    copied = patches.copy_tree(tree)
    assert shape(copied) == shape(copy.deepcopy(tree)) == shape(tree), text
    again = UpdateExpressionParser.make(text)
    assert shape(again) == shape(tree), text
    assert not set(nodes(copied)) & set(nodes(tree)), text
    assert not set(nodes(again)) & set(nodes(tree)), text
print("ok")
"""


def test_tree_copy_matches_deepcopy() -> None:
    """Given the UpdateExpressions Dispatch and this module send, when parsed trees
    are copied by the patches (the validator's copy, and the copy handed out per
    parse), then each copy has deepcopy's shape: classes, attributes, children and
    parent links (checked in a child process, so this one's moto stays unpatched)."""
    envelope = Envelope(id="x", task="t")
    error = ErrorInfo(type="E", message="m")
    texts = [
        state.claim_params("t", envelope, message_id="m", now=NOW, timeout_s=1)["UpdateExpression"],
        state.succeeded_params("t", "x", message_id="m", now=NOW, result=1)["UpdateExpression"],
        state.retrying_params("t", "x", message_id="m", now=NOW, error=error, next_attempt_at=NOW)[
            "UpdateExpression"
        ],
        "SET #tokens = :tokens, #updated = :now, #rate = :rate, #capacity = :capacity, "
        "expires_at = :ttl",
        "SET held = if_not_exists(held, :zero) + :k, #h.#me = :entry, expires_at = :ttl",
        "SET held = held - :n REMOVE #h.#other",
        "REMOVE a, #m.#d, l[0], l[2]",
        "ADD #tokens :n, tags :s DELETE tags :d",
        "SET l = list_append(if_not_exists(l, :empty), :v), m.#k[3].x = :v - :w",
    ]
    result = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", _COPY_CHECK, json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


_ANSWER_CHECK = """
import json, sys
from moto.core.serialize import XFormedAttributePicker, get_serializer_class
from moto.core.utils import get_service_model

def body(operation, result):
    model = get_service_model("dynamodb").operation_model(operation)
    serializer = get_serializer_class("dynamodb", "json")(
        model, value_picker=XFormedAttributePicker(response_transformers={})
    )
    return serializer.serialize(result)["body"]

answers = json.loads(sys.argv[1])
stock = [body(operation, result) for operation, result in answers]
from dispatch.local import moto_dynamodb_patches
moto_dynamodb_patches.apply()
patched = [body(operation, result) for operation, result in answers]
for (operation, result), before, after in zip(answers, stock, patched):
    assert before == after, (operation, result, before, after)
plain = [moto_dynamodb_patches.plain_attribute_value(v) for v in json.loads(sys.argv[2])]
print(json.dumps([p is not None for p in plain]))
"""


def test_answers_are_serialised_byte_for_byte_as_stock_moto() -> None:
    """Given DynamoDB answers holding every kind of attribute value (plain ones, nested
    maps and lists, binary values, empty sets, odd shapes moto's walk handles its own
    way), when serialised by stock moto and then with the patches applied, then the
    JSON bodies are identical byte for byte, and the direct path is taken for exactly
    the plain values (checked in a child process, so this one's moto stays unpatched)."""
    item = {
        "pk": {"S": "task#1"},
        "n": {"N": "12.5"},
        "empty": {"S": ""},
        "unicode": {"S": "caf\u00e9 \u2603"},
        "yes": {"BOOL": True},
        "no": {"BOOL": False},
        "nothing": {"NULL": True},
        "tags": {"SS": ["a", "b"]},
        "nums": {"NS": ["1", "2.5"]},
        "none": {"SS": []},
        "map": {"M": {"x": {"N": "1"}, "y": {"L": [{"S": "z"}, {"M": {}}]}}},
        "list": {"L": [{"N": "1"}, {"BOOL": False}, {"L": []}]},
        "blob": {"B": "aGVsbG8="},
        "blobs": {"BS": ["aGVsbG8="]},
        "nested_blob": {"M": {"b": {"B": "aGVsbG8="}}},
        "two": {"S": "a", "N": "1"},
        "null_s": {"S": None},
        "lower": {"s": "x"},
        "int_n": {"N": 5},
    }
    answers = [
        ["GetItem", {"Item": item}],
        ["UpdateItem", {"Attributes": item}],
        ["Query", {"Items": [item, {"pk": {"S": "task#2"}}], "Count": 2, "ScannedCount": 2}],
        ["BatchWriteItem", {"UnprocessedItems": {}}],
        ["PutItem", {}],
    ]
    values = [item[name] for name in item]
    result = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", _ANSWER_CHECK, json.dumps(answers), json.dumps(values)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    direct = dict(zip(item, json.loads(result.stdout), strict=True))
    walked = {"blob", "blobs", "nested_blob", "two", "null_s", "lower", "int_n"}
    assert {name for name, fast in direct.items() if not fast} == walked


def test_dynamodb_patches_refuse_another_moto_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a moto version other than the pinned one, then apply() refuses, naming both."""
    monkeypatch.setattr(moto, "__version__", "5.3.0")
    with pytest.raises(RuntimeError, match=r"5\.2\.5.*5\.3\.0"):
        moto_dynamodb_patches.apply()
