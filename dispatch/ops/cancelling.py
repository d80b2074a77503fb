"""``dispatch cancel``: one task by id, or in bulk by filter (--task, --status, --since).

Queued tasks are not in the listing indexes (``listed`` is written only for
running, retrying, dead and cancelled records, and for running ones only when
their timeout is over a minute: docs/performance.md, "Listing"), so the tasks to
cancel are found by one paginated **Scan** of the table, filtered on the server to
task records of the asked statuses (and task name, and time): it reads every item
of the table once, whatever matches, at 1 read request unit per 8 KB read
(eventually consistent), e.g. about 37,000 units (under a US cent on demand) for a
million records of 300 bytes. Indexing every queued task instead would cost two
more index writes for every task enqueued, to save a read that only a bulk cancel
makes.

Each match is then cancelled with its own conditional write, on the status the
Scan saw (a queued task that started running meanwhile is not cancelled as
queued; a running one gets a cancel request, :func:`dispatch.producer.status.request_cancel`;
one that already has a request does not match).
So an interrupted run can be run again: what was cancelled no longer matches,
nothing is cancelled twice, and nothing that left the filter is touched.
``dry_run`` only counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.config import Settings, current_user
from dispatch.core.errors import DispatchError
from dispatch.core.record import Status
from dispatch.producer import status as records
from dispatch.store.aws import aws_errors, translate_error
from dispatch.store.codec import number
from dispatch.store.conditional import is_condition_failure

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "CANCELLABLE",
    "BulkCancelReport",
    "Match",
    "cancel_by_filter",
    "cancel_matching",
    "cancel_one",
    "scan_matching",
]

CANCELLABLE: Final = (Status.QUEUED, Status.RETRYING, Status.RUNNING)
"""The statuses a bulk cancel selects from (a finished task stays as it is)."""
_TIME_OF: Final = {
    Status.QUEUED: "created_at",  # enqueued
    Status.RETRYING: "updated_at",  # its last attempt failed
    Status.RUNNING: "started_at",  # its attempt started
}


@dataclass(frozen=True, slots=True)
class Match:
    """One task record the filter selected, as the Scan saw it."""

    task_id: str
    task: str
    status: Status


@dataclass(slots=True)
class BulkCancelReport:
    """What a bulk cancel found and did."""

    dry_run: bool
    scanned: int = 0  # table items read
    matched: Counter[str] = field(default_factory=Counter)  # by status
    cancelled: int = 0  # queued or retrying, now cancelled
    requested: int = 0  # running, now asked to stop (their dispatcher cancels them)
    skipped: int = 0  # changed state between the Scan and the write: left alone

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json``."""
        return {
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "matched": {s.value: self.matched.get(s.value, 0) for s in CANCELLABLE},
            "cancelled": self.cancelled,
            "cancel_requested": self.requested,
            "skipped": self.skipped,
        }


