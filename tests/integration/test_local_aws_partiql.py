"""The embedded local AWS's BatchExecuteStatement over real HTTP: AWS's answers.

dispatch.local.partiql replaces moto's BatchExecuteStatement. These tests send
plain boto3 requests with the statement shapes Dispatch uses (a compare-and-set
UPDATE, a SELECT by key) and check AWS's documented answers: per-statement
ConditionalCheckFailed with the old item, DuplicateItem, ResourceNotFound and
ValidationError, request-level refusals, and atomicity under concurrent batches.
One test shows stock moto 5.2.5 reporting a failed condition as a success.
"""

# ruff: noqa: S608 - the statements are PartiQL for the emulator, built from test table names
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from dispatch.local.emulator import LocalAWS

ALL_OLD = "ALL_OLD"
CLAIM = 'UPDATE "{t}" SET "status"=? SET "owner"=? WHERE "pk"=? AND "status"=?'


@pytest.fixture(scope="module")
def dynamodb(local_aws: LocalAWS) -> Any:
    """A boto3 DynamoDB client on the session's (patched) emulator."""
    return local_aws.client("dynamodb", max_pool_connections=32, parameter_validation=False)


def _create_table(client: Any, name: str) -> str:
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture
def table(dynamodb: Any) -> Iterator[str]:
    """A fresh table keyed by the string ``pk``, deleted afterwards."""
    name = _create_table(dynamodb, f"partiql-{uuid.uuid4().hex[:12]}")
    yield name
    dynamodb.delete_table(TableName=name)


def _s(text: str) -> dict[str, str]:
    return {"S": text}


def _n(text: str) -> dict[str, str]:
    return {"N": text}


def _put(client: Any, table: str, pk: str, **attrs: dict[str, Any]) -> dict[str, Any]:
    item = {"pk": _s(pk), **attrs}
    client.put_item(TableName=table, Item=item)
    return item


def _item(client: Any, table: str, pk: str) -> dict[str, Any] | None:
    answer = client.get_item(TableName=table, Key={"pk": _s(pk)}, ConsistentRead=True)
    return answer.get("Item")


def _statement(text: str, *parameters: dict[str, Any], all_old: bool = True) -> dict[str, Any]:
    statement: dict[str, Any] = {"Statement": text, "Parameters": list(parameters)}
    if all_old:
        statement["ReturnValuesOnConditionCheckFailure"] = ALL_OLD
    return statement


def _batch(client: Any, *statements: dict[str, Any]) -> list[dict[str, Any]]:
    return list(client.batch_execute_statement(Statements=list(statements))["Responses"])


def _refused(client: Any, statements: list[dict[str, Any]]) -> str:
    with pytest.raises(ClientError) as caught:
        client.batch_execute_statement(Statements=statements)
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(error["Message"])


def _claim(table: str, pk: str, *, expected: str, owner: str) -> dict[str, Any]:
    return _statement(CLAIM.format(t=table), _s("running"), _s(owner), _s(pk), _s(expected))


# --- writes ------------------------------------------------------------------------------------
def test_claim_succeeds_and_get_item_sees_it(dynamodb: Any, table: str) -> None:
    """Given a queued item, when a batch claims it (CAS on status), then the statement
    answers just its table name and GetItem sees the new attributes."""
    _put(dynamodb, table, "t1", status=_s("queued"), attempt=_n("0"))

    responses = _batch(dynamodb, _claim(table, "t1", expected="queued", owner="w1"))

    assert responses == [{"TableName": table}]
    assert _item(dynamodb, table, "t1") == {
        "pk": _s("t1"),
        "status": _s("running"),
        "owner": _s("w1"),
        "attempt": _n("0"),
    }


