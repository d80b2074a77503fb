"""The embedded local AWS's Query on an index answers as stock moto does, without its table sort.

dispatch.local.moto_dynamodb_patches (5.) skips the whole-table sort moto makes before
a Query on an index. These tests send the same Queries (both directions, limits,
pages through ExclusiveStartKey, ties in the sort key, a sparse index, a Query on the
table itself) and a paginated Scan to the patched emulator and to stock moto 5.2.5,
side by side, and compare every answer: items in order, counts, continuation keys.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dispatch.local.emulator import LocalAWS


@pytest.fixture(scope="module")
def stock_aws() -> Iterator[LocalAWS]:
    """A second emulator: moto 5.2.5 as released."""
    with LocalAWS.start(patch_moto=False) as aws:
        yield aws


def _table(client: Any, name: str) -> None:
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "status", "listed")
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-status",
                "KeySchema": [
                    {"AttributeName": "status", "KeyType": "HASH"},
                    {"AttributeName": "listed", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["n"]},
            }
        ],
    )


def _items() -> list[dict[str, Any]]:
    """300 items in random key order: some indexed, some not, ties in ``listed``."""
    rng = random.Random(7)
    items = []
    for n in rng.sample(range(300), 300):
        status = ["dead", "running", "succeeded"][n % 3]
        item = {"pk": {"S": f"task#{uuid.UUID(int=rng.getrandbits(128)).hex}"}}
        item |= {"status": {"S": status}, "n": {"N": str(n)}}
        if status != "succeeded":
            item["listed"] = {"S": f"{status}#{1_800_000_000 + n // 4:014.3f}"}
        items.append(item)
    return items


def _queries(table: str) -> Iterator[dict[str, Any]]:
    for status in ("dead", "running", "succeeded"):
        for forward in (True, False):
            for limit in (1, 7, 200):
                yield {
                    "TableName": table,
                    "IndexName": "by-status",
                    "KeyConditionExpression": "#s = :s AND listed BETWEEN :lo AND :hi",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {
                        ":s": {"S": status},
                        ":lo": {"S": f"{status}#1800000010"},
                        ":hi": {"S": f"{status}#1800000060"},
                    },
                    "ScanIndexForward": forward,
                    "Limit": limit,
                }
    yield {
        "TableName": table,
        "KeyConditionExpression": "pk = :k",
        "ExpressionAttributeValues": {":k": {"S": "task#none"}},
    }


def _pages(client: Any, operation: str, params: dict[str, Any]) -> list[Any]:
    """Every page of a Query or Scan: items in order, counts, continuation keys."""
    pages = []
    params = dict(params)
    for _ in range(400):
        answer = getattr(client, operation)(**params)
        last = answer.get("LastEvaluatedKey")
        pages.append((answer["Items"], answer["Count"], answer["ScannedCount"], last))
        if not last:
            return pages
        params["ExclusiveStartKey"] = last
    pytest.fail(f"{operation} did not end")


def test_index_queries_and_scans_answer_as_stock_moto(
    local_aws: LocalAWS, stock_aws: LocalAWS
) -> None:
    """Given the same table on both emulators, when the same Queries on the index (every
    page) and a paginated Scan run on each, then every page is the same, in order."""
    patched, stock = local_aws.client("dynamodb"), stock_aws.client("dynamodb")
    table = f"idx-{uuid.uuid4().hex[:12]}"
    for client in (patched, stock):
        _table(client, table)
        for item in _items():
            client.put_item(TableName=table, Item=item)
    try:
        answers = 0
        for params in _queries(table):
            assert _pages(patched, "query", params) == _pages(stock, "query", params), params
            answers += 1
        scan = {"TableName": table, "Limit": 37}
        assert _pages(patched, "scan", scan) == _pages(stock, "scan", scan)
        newest = patched.query(**next(q for q in _queries(table) if not q["ScanIndexForward"]))
        assert newest["Items"][0]["listed"]["S"].startswith("dead#1800000059")
        assert answers == 19
    finally:
        for client in (patched, stock):
            client.delete_table(TableName=table)
