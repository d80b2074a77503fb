"""The catch-up policy of periodic tasks and their declaration checks."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatch import task
from dispatch.core.errors import TaskDefinitionError
from dispatch.loop.schedule import due_fire_time, periodic_message
from dispatch.tasks.registry import Registry

UTC = dt.UTC


def scheduled(expression: str):  # type: ignore[no-untyped-def]
    registry = Registry()

    @task(registry=registry, schedule=expression)
    def job() -> None: ...

    return job.spec


def test_the_latest_fire_time_in_the_window_is_due() -> None:
    """Given rate(5 minutes) and now 12:07, when asked what is due, then 12:05 is."""
    spec = scheduled("rate(5 minutes)")
    now = dt.datetime(2027, 1, 1, 12, 7, tzinfo=UTC)

    assert due_fire_time(spec, now, 3600) == dt.datetime(2027, 1, 1, 12, 5, tzinfo=UTC)


def test_missed_fire_times_coalesce_into_the_latest_and_old_ones_are_skipped() -> None:
    """Given a daily cron at 09:00 and no dispatcher since yesterday, when checked at 09:30
    with a one-hour window, then only today's 09:00 is due; checked at 11:00, nothing is."""
    spec = scheduled("cron(0 9 * * ? *)")

    at_930 = dt.datetime(2027, 3, 2, 9, 30, tzinfo=UTC)
    at_1100 = dt.datetime(2027, 3, 2, 11, 0, tzinfo=UTC)

    assert due_fire_time(spec, at_930, 3600) == dt.datetime(2027, 3, 2, 9, 0, tzinfo=UTC)
    assert due_fire_time(spec, at_1100, 3600) is None


def test_one_fire_time_gives_one_task_id_in_every_dispatcher() -> None:
    """Given the same fire time, when two dispatchers build its message, then the task
    ids are equal (the idempotency key is the fire time) and differ for the next one."""
    spec = scheduled("rate(1 minute)")
    fire = dt.datetime(2027, 1, 1, 12, 0, tzinfo=UTC)

    first, again = periodic_message(spec, fire), periodic_message(spec, fire)
    later = periodic_message(spec, fire + dt.timedelta(minutes=1))

    assert first.task_id == again.task_id != later.task_id
    assert first.envelope.idempotency_key == "schedule:2027-01-01T12:00:00+00:00"


def test_invalid_schedules_and_required_arguments_are_refused_at_declaration() -> None:
    """Given a bad expression, or a scheduled handler that needs arguments, when declared,
    then TaskDefinitionError names the task and the problem."""
    with pytest.raises(TaskDefinitionError, match=r"'job'.*rate\(0 minutes\)"):
        scheduled("rate(0 minutes)")
    registry = Registry()
    with pytest.raises(TaskDefinitionError, match="needs some"):

        @task(registry=registry, schedule="rate(1 hour)")
        def report(day: str) -> None: ...
