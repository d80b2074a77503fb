"""The join's item and conditional writes (dispatch/store/joins.py), the envelope's
``join`` field, and how groups and chains are built before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest

from dispatch import Chain, InvalidArgumentsError, PartialEnqueueError, TaskMessage, task
from dispatch.core.config import Settings
from dispatch.core.envelope import Envelope, decode
from dispatch.producer.compose import Group
from dispatch.producer.enqueue import Call, Queue, enqueue_plan
from dispatch.store import joins
from dispatch.tasks.registry import Registry

TABLE = "t"


def _item(**extra: Any) -> dict[str, Any]:
    callback = Envelope(id="cb", task="total")
    item = joins.group_item("g1", kind="group", children=["a", "b"], callback=callback, now=5.0)
    return item | extra


def test_counting_a_child_adds_it_to_done_only_if_it_is_not_there_yet() -> None:
    """The success write is ADD to a set, refused for a child already counted, and
    answers with the item after (or, refused, before) it."""
    params = joins.child_counted_params(TABLE, "g1", "a", 7.0)

    assert params["Key"] == {"pk": {"S": "group#g1"}}
    assert params["UpdateExpression"].startswith("ADD done :child DELETE failed :child ")
    assert params["ConditionExpression"] == "attribute_exists(pk) AND NOT contains(done, :id)"
    assert params["ExpressionAttributeValues"][":child"] == {"SS": ["a"]}
    assert params["ExpressionAttributeValues"][":id"] == {"S": "a"}
    assert params["ReturnValues"] == "ALL_NEW"
    assert params["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"


def test_a_dead_child_is_added_to_failed_unless_it_succeeded() -> None:
    params = joins.child_failed_params(TABLE, "g1", "b", 7.0)

    assert params["UpdateExpression"].startswith("ADD failed :child ")
    assert "NOT contains(done, :id)" in params["ConditionExpression"]


def test_the_callback_dies_and_revives_only_from_queued_or_its_own_death() -> None:
    """Neither write can touch a callback that was claimed, finished or cancelled."""
    error = {"type": "DependencyFailed", "message": "m", "traceback": ""}
    dead = joins.callback_dead_params(TABLE, "cb", now=1.0, error=error)
    revive = joins.callback_revive_params(TABLE, "cb", now=2.0)

    for params in (dead, revive):
        assert params["Key"] == {"pk": {"S": "task#cb"}}
        assert params["ConditionExpression"] == (
            "#s = :queued OR (#s = :dead AND dead_reason = :reason)"
        )
        assert params["ExpressionAttributeValues"][":reason"] == {"S": "dependency_failed"}
    assert "dead_reason = :reason" in dead["UpdateExpression"]
    assert "REMOVE dead_reason" in revive["UpdateExpression"]


def test_the_callback_is_marked_sent_once() -> None:
    params = joins.sent_params(TABLE, "g1", 3.0)

    assert params["ConditionExpression"] == (
        "attribute_exists(pk) AND attribute_not_exists(callback_sent_at)"
    )


def test_a_group_is_complete_when_every_child_is_done() -> None:
    """Given the item as DynamoDB returns it, then complete follows the done set, and a
    group's callback gets the list of results while a chain's gets the one result."""
    waiting = joins.GroupState.from_item(_item(done={"SS": ["a"]}))
    complete = joins.GroupState.from_item(_item(done={"SS": ["b", "a"]}))

    assert (waiting.complete, complete.complete) == (False, True)
    assert complete.children == ("a", "b") and complete.sent_at is None
    assert complete.callback_args([1, 2]) == [[1, 2]]
    chain = joins.GroupState.from_item(_item(kind={"S": "chain"}))
    assert chain.callback_args([3]) == [3]
    assert decode(complete.callback_body).id == "cb"


def test_the_dead_callbacks_error_names_the_failed_children() -> None:
    group = joins.GroupState.from_item(_item(failed={"SS": ["b"]}))

    error = group.failure_error({"b": "max_attempts"})

    assert error["type"] == "DependencyFailed"
    assert "b (max_attempts)" in error["message"] and "g1" in error["message"]


def test_the_envelope_carries_its_group_and_reads_it_back() -> None:
    envelope = Envelope(id="x", task="t", join="g1")

    assert '"join":"g1"' in envelope.to_json()
    assert decode(envelope.to_json()).join == "g1"
    assert decode(Envelope(id="x", task="t").to_json()).join is None


def test_a_message_awaiting_its_first_argument_is_only_a_callback() -> None:
    """Given a handler whose first parameter is left for a result, when its message is
    built without it, then it is a TaskMessage awaiting that argument, chainable, and
    enqueueing it on its own raises the binding error before any request."""
    registry = Registry()

    @task(registry=registry)
    def fetch(url: str) -> str:
        return url

    @task(registry=registry)
    def parse(text: str, strict: bool) -> int:
        return len(text)

    waiting = parse.message(strict=True)
    chain = fetch.message(url="u").then(waiting)

    assert isinstance(waiting, TaskMessage) and waiting.awaiting
    assert isinstance(chain, Chain) and chain.last_id == waiting.task_id
    assert fetch.message(url="u").awaiting is None
    settings = Settings(queue_url="q", dlq_url="d", table=TABLE)
    with pytest.raises(InvalidArgumentsError, match="text"):
        next(enqueue_plan(settings, [waiting], 0.0))
    with pytest.raises(InvalidArgumentsError):
        parse.message()  # strict is missing too: no first argument makes it bind


def test_a_group_whose_children_could_not_all_be_sent_kills_its_callback() -> None:
    """Given a group of two whose first child SQS refuses for good, when its enqueue
    plan runs, then after the join item and the callback's record it marks the
    callback dead as dependency_failed naming the unsent child, and raises the
    PartialEnqueueError."""
    registry = Registry()

    @task(registry=registry)
    def part(n: int) -> int:
        return n

    @task(registry=registry)
    def total(results: list[int]) -> int:
        return sum(results)

    settings = Settings(queue_url="q", dlq_url="d", table=TABLE)
    children = [part.message(1), part.message(2)]
    callback = total.message()
    plan, callback_id = Group(children, queue=Queue(settings))._plan(callback)
    answers = {
        "put_item": {},
        "batch_write_item": {"UnprocessedItems": {}},
        "send_message_batch": {
            "Failed": [{"Id": "0", "SenderFault": True, "Code": "Bad", "Message": "no"}]
        },
        "delete_item": {},
        "update_item": {},
    }
    operations: list[str] = []
    killed: list[dict[str, Any]] = []

    def drive() -> None:
        step = next(plan)
        while True:
            assert isinstance(step, Call)
            operations.append(step.operation)
            if step.operation == "update_item":
                killed.append(step.params)
            step = plan.send(answers[step.operation])

    with pytest.raises(PartialEnqueueError):
        drive()

    assert callback_id == callback.task_id
    assert operations[:2] == ["put_item", "put_item"] and operations[-1] == "update_item"
    assert killed[0]["Key"] == {"pk": {"S": f"task#{callback.task_id}"}}
    message = killed[0]["ExpressionAttributeValues"][":error"]["M"]["message"]["S"]
    assert children[0].task_id in message and children[1].task_id not in message
