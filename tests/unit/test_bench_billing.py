"""The benchmark's billing meter: what AWS would bill for DynamoDB's batched statements.

The meter's ``after-call`` handler is fed the parameters and answers a
BatchExecuteStatement gets, as botocore would hand them over.
"""

from __future__ import annotations

from typing import Any

from bench.billing import BillingMeter
from dispatch.core.envelope import Envelope
from dispatch.core.record import ClaimAsk
from dispatch.store import state, statements

NOW = 1_800_000_000.0


def call(meter: BillingMeter, action: str, params: dict[str, Any], answer: dict[str, Any]) -> None:
    context: dict[str, Any] = {}
    meter._remember_params(params=params, context=context)
    meter._bill(event_name=f"after-call.dynamodb.{action}", parsed=answer, context=context)


def claims(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        envelope = Envelope(id=f"t{i}", task="work", enqueued_at=NOW)
        ask = ClaimAsk(
            envelope, message_id=f"m{i}", now=NOW, timeout_s=60, token=state.claim_token(f"r{i}")
        )
        entry = statements.claim_statement("tasks", ask, old=None).entry()
        out.append({k: v for k, v in entry.items() if k != statements.KEY_FIELD})
    return out


def test_each_statement_of_a_batch_is_billed_as_the_write_it_is() -> None:
    """Three claims: one applied, one refused with the old item, one refused for a
    missing item: three writes (a refused conditional write costs at least a unit),
    where one request was counted."""
    meter = BillingMeter()
    records = [state.queued_item(Envelope(id=f"t{i}", task="work"), NOW) for i in range(3)]
    call(
        meter,
        "BatchWriteItem",
        {"RequestItems": {"tasks": [{"PutRequest": {"Item": r}} for r in records]}},
        {},
    )
    answer = {
        "Responses": [
            {"TableName": "tasks"},
            {"Error": {"Code": "ConditionalCheckFailed", "Item": records[1]}},
            {"Error": {"Code": "ConditionalCheckFailed"}},
        ]
    }

    call(meter, "BatchExecuteStatement", {"Statements": claims(3)}, answer)

    usage = meter.snapshot()
    assert usage.calls["dynamodb.BatchExecuteStatement"] == 1
    assert usage.write_units["dynamodb.BatchExecuteStatement"] == 3


def test_a_statement_refused_for_load_is_not_billed() -> None:
    meter = BillingMeter()
    answer = {"Responses": [{"Error": {"Code": "ThrottlingError"}}, {"TableName": "tasks"}]}

    call(meter, "BatchExecuteStatement", {"Statements": claims(2)}, answer)

    assert meter.snapshot().write_units["dynamodb.BatchExecuteStatement"] == 1
