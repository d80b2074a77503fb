"""Listing task records by status, task and time with a Query on a sparse index, never a Scan.

Records in a listed state (:data:`~dispatch.core.record.LISTED_STATUSES`: running,
retrying, dead, cancelled) carry ``listed = "<status>#<time>"``, the time they entered
that state; two global secondary indexes sort on it (docs/formats.md, "Listing")::

    by-status   HASH status   RANGE listed     "the dead tasks, newest first"
    by-task     HASH task     RANGE listed     "the dead tasks of charge, newest first"

A page is one Query (two when DynamoDB cuts a read at 1 MB), newest first, reading
``limit + 1`` index entries: the extra one says whether a next page exists. The
pagination token is the last returned entry's index key, base64 of JSON, bound to
the index and partition it came from. Everything that builds a request or reads a
filter is a pure function; :func:`list_tasks` sends the Query.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.core.errors import ConfigurationError, DispatchError
from dispatch.core.record import LISTED_STATUSES, Status, iso, listed_value
from dispatch.store.aws import error_code, translate_error

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "ListedTask",
    "ListingError",
    "TaskFilter",
    "TaskPage",
    "decode_token",
    "encode_token",
    "list_tasks",
    "parse_duration",
    "parse_status",
    "parse_time",
    "query_params",
]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 1_000
_LISTED_NAMES: Final = ", ".join(s.value for s in Status if s in LISTED_STATUSES)
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NO_INDEX_CODES: Final = frozenset({"ValidationException", "ResourceNotFoundException"})
_LATEST: Final = 9_999_999_999.999  # the largest time `listed` can spell (10.3 digits)


class ListingError(DispatchError, ValueError):
    """A listing filter or pagination token that cannot be used; ``option`` names it."""

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which records a page lists: ``status`` (required unless ``running_longer_than_s``,
    which means running), optionally one ``task`` name and a window of the time the
    record entered its status (``since`` / ``until``, epoch seconds)."""

    status: Status | None = None
    task: str | None = None
    since: float | None = None
    until: float | None = None
    running_longer_than_s: float | None = None
    limit: int = DEFAULT_LIMIT

    def resolved(self, now: float) -> tuple[Status, float, float]:
        """The status and the closed window ``[since, until]`` this filter asks for at
        ``now``, or :class:`ListingError` naming the option that is wrong."""
        status = self.status
        until = _LATEST if self.until is None else self.until
        if self.running_longer_than_s is not None:
            if status not in (None, Status.RUNNING):
                raise ListingError(
                    f"--running-longer-than lists running tasks; --status is {status}",
                    option="--running-longer-than",
                )
            status = Status.RUNNING
            until = min(until, now - self.running_longer_than_s)
        if status is None:
            raise ListingError(
                f"choose a status to list ({_LISTED_NAMES}): the index lists one at a time",
                option="--status",
            )
        if status not in LISTED_STATUSES:
            raise ListingError(_not_listed(status), option="--status")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ListingError(f"limit {self.limit} is not in 1..{MAX_LIMIT}", option="--limit")
        if self.task == "":
            raise ListingError("the task name is empty", option="--task")
        since = 0.0 if self.since is None else self.since
        return status, max(since, 0.0), min(until, _LATEST)


@dataclass(frozen=True, slots=True)
class ListedTask:
    """One index entry: what the listing shows of a record."""

    task_id: str
    task: str
    status: Status
    at: float  # when the record entered ``status`` (epoch seconds)
    attempts: int
    dead_reason: str | None = None

    def to_dict(self, *, now: float) -> dict[str, Any]:
        """JSON-ready, with ``at`` in ISO-8601 UTC and ``age_s`` at ``now``."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task": self.task,
            "status": self.status.value,
            "at": iso(self.at),
            "age_s": round(max(now - self.at, 0.0), 3),
            "attempts": self.attempts,
        }
        if self.dead_reason is not None:
            out["dead_reason"] = self.dead_reason
        return out


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A page of the listing: ``tasks`` newest first, the token of the next page (None:
    this was the last), the index read and how many of its entries were read."""

    tasks: list[ListedTask]
    next_token: str | None
    index: str
    read: int
    now: float

    def to_dict(self) -> dict[str, Any]:
        """What ``dispatch tasks --json`` prints."""
        return {
            "tasks": [t.to_dict(now=self.now) for t in self.tasks],
            "next": self.next_token,
            "index": self.index,
            "read": self.read,
        }


