"""Periodic tasks: ``@task(schedule="rate(5 minutes)")`` or ``schedule="cron(0 12 ? * MON-FRI *)"``.

Every dispatcher run checks the scheduled tasks and enqueues each fire time that
has come, exactly once however many dispatchers run: the message of fire time
*t* carries the idempotency key ``schedule:<t>``, so its task id is the same in
every dispatcher and the conditional write of its ``queued`` record (a lean
task's: its ``sched#`` marker) lets only the first one through (docs/formats.md,
"Transitions").

Catch-up policy: a fire time is enqueued if some dispatcher runs within
``catch_up_s`` (default one hour) after it. When several fire times were missed
(no dispatcher ran), only the latest of them is enqueued: missed runs coalesce
into one, as most cron-like schedulers do, instead of a burst of stale runs.
Older fire times are skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import structlog

from dispatch.core.config import Settings
from dispatch.core.envelope import Message, MessageOptions
from dispatch.tasks.registry import Registry, TaskSpec

if TYPE_CHECKING:
    from dispatch.store.aws import AsyncClients

__all__ = ["DEFAULT_CATCH_UP_S", "PeriodicEnqueuer", "due_fire_time", "periodic_message"]

log = structlog.get_logger("dispatch.loop.schedule")

DEFAULT_CATCH_UP_S: Final = 3600.0
CHECK_EVERY_S: Final = 30.0


def due_fire_time(spec: TaskSpec, now: dt.datetime, catch_up_s: float) -> dt.datetime | None:
    """The latest fire time of ``spec``'s schedule in ``(now - catch_up_s, now]``."""
    if spec.schedule is None:
        return None
    latest = None
    for fire in spec.schedule.fire_times_between(now - dt.timedelta(seconds=catch_up_s), now):
        latest = fire
    return latest


def periodic_message(spec: TaskSpec, fire: dt.datetime) -> Message:
    """The message for one fire time: no arguments, a key unique to the fire time."""
    key = f"schedule:{fire.astimezone(dt.UTC).isoformat()}"
    return Message.build(spec, (), {}, MessageOptions(idempotency_key=key))


class PeriodicEnqueuer:
    """Enqueues the scheduled tasks that are due; one per dispatcher."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        clients: AsyncClients,
        *,
        clock: Callable[[], float],
        catch_up_s: float = DEFAULT_CATCH_UP_S,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._clients = clients
        self._clock = clock
        self._catch_up_s = catch_up_s
        self._submitted: dict[str, dt.datetime] = {}

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    async def tick(self) -> list[str]:
        """Enqueue every scheduled task whose latest fire time this dispatcher has not
        submitted yet; returns their task ids (already enqueued elsewhere included)."""
        from dispatch.producer.enqueue import enqueue_plan, run_async

        now = self._now()
        due: list[tuple[TaskSpec, dt.datetime]] = []
        for spec in self._registry.specs():
            fire = due_fire_time(spec, now, self._catch_up_s)
            if fire is not None and self._submitted.get(spec.name) != fire:
                due.append((spec, fire))
        if not due:
            return []
        messages = [periodic_message(spec, fire) for spec, fire in due]
        plan = enqueue_plan(self._settings, messages, self._clock(), scheduled=True)
        ids = await run_async(plan, self._clients)
        for spec, fire in due:
            self._submitted[spec.name] = fire
            log.info("periodic_enqueued", task=spec.name, fire_time=fire.isoformat())
        return ids

    def seconds_to_next_fire(self) -> float:
        """Seconds until the next fire time of any scheduled task (at most CHECK_EVERY_S)."""
        now = self._now()
        nearest = CHECK_EVERY_S
        for spec in self._registry.specs():
            if spec.schedule is None:
                continue
            upcoming = spec.schedule.next_after(now)
            if upcoming is not None:
                nearest = min(nearest, (upcoming - now).total_seconds())
        return max(0.05, nearest)

    @property
    def has_schedules(self) -> bool:
        """True when some registered task has a schedule."""
        return any(spec.schedule is not None for spec in self._registry.specs())
