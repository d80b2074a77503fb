"""``dispatch top``: a live terminal view of what the dispatchers are doing.

A frame is read from the same sources as ``dispatch status`` minus the task
Scan (too costly to repeat every two seconds): the queues' depth, the reports
live dispatchers publish every few seconds (per-task activity and per-resource
throttle state, :mod:`dispatch.throttle.status`) and the shared throttle items.
Per task it shows the dispatch rate over each dispatcher's last publishing
window and the totals since those dispatchers started; per resource the
configured and effective rate, tokens, tasks in flight against the cap, tasks
waiting and the time spent waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dispatch.ops.overview import (
    OldestMessage,
    QueueDepth,
    oldest_message,
    queue_depth,
    stuck_threads,
)
from dispatch.ops.pausing import describe_paused, list_pauses
from dispatch.store.pauses import Pause
from dispatch.throttle.status import (
    DispatcherReport,
    ResourceStatus,
    combine_resources,
    describe_busiest_keys,
    read_dispatchers,
)

if TYPE_CHECKING:
    from dispatch.core.config import Settings
    from dispatch.store.aws import SyncClients

__all__ = [
    "Frame",
    "TaskActivityRow",
    "describe_age",
    "describe_depth",
    "describe_stuck",
    "read_frame",
    "render",
    "resource_table",
    "run_live",
    "task_rows",
    "task_table",
]


@dataclass(frozen=True, slots=True)
class TaskActivityRow:
    """One task name across every live dispatcher."""

    task: str
    dispatched_per_s: float
    dispatched: int
    succeeded: int
    retried: int
    backpressure: int
    dead_lettered: int
    in_flight: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Frame:
    """One refresh of ``dispatch top``."""

    at: float
    queue: QueueDepth
    dlq: QueueDepth
    oldest_message: OldestMessage
    tasks: list[TaskActivityRow]
    resources: list[ResourceStatus]
    dispatchers: int
    stuck_threads: int = 0
    paused: list[Pause] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the shape is documented in docs/operations.md)."""
        return {
            "at": round(self.at, 3),
            "queue": self.queue.to_dict(),
            "dlq": self.dlq.to_dict(),
            "oldest_message": self.oldest_message.to_dict(),
            "tasks": [t.to_dict() for t in self.tasks],
            "resources": [r.to_dict() for r in self.resources],
            "dispatchers": self.dispatchers,
            "stuck_threads": self.stuck_threads,
            "paused": [p.to_dict() for p in self.paused],
        }


def task_rows(reports: list[DispatcherReport]) -> list[TaskActivityRow]:
    """Per-task activity summed over the dispatchers' reports."""
    totals: dict[str, dict[str, float]] = {}
    for report in reports:
        for name, counts in report.activity.get("tasks", {}).items():
            row = totals.setdefault(name, {})
            for key, value in counts.items():
                row[key] = row.get(key, 0) + float(value)
    return [
        TaskActivityRow(
            task=name,
            dispatched_per_s=round(row.get("dispatched_per_s", 0.0), 3),
            dispatched=int(row.get("dispatched", 0)),
            succeeded=int(row.get("succeeded", 0)),
            retried=int(row.get("retried", 0)),
            backpressure=int(row.get("backpressure", 0)),
            dead_lettered=int(row.get("dead_lettered", 0)),
            in_flight=int(row.get("in_flight", 0)),
        )
        for name, row in sorted(totals.items())
    ]


def read_frame(clients: SyncClients, settings: Settings, *, now: float | None = None) -> Frame:
    """Read one frame: queue depths, live dispatchers' reports, shared throttle state."""
    now = time.time() if now is None else now
    queue = queue_depth(clients.sqs, settings.queue_url)
    dlq = queue_depth(clients.sqs, settings.dlq_url)
    reports = read_dispatchers(clients.dynamodb, settings.table, now=now)
    return Frame(
        at=now,
        queue=queue,
        dlq=dlq,
        oldest_message=oldest_message(queue, reports),
        tasks=task_rows(reports),
        resources=combine_resources(
            clients.dynamodb, settings.table, reports, queued=queue.visible + queue.delayed
        ),
        dispatchers=sum(1 for r in reports if r.live),  # a stopped one's figures still count
        stuck_threads=stuck_threads(reports),
        paused=list_pauses(clients.dynamodb, settings).all(),
    )


