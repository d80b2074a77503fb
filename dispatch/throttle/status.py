"""What every dispatcher is doing, published to the table and read back.

"Am I throttled?" must have an answer without attaching to a process. Each
dispatcher writes, every few seconds, one item ``disp#<dispatcher id>`` with its
per-resource throttle snapshot (rates, tokens, tasks in flight and waiting, time
spent waiting) and its per-task activity (:mod:`dispatch.loop.activity`: tasks
dispatched and their outcomes, the oldest message age it saw), and adds its id
to the ``dispatchers`` directory item. ``dispatch status`` and ``dispatch top``
read the directory, the live dispatcher items (:func:`read_dispatchers`), and
the shared ``bucket#``/``slots#`` items, and sum them per resource and task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from dispatch.core import constants as c
from dispatch.store.aws import aws_errors
from dispatch.store.codec import number, read_number
from dispatch.store.state import chunks
from dispatch.throttle.limits import ThrottleSnapshot

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "PUBLISH_EVERY_S",
    "DispatcherReport",
    "ResourceStatus",
    "busiest_first",
    "combine_resources",
    "describe_busiest_keys",
    "publish_params",
    "read_dispatchers",
    "read_status",
    "sum_busiest_keys",
]

PUBLISH_EVERY_S: Final = 5.0
_LIVE_FOR_S: Final = 3 * PUBLISH_EVERY_S
_DIRECTORY_KEY: Final = {c.TABLE_HASH_KEY: {"S": c.DISPATCHER_DIRECTORY_KEY}}


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    """One resource across every live dispatcher."""

    name: str
    configured_rate_per_s: float | None
    effective_rate_per_s: float | None
    tokens: float | None
    in_flight: int
    max_concurrency: int | None
    slots_held: int | None
    waiting: int
    waits: int
    wait_total_s: float
    started: int
    backpressure_signals: int
    dispatchers: int
    deferred: int = 0
    """Messages the dispatchers hid until their turn (not counted as visible)."""
    queue_share: float = 0.0
    """The share of the messages the dispatchers received that were for this resource."""
    queued: int = 0
    """Messages on the queue (visible or delayed) expected to be this resource's:
    ``queue_share`` of them."""
    mean_hold_s: float | None = None
    busiest_keys: list[dict[str, Any]] = field(default_factory=list)
    """A keyed resource's busiest keys over the dispatchers (most waiting and running):
    ``{"key", "waiting", "in_flight", "started"}``."""

    @property
    def mean_wait_s(self) -> float:
        """Average wait of the tasks that waited."""
        return self.wait_total_s / self.waits if self.waits else 0.0

    @property
    def backlog(self) -> int:
        """Tasks lined up for the resource: waiting, deferred, and its share of the queue."""
        return self.waiting + self.deferred + self.queued

    @property
    def drain_s(self) -> float | None:
        """Seconds to start the whole backlog at the limits (the larger of the rate's and
        the cap's bound); None for a resource with neither limit."""
        if self.backlog == 0:
            return 0.0
        bounds: list[float] = []
        rate_per_s = self.effective_rate_per_s or self.configured_rate_per_s
        if rate_per_s:
            bounds.append(self.backlog / rate_per_s)
        if self.max_concurrency:
            hold_s = self.mean_hold_s if self.mean_hold_s is not None else 1.0
            bounds.append(math.ceil(self.backlog / self.max_concurrency) * hold_s)
        return max(bounds) if bounds else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        drain_s = self.drain_s
        return asdict(self) | {
            "mean_wait_s": round(self.mean_wait_s, 4),
            "backlog": self.backlog,
            "drain_s": None if drain_s is None else round(drain_s, 1),
        }


@dataclass(frozen=True, slots=True)
class DispatcherReport:
    """What one live dispatcher last published."""

    owner: str
    published_at: float | None
    resources: dict[str, dict[str, Any]]
    activity: dict[str, Any]  # dispatch.loop.activity.TaskActivity.snapshot(); {} if not published
    stopped_at: float | None = None
    """When it retired on a clean stop: its last figures stay readable while the report
    is fresh, but it no longer counts as a live dispatcher."""

    @property
    def live(self) -> bool:
        """False once the dispatcher has stopped (its report may still be fresh)."""
        return self.stopped_at is None


def publish_params(
    table: str,
    owner: str,
    snapshots: Iterable[ThrottleSnapshot],
    lined_up: Mapping[str, Mapping[str, int]],
    now: float,
    *,
    activity: Mapping[str, Any] | None = None,
    keys: Mapping[str, list[dict[str, Any]]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """PutItem for this dispatcher's item and UpdateItem adding it to the directory
    (``keys``: a keyed resource's busiest keys here, published with it)."""
    resources = {
        snap.name: asdict(snap) | {key: int(n) for key, n in lined_up.get(snap.name, {}).items()}
        for snap in snapshots
    }
    for name, rows in (keys or {}).items():
        if name in resources and rows:
            resources[name]["keys"] = rows
    item = {
        c.TABLE_HASH_KEY: {"S": f"{c.DISPATCHER_KEY_PREFIX}{owner}"},
        "owner": {"S": owner},
        "live_until": number(now + _LIVE_FOR_S),
        "published_at": number(now),
        "resources": {"S": json.dumps(resources, separators=(",", ":"))},
        "activity": {"S": json.dumps(dict(activity or {}), separators=(",", ":"))},
        c.TABLE_TTL_ATTRIBUTE: number(int(now) + 3600),
    }
    put = {"TableName": table, "Item": item}
    directory = {
        "TableName": table,
        "Key": _DIRECTORY_KEY,
        "UpdateExpression": "ADD members :me",
        "ExpressionAttributeValues": {":me": {"SS": [owner]}},
    }
    return put, directory


def read_status(
    client: DynamoDBClient, table: str, *, now: float, queued: int = 0
) -> list[ResourceStatus]:
    """Every resource some live dispatcher reported, summed over dispatchers, with the
    shared bucket's tokens and the cap's held slots. Forgets dead dispatchers.
    ``queued`` is the queue's visible and delayed messages (their share per resource
    goes into the backlog)."""
    return combine_resources(client, table, read_dispatchers(client, table, now=now), queued=queued)


def read_dispatchers(client: DynamoDBClient, table: str, *, now: float) -> list[DispatcherReport]:
    """The last fresh report of every dispatcher; forgets stale ones from the directory.

    A dispatcher that retired on a clean stop left a last report marked ``stopped_at``:
    it is returned (its figures are what just ran) with ``live`` False, and forgotten
    like any other once stale."""
    with aws_errors("GetItem"):
        directory = client.get_item(TableName=table, Key=_DIRECTORY_KEY, ConsistentRead=True)
    members = sorted(directory.get("Item", {}).get("members", {}).get("SS", []))
    reports: list[DispatcherReport] = []
    dead: list[str] = []
    for chunk in chunks(members, c.DDB_MAX_BATCH_GET):
        keys = [{c.TABLE_HASH_KEY: {"S": f"{c.DISPATCHER_KEY_PREFIX}{m}"}} for m in chunk]
        with aws_errors("BatchGetItem"):
            answer = client.batch_get_item(RequestItems={table: {"Keys": keys}})
        found = {i["owner"]["S"]: i for i in answer.get("Responses", {}).get(table, [])}
        for owner in chunk:
            item = found.get(owner)
            if item is None or read_number(item["live_until"]) < now:
                dead.append(owner)
                continue
            reports.append(
                DispatcherReport(
                    owner=owner,
                    published_at=read_number(item["published_at"])
                    if "published_at" in item
                    else None,
                    resources=json.loads(item["resources"]["S"]),
                    activity=json.loads(item["activity"]["S"]) if "activity" in item else {},
                    stopped_at=read_number(item["stopped_at"]) if "stopped_at" in item else None,
                )
            )
    if dead:
        with aws_errors("UpdateItem"):
            client.update_item(
                TableName=table,
                Key=_DIRECTORY_KEY,
                UpdateExpression="DELETE members :dead",
                ExpressionAttributeValues={":dead": {"SS": dead}},
            )
    return reports


def combine_resources(
    client: DynamoDBClient, table: str, reports: Iterable[DispatcherReport], *, queued: int = 0
) -> list[ResourceStatus]:
    """Each resource the reports name, summed over them, with the shared bucket's tokens
    and the cap's held slots; ``queued`` (the queue's visible and delayed messages) is
    shared out by the resources' share of what the dispatchers received."""
    parts = [r.resources for r in reports]
    # Each dispatcher publishes the messages it admitted in all, once per resource.
    admitted = sum(max((int(p.get("admitted", 0)) for p in r.values()), default=0) for r in parts)
    names = sorted({name for report in parts for name in report})
    return [
        _combine(
            client,
            table,
            name,
            [r[name] for r in parts if name in r],
            admitted=admitted,
            queued=queued,
        )
        for name in names
    ]


def _combine(
    client: DynamoDBClient,
    table: str,
    name: str,
    parts: list[dict[str, Any]],
    *,
    admitted: int,
    queued: int,
) -> ResourceStatus:
    first = parts[0]
    tokens: float | None = None
    slots_held: int | None = None
    effective = min(
        (p["effective_rate_per_s"] for p in parts if p["effective_rate_per_s"] is not None),
        default=None,
    )
    if first["configured_rate_per_s"] is not None:
        bucket = _get(client, table, f"{c.BUCKET_KEY_PREFIX}{name}")
        if bucket:
            tokens = read_number(bucket["tokens"])
            effective = read_number(bucket["rate"])
        elif (sliced := _get(client, table, f"{c.SLICES_KEY_PREFIX}{name}")) and "rate" in sliced:
            # A keyed resource's rate is divided into slices (slices.py): each
            # dispatcher's tokens are its own, so there is no shared level to show.
            effective = read_number(sliced["rate"])
    arrivals = sum(int(p.get("arrivals", 0)) for p in parts)
    share = arrivals / admitted if admitted else 0.0
    holds = [float(p["mean_hold_s"]) for p in parts if p.get("mean_hold_s") is not None]
    if first["max_concurrency"] is not None:
        slots = _get(client, table, f"{c.SLOTS_KEY_PREFIX}{name}")
        if slots and "held" in slots:
            slots_held = int(read_number(slots["held"]))
    return ResourceStatus(
        name=name,
        configured_rate_per_s=first["configured_rate_per_s"],
        effective_rate_per_s=effective,
        tokens=tokens,
        in_flight=sum(int(p["in_flight"]) for p in parts),
        max_concurrency=first["max_concurrency"],
        slots_held=slots_held,
        waiting=sum(int(p["waiting"]) for p in parts),
        waits=sum(int(p["waits"]) for p in parts),
        wait_total_s=sum(float(p["wait_total_s"]) for p in parts),
        started=sum(int(p["started"]) for p in parts),
        backpressure_signals=sum(int(p["backpressure_signals"]) for p in parts),
        dispatchers=len(parts),
        deferred=sum(int(p.get("deferred", 0)) for p in parts),
        queue_share=round(share, 3),
        queued=round(share * queued),
        mean_hold_s=max(holds) if holds else None,
        busiest_keys=sum_busiest_keys(parts),
    )


def sum_busiest_keys(parts: list[dict[str, Any]], count: int = 5) -> list[dict[str, Any]]:
    """The dispatchers' busiest keys of one resource, summed by key, busiest first."""
    totals: dict[str, dict[str, int]] = {}
    for part in parts:
        for row in part.get("keys") or []:
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                continue
            total = totals.setdefault(row["key"], {"waiting": 0, "in_flight": 0, "started": 0})
            for field_name in total:
                total[field_name] += int(row.get(field_name, 0))
    return busiest_first([{"key": key, **figures} for key, figures in totals.items()], count)


def describe_busiest_keys(resources: Iterable[ResourceStatus]) -> list[str]:
    """One line per keyed resource with busy keys, for ``dispatch status`` and ``top``:
    ``busiest keys of crm-api: acme (waiting 120, running 2, started 340), ...``."""
    lines = []
    for resource in resources:
        if resource.busiest_keys:
            shown = ", ".join(
                f"{r['key']} (waiting {r['waiting']}, running {r['in_flight']}, "
                f"started {r['started']})"
                for r in resource.busiest_keys
            )
            lines.append(f"busiest keys of {resource.name}: {shown}")
    return lines


def busiest_first(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Key rows (``{"key", "waiting", "in_flight", "started"}``), the ``count`` busiest:
    most waiting and running, then most started."""

    def busy(row: dict[str, Any]) -> tuple[int, int, str]:
        return (-(int(row["waiting"]) + int(row["in_flight"])), -int(row["started"]), row["key"])

    return sorted(rows, key=busy)[:count]


def _get(client: DynamoDBClient, table: str, key: str) -> dict[str, Any] | None:
    with aws_errors("GetItem"):
        answer = client.get_item(TableName=table, Key={c.TABLE_HASH_KEY: {"S": key}})
    item = answer.get("Item")
    return dict(item) if item else None
