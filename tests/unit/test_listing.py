"""The listing index: the template's GSIs, the code's key attributes and the filters agree.

Pure checks, no AWS: the indexes in deploy/template.yaml (and the example project's copy)
are the ones :mod:`dispatch.ops.listing` queries, with the key attributes every
transition writes; every transition keeps ``listed`` in step with the status it writes
(set for a listed status, removed otherwise); bad filters and tokens are refused with
the option named.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope
from dispatch.core.outcome import ErrorInfo
from dispatch.core.record import LISTED_STATUSES, ClaimAsk, Status, listed_value
from dispatch.local.provision import load_template
from dispatch.ops import dlq, listing
from dispatch.ops.listing import ListingError, TaskFilter
from dispatch.store import state, statements

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = [ROOT / "deploy" / "template.yaml", ROOT / "examples" / "myproject" / "template.yaml"]
NOW = 1_767_225_600.125
TABLE = "dispatch-state"
TASK_ID = "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa"
ERROR = ErrorInfo(type="ValueError", message="bad", traceback="Traceback ...")
ENVELOPE = Envelope(id=TASK_ID, task="charge", args=(), kwargs={}, enqueued_at=NOW)


# --- the template and the code ------------------------------------------------------------


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.parent.name)
def test_the_templates_indexes_are_the_ones_the_listing_queries(path: Path) -> None:
    """Given the table in the template, then it has exactly the two indexes the code
    names, each keyed (its hash attribute, ``listed``) as strings, projecting what a
    listed entry shows, so a Query answers a page without reading the table."""
    table = load_template(path)["Resources"]["StateTable"]["Properties"]
    types = {d["AttributeName"]: d["AttributeType"] for d in table["AttributeDefinitions"]}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    expected = {c.INDEX_BY_STATUS: "status", c.INDEX_BY_TASK: "task"}

    assert set(indexes) == set(expected)
    for name, hash_key in expected.items():
        index = indexes[name]
        keys = [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]]
        assert keys == [(hash_key, "HASH"), (c.LISTED_ATTRIBUTE, "RANGE")]
        assert types[hash_key] == types[c.LISTED_ATTRIBUTE] == "S"
        assert index["Projection"]["ProjectionType"] == "INCLUDE"
        shown = {"status", "task", "attempts", "dead_reason"} - {hash_key}
        assert set(index["Projection"]["NonKeyAttributes"]) == shown


# --- every transition keeps `listed` in step with the status it writes ----------------------


def _writes(params: dict[str, Any]) -> tuple[str, str | None, bool]:
    """(status written, `listed` value set or None, whether `listed` is removed)."""
    expression = params["UpdateExpression"]
    values = params["ExpressionAttributeValues"]
    set_part, _, remove_part = expression.partition(" REMOVE ")
    status = values[re.search(r"#s = (:\w+)", set_part).group(1)]["S"]  # type: ignore[union-attr]
    listed = re.search(rf"\b{c.LISTED_ATTRIBUTE} = (:\w+)", set_part)
    removed = c.LISTED_ATTRIBUTE in [n.strip() for n in remove_part.split(",")]
    return status, values[listed.group(1)]["S"] if listed else None, removed


TRANSITIONS = {
    "claim, long task": state.claim_params(
        TABLE, ENVELOPE, message_id="m", now=NOW, timeout_s=c.LIST_RUNNING_OVER_S + 1
    ),
    "succeeded": state.succeeded_params(TABLE, TASK_ID, message_id="m", now=NOW, result=None),
    "succeeded, result": state.succeeded_params(TABLE, TASK_ID, message_id="m", now=NOW, result=1),
    "retrying": state.retrying_params(
        TABLE, TASK_ID, message_id="m", now=NOW, error=ERROR, next_attempt_at=NOW + 5
    ),
    "released, first attempt": state.released_params(
        TABLE, TASK_ID, message_id="m", now=NOW, first_attempt=True
    ),
    "released, later attempt": state.released_params(
        TABLE, TASK_ID, message_id="m", now=NOW, first_attempt=False
    ),
    "dead": state.dead_params(
        TABLE, TASK_ID, message_id="m", now=NOW, error=ERROR, reason="max_attempts"
    ),
    "rejected": state.rejected_params(TABLE, TASK_ID, None, now=NOW, reason="malformed"),
    "exhausted": state.exhausted_params(TABLE, TASK_ID, now=NOW, max_attempts=3, error=ERROR),
    "redrive": dlq.revive_params(
        TABLE,
        dlq.DeadLetterEntry(
            message_id="dl-1",
            receipt="r",
            body="{}",
            task_id=TASK_ID,
            task="charge",
            reason="max_attempts",
            failure={},
            sent_at=NOW,
        ),
        NOW,
    ),
}


@pytest.mark.parametrize("single", [True, False], ids=["UpdateItem", "PartiQL"])
def test_a_short_task_is_never_listed_while_running_and_costs_no_index_write(
    single: bool,
) -> None:
    """Given a task whose timeout is at most LIST_RUNNING_OVER_S, when it is claimed
    (single or batched), then the claim removes ``listed`` instead of setting it: a
    first attempt that succeeds never enters the indexes, so it costs no index write
    (a retrying task's claim takes it out of the retrying list)."""
    short = c.LIST_RUNNING_OVER_S
    if single:
        status, listed, removed = _writes(
            state.claim_params(TABLE, ENVELOPE, message_id="m", now=NOW, timeout_s=short)
        )
        assert (status, listed, removed) == ("running", None, True)
        return
    ask = ClaimAsk(envelope=ENVELOPE, message_id="m", now=NOW, timeout_s=short)
    claim = statements.claim_statement(TABLE, ask, old=None)
    assert c.LISTED_ATTRIBUTE not in claim.sets and c.LISTED_ATTRIBUTE in claim.removes
    retrying = dict(statements.guessed_item(ENVELOPE), listed={"S": "retrying#1"})
    assert c.LISTED_ATTRIBUTE not in claim.applied_to(retrying)


@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_each_transition_sets_listed_for_a_listed_status_and_removes_it_otherwise(
    name: str,
) -> None:
    """Given a transition's UpdateItem, when it writes a listed status, then it sets
    ``listed`` to that status and its time; when it writes another, it removes
    ``listed`` (the record leaves the sparse indexes)."""
    status, listed, removed = _writes(TRANSITIONS[name])

    if Status(status) in LISTED_STATUSES:
        assert (listed, removed) == (listed_value(Status(status), NOW), False)
    else:
        assert (listed, removed) == (None, True)


def test_batched_claims_and_successes_write_listed_as_their_single_writes_do() -> None:
    """The PartiQL claim of a long task sets ``listed`` to running at its time, the
    PartiQL success removes it, and the whole-item success carries none."""
    ask = ClaimAsk(envelope=ENVELOPE, message_id="m", now=NOW, timeout_s=600)
    claim = statements.claim_statement(TABLE, ask, old=None)
    success = statements.succeeded_statement(
        TABLE, TASK_ID, message_id="m", now=NOW, result_json=None
    )
    claimed = claim.applied_to(statements.guessed_item(ENVELOPE))

    assert claim.sets[c.LISTED_ATTRIBUTE] == {"S": f"running#{NOW:014.3f}"}
    assert c.LISTED_ATTRIBUTE in success.removes
    assert c.LISTED_ATTRIBUTE not in success.applied_to(claimed)
    assert c.LISTED_ATTRIBUTE not in state.succeeded_item(claimed, now=NOW, result=None)


def test_enqueue_records_and_markers_are_not_listed() -> None:
    """Queued records (and periodic lean tasks' markers) carry no ``listed``."""
    assert c.LISTED_ATTRIBUTE not in state.queued_item(ENVELOPE, NOW)
    assert c.LISTED_ATTRIBUTE not in state.queued_item(ENVELOPE, NOW, marker=True)


def test_listed_sorts_as_time_within_a_status() -> None:
    """``listed`` compares as text in the order of its times (10.3 zero-padded digits)."""
    times = [0.0, 9.5, 1_000.001, NOW, NOW + 0.001, 9_999_999_999.999]

    values = [listed_value(Status.DEAD, t) for t in times]

    assert values == sorted(values)
    assert values[3] == "dead#1767225600.125"


# --- filters, durations, tokens -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86400.0),
     ("1h30m", 5400.0), ("250ms", 0.25), ("1.5h", 5400.0)],
)  # fmt: skip
def test_durations_read_as_people_write_them(text: str, seconds: float) -> None:
    """Durations: a number of seconds, or numbers with ms/s/m/h/d units run together."""
    assert listing.parse_duration(text, option="--since") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5m", "m", "10m5", "1e3"])