def describe_depth(label: str, depth: QueueDepth) -> str:
    """``queue: visible 3, in flight 1, delayed 0``."""
    return f"{label}: visible {depth.visible}, in flight {depth.in_flight}, delayed {depth.delayed}"


def describe_age(oldest: OldestMessage) -> str:
    """The oldest message's age and where the figure comes from, in words."""
    if oldest.source == "empty":
        return "oldest message: none (queue empty)"
    if oldest.age_s is None:
        return "oldest message: unknown (no live dispatcher received a message lately)"
    return (
        f"oldest message: {oldest.age_s:.1f} s old when received "
        f"(max over {oldest.dispatchers} live dispatcher(s), last publishing window)"
    )


def resource_table(resources: list[ResourceStatus]) -> Table:
    """Per resource: rates, tokens, in flight vs cap, waiting, deferred, the backlog and
    how long it takes to drain at the limits, time spent waiting."""
    table = Table(title="throttled resources (all live dispatchers)", title_justify="left")
    for column in ("resource", "rate: effective / limit", "tokens", "in flight / cap", "waiting",
                   "deferred", "backlog", "drains in", "waited", "mean wait", "backpressure",
                   "dispatchers"):  # fmt: skip
        table.add_column(column, justify="left" if column == "resource" else "right", no_wrap=True)
    for r in resources:
        limit = f"{r.configured_rate_per_s:g}/s" if r.configured_rate_per_s else "-"
        effective = f"{r.effective_rate_per_s:.3g}/s" if r.effective_rate_per_s else "-"
        cap = str(r.max_concurrency) if r.max_concurrency else "-"
        table.add_row(
            r.name,
            f"{effective} / {limit}",
            f"{r.tokens:.1f}" if r.tokens is not None else "-",
            f"{r.in_flight} / {cap}",
            str(r.waiting),
            str(r.deferred),
            str(r.backlog),
            _describe_drain(r.drain_s),
            str(r.waits),
            f"{r.mean_wait_s:.2f} s",
            str(r.backpressure_signals),
            str(r.dispatchers),
        )
    return table


def _describe_drain(drain_s: float | None) -> str:
    """``12 s``, ``4.5 min``, ``-`` (no limit to drain at)."""
    if drain_s is None:
        return "-"
    if drain_s < 120:
        return f"{drain_s:.0f} s"
    return f"{drain_s / 60:.1f} min" if drain_s < 7200 else f"{drain_s / 3600:.1f} h"


def task_table(rows: list[TaskActivityRow]) -> Table:
    """Per task: dispatch rate, totals by outcome, in flight."""
    table = Table(title="tasks (since the live dispatchers started)", title_justify="left")
    for column in ("task", "dispatched/s", "dispatched", "succeeded", "retried", "backpressure",
                   "dead-lettered", "in flight"):  # fmt: skip
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=True)
    for t in rows:
        table.add_row(
            t.task,
            f"{t.dispatched_per_s:.2f}",
            str(t.dispatched),
            str(t.succeeded),
            str(t.retried),
            str(t.backpressure),
            str(t.dead_lettered),
            str(t.in_flight),
        )
    return table


def describe_stuck(count: int) -> str:
    """`` · 2 stuck handler thread(s)`` when sync handlers outlive their timeouts."""
    return f" · {count} stuck handler thread(s)" if count else ""


def render(frame: Frame) -> Group:
    """The frame as rich renderables: a header, the task table, the resource table."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(frame.at))
    header = Text(
        "\n".join(
            (
                f"dispatch top · {stamp} UTC · {frame.dispatchers} live dispatcher(s)"
                + describe_stuck(frame.stuck_threads),
                describe_depth("queue", frame.queue),
                describe_depth("dlq", frame.dlq),
                describe_age(frame.oldest_message),
                describe_paused(frame.paused),
            )
        )
    )
    parts: list[Any] = [header]
    if frame.tasks:
        parts.append(task_table(frame.tasks))
    else:
        parts.append(Text("tasks: none reported by a live dispatcher"))
    if frame.resources:
        parts.append(resource_table(frame.resources))
        parts.extend(Text(line) for line in describe_busiest_keys(frame.resources))
    else:
        parts.append(Text("resources: none reported by a live dispatcher"))
    return Group(*parts)


def run_live(
    read: Callable[[], Frame],
    *,
    interval_s: float,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw ``read()`` every ``interval_s`` seconds until interrupted (Ctrl-C)."""
    with Live(render(read()), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                sleep(interval_s)
                live.update(render(read()), refresh=True)
        except KeyboardInterrupt:
            return
