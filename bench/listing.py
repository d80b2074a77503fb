"""Listing pages on a table of 100,000 task records: time and items read, against a Scan.

    .venv/bin/python -m bench.listing                     # 100,000 records
    .venv/bin/python -m bench.listing --records 20000 --repeats 3

Starts the embedded local AWS, provisions the queue, DLQ and table from
deploy/template.yaml (so the table has the template's listing indexes), and loads
``--records`` task records with BatchWriteItem (25 a request, 4 threads): a realistic
mix of statuses (most succeeded, some queued, a few running, retrying, dead and
cancelled) and task names (one frequent, one rare), written as the dispatcher writes
them, spread over the last 14 days (``listed`` set exactly where a real transition
sets it). Then it times the pages an operator asks for, each ``--repeats`` times
(``dispatch.ops.listing.list_tasks``, the function ``dispatch tasks`` calls), and
reads the same answer for the first one by a Scan, as a table without the index
would have to. Targets: every page under 1 s, reading under 100 items.

Prints a table and writes ``bench/results/listing.json`` (through a temporary file).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.output import to_json, write_atomically
from dispatch.core import constants as c
from dispatch.core.record import LISTED_STATUSES, Status, listed_value
from dispatch.local.emulator import LocalAWS
from dispatch.local.provision import provision
from dispatch.ops.listing import TaskFilter, list_tasks
from dispatch.store.codec import number

RESULTS = Path(__file__).resolve().parent / "results" / "listing.json"
PAGE_TARGET_S = 1.0
READ_TARGET = 100
DAY_S = 86_400.0
# Shares of the records, by status and by task name (the rest of the names are rare).
STATUS_MIX = {
    Status.SUCCEEDED: 0.80,
    Status.QUEUED: 0.08,
    Status.DEAD: 0.04,
    Status.RETRYING: 0.03,
    Status.RUNNING: 0.03,
    Status.CANCELLED: 0.02,
}
TASK_MIX = {
    "charge": 0.40,
    "send_receipt": 0.30,
    "refresh_prices": 0.15,
    "index_docs": 0.14,
    "reconcile": 0.01,
}


@dataclass(frozen=True)
class Page:
    """One listing page to time."""

    name: str
    where: TaskFilter
    follow: bool = False  # time the second page (the first page's token)


def pages() -> list[Page]:
    """The pages an operator asks for (docs/operations.md, "Listing tasks")."""
    return [
        Page("50 newest dead of charge", TaskFilter(status=Status.DEAD, task="charge")),
        Page("its next page (--next)", TaskFilter(status=Status.DEAD, task="charge"), True),
        Page("50 newest dead, any task", TaskFilter(status=Status.DEAD)),
        Page("50 newest dead of a rare task", TaskFilter(status=Status.DEAD, task="reconcile")),
        Page("50 newest retrying", TaskFilter(status=Status.RETRYING)),
        Page("50 newest cancelled", TaskFilter(status=Status.CANCELLED)),
        Page("running longer than 10 min", TaskFilter(running_longer_than_s=600)),
        Page(
            "running longer than 10 min, charge",
            TaskFilter(task="charge", running_longer_than_s=600),
        ),
        Page("dead in the last 2 h", TaskFilter(status=Status.DEAD, since=-2 * 3600.0)),
    ]


def main() -> int:
    """Load the records, time the pages, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="task records (100000)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per page (5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()

    started = time.time()
    with LocalAWS.start() as aws:
        sqs, dynamodb = aws.client("sqs"), aws.client("dynamodb")
        table = provision(sqs, dynamodb, prefix=f"bench-{uuid.uuid4().hex[:8]}").table
        now = time.time()
        load_s, counts = load(aws, table, args.records, now=now)
        print(f"loaded {args.records:,} records in {load_s:.1f} s: {counts}", file=sys.stderr)
        timed = []
        for page in pages():
            timed.append(measure(dynamodb, table, page, now=now, repeats=args.repeats))
            print(f"  {page.name}: {timed[-1]}", file=sys.stderr)
        scan = scan_for(dynamodb, table, task="charge", status=Status.DEAD)
    report = {
        "command": "python -m bench.listing" + ("" if args.records == 100_000 else " ..."),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "python": platform.python_version(),
        "records": args.records,
        "counts_by_status": counts,
        "load_s": round(load_s, 1),
        "repeats": args.repeats,
        "targets": {"page_s": PAGE_TARGET_S, "items_read": READ_TARGET},
        "pages": timed,
        "scan_for_the_first_page": scan,
        "all_pass": all(p["pass"] for p in timed),
    }
    print_report(report)
    write_atomically(args.out, to_json(report))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


# --- the records -----------------------------------------------------------------------