def test_a_bad_duration_is_refused_naming_the_option(text: str) -> None:
    """Anything else is a ListingError naming the option and the text."""
    with pytest.raises(ListingError, match="not a duration") as caught:
        listing.parse_duration(text, option="--running-longer-than")
    assert caught.value.option == "--running-longer-than"


def test_since_takes_a_duration_ago_or_an_iso_time() -> None:
    """``--since 2h`` is two hours before now; an ISO time without zone is UTC."""
    assert listing.parse_time("2h", now=NOW, option="--since") == NOW - 7200
    assert listing.parse_time("2026-01-01T00:00:00", now=NOW, option="--since") == 1_767_225_600
    with pytest.raises(ListingError, match="neither a duration") as caught:
        listing.parse_time("yesterday", now=NOW, option="--until")
    assert caught.value.option == "--until"


def test_statuses_unknown_or_not_indexed_are_refused_with_the_choices() -> None:
    """An unknown status names the six; queued and succeeded say they are not indexed
    and what to list instead."""
    assert listing.parse_status("DEAD") is Status.DEAD
    with pytest.raises(ListingError, match="unknown status 'deadd'"):
        listing.parse_status("deadd")
    for status in ("queued", "succeeded"):
        with pytest.raises(ListingError, match=f"'{status}' is not indexed.*running, retrying"):
            listing.parse_status(status)


