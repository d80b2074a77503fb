"""The pauses item (dispatch/store/pauses.py): its writes, and what a dispatcher reads
from it, whatever else the item holds."""

from __future__ import annotations

import pytest

from dispatch.store import pauses
from dispatch.store.codec import number

URL = "http://127.0.0.1:1/123456789012/orders"


def test_pause_and_resume_are_conditional_updates_of_one_attribute_per_thing() -> None:
    """A pause sets `task:<name>` only if absent (the first who and since stay); a resume
    removes it only if present; both address the queue's one item."""
    paused = pauses.pause_params("t", URL, "task", "charge", by="ops", now=100.0)
    resumed = pauses.resume_params("t", URL, "resource", "orders-db")

    assert paused["Key"] == resumed["Key"] == {"pk": {"S": "pauses#orders"}}
    assert paused["ExpressionAttributeNames"] == {"#p": "task:charge"}
    assert paused["ConditionExpression"] == "attribute_not_exists(#p)"
    assert resumed["ExpressionAttributeNames"] == {"#p": "resource:orders-db"}
    assert resumed["ConditionExpression"] == "attribute_exists(#p)"


@pytest.mark.parametrize("name", ["", "x" * 257, "tab\there"])
def test_a_name_that_cannot_be_a_pause_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 256 printable characters"):
        pauses.pause_params("t", URL, "task", name, by="ops", now=1.0)


def test_reading_keeps_the_pauses_and_skips_whatever_else_the_item_holds() -> None:
    """The key, attributes of another kind, and values of another shape are skipped;
    a task's own pause comes before its resource's."""
    item = {
        "pk": {"S": "pauses#orders"},
        "task:charge": {"M": {"by": {"S": "alice"}, "since": number(10)}},
        "resource:orders-db": {"M": {"by": {"S": "bob"}, "since": number(5)}},
        "task:odd": {"S": "not a map"},
        "queue:x": {"M": {}},
        "task:": {"M": {}},
    }

    read = pauses.read_paused(item)

    assert set(read.tasks) == {"charge"} and set(read.resources) == {"orders-db"}
    assert [p.name for p in read.all()] == ["orders-db", "charge"]
    assert read.of("charge", "orders-db") == read.tasks["charge"]
    assert read.of("refund", "orders-db") == read.resources["orders-db"]
    assert read.of("refund", None) is None
    assert pauses.read_paused(None).all() == []
