"""What each console page reads, with the functions ``dispatch top``, ``tasks`` and ``dlq`` use.

Every function here is synchronous (boto3) and is run in a worker thread by the
pages. Whatever a page shows of a task's arguments, result or error first goes
through the log redactor (:mod:`dispatch.core.redact`), so a value the logs would
hide is hidden on the page too.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from dispatch.core.redact import redactor
from dispatch.ops.dlq import DeadLetterEntry, iter_dead_letters, release
from dispatch.ops.top import Frame, read_frame
from dispatch.store.state import SyncStateStore

if TYPE_CHECKING:
    from dispatch.core.config import Settings
    from dispatch.producer.enqueue import Queue
    from dispatch.store.aws import SyncClients
    from dispatch.throttle.status import ResourceStatus

__all__ = [
    "DEAD_LETTERS_SHOWN",
    "DeadLetterGroup",
    "History",
    "TaskView",
    "dead_letter_groups",
    "redact",
    "task_view",
]

DEAD_LETTERS_SHOWN: Final = 200  # dead letters a page reads (each read hides it a moment)
HISTORY_POINTS: Final = 90  # samples the live chart keeps (3 minutes at one per 2 s)
_MIN_SAMPLE_GAP_S: Final = 1.0
_REDACT: Final = redactor()


def redact(value: Any) -> Any:
    """``value`` as the logs would show it: secret keys and ``word=value`` pairs hidden."""
    redacted: Any = _REDACT(None, "console", {"value": value})["value"]
    return redacted


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    started: dict[str, int]
    waits: dict[str, int]
    wait_total_s: dict[str, float]
    waiting: dict[str, int]


class History:
    """Recent frames' per-resource counters, for the achieved rate and the live chart.

    The dispatchers publish totals (tasks started, waits); the rate is the change
    between two frames over the time between them.
    """

    def __init__(self, *, points: int = HISTORY_POINTS) -> None:
        self._samples: deque[_Sample] = deque(maxlen=points)
        self._lock = threading.Lock()

    def add(self, frame: Frame) -> None:
        """Note a frame (frames less than a second after the last are not kept)."""
        sample = _Sample(
            at=frame.at,
            started={r.name: r.started for r in frame.resources},
            waits={r.name: r.waits for r in frame.resources},
            wait_total_s={r.name: r.wait_total_s for r in frame.resources},
            waiting={r.name: r.waiting for r in frame.resources},
        )
        with self._lock:
            if self._samples and sample.at - self._samples[-1].at < _MIN_SAMPLE_GAP_S:
                return
            self._samples.append(sample)

    def series(self, name: str) -> list[dict[str, float]]:
        """``[{"t", "rate_per_s", "waiting", "mean_wait_s"}]`` for a resource, oldest first."""
        with self._lock:
            samples = list(self._samples)
        points: list[dict[str, float]] = []
        for before, after in itertools.pairwise(samples):
            if name not in after.started or name not in before.started:
                continue
            span = after.at - before.at
            started = after.started[name] - before.started[name]
            waits = after.waits[name] - before.waits[name]
            waited = after.wait_total_s[name] - before.wait_total_s[name]
            points.append(
                {
                    "t": round(after.at, 3),
                    "rate_per_s": round(max(started, 0) / span, 3),
                    "waiting": after.waiting[name],
                    "mean_wait_s": round(waited / waits, 4) if waits > 0 else 0.0,
                }
            )
        return points

    def achieved_rate(self, name: str) -> float | None:
        """Tasks started per second over the kept frames (None: too few frames yet)."""
        with self._lock:
            held = [s for s in self._samples if name in s.started]
        if len(held) < 2 or held[-1].at <= held[0].at:
            return None
        started = held[-1].started[name] - held[0].started[name]
        return round(max(started, 0) / (held[-1].at - held[0].at), 3)


def live_frame(clients: SyncClients, settings: Settings, history: History) -> Frame:
    """A frame as ``dispatch top`` reads it, noted in ``history``."""
    frame = read_frame(clients, settings)
    history.add(frame)
    return frame


def live_json(frame: Frame, history: History) -> dict[str, Any]:
    """What the live chart polls: the frame's figures and each resource's recent series."""
    return {
        "at": round(frame.at, 3),
        "queue": frame.queue.to_dict(),
        "dlq": frame.dlq.to_dict(),
        "dispatchers": frame.dispatchers,
        "oldest_message": frame.oldest_message.to_dict(),
        "resources": [
            {
                "name": r.name,
                "limit_per_s": r.configured_rate_per_s,
                "effective_rate_per_s": r.effective_rate_per_s,
                "achieved_rate_per_s": history.achieved_rate(r.name),
                "waiting": r.waiting,
                "in_flight": r.in_flight,
                "max_concurrency": r.max_concurrency,
                "points": history.series(r.name),
            }
            for r in frame.resources
        ],
    }


def resource_rows(resources: list[ResourceStatus], history: History) -> list[dict[str, Any]]:
    """Per resource: its JSON figures plus the achieved rate over the recent frames."""
    return [r.to_dict() | {"achieved_rate_per_s": history.achieved_rate(r.name)} for r in resources]


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    """The dead letters of one reason: how many, of which tasks, and each one."""

    reason: str
    entries: list[dict[str, Any]]
    tasks: dict[str, int] = field(default_factory=dict)


def _shown_letter(entry: DeadLetterEntry) -> dict[str, Any]:
    """A dead letter as a page shows it: redacted, its body decoded when it is JSON."""
    shown: dict[str, Any] = redact(entry.to_dict())
    try:
        body: Any = json.loads(entry.body)
    except ValueError:
        body = entry.body
    shown["body"] = json.dumps(redact(body), indent=2, sort_keys=True, ensure_ascii=False)
    shown["failure"] = redact(entry.failure)
    shown["sent_at"] = entry.sent_at
    return shown


def read_dead_letters(
    clients: SyncClients, settings: Settings, *, limit: int = DEAD_LETTERS_SHOWN
) -> list[DeadLetterEntry]:
    """Up to ``limit`` dead letters, made visible again at once."""
    entries = list(iter_dead_letters(clients, settings, limit=limit))
    release(clients, settings, entries)
    return entries


def dead_letter_groups(entries: list[DeadLetterEntry]) -> list[DeadLetterGroup]:
    """Dead letters grouped by reason, the largest group first."""
    by_reason: dict[str, list[DeadLetterEntry]] = {}
    for entry in entries:
        by_reason.setdefault(entry.reason or "(none)", []).append(entry)
    groups = [
        DeadLetterGroup(
            reason=reason,
            entries=[_shown_letter(e) for e in found],
            tasks=dict(Counter(e.task or "(unknown)" for e in found).most_common()),
        )
        for reason, found in by_reason.items()
    ]
    return sorted(groups, key=lambda g: (-len(g.entries), g.reason))


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task as its page shows it (every part redacted)."""

    record: dict[str, Any]
    timings: list[tuple[str, str]]
    error: dict[str, str] | None
    result: str | None
    dead_letter: dict[str, Any] | None
    group: dict[str, Any] | None
    cancellable: bool