def _scan_params(
    table: str, *, statuses: tuple[Status, ...], task: str | None, since: float | None
) -> dict[str, Any]:
    names = {"#pk": c.TABLE_HASH_KEY, "#s": "status", "#t": "task"}
    values: dict[str, Any] = {":prefix": {"S": c.TASK_KEY_PREFIX}}
    status_names = []
    for i, status in enumerate(statuses):
        values[f":s{i}"] = {"S": status.value}
        status_names.append(f":s{i}")
    condition = f"begins_with(#pk, :prefix) AND #s IN ({', '.join(status_names)})"
    if task is not None:
        condition += " AND #t = :task"
        values[":task"] = {"S": task}
    if Status.RUNNING in statuses:  # a running task already asked to stop is done here
        condition += " AND (#s <> :running OR attribute_not_exists(cancel_requested))"
        values[":running"] = {"S": Status.RUNNING.value}
    if since is not None:
        values[":since"] = number(since)
        times = []
        for i, status in enumerate(statuses):
            names[f"#at{i}"] = _TIME_OF[status]
            times.append(
                f"#at{i} >= :since" if len(statuses) == 1 else f"(#s = :s{i} AND #at{i} >= :since)"
            )
        condition += f" AND {times[0]}" if len(times) == 1 else f" AND ({' OR '.join(times)})"
    projected = {"#pk", "#s", "#t", "task_id"}
    return {
        "TableName": table,
        "FilterExpression": condition,
        "ProjectionExpression": ", ".join(sorted(projected)),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def scan_matching(
    client: DynamoDBClient,
    table: str,
    *,
    statuses: tuple[Status, ...],
    task: str | None,
    since: float | None,
    scanned: Callable[[int], object] = lambda _n: None,
) -> Iterator[Match]:
    """Every task record in one of ``statuses`` (of ``task``; entered at or after
    ``since``), by one paginated Scan; ``scanned(n)`` after each page of ``n`` items."""
    params = _scan_params(table, statuses=statuses, task=task, since=since)
    while True:
        with aws_errors("Scan"):
            answer = client.scan(**params)
        scanned(int(answer.get("ScannedCount", 0)))
        for item in answer.get("Items", []):
            task_id = (
                item.get("task_id", {}).get("S")
                or item[c.TABLE_HASH_KEY]["S"][len(c.TASK_KEY_PREFIX) :]
            )
            yield Match(task_id, item.get("task", {}).get("S", ""), Status(item["status"]["S"]))
        last_key = answer.get("LastEvaluatedKey")
        if not last_key:
            return
        params["ExclusiveStartKey"] = last_key


def _cancel_waiting(client: DynamoDBClient, table: str, match: Match, now: float) -> bool:
    """Cancel a queued or retrying task if it still is in the status the Scan saw."""
    params = records.cancel_waiting_params(table, match.task_id, now, statuses=(match.status,))
    try:
        client.update_item(**params)
    except ClientError as exc:
        if is_condition_failure(exc):
            return False
        raise translate_error(exc, "UpdateItem") from exc
    return True


def cancel_matching(
    client: DynamoDBClient,
    settings: Settings,
    *,
    statuses: tuple[Status, ...],
    task: str | None,
    since: float | None,
    by: str,
    now: float,
    dry_run: bool,
    progress: Callable[[int], object] = lambda _n: None,
) -> BulkCancelReport:
    """Find the tasks the filter selects and (unless ``dry_run``) cancel each one:
    a queued or retrying task at once, a running one by request."""
    report = BulkCancelReport(dry_run=dry_run)

    def scanned(n: int) -> None:
        report.scanned += n
        progress(n)

    found = scan_matching(
        client, settings.table, statuses=statuses, task=task, since=since, scanned=scanned
    )
    for match in found:
        report.matched[match.status.value] += 1
        if dry_run:
            continue
        if match.status is not Status.RUNNING:
            if _cancel_waiting(client, settings.table, match, now):
                report.cancelled += 1
            else:
                report.skipped += 1
            continue
        try:
            records.request_cancel(
                client, settings.table, match.task_id, queue_url=settings.queue_url, by=by, now=now
            )
        except DispatchError:  # no longer running since the Scan saw it: left alone
            report.skipped += 1
            continue
        report.requested += 1
    return report


def cancel_one(task_id: str, *, by: str | None, as_json: bool) -> str:
    """``dispatch cancel TASK_ID``: what to print (the record as JSON with ``as_json``)."""
    from dispatch.producer.cancelling import cancel

    record = cancel(task_id, by=by)
    if as_json:
        return json.dumps(record.to_dict())
    if record.status is Status.RUNNING:
        return (
            f"{task_id}: running, cancel requested (by {record.cancel_requested_by}): "
            "the dispatcher running it cancels it within 5 s"
        )
    return f"{task_id}: {record.status.value}"


def cancel_by_filter(
    *,
    task: str | None,
    status: str | None,
    since: float | None,
    by: str | None,
    dry_run: bool,
    as_json: bool,
    progress: Callable[[int], object],
) -> str:
    """``dispatch cancel --task/--status/--since``: cancel (or count) and say what."""
    from dispatch.producer.enqueue import default_queue

    queue = default_queue()
    report = cancel_matching(
        queue.sync_clients().dynamodb,
        queue.settings,
        statuses=CANCELLABLE if status is None else (Status(status),),
        task=task,
        since=since,
        by=by or current_user(),
        now=time.time(),
        dry_run=dry_run,
        progress=progress,
    )
    if as_json:
        return json.dumps(report.to_dict())
    counts = ", ".join(f"{name} {n}" for name, n in report.to_dict()["matched"].items())
    found = f"matched: {counts} ({report.scanned} table items scanned)"
    if dry_run:
        return f"{found}\ndry run: nothing cancelled"
    return (
        f"{found}\ncancelled {report.cancelled}, cancel requested {report.requested} "
        f"(running: cancelled by their dispatchers within 5 s), skipped {report.skipped} "
        "(no longer in the status seen)"
    )
