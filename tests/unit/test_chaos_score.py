"""The chaos run's judge: each figure counts what it says, from records, letters and ledger.

Synthetic runs with one task per situation, so each figure is seen to move: a
judge that could not report a loss or a rerun would prove nothing.
"""

from __future__ import annotations

from bench.chaos.run import Execution, GroupPlan, Kill, RunLog, score
from dispatch.store.state import Status, TaskRecord

KILLED_PID, LIVE_PID, OTHER_PID = 100, 200, 300


def record(task_id: str, status: Status, finished_at: float | None = None) -> TaskRecord:
    return TaskRecord(task_id=task_id, task="work", status=status, finished_at=finished_at)


def callback_run(
    callback_id: str,
    pid: int,
    started_at: float,
    received: list[int] | None,
    *,
    group_no: int = 0,
    outcome: str | None = "ok",
) -> Execution:
    """One execution of a group's callback, with the group and results it recorded."""
    ended_at = started_at + 0.1 if outcome is not None else None
    return Execution(
        callback_id, 1, pid, started_at, ended_at, outcome, group_no=group_no, received=received
    )


def run(*task_ids: str, plan: str = "ok") -> RunLog:
    return RunLog(
        enqueued=dict.fromkeys(task_ids, plan),
        kills=[Kill(pid=KILLED_PID, at=10.0, executions_ended=1)],
    )


def test_a_clean_success_is_counted_once_and_nothing_else() -> None:
    """Given one task run once, recorded succeeded, then it counts as succeeded only."""
    figures = score(
        run("t"),
        records={"t": record("t", Status.SUCCEEDED, finished_at=2.0)},
        letters={},
        ledger={"t": [Execution("t", 1, LIVE_PID, 1.0, 1.5, "ok")]},
    )

    assert (figures["succeeded"], figures["lost"], figures["rerun_after_success"]) == (1, 0, 0)
    assert figures["repeated_in_window"] == 0


def test_missing_or_unfinished_records_and_dead_without_a_letter_are_lost() -> None:
    """Given a task with no record, one still running, one dead without a dead-letter
    copy and one succeeded whose handler never finished, then all four are lost."""
    figures = score(
        run("none", "running", "dead", "phantom"),
        records={
            "running": record("running", Status.RUNNING),
            "dead": record("dead", Status.DEAD, finished_at=3.0),
            "phantom": record("phantom", Status.SUCCEEDED, finished_at=3.0),
        },
        letters={},
        ledger={"phantom": [Execution("phantom", 1, KILLED_PID, 1.0)]},
    )

    assert figures["lost"] == 4
    assert sorted(figures["lost_task_ids"]) == ["dead", "none", "phantom", "running"]


def test_an_execution_after_the_recorded_success_is_a_rerun() -> None:
    """Given a task recorded succeeded at t=2 and an execution starting at t=3, then it
    counts as rerun after success (the run would fail)."""
    figures = score(
        run("t"),
        records={"t": record("t", Status.SUCCEEDED, finished_at=2.0)},
        letters={},
        ledger={
            "t": [
                Execution("t", 1, LIVE_PID, 1.0, 1.5, "ok"),
                Execution("t", 2, OTHER_PID, 3.0, 3.5, "ok"),
            ]
        },
    )

    assert figures["rerun_after_success"] == 1


def test_repeats_are_split_by_where_the_crash_fell() -> None:
    """Given one task whose killed process had finished the handler, one whose handler
    it interrupted, and one repeated although its process lived, then the first two
    are the at-least-once window and the third is reported apart."""
    figures = score(
        run("returned", "interrupted", "unexplained"),
        records={
            name: record(name, Status.SUCCEEDED, finished_at=20.0)
            for name in ("returned", "interrupted", "unexplained")
        },
        letters={},
        ledger={
            "returned": [
                Execution("returned", 1, KILLED_PID, 9.0, 9.5, "ok"),
                Execution("returned", 2, OTHER_PID, 15.0, 15.5, "ok"),
            ],
            "interrupted": [
                Execution("interrupted", 1, KILLED_PID, 9.0),
                Execution("interrupted", 2, OTHER_PID, 15.0, 15.5, "ok"),
            ],
            "unexplained": [
                Execution("unexplained", 1, LIVE_PID, 9.0, 9.5, "ok"),
                Execution("unexplained", 2, OTHER_PID, 15.0, 15.5, "ok"),
            ],
        },
    )

    assert figures["repeated_in_window"] == 2
    assert figures["repeated_detail"] == {
        "handler_returned_before_the_crash": 1,
        "handler_interrupted_by_the_crash": 1,
    }
    assert figures["repeated_without_crash"] == 1


def test_overlapping_executions_and_dead_letters_are_counted() -> None:
    """Given two executions of one task at the same time, and a dead task with its
    letter that was planned to succeed, then both show in their figures."""
    figures = score(
        run("twice", "gave_up"),
        records={
            "twice": record("twice", Status.SUCCEEDED, finished_at=20.0),
            "gave_up": record("gave_up", Status.DEAD, finished_at=20.0),
        },
        letters={"gave_up": "max_attempts"},
        ledger={
            "twice": [
                Execution("twice", 1, LIVE_PID, 1.0, 5.0, "ok"),
                Execution("twice", 2, OTHER_PID, 2.0, 3.0, "ok"),
            ],
            "gave_up": [Execution("gave_up", 1, LIVE_PID, 1.0, 1.1, "transient")],
        },
    )

    assert figures["concurrent_executions"] == 1
    assert (figures["dead"], figures["dead_reasons"], figures["unexpected_dead"]) == (
        1,
        {"max_attempts": 1},
        1,
    )