@pytest.mark.parametrize(
    ("where", "option"),
    [
        (TaskFilter(), "--status"),
        (TaskFilter(status=Status.DEAD, running_longer_than_s=60), "--running-longer-than"),
        (TaskFilter(status=Status.SUCCEEDED), "--status"),
        (TaskFilter(status=Status.DEAD, limit=0), "--limit"),
        (TaskFilter(status=Status.DEAD, limit=listing.MAX_LIMIT + 1), "--limit"),
        (TaskFilter(status=Status.DEAD, task=""), "--task"),
    ],
)
def test_filters_that_cannot_be_listed_name_the_option(where: TaskFilter, option: str) -> None:
    """No status, a status beside --running-longer-than, an unindexed status, a limit out
    of range or an empty task name: refused before any request, naming the option."""
    with pytest.raises(ListingError) as caught:
        listing.query_params(TABLE, where, now=NOW)
    assert caught.value.option == option


def test_a_page_queries_the_right_index_newest_first_within_the_window() -> None:
    """With a task name the by-task index, else by-status; the time window becomes the
    sort key's BETWEEN; newest first; one entry more than the page."""
    by_status = listing.query_params(
        TABLE, TaskFilter(status=Status.DEAD, since=NOW - 60, limit=50), now=NOW
    )
    by_task = listing.query_params(
        TABLE, TaskFilter(task="charge", running_longer_than_s=600), now=NOW
    )

    assert by_status["IndexName"] == c.INDEX_BY_STATUS
    assert by_status["ExpressionAttributeValues"] == {
        ":h": {"S": "dead"},
        ":lo": {"S": listed_value(Status.DEAD, NOW - 60)},
        ":hi": {"S": "dead#9999999999.999"},
    }
    assert (by_status["ScanIndexForward"], by_status["Limit"]) == (False, 51)
    assert by_task["IndexName"] == c.INDEX_BY_TASK
    assert by_task["ExpressionAttributeNames"]["#h"] == "task"
    assert by_task["ExpressionAttributeValues"][":h"] == {"S": "charge"}
    assert by_task["ExpressionAttributeValues"][":hi"] == {
        "S": listed_value(Status.RUNNING, NOW - 600)
    }


def _key(status: str = "dead", task_id: str = TASK_ID) -> dict[str, Any]:
    return {
        c.TABLE_HASH_KEY: {"S": f"task#{task_id}"},
        "status": {"S": status},
        c.LISTED_ATTRIBUTE: {"S": f"{status}#{NOW:014.3f}"},
    }


def test_a_token_carries_the_last_key_and_only_continues_its_own_listing() -> None:
    """A token decodes to the ExclusiveStartKey it was made from; for another index,
    another partition, another status or as garbage it is refused naming --next."""
    token = listing.encode_token(c.INDEX_BY_STATUS, _key())
    dead = TaskFilter(status=Status.DEAD)

    params = listing.query_params(TABLE, dead, now=NOW, token=token)

    assert params["ExclusiveStartKey"] == _key()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    others = [
        (TaskFilter(status=Status.RUNNING), token),
        (TaskFilter(status=Status.DEAD, task="charge"), token),
        (dead, listing.encode_token(c.INDEX_BY_TASK, _key())),
        (dead, listing.encode_token(c.INDEX_BY_STATUS, {**_key(), "extra": {"S": "x"}})),
        (dead, listing.encode_token(c.INDEX_BY_STATUS, _key() | {"pk": {"S": "bucket#x"}})),
        (dead, "not a token"),
        (dead, "e30"),  # {}
        (dead, token[:-3]),
    ]
    for where, bad in others:
        with pytest.raises(ListingError, match="not a token") as caught:
            listing.query_params(TABLE, where, now=NOW, token=bad)
        assert caught.value.option == "--next"