def _pick(rng: random.Random, mix: dict[Any, float]) -> Any:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def record(rng: random.Random, now: float) -> dict[str, Any]:
    """One task record as the dispatcher leaves it in a status drawn from the mix."""
    status: Status = _pick(rng, STATUS_MIX)
    name: str = _pick(rng, TASK_MIX)
    task_id = uuid.UUID(int=rng.getrandbits(128)).hex
    created = now - rng.uniform(0, 14 * DAY_S)
    if status is Status.RUNNING:  # most started in the last minutes; a few hang for long
        created = now - (rng.uniform(0, 300) if rng.random() < 0.9 else rng.uniform(600, DAY_S))
    updated = min(created + rng.uniform(0.01, 30.0), now)
    attempts = {Status.QUEUED: 0, Status.DEAD: 3, Status.RETRYING: rng.randint(1, 2)}.get(status, 1)
    item: dict[str, Any] = {
        c.TABLE_HASH_KEY: {"S": f"{c.TASK_KEY_PREFIX}{task_id}"},
        "task_id": {"S": task_id},
        "task": {"S": name},
        "status": {"S": status.value},
        "attempts": number(attempts),
        "created_at": number(created),
        "updated_at": number(updated),
        c.TABLE_TTL_ATTRIBUTE: number(int(updated) + c.RECORD_TTL_S),
    }
    if status is not Status.QUEUED:
        item["started_at"] = number(updated)
        item["message_id"] = {"S": str(uuid.UUID(int=rng.getrandbits(128)))}
    if status is Status.RUNNING:
        item["started_at"] = number(created)
        item["updated_at"] = number(created)
        updated = created
    if status in (Status.DEAD, Status.RETRYING):
        item["last_error"] = {
            "M": {
                "type": {"S": "ConnectionError"},
                "message": {"S": "upstream timed out after 30 s"},
                "traceback": {"S": "Traceback (most recent call last):\n  ...\n" * 4},
            }
        }
    if status is Status.DEAD:
        item["dead_reason"] = {"S": "max_attempts"}
    if status is Status.SUCCEEDED:
        item["result"] = {"S": '{"ok":true}'}
    if status in LISTED_STATUSES:
        item[c.LISTED_ATTRIBUTE] = {"S": listed_value(status, updated)}
    return item


def load(aws: LocalAWS, table: str, records: int, *, now: float) -> tuple[float, dict[str, int]]:
    """Write ``records`` records, 25 per BatchWriteItem, from 4 threads."""
    rng = random.Random(20261207)  # a reproducible workload
    items = [record(rng, now) for _ in range(records)]
    counts: dict[str, int] = {}
    for item in items:
        counts[item["status"]["S"]] = counts.get(item["status"]["S"], 0) + 1
    chunks = [
        items[i : i + c.DDB_MAX_BATCH_WRITE] for i in range(0, len(items), c.DDB_MAX_BATCH_WRITE)
    ]
    clients = [aws.client("dynamodb") for _ in range(4)]

    def write(index: int) -> None:
        requests = [{"PutRequest": {"Item": item}} for item in chunks[index]]
        client = clients[index % len(clients)]
        while requests:
            answer = client.batch_write_item(RequestItems={table: requests})
            requests = list(answer.get("UnprocessedItems", {}).get(table, []))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        list(pool.map(write, range(len(chunks))))
    return time.perf_counter() - start, dict(sorted(counts.items()))


# --- the measurements ------------------------------------------------------------------


def measure(client: Any, table: str, page: Page, *, now: float, repeats: int) -> dict[str, Any]:
    """Time one page ``repeats`` times (after one untimed read)."""
    where = page.where
    if where.since is not None and where.since < 0:  # "the last N seconds"
        where = TaskFilter(status=where.status, task=where.task, since=now + where.since)
    token = None
    if page.follow:
        token = list_tasks(client, table, where, now=now).next_token
    times: list[float] = []
    answer = list_tasks(client, table, where, token=token, now=now)
    for _ in range(repeats):
        start = time.perf_counter()
        answer = list_tasks(client, table, where, token=token, now=now)
        times.append(time.perf_counter() - start)
    worst = max(times)
    return {
        "page": page.name,
        "index": answer.index,
        "returned": len(answer.tasks),
        "items_read": answer.read,
        "median_s": round(statistics.median(times), 4),
        "max_s": round(worst, 4),
        "has_next": answer.next_token is not None,
        "pass": worst < PAGE_TARGET_S and answer.read < READ_TARGET,
    }


def scan_for(client: Any, table: str, *, task: str, status: Status) -> dict[str, Any]:
    """The same answer without the index: a filtered Scan of the whole table."""
    start = time.perf_counter()
    read = found = 0
    params: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": "#s = :s AND task = :t",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": status.value}, ":t": {"S": task}},
        "ProjectionExpression": "pk, updated_at",
    }
    while True:
        answer = client.scan(**params)
        read += int(answer.get("ScannedCount", 0))
        found += int(answer.get("Count", 0))
        if "LastEvaluatedKey" not in answer:
            break
        params["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
    return {
        "what": f"every {status.value} {task} task by Scan (then sort, take 50)",
        "items_read": read,
        "matching": found,
        "seconds": round(time.perf_counter() - start, 3),
    }


def print_report(report: dict[str, Any]) -> None:
    """The figures as a Markdown table."""
    print(f"\nListing on {report['records']:,} task records ({report['counts_by_status']})")
    print(f"each page timed {report['repeats']} times; targets < 1 s, < 100 items read\n")
    print("| page | index | returned | items read | median s | max s | target |")
    print("|---|---|---:|---:|---:|---:|---|")
    for p in report["pages"]:
        verdict = "PASS" if p["pass"] else "FAIL"
        print(
            f"| {p['page']} | {p['index']} | {p['returned']} | {p['items_read']} "
            f"| {p['median_s']:.3f} | {p['max_s']:.3f} | {verdict} |"
        )
    scan = report["scan_for_the_first_page"]
    print(
        f"\nwithout the index: {scan['what']}: {scan['items_read']:,} items read, "
        f"{scan['matching']:,} matching, {scan['seconds']:.2f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