def test_failed_condition_returns_the_old_item_when_asked(dynamodb: Any, table: str) -> None:
    """Given a running item, when a claim expecting 'queued' runs, then it fails with
    ConditionalCheckFailed carrying the old item (ALL_OLD), or without it (not asked),
    and the item is unchanged."""
    old = _put(dynamodb, table, "t1", status=_s("running"), owner=_s("w0"))
    claim = _claim(table, "t1", expected="queued", owner="w1")
    without_item = {**claim}
    del without_item["ReturnValuesOnConditionCheckFailure"]

    asked, not_asked = _batch(dynamodb, claim), _batch(dynamodb, without_item)

    failed = {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
    assert asked == [{"TableName": table, "Error": {**failed, "Item": old}}]
    assert not_asked == [{"TableName": table, "Error": failed}]
    assert _item(dynamodb, table, "t1") == old


def test_update_of_a_missing_item_fails_and_creates_nothing(dynamodb: Any, table: str) -> None:
    """Given no item, when an UPDATE addresses it, then it fails with
    ConditionalCheckFailed (no Item, even with ALL_OLD) and no item appears."""
    statement = _statement(f'UPDATE "{table}" SET "a"=? WHERE "pk"=?', _n("1"), _s("ghost"))

    responses = _batch(dynamodb, statement)

    assert responses == [
        {
            "TableName": table,
            "Error": {
                "Code": "ConditionalCheckFailed",
                "Message": "The conditional request failed",
            },
        }
    ]
    assert _item(dynamodb, table, "ghost") is None


def test_is_missing_and_is_not_missing(dynamodb: Any, table: str) -> None:
    """Given an item with 'lease' and without 'owner', then IS MISSING holds only for
    the absent attribute and IS NOT MISSING only for the present one."""
    _put(dynamodb, table, "t1", lease=_n("5"))
    text = f'UPDATE "{table}" SET "hit"=? WHERE "pk"=? AND "{{name}}" IS {{test}}'

    def outcome(name: str, test: str) -> str:
        statement = _statement(text.format(name=name, test=test), _s(name + test), _s("t1"))
        (response,) = _batch(dynamodb, statement)
        return str(response.get("Error", {}).get("Code", "ok"))

    assert outcome("owner", "MISSING") == "ok"
    assert outcome("lease", "MISSING") == "ConditionalCheckFailed"
    assert outcome("lease", "NOT MISSING") == "ok"
    assert outcome("owner", "NOT missing") == "ConditionalCheckFailed"


def test_number_comparisons_are_decimal(dynamodb: Any, table: str) -> None:
    """Given a lease deadline 1800000000.123456, when statements compare it with values
    one millionth apart, then < <= > >= = <> answer exactly (decimal, not float), and a
    comparison with a string or a missing attribute is false."""
    _put(dynamodb, table, "t1", deadline=_n("1800000000.123456"), name=_s("b"))

    def holds(name: str, op: str, value: dict[str, str]) -> bool:
        text = f'UPDATE "{table}" SET "seen"=? WHERE "pk"=? AND "{name}" {op} ?'
        (response,) = _batch(dynamodb, _statement(text, _s("x"), _s("t1"), value))
        return "Error" not in response

    later, same = _n("1800000000.123457"), _n("1800000000.1234560")
    assert holds("deadline", "<", later)
    assert not holds("deadline", ">", later)
    assert holds("deadline", "<=", same)
    assert not holds("deadline", "<", same)
    assert holds("deadline", "=", same)
    assert holds("deadline", "<>", later)
    assert not holds("deadline", "<", _s("9"))  # another type: false, not an error
    assert not holds("missing", "<", later)
    assert holds("name", "<", _s("c"))
    assert not holds("name", ">=", _s("c"))


def test_set_and_remove_in_any_order_and_comma_lists(dynamodb: Any, table: str) -> None:
    """Given an item, when one UPDATE mixes SET and REMOVE clauses, repeated and as a
    comma list, with a literal value, then every attribute is set or removed."""
    _put(dynamodb, table, "t1", a=_n("1"), b=_n("2"), c=_n("3"), d=_n("4"))
    text = f"""update "{table}" REMOVE "a" set "x"=?, "y"='lit' REMOVE "b", c SET z = 7
               where pk = ? and "d" = ?"""

    responses = _batch(dynamodb, _statement(text, _s("X"), _s("t1"), _n("4")))

    assert responses == [{"TableName": table}]
    assert _item(dynamodb, table, "t1") == {
        "pk": _s("t1"),
        "d": _n("4"),
        "x": _s("X"),
        "y": _s("lit"),
        "z": _n("7"),
    }


def test_set_of_the_key_is_refused(dynamodb: Any, table: str) -> None:
    """Given an item, when an UPDATE sets the key attribute, then that statement gets a
    ValidationError and the item is unchanged."""
    old = _put(dynamodb, table, "t1", a=_n("1"))
    text = f'UPDATE "{table}" SET "pk"=? WHERE "pk"=?'

    (response,) = _batch(dynamodb, _statement(text, _s("t2"), _s("t1")))

    assert response["Error"]["Code"] == "ValidationError"
    assert "key" in response["Error"]["Message"]
    assert _item(dynamodb, table, "t1") == old


def test_a_where_without_the_key_equality_is_refused(dynamodb: Any, table: str) -> None:
    """Given a WHERE that compares the key with < instead of =, then ValidationError."""
    (response,) = _batch(
        dynamodb, _statement(f'UPDATE "{table}" SET "a"=? WHERE "pk" < ?', _n("1"), _s("t1"))
    )

    assert response["Error"] == {
        "Code": "ValidationError",
        "Message": "Where clause does not contain a mandatory equality on all key attributes",
    }


def test_duplicate_item_in_one_batch(dynamodb: Any, table: str) -> None:
    """Given two statements on one item in one batch, then the first is applied and
    the second answers DuplicateItem and is not applied."""
    _put(dynamodb, table, "t1", status=_s("queued"))
    first = _claim(table, "t1", expected="queued", owner="w1")
    second = _statement(f'UPDATE "{table}" SET "owner"=? WHERE "pk"=?', _s("w2"), _s("t1"))

    responses = _batch(dynamodb, first, second)

    assert responses[0] == {"TableName": table}
    assert responses[1]["Error"]["Code"] == "DuplicateItem"
    assert _item(dynamodb, table, "t1") == {
        "pk": _s("t1"),
        "status": _s("running"),
        "owner": _s("w1"),
    }


def test_statements_are_independent_and_in_order(dynamodb: Any, table: str) -> None:
    """Given three items of which one fails its condition, then the other two are
    applied and each answer sits at its statement's position."""
    for pk in ("a", "b", "c"):
        _put(dynamodb, table, pk, status=_s("running" if pk == "b" else "queued"))

    responses = _batch(
        dynamodb, *(_claim(table, pk, expected="queued", owner="w") for pk in ("a", "b", "c"))
    )

    assert [r.get("Error", {}).get("Code") for r in responses] == [
        None,
        "ConditionalCheckFailed",
        None,
    ]
    assert [(_item(dynamodb, table, pk) or {})["status"]["S"] for pk in "abc"] == ["running"] * 3


def test_table_with_a_range_key(dynamodb: Any) -> None:
    """Given a table keyed by pk and a numeric sort key, then an UPDATE names its item
    by both keys, and one that leaves out the sort key is a ValidationError."""
    name = f"partiql-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        dynamodb.put_item(TableName=name, Item={"pk": _s("a"), "sk": _n("1"), "v": _n("0")})
        text = f'UPDATE "{name}" SET "v"=? WHERE "pk"=? AND "sk"=?'

        both, hash_only = _batch(
            dynamodb,
            _statement(text, _n("1"), _s("a"), _n("1.0")),
            _statement(f'UPDATE "{name}" SET "v"=? WHERE "pk"=?', _n("2"), _s("b")),
        )

        assert both == {"TableName": name}
        assert hash_only["Error"]["Code"] == "ValidationError"
        key = {"pk": _s("a"), "sk": _n("1")}
        assert dynamodb.get_item(TableName=name, Key=key)["Item"]["v"] == _n("1")
    finally:
        dynamodb.delete_table(TableName=name)


# --- reads -------------------------------------------------------------------------------------
def test_select_by_key(dynamodb: Any, table: str) -> None:
    """Given one item, when a batch SELECTs it, a missing item, and a projection, then
    the answers are the item, no Item, and the projected attributes."""
    item = _put(dynamodb, table, "t1", a=_n("1"), b=_s("x"))

    responses = _batch(
        dynamodb,
        _statement(f'SELECT * FROM "{table}" WHERE "pk"=?', _s("t1")),
        _statement(f'SELECT * FROM "{table}" WHERE "pk"=?', _s("nope")),
        _statement(f'select "b", "zz" from "{table}" where "pk"=?', _s("t2")),
    )

    assert responses == [
        {"TableName": table, "Item": item},
        {"TableName": table},
        {"TableName": table},
    ]
    (projected,) = _batch(
        dynamodb, _statement(f'SELECT "b", "zz" FROM "{table}" WHERE "pk"=?', _s("t1"))
    )
    assert projected == {"TableName": table, "Item": {"b": _s("x")}}


# --- errors ------------------------------------------------------------------------------------
def test_more_than_25_statements_are_refused_whole(dynamodb: Any, table: str) -> None:
    """Given 26 statements, then the request is refused (HTTP 400) and none applied."""
    statements = [
        _statement(f'UPDATE "{table}" SET "a"=? WHERE "pk"=?', _n("1"), _s(f"k{i}"))
        for i in range(26)
    ]
    _put(dynamodb, table, "k0", a=_n("0"))

    message = _refused(dynamodb, statements)

    assert "less than or equal to 25" in message
    assert _item(dynamodb, table, "k0") == {"pk": _s("k0"), "a": _n("0")}
    assert "greater than or equal to 1" in _refused(dynamodb, [])


def test_mixed_reads_and_writes_are_refused(dynamodb: Any, table: str) -> None:
    """Given a SELECT and an UPDATE in one batch, then the request is refused."""
    message = _refused(
        dynamodb,
        [
            _statement(f'SELECT * FROM "{table}" WHERE "pk"=?', _s("a")),
            _statement(f'UPDATE "{table}" SET "a"=? WHERE "pk"=?', _n("1"), _s("b")),
        ],
    )

    assert "either read statements or write statements" in message


def test_unknown_table_is_resource_not_found(dynamodb: Any, table: str) -> None:
    """Given a statement on a table that does not exist, then ResourceNotFound, and the
    other statements of the batch still run."""
    _put(dynamodb, table, "t1", status=_s("queued"))

    responses = _batch(
        dynamodb,
        _statement('UPDATE "no-such-table" SET "a"=? WHERE "pk"=?', _n("1"), _s("t1")),
        _claim(table, "t1", expected="queued", owner="w1"),
    )

    assert responses[0]["Error"]["Code"] == "ResourceNotFound"
    assert responses[1] == {"TableName": table}


@pytest.mark.parametrize(
    "text",
    [
        'UPDATE "{t}" SET "n" = "n" + ? WHERE "pk"=?',  # arithmetic (stock moto: HTTP 500)
        'UPDATE "{t}" SET "a"=? WHERE "pk"=? RETURNING ALL OLD *',
        'UPDATE "{t}" SET "a"=? WHERE "pk"=? OR "b"=?',
        'DELETE FROM "{t}" WHERE "pk"=?',
        'UPDATE "{t}" SET "m"."x"=? WHERE "pk"=?',
        'UPDATE "{t}" WHERE "pk"=?',
        'UPDATE "{t}" SET "a"=? WHERE "pk"=? AND "b" IS NULL',
        'UPDATE "{t}" SET "a"=? WHERE "pk"=? AND \'unterminated',
        'UPDATE "{t}" SET "a"=?, "a"=? WHERE "pk"=?',
        "",
    ],
)
def test_malformed_statement_is_a_validation_error(dynamodb: Any, table: str, text: str) -> None:
    """Given a statement outside the supported grammar, then that statement answers
    ValidationError (never HTTP 500) and the item is unchanged."""
    old = _put(dynamodb, table, "t1", n=_n("1"))
    parameters = [_n("1"), _s("t1"), _n("1")][: text.count("?")]

    (response,) = _batch(dynamodb, _statement(text.format(t=table), *parameters))

    assert response["Error"]["Code"] == "ValidationError", response
    assert response["Error"]["Message"]
    assert _item(dynamodb, table, "t1") == old


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('UPDATE "{t}" SET "a"=? WHERE "pk"=? AND "n"=?', {"N": "not-a-number"}),
        ('UPDATE "{t}" SET "a"=? WHERE "pk"=? AND "n"=?', {"NS": ["1", "one"]}),
        ('UPDATE "{t}" SET "a"=? WHERE "pk"=? AND "n"=?', {"M": {"x": {}}}),
    ],
)
def test_malformed_parameter_is_a_validation_error(
    dynamodb: Any, table: str, text: str, value: dict[str, Any]
) -> None:
    """Given a parameter that is no valid attribute value, then ValidationError, not 500."""
    old = _put(dynamodb, table, "t1", n=_n("1"))

    (response,) = _batch(dynamodb, _statement(text.format(t=table), _n("2"), _s("t1"), value))

    assert response["Error"]["Code"] == "ValidationError", response
    assert _item(dynamodb, table, "t1") == old


