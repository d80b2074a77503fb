"""Publishing: a dispatcher's throttle state and activity, for logs, metrics and status views.

Every few seconds each resource's throttle state is logged (at info when the
resource had activity since the last line, at debug when idle) and, when anything
happened, written to the table with the per-task activity (``dispatch status``
and ``dispatch top`` read it); EMF metrics are flushed on their own period. On a
clean stop the dispatcher retires: its last report is written marked
``stopped_at``, so readers stop counting it as live at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from dispatch.core.errors import DispatchError
from dispatch.loop.activity import TaskActivity
from dispatch.loop.metrics import FLUSH_EVERY_S
from dispatch.loop.observe import MetricsObserver
from dispatch.store.aws import aws_errors
from dispatch.store.codec import number
from dispatch.throttle.limits import ThrottleSnapshot
from dispatch.throttle.status import PUBLISH_EVERY_S, publish_params

__all__ = ["Publisher"]

log = structlog.get_logger("dispatch.loop.publish")


class Publisher:
    """Publishes one dispatcher's state."""

    def __init__(
        self,
        dynamodb: Any,
        *,
        table: str,
        owner: str,
        snapshots: Callable[[], tuple[ThrottleSnapshot, ...]],
        lined_up: Callable[[], dict[str, dict[str, int]]],
        activity: TaskActivity,
        metrics: MetricsObserver | None,
        clock: Callable[[], float],
        stuck_threads: Callable[[], int] = lambda: 0,
        busiest_keys: Callable[[], dict[str, list[dict[str, Any]]]] = dict,
    ) -> None:
        self._dynamodb = dynamodb
        self._busiest_keys = busiest_keys
        self._stuck_threads = stuck_threads
        self._table = table
        self._owner = owner
        self._snapshots = snapshots
        self._lined_up = lined_up
        self._activity = activity
        self._metrics = metrics
        self._clock = clock
        self._last_published: dict[str, Any] | None = None
        self._last_logged: dict[str, dict[str, Any]] = {}  # resource -> its last state line

    async def publish_forever(self) -> None:
        """Publish every :data:`PUBLISH_EVERY_S`."""
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            await self.publish()

    async def flush_metrics_forever(self) -> None:
        """Flush the EMF metrics every :data:`FLUSH_EVERY_S` (nothing when they are off)."""
        if self._metrics is None:
            return
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush_metrics()

    async def flush_metrics(self) -> None:
        """Write the EMF documents now."""
        if self._metrics is None:
            return
        await self._metrics.metrics.flush(
            self._snapshots(), self._metrics.take_waits(), self._busiest_keys()
        )

    async def publish(self) -> None:
        """Log each resource's throttle state; publish it and the per-task activity."""
        await self._publish(stopped=False)

    async def retire(self) -> None:
        """The last publish, on a clean stop: the report is written marked ``stopped_at``
        (when there is one to mark), so ``dispatch status``/``top`` stop counting this
        dispatcher as live now rather than when its report goes stale."""
        await self._publish(stopped=True)

    async def _publish(self, *, stopped: bool) -> None:
        snapshots = self._snapshots()
        lined_up = self._lined_up()
        for snapshot in snapshots:
            self._log_state(snapshot, lined_up.get(snapshot.name, {}))
        activity = self._activity.snapshot()
        stuck = self._stuck_threads()
        if stuck:
            # Handler threads still running after their attempts ended: an operator
            # sees them in `dispatch status` and `top` (and in the logs) at once.
            activity["stuck_threads"] = stuck
            log.warning("handler_threads_stuck", count=stuck)
        news = _has_news(activity, self._last_published, snapshots, lined_up)
        # Retiring marks a report that was written before, even with no news since.
        if not news and not (stopped and self._last_published is not None):
            return  # an idle dispatcher writes nothing: idle costs stay one request a tick
        self._last_published = activity
        now = self._clock()
        put, directory = publish_params(
            self._table,
            self._owner,
            snapshots,
            lined_up,
            now,
            activity=activity,
            keys=self._busiest_keys(),
        )
        if stopped:
            put["Item"]["stopped_at"] = number(now)
        try:
            with aws_errors("PutItem"):
                await self._dynamodb.put_item(**put)
                await self._dynamodb.update_item(**directory)
        except DispatchError as exc:
            log.warning("throttle_state_not_published", error=str(exc))

    def _log_state(self, snapshot: ThrottleSnapshot, lined_up: dict[str, int]) -> None:
        """One ``throttle_state`` line: at info when the resource had activity since its
        last line (tasks started, waited or in flight, messages lined up), else at debug,
        so an idle dispatcher stays quiet."""
        fields = _snapshot_fields(snapshot, lined_up)
        last = self._last_logged.get(snapshot.name)
        before = (0, 0) if last is None else (last["started"], last["waits"])
        moved = before != (fields["started"], fields["waits"])
        busy = moved or any(fields[k] for k in ("in_flight", "waiting", "deferred"))
        self._last_logged[snapshot.name] = fields
        if busy:
            log.info("throttle_state", **fields)
        else:
            log.debug("throttle_state", **fields)


def _has_news(
    activity: dict[str, Any],
    last: dict[str, Any] | None,
    snapshots: tuple[ThrottleSnapshot, ...],
    lined_up: dict[str, dict[str, int]],
) -> bool:
    """Whether a dispatcher has anything to publish: a message received or a task
    counted since it last published, or work in flight, waiting or deferred."""
    if activity.get("oldest_message_age_s") is not None or activity.get("stuck_threads"):
        return True
    if activity.get("tasks") != (last or {}).get("tasks", {}):
        return True  # counted something (a dispatch also moves dispatched_per_s)
    if any(counts.get("in_flight") for counts in activity.get("tasks", {}).values()):
        return True
    if any(counts.get("waiting") or counts.get("deferred") for counts in lined_up.values()):
        return True
    return any(s.in_flight for s in snapshots)


def _snapshot_fields(snapshot: ThrottleSnapshot, lined_up: dict[str, int]) -> dict[str, Any]:
    return {
        "resource": snapshot.name,
        "configured_rate_per_s": snapshot.configured_rate_per_s,
        "effective_rate_per_s": snapshot.effective_rate_per_s,
        "in_flight": snapshot.in_flight,
        "max_concurrency": snapshot.max_concurrency,
        "started": snapshot.started,
        "waiting": lined_up.get("waiting", 0),
        "deferred": lined_up.get("deferred", 0),
        "waits": snapshot.waits,
        "mean_wait_s": round(snapshot.mean_wait_s, 4),
    }
