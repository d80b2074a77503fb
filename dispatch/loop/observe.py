"""Observers of the loop: one event per thing that happened, many subscribers.

The stages emit events (a delivery received, a task started, a task settled, a
wait for the throttle, ...) to one :class:`Observers`; the run's
:class:`~dispatch.loop.options.RunStats`, the per-task activity that ``dispatch
status`` and ``dispatch top`` read, and the EMF metrics subscribe to them. A new
sink is one more :class:`Observer`, not one more call in every stage (the shape
of dramatiq's middleware: no-op hooks a subclass overrides).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dispatch.core.deadletter import Reason
from dispatch.core.delivery import Delivery
from dispatch.loop.activity import TaskActivity
from dispatch.loop.metrics import Metrics
from dispatch.loop.options import RunStats

__all__ = [
    "ActivityObserver",
    "MetricsObserver",
    "Observer",
    "Observers",
    "Settled",
    "Skip",
    "StatsObserver",
    "Verdict",
]


class Verdict(StrEnum):
    """How a task's attempt settled."""

    SUCCEEDED = "Succeeded"
    RETRIED = "Retried"
    BACKPRESSURE = "Backpressure"
    DEAD = "DeadLettered"
    CANCELLED = "Cancelled"


class Skip(StrEnum):
    """A message handled without running it."""

    DUPLICATE = "duplicate"  # a finished task delivered again (or its copy), deleted
    DEFERRED = "deferred"  # hidden until the throttle (or its other owner) can take it
    POSTPONED = "postponed"  # sent again, due later (an eta past SQS's 15 minutes)
    RELEASED = "released"  # given back unfinished at a deadline
    REJECTED = "rejected"  # can never run: dead-lettered with its reason


@dataclass(frozen=True, slots=True)
class Settled:
    """One settlement: a task's attempt ended ``verdict`` (with ``reason`` when dead)."""

    task: str | None
    verdict: Verdict
    reason: Reason | None = None


class Observer:
    """Hooks the loop calls; each does nothing until a subclass says otherwise."""

    def received(self, deliveries: Sequence[Delivery], now: float) -> None:
        """A receive brought these deliveries."""

    def held(self, count: int) -> None:
        """The dispatcher now holds ``count`` messages."""

    def started(self, task: str, count: int = 1) -> None:
        """``count`` attempts of ``task`` were handed to the runner (a batch is one call)."""

    def running(self, task: str) -> contextlib.AbstractContextManager[None]:
        """The block during which an attempt of ``task`` runs."""
        return contextlib.nullcontext()

    def settled(self, event: Settled) -> None:
        """A task's attempt settled (or a message was dead-lettered)."""

    def skipped(self, skip: Skip) -> None:
        """A message was handled without running it."""

    def waited(self, resource: str, wait_s: float) -> None:
        """A task waited ``wait_s`` for ``resource``'s throttle."""

    def recalled(self, resource: str, count: int) -> None:
        """``count`` deferred messages of ``resource`` were made visible before their time."""


class Observers(Observer):
    """Fans every event out to the subscribed observers, in order."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = list(observers)

    def subscribe(self, observer: Observer) -> None:
        """Add one more observer."""
        self._observers.append(observer)

    def received(self, deliveries: Sequence[Delivery], now: float) -> None:
        for observer in self._observers:
            observer.received(deliveries, now)

    def held(self, count: int) -> None:
        for observer in self._observers:
            observer.held(count)

    def started(self, task: str, count: int = 1) -> None:
        for observer in self._observers:
            observer.started(task, count)

    def running(self, task: str) -> contextlib.AbstractContextManager[None]:
        return _all_running(self._observers, task)

    def settled(self, event: Settled) -> None:
        for observer in self._observers:
            observer.settled(event)

    def skipped(self, skip: Skip) -> None:
        for observer in self._observers:
            observer.skipped(skip)

    def waited(self, resource: str, wait_s: float) -> None:
        for observer in self._observers:
            observer.waited(resource, wait_s)

    def recalled(self, resource: str, count: int) -> None:
        for observer in self._observers:
            observer.recalled(resource, count)


@contextlib.contextmanager
def _all_running(observers: Sequence[Observer], task: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for observer in observers:
            stack.enter_context(observer.running(task))
        yield


def _ages_s(deliveries: Sequence[Delivery], now: float) -> Iterator[float]:
    for delivery in deliveries:
        if delivery.sent_at_s is not None:
            yield max(0.0, now - delivery.sent_at_s)


class StatsObserver(Observer):
    """Keeps a run's :class:`RunStats`."""

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats

    def received(self, deliveries: Sequence[Delivery], now: float) -> None:
        self.stats.received += len(deliveries)

    def held(self, count: int) -> None:
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, count)

    def started(self, task: str, count: int = 1) -> None:
        self.stats.started += count

    def settled(self, event: Settled) -> None:
        stats = self.stats
        if event.verdict is Verdict.SUCCEEDED:
            stats.succeeded += 1
        elif event.verdict is Verdict.RETRIED:
            stats.retried += 1
        elif event.verdict is Verdict.BACKPRESSURE:
            stats.backpressure += 1
        elif event.verdict is Verdict.CANCELLED:
            stats.cancelled += 1
        else:
            stats.dead += 1
            if event.reason is not None:
                stats.dead_reasons[event.reason.value] += 1

    def skipped(self, skip: Skip) -> None:
        field_name = {Skip.DUPLICATE: "duplicates", Skip.REJECTED: "rejected"}.get(skip, skip.value)
        setattr(self.stats, field_name, getattr(self.stats, field_name) + 1)

    def waited(self, resource: str, wait_s: float) -> None:
        self.stats.throttle_wait_s += wait_s

    def recalled(self, resource: str, count: int) -> None:
        self.stats.recalled += count


class ActivityObserver(Observer):
    """Feeds the per-task counters that a dispatcher publishes (``dispatch status``/``top``)."""

    def __init__(self, activity: TaskActivity) -> None:
        self.activity = activity

    def received(self, deliveries: Sequence[Delivery], now: float) -> None:
        for age_s in _ages_s(deliveries, now):
            self.activity.saw_message_age(age_s)

    def started(self, task: str, count: int = 1) -> None:
        for _ in range(count):
            self.activity.count(task, "Dispatched")

    def running(self, task: str) -> contextlib.AbstractContextManager[None]:
        return self.activity.running(task)

    def settled(self, event: Settled) -> None:
        self.activity.count(event.task or "(malformed)", event.verdict.value)


class MetricsObserver(Observer):
    """Feeds CloudWatch EMF metrics; the throttle waits since the last flush."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._waits: defaultdict[str, float] = defaultdict(float)

    def received(self, deliveries: Sequence[Delivery], now: float) -> None:
        for age_s in _ages_s(deliveries, now):
            self.metrics.saw_message_age(age_s)

    def started(self, task: str, count: int = 1) -> None:
        self.metrics.count(task, "Dispatched", count)

    def settled(self, event: Settled) -> None:
        self.metrics.count(event.task or "(malformed)", event.verdict.value)

    def waited(self, resource: str, wait_s: float) -> None:
        self._waits[resource] += wait_s

    def take_waits(self) -> dict[str, float]:
        """The waits per resource since the last call."""
        waits, self._waits = dict(self._waits), defaultdict(float)
        return waits