def test_a_value_moto_cannot_store_is_a_validation_error(dynamodb: Any, table: str) -> None:
    """Given a SET of NULL false (refused by DynamoDB), then ValidationError, item unchanged."""
    old = _put(dynamodb, table, "t1", n=_n("1"))
    text = f'UPDATE "{table}" SET "a"=? WHERE "pk"=?'

    (response,) = _batch(dynamodb, _statement(text, {"NULL": False}, _s("t1")))

    assert response["Error"]["Code"] == "ValidationError", response
    assert _item(dynamodb, table, "t1") == old


def test_parameter_count_must_match(dynamodb: Any, table: str) -> None:
    """Given fewer Parameters than '?', then ValidationError."""
    (response,) = _batch(dynamodb, _statement(f'UPDATE "{table}" SET "a"=? WHERE "pk"=?', _s("t1")))

    assert response["Error"]["Code"] == "ValidationError"


# --- atomicity ---------------------------------------------------------------------------------
CAS = 'UPDATE "{t}" SET "n"=? SET "by"=? WHERE "pk"=? AND "n"=?'


def _cas_round(client: Any, table: str, *, threads_n: int) -> list[int]:
    """Each of ``threads_n`` threads reads n, waits for the others, then sends a batch
    with the CAS n -> n + 1; returns the workers whose statement succeeded."""
    barrier = threading.Barrier(threads_n)
    wins: list[int] = []
    failures: list[dict[str, Any]] = []
    lock = threading.Lock()

    def contend(worker: int) -> None:
        seen = int((_item(client, table, "counter") or {})["n"]["N"])
        barrier.wait()
        cas = _statement(
            CAS.format(t=table), _n(str(seen + 1)), _n(str(worker)), _s("counter"), _n(str(seen))
        )
        (response,) = _batch(client, cas)
        with lock:
            if "Error" in response:
                failures.append(response)
            else:
                wins.append(worker)

    threads = [threading.Thread(target=contend, args=(w,)) for w in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(f["Error"]["Code"] == "ConditionalCheckFailed" for f in failures), failures
    assert len(wins) + len(failures) == threads_n
    return wins


def test_concurrent_cas_batches_have_one_winner_per_round(dynamodb: Any, table: str) -> None:
    """Given 12 threads that each read counter n, then send a batch with the CAS
    'n = read value -> read value + 1', then in every round exactly one wins."""
    _put(dynamodb, table, "counter", n=_n("0"))
    for round_ in range(5):
        wins = _cas_round(dynamodb, table, threads_n=12)

        assert len(wins) == 1, (round_, wins)
        assert _item(dynamodb, table, "counter") == {
            "pk": _s("counter"),
            "n": _n(str(round_ + 1)),
            "by": _n(str(wins[0])),
        }


# --- stock moto ----------------------------------------------------------------------------------
def test_stock_moto_reports_a_failed_condition_as_success() -> None:
    """Given stock moto 5.2.5 and a claim whose condition is false, then the statement
    answers success (no Error) though nothing changed, where AWS answers
    ConditionalCheckFailed; and a claim written with two SET clauses answers HTTP 500.
    This is why Dispatch probes an endpoint before relying on BatchExecuteStatement."""
    with LocalAWS.start(patch_moto=False) as stock_aws:
        stock = stock_aws.client("dynamodb", max_pool_connections=32, parameter_validation=False)
        table = _create_table(stock, "stock_partiql")
        old = _put(stock, table, "t1", status=_s("running"))
        comma_claim = _statement(
            f'UPDATE "{table}" SET "status"=?, "owner"=? WHERE "pk"=? AND "status"=?',
            _s("running"),
            _s("w1"),
            _s("t1"),
            _s("queued"),
        )

        responses = _batch(stock, comma_claim)

        assert responses == [{"TableName": table}]  # AWS: Error ConditionalCheckFailed
        assert _item(stock, table, "t1") == old
        with pytest.raises(ClientError) as caught:
            _batch(stock, _claim(table, "t1", expected="queued", owner="w1"))
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
