"""Per-task activity a dispatcher publishes for `dispatch top`, and how top sums it."""

from __future__ import annotations

from dispatch.loop.activity import TaskActivity
from dispatch.ops.overview import QueueDepth, oldest_message
from dispatch.ops.top import task_rows
from dispatch.throttle.status import DispatcherReport


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_counts_outcomes_per_task_and_the_rate_over_the_window() -> None:
    """Given four dispatches of one task in a 2 s window with mixed outcomes, when a
    snapshot is taken, then totals are per outcome and the rate is 2/s; the next window
    starts empty but totals carry on."""
    clock = Clock()
    activity = TaskActivity(clock=clock)
    for metric in ("Dispatched",) * 4 + ("Succeeded", "Succeeded", "Retried", "DeadLettered"):
        activity.count("charge", metric)
    activity.count("(malformed)", "DeadLettered")
    clock.now += 2

    first = activity.snapshot()
    clock.now += 5
    activity.count("charge", "Dispatched")
    second = activity.snapshot()

    charge = first["tasks"]["charge"]
    assert (charge["dispatched"], charge["succeeded"], charge["retried"]) == (4, 2, 1)
    assert (charge["dead_lettered"], charge["backpressure"], charge["in_flight"]) == (1, 0, 0)
    assert charge["dispatched_per_s"] == 2.0
    assert first["tasks"]["(malformed)"]["dead_lettered"] == 1
    assert first["window_s"] == 2.0
    assert second["tasks"]["charge"]["dispatched"] == 5
    assert second["tasks"]["charge"]["dispatched_per_s"] == 0.2


def test_in_flight_counts_running_tasks_even_when_they_raise() -> None:
    """Given two tasks running and one that raised, then in flight is 2, then 0 after."""
    activity = TaskActivity(clock=Clock())
    with activity.running("a"), activity.running("a"):
        try:
            with activity.running("a"):
                raise ConnectionError("worker died")
        except ConnectionError:
            pass
        assert activity.snapshot()["tasks"]["a"]["in_flight"] == 2
    assert activity.snapshot()["tasks"]["a"]["in_flight"] == 0


def test_oldest_age_is_the_max_seen_in_the_window_then_forgotten() -> None:
    """Given messages received 3 s, 9 s and 1 s after they were sent, the window's oldest
    age is 9 s; a window with no receive reports None, not a stale figure."""
    activity = TaskActivity(clock=Clock())
    for age_s in (3.0, 9.0, 1.0):
        activity.saw_message_age(age_s)

    assert activity.snapshot()["oldest_message_age_s"] == 9.0
    assert activity.snapshot()["oldest_message_age_s"] is None


def test_an_unknown_metric_is_counted_under_its_snake_case_name() -> None:
    """A counter the dispatcher adds later never breaks the publishing."""
    activity = TaskActivity(clock=Clock())
    activity.count("t", "BatchFlushed")
    assert activity.snapshot()["tasks"]["t"]["batch_flushed"] == 1


def _report(owner: str, activity: dict[str, object]) -> DispatcherReport:
    return DispatcherReport(owner=owner, published_at=0.0, resources={}, activity=activity)


def test_top_sums_tasks_over_dispatchers_and_status_takes_the_oldest_age() -> None:
    """Given two dispatchers' reports, then top's rows sum counts and rates per task, and
    the oldest message age is the larger one; an empty queue is age 0; no report with an
    age on a non-empty queue is unknown, not 0."""
    reports = [
        _report(
            "d1",
            {
                "oldest_message_age_s": 4.0,
                "tasks": {
                    "a": {"dispatched": 3, "succeeded": 3, "dispatched_per_s": 1.5, "in_flight": 1}
                },
            },
        ),
        _report(
            "d2",
            {
                "oldest_message_age_s": 7.5,
                "tasks": {
                    "a": {"dispatched": 2, "retried": 2, "dispatched_per_s": 0.5},
                    "b": {"dead_lettered": 1},
                },
            },
        ),
        _report("old", {}),  # a dispatcher from before activity was published
    ]
    busy = QueueDepth(visible=5, in_flight=1, delayed=0)

    rows = {r.task: r for r in task_rows(reports)}
    oldest = oldest_message(busy, reports)

    assert (rows["a"].dispatched, rows["a"].succeeded, rows["a"].retried) == (5, 3, 2)
    assert (rows["a"].dispatched_per_s, rows["a"].in_flight) == (2.0, 1)
    assert rows["b"].dead_lettered == 1 and rows["b"].dispatched == 0
    assert (oldest.age_s, oldest.source, oldest.dispatchers) == (7.5, "dispatchers", 2)
    assert oldest_message(QueueDepth(0, 0, 0), reports).source == "empty"
    unknown = oldest_message(busy, [_report("d3", {"oldest_message_age_s": None})])
    assert (unknown.age_s, unknown.source) == (None, "unknown")