# --- reading the filter ------------------------------------------------------------


def _not_listed(status: Status) -> str:
    why = {
        Status.QUEUED: "queued tasks wait on the queue (`dispatch status` counts them)",
        Status.SUCCEEDED: "succeeded tasks leave the index (the Succeeded metric counts them)",
    }.get(status, "")
    return (
        f"status {status.value!r} is not indexed ({why}; `dispatch task ID` shows any one "
        f"task): list one of {_LISTED_NAMES}"
    )


def parse_status(text: str) -> Status:
    """A status name as the listing takes it, or :class:`ListingError` naming the choices."""
    try:
        status = Status(text.strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise ListingError(f"unknown status {text!r}: one of {names}", option="--status") from None
    if status not in LISTED_STATUSES:
        raise ListingError(_not_listed(status), option="--status")
    return status


def parse_duration(text: str, *, option: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or ``250ms``."""
    spoken = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spoken):
        return float(spoken)
    parts = _DURATION.findall(spoken)
    if not spoken or "".join(n + u for n, u in parts) != spoken:
        raise ListingError(
            f"{text!r} is not a duration (e.g. 90s, 10m, 2h, 1d, 1h30m)", option=option
        )
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def parse_time(text: str, *, now: float, option: str) -> float:
    """Epoch seconds from a duration ago (``2h``: two hours before ``now``) or an
    ISO-8601 time (UTC unless it says otherwise)."""
    try:
        return now - parse_duration(text, option=option)
    except ListingError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ListingError(
            f"{text!r} is neither a duration ago (e.g. 2h) nor an ISO-8601 time", option=option
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


# --- the token -----------------------------------------------------------------------


def encode_token(index: str, key: Mapping[str, Any]) -> str:
    """The next page's token: the index and the last entry's key, base64 (URL-safe) JSON."""
    plain = {name: str(value["S"]) for name, value in key.items()}
    raw = json.dumps({"i": index, "k": plain}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(
    token: str, *, index: str, hash_key: str, hash_value: str, status: Status
) -> dict[str, Any]:
    """The ExclusiveStartKey a token stands for, checked against the page it continues."""
    bad = ListingError(
        "not a token this listing gave (pass --next exactly as printed, with the same "
        "--task and --status)",
        option="--next",
    )
    try:
        padded = token.strip() + "=" * (-len(token.strip()) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    key = data.get("k") if isinstance(data, dict) else None
    names = {c.TABLE_HASH_KEY, hash_key, c.LISTED_ATTRIBUTE}
    if (
        data.get("i") != index
        or not isinstance(key, dict)
        or set(key) != names
        or not all(isinstance(v, str) for v in key.values())
        or key[hash_key] != hash_value
        or not key[c.LISTED_ATTRIBUTE].startswith(f"{status.value}#")
        or not key[c.TABLE_HASH_KEY].startswith(c.TASK_KEY_PREFIX)
    ):
        raise bad
    return {name: {"S": value} for name, value in key.items()}


# --- the query -----------------------------------------------------------------------


def _index_of(task: str | None) -> tuple[str, str]:
    """The index a filter reads and its hash key attribute."""
    return (c.INDEX_BY_TASK, "task") if task is not None else (c.INDEX_BY_STATUS, "status")


def query_params(
    table: str, where: TaskFilter, *, now: float, token: str | None = None
) -> dict[str, Any]:
    """The Query for one page: newest first, ``limit + 1`` entries (pure)."""
    status, since, until = where.resolved(now)
    index, hash_key = _index_of(where.task)
    hash_value = where.task if where.task is not None else status.value
    params: dict[str, Any] = {
        "TableName": table,
        "IndexName": index,
        "KeyConditionExpression": "#h = :h AND #l BETWEEN :lo AND :hi",
        "ExpressionAttributeNames": {"#h": hash_key, "#l": c.LISTED_ATTRIBUTE},
        "ExpressionAttributeValues": {
            ":h": {"S": hash_value},
            ":lo": {"S": listed_value(status, since)},
            ":hi": {"S": listed_value(status, until)},
        },
        "ScanIndexForward": False,
        "Limit": where.limit + 1,
    }
    if token is not None:
        params["ExclusiveStartKey"] = decode_token(
            token, index=index, hash_key=hash_key, hash_value=hash_value, status=status
        )
    return params


def _listed(item: Mapping[str, Any], *, status: Status, task: str | None) -> ListedTask:
    listed = str(item[c.LISTED_ATTRIBUTE]["S"])
    stored = item.get("status", {}).get("S")
    return ListedTask(
        task_id=str(item[c.TABLE_HASH_KEY]["S"])[len(c.TASK_KEY_PREFIX) :],
        task=str(item.get("task", {}).get("S", task or "")),
        status=Status(stored) if stored else status,
        at=float(listed.rpartition("#")[2]),
        attempts=int(item.get("attempts", {}).get("N", "0")),
        dead_reason=item.get("dead_reason", {}).get("S"),
    )


def list_tasks(
    client: DynamoDBClient,
    table: str,
    where: TaskFilter,
    *,
    token: str | None = None,
    now: float | None = None,
) -> TaskPage:
    """One page of task records matching ``where``, newest first (Query, no Scan)."""
    now = time.time() if now is None else now
    params = query_params(table, where, now=now, token=token)
    status, _, _ = where.resolved(now)
    items: list[dict[str, Any]] = []
    read = 0
    while True:
        answer = _query(client, params, table=table)
        items.extend(answer.get("Items", []))
        read += int(answer.get("ScannedCount", 0))
        last = answer.get("LastEvaluatedKey")
        if len(items) > where.limit or not last:
            break
        params = params | {"ExclusiveStartKey": last, "Limit": where.limit + 1 - len(items)}
    page = items[: where.limit]
    next_token = None
    if len(items) > where.limit:
        _, hash_key = _index_of(where.task)
        key_names = (c.TABLE_HASH_KEY, hash_key, c.LISTED_ATTRIBUTE)
        next_token = encode_token(params["IndexName"], {n: page[-1][n] for n in key_names})
    tasks = [_listed(item, status=status, task=where.task) for item in page]
    return TaskPage(
        tasks=tasks, next_token=next_token, index=params["IndexName"], read=read, now=now
    )


def _query(client: DynamoDBClient, params: dict[str, Any], *, table: str) -> dict[str, Any]:
    try:
        return dict(client.query(**params))
    except ClientError as exc:
        message = str(exc.response.get("Error", {}).get("Message", ""))
        code = error_code(exc)
        token_refused = "ExclusiveStartKey" in params and "start" in message.lower()
        if code == "ValidationException" and token_refused:
            raise ListingError("the token does not fit this listing", option="--next") from exc
        # AWS: ValidationException "The table does not have the specified index: <name>";
        # the local AWS answers ResourceNotFoundException "Invalid index: <name> ...".
        if code in _NO_INDEX_CODES and params["IndexName"] in message:
            raise ConfigurationError(
                f"table {table!r} has no index {params['IndexName']!r} ({message}): it was "
                "created before the listing indexes; deploy deploy/template.yaml again, or "
                "add the template's GlobalSecondaryIndexes to it (UpdateTable)",
                setting=c.ENV_TABLE,
            ) from exc
        raise translate_error(exc, "Query") from exc
    except BotoCoreError as exc:
        raise translate_error(exc, "Query") from exc