def test_a_stuck_first_attempt_of_a_stall_task_is_judged_apart() -> None:
    """Given a stall task whose first attempt (a sync handler stuck past its timeout)
    runs on in its thread beside the retry that succeeds, then the task succeeded, the
    stuck run is counted as such, and it is neither a concurrent execution nor a repeat
    without a crash; the same overlap in an ordinary task is both."""
    executions = [
        Execution("s", 1, LIVE_PID, 1.0, 4.0, "timed_out"),
        Execution("s", 2, LIVE_PID, 2.5, 2.6, "ok"),
    ]
    stalled = score(
        run("s", plan="stall"),
        records={"s": record("s", Status.SUCCEEDED, finished_at=2.7)},
        letters={},
        ledger={"s": executions},
    )
    ordinary = score(
        run("s"),
        records={"s": record("s", Status.SUCCEEDED, finished_at=2.7)},
        letters={},
        ledger={"s": [*executions[:1], Execution("s", 2, LIVE_PID, 2.5, 2.6, "ok")]},
    )

    assert (stalled["succeeded"], stalled["stuck_sync_runs"]) == (1, 1)
    assert (stalled["concurrent_executions"], stalled["repeated_without_crash"]) == (0, 0)
    assert ordinary["concurrent_executions"] == 1


def test_callbacks_lost_repeated_and_given_wrong_results_are_counted() -> None:
    """Given five groups of two succeeded children: one whose callback ran once with
    the right results, one whose callback never ran, one whose callback ran twice in a
    process never killed, one whose callback ran again after a kill interrupted it, and
    one whose callback got its results out of order, then each is counted in its own
    figure (the kill's rerun apart, as the at-least-once window), and the tasks' own
    figures are untouched."""
    groups = {f"cb{n}": GroupPlan(n, (f"c{n}a", f"c{n}b"), [n * 10, n * 10 + 1]) for n in range(5)}
    children = [child for made in groups.values() for child in made.children]
    log = run(*children, plan="child")
    log.groups = groups
    records = {child: record(child, Status.SUCCEEDED, finished_at=5.0) for child in children}
    records |= {
        f"cb{n}": record(f"cb{n}", Status.SUCCEEDED, finished_at=20.0) for n in (0, 2, 3, 4)
    }
    records["cb1"] = record("cb1", Status.QUEUED)
    ledger = {child: [Execution(child, 1, LIVE_PID, 1.0, 1.5, "ok")] for child in children}
    ledger |= {
        "cb0": [callback_run("cb0", LIVE_PID, 6.0, [0, 1])],
        "cb2": [
            callback_run("cb2", LIVE_PID, 6.0, [20, 21], group_no=2),
            callback_run("cb2", OTHER_PID, 7.0, [20, 21], group_no=2),
        ],
        "cb3": [
            callback_run("cb3", KILLED_PID, 9.0, [30, 31], group_no=3, outcome=None),
            callback_run("cb3", OTHER_PID, 16.0, [30, 31], group_no=3),
        ],
        "cb4": [callback_run("cb4", LIVE_PID, 6.0, [41, 40], group_no=4)],
    }

    figures = score(log, records=records, letters={}, ledger=ledger)

    assert figures["groups"] == 5
    assert figures["callbacks_run"] == 4
    assert (figures["callbacks_lost"], figures["lost_callback_ids"]) == (1, ["cb1"])
    assert figures["callbacks_repeated"] == 1
    assert [r["callback_id"] for r in figures["repeated_callbacks"]] == ["cb2"]
    assert figures["callbacks_repeated_in_window"] == 1
    assert figures["callbacks_wrong_results"] == 1
    assert figures["wrong_callbacks"][0]["received"] == [[4, [41, 40]]]
    assert figures["groups_incomplete"] == 0
    assert (figures["succeeded"], figures["lost"], figures["rerun_after_success"]) == (10, 0, 0)


def test_a_callback_run_after_its_recorded_success_or_for_an_unfinished_group() -> None:
    """Given a callback that ran again after its success was recorded (the earlier run
    in a killed process, so only the time gives it away) and a group with a child that
    never succeeded and a callback that never ran, then the first is a repeat and the
    second is an incomplete group, not a lost callback."""
    log = run("c0a", "c1a", plan="child")
    log.groups = {"cb0": GroupPlan(0, ("c0a",), [0]), "cb1": GroupPlan(1, ("c1a",), [10])}
    records = {
        "c0a": record("c0a", Status.SUCCEEDED, finished_at=2.0),
        "cb0": record("cb0", Status.SUCCEEDED, finished_at=9.5),
        "cb1": record("cb1", Status.QUEUED),
    }
    ledger = {
        "c0a": [Execution("c0a", 1, LIVE_PID, 1.0, 1.5, "ok")],
        "cb0": [
            callback_run("cb0", KILLED_PID, 9.0, [0]),
            callback_run("cb0", OTHER_PID, 15.0, [0]),
        ],
    }

    figures = score(log, records=records, letters={}, ledger=ledger)

    assert (figures["callbacks_repeated"], figures["callbacks_repeated_in_window"]) == (1, 0)
    assert (figures["callbacks_lost"], figures["groups_incomplete"]) == (0, 1)
    assert figures["callbacks_wrong_results"] == 0
    assert figures["lost"] == 1  # the child that never succeeded, judged among the tasks
