"""What one dispatcher did per task, kept in memory and published for ``dispatch top``.

A dispatcher counts, per task name, the tasks it handed to workers, their
outcomes and how many run right now, and notes the age of the oldest message it
received (from SQS's ``SentTimestamp``). Every publish (docs/operations.md)
takes a :meth:`TaskActivity.snapshot`: totals since the dispatcher started, the
dispatch rate over the window since the previous snapshot, and the oldest
message age seen in that window. The window then starts again.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = ["TaskActivity"]

# The metric names the dispatcher counts under (dispatch.loop.metrics) → our field names.
# Another name is counted too, under its snake_case form, so a new metric never breaks this.
_FIELDS: Final = {
    "Dispatched": "dispatched",
    "Succeeded": "succeeded",
    "Retried": "retried",
    "Backpressure": "backpressure",
    "DeadLettered": "dead_lettered",
}
_IN_FLIGHT: Final = "in_flight"


def _field(metric: str) -> str:
    known = _FIELDS.get(metric)
    if known is not None:
        return known
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in metric).lstrip("_")


class TaskActivity:
    """Per-task counters and the oldest received message's age, for one dispatcher."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tasks: dict[str, Counter[str]] = {}
        self._window_start = clock()
        self._window_dispatched: Counter[str] = Counter()
        self._oldest_age_s: float | None = None

    def _counts(self, task: str) -> Counter[str]:
        counts = self._tasks.get(task)
        if counts is None:
            counts = self._tasks[task] = Counter({name: 0 for name in _FIELDS.values()})
            counts[_IN_FLIGHT] = 0
        return counts

    def count(self, task: str, metric: str) -> None:
        """One ``Dispatched``/``Succeeded``/``Retried``/``Backpressure``/``DeadLettered``."""
        name = _field(metric)
        self._counts(task)[name] += 1
        if name == "dispatched":
            self._window_dispatched[task] += 1

    @contextlib.contextmanager
    def running(self, task: str) -> Iterator[None]:
        """Count the task in flight (handed to a worker) for the duration of the block."""
        counts = self._counts(task)
        counts[_IN_FLIGHT] += 1
        try:
            yield
        finally:
            counts[_IN_FLIGHT] -= 1

    def saw_message_age(self, age_s: float) -> None:
        """A message was received ``age_s`` seconds after it was sent."""
        if self._oldest_age_s is None or age_s > self._oldest_age_s:
            self._oldest_age_s = age_s

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready totals and window figures; starts the next window."""
        now = self._clock()
        window_s = max(now - self._window_start, 1e-3)
        data = {
            "window_s": round(window_s, 3),
            "oldest_message_age_s": (
                None if self._oldest_age_s is None else round(self._oldest_age_s, 3)
            ),
            "tasks": {
                name: dict(counts)
                | {"dispatched_per_s": round(self._window_dispatched[name] / window_s, 3)}
                for name, counts in sorted(self._tasks.items())
            },
        }
        self._window_start = now
        self._window_dispatched = Counter()
        self._oldest_age_s = None
        return data
