"""The chaos run's judge: each figure counts what it says, from records, letters and ledger.

Synthetic runs with one task per situation, so each figure is seen to move: a
judge that could not report a loss or a rerun would prove nothing.
"""

from __future__ import annotations

from bench.chaos.run import Execution, Kill, RunLog, score
from dispatch.store.state import Status, TaskRecord

KILLED_PID, LIVE_PID, OTHER_PID = 100, 200, 300


def record(task_id: str, status: Status, finished_at: float | None = None) -> TaskRecord:
    return TaskRecord(task_id=task_id, task="work", status=status, finished_at=finished_at)


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
