"""The console's pure decisions, without AWS: the hosts it answers, the rate it charts."""

from __future__ import annotations

import pytest

from dispatch.ops.console.guard import BindRefused, accepted_hosts, is_loopback
from dispatch.ops.console.inputs import BadInput, parse_tasks_query
from dispatch.ops.console.reads import History
from dispatch.ops.overview import OldestMessage, QueueDepth
from dispatch.ops.top import Frame
from dispatch.store.state import Status
from dispatch.throttle.status import ResourceStatus


def test_loopback_is_accepted_and_anything_else_needs_to_be_asked_for_twice() -> None:
    """Loopback addresses answer to the loopback names; another address needs
    --allow-remote, and a wildcard also the names browsers use."""
    assert accepted_hosts("127.0.0.1", allow_remote=False) == {"127.0.0.1", "localhost", "::1"}
    assert "::1" in accepted_hosts("::1", allow_remote=False)
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("10.0.0.5")
    with pytest.raises(BindRefused, match="--allow-remote"):
        accepted_hosts("10.0.0.5", allow_remote=False)
    assert accepted_hosts("10.0.0.5", allow_remote=True) == {"10.0.0.5"}
    with pytest.raises(BindRefused, match="--allowed-host"):
        accepted_hosts("0.0.0.0", allow_remote=True)  # noqa: S104 - refused, never bound
    wildcard = accepted_hosts("0.0.0.0", allow_remote=True, allowed=["Ops.Internal"])  # noqa: S104
    assert wildcard == {"ops.internal"}


def resource(name: str, *, started: int, waits: int, wait_total_s: float) -> ResourceStatus:
    return ResourceStatus(
        name=name,
        configured_rate_per_s=2.0,
        effective_rate_per_s=2.0,
        tokens=0.0,
        in_flight=1,
        max_concurrency=2,
        slots_held=1,
        waiting=3,
        waits=waits,
        wait_total_s=wait_total_s,
        started=started,
        backpressure_signals=0,
        dispatchers=1,
    )


def frame(at: float, *resources: ResourceStatus) -> Frame:
    empty = QueueDepth(visible=0, in_flight=0, delayed=0)
    return Frame(
        at=at,
        queue=empty,
        dlq=empty,
        oldest_message=OldestMessage(age_s=0.0, source="empty"),
        tasks=[],
        resources=list(resources),
        dispatchers=1,
    )


def test_the_achieved_rate_is_tasks_started_between_frames_over_the_time_between() -> None:
    """Given frames 2 s apart in which a resource started 4 then 2 more tasks (waits of
    0.5 s each), when the history is read, then the chart's points say 2/s then 1/s with
    the mean wait of the new waits, the achieved rate is 6 tasks over 4 s, a frame under
    a second after the last is not kept, and an unknown resource has no rate."""
    history = History()
    history.add(frame(100.0, resource("db", started=10, waits=0, wait_total_s=0.0)))
    history.add(frame(102.0, resource("db", started=14, waits=2, wait_total_s=1.0)))
    history.add(frame(102.5, resource("db", started=99, waits=9, wait_total_s=9.0)))  # too soon
    history.add(frame(104.0, resource("db", started=16, waits=2, wait_total_s=1.0)))

    points = history.series("db")

    assert [(p["t"], p["rate_per_s"], p["mean_wait_s"]) for p in points] == [
        (102.0, 2.0, 0.5),
        (104.0, 1.0, 0.0),
    ]
    assert history.achieved_rate("db") == 1.5
    assert history.achieved_rate("other") is None
    assert history.series("other") == []


def test_the_tasks_filter_defaults_to_dead_and_names_each_bad_field() -> None:
    """Without a status the dead tasks are listed; running-longer-than implies running;
    each bad field is a BadInput naming it."""
    assert parse_tasks_query({}, now=1000.0).where.status is Status.DEAD
    longer = parse_tasks_query({"running_longer_than": "10m"}, now=1000.0).where
    assert (longer.status, longer.running_longer_than_s) == (None, 600.0)
    for query, field in (
        ({"status": "nope"}, "status"),
        ({"since": "soon"}, "since"),
        ({"limit": "1001"}, "limit"),
        ({"task": "t" * 129}, "task"),
        ({"status": "dead", "running_longer_than": "1m"}, "running_longer_than"),
    ):
        with pytest.raises(BadInput) as refused:
            parse_tasks_query(query, now=1000.0)
        assert refused.value.field == field, query