def _timings(record: dict[str, Any], raw: Any) -> list[tuple[str, str]]:
    """(label, value) rows: when it was created, started, failed, finished, and how long."""
    rows = [
        (label, str(record[name]))
        for label, name in (
            ("created", "created_at"),
            ("started (last attempt)", "started_at"),
            ("first failure", "first_failure_at"),
            ("last failure", "last_failure_at"),
            ("next attempt", "next_attempt_at"),
            ("finished", "finished_at"),
            ("updated", "updated_at"),
            ("redriven", "redriven_at"),
            ("lease until", "lease_until"),
        )
        if name in record
    ]
    if raw.created_at is not None and raw.started_at is not None:
        rows.append(("waited before its last start", f"{raw.started_at - raw.created_at:.3f} s"))
    if raw.started_at is not None and raw.finished_at is not None:
        rows.append(("last attempt ran", f"{raw.finished_at - raw.started_at:.3f} s"))
    return rows


def task_view(queue: Queue, task_id: str) -> TaskView | None:
    """The record of ``task_id`` (None when there is none), its dead letter if it is on the
    dead-letter queue, and its group's progress when it waits for one."""
    from dispatch.producer.compose import group_progress

    clients, settings = queue.sync_clients(), queue.settings
    found = SyncStateStore(clients.dynamodb, settings.table).get(task_id)
    if found is None:
        return None
    record = found.to_dict()
    error = record.pop("last_error", None)
    result = record.pop("result", None)
    letter = None
    if found.status.value == "dead":
        letter = next(
            (e for e in read_dead_letters(clients, settings) if e.task_id == task_id), None
        )
    return TaskView(
        record=redact(record),
        timings=_timings(record, found),
        error=redact(error),
        result=None if result is None else json.dumps(redact(result), indent=2, sort_keys=True),
        dead_letter=None if letter is None else _shown_letter(letter),
        group=group_progress(task_id, queue=queue),
        cancellable=found.status.value in ("queued", "retrying")
        or (found.status.value == "running" and not found.cancel_requested),
    )


def now() -> float:
    """The time pages show ages against."""
    return time.time()
