"""How the embedded local AWS's SQS cost per call depends on queue depth.

    .venv/bin/python bench/emulator_depth.py                 # patched (what Dispatch runs)
    .venv/bin/python bench/emulator_depth.py --stock-moto    # moto 5.2.5 as released

For each depth (messages already queued, all visible; with ``--in-flight``
all received and held, as a dispatcher holds work it is throttling) it repeats one round of
what a dispatcher does per batch: SendMessageBatch of 10, ReceiveMessage of 10,
ChangeMessageVisibility of one of them, DeleteMessageBatch of the 10. The depth
stays constant (10 in, 10 out). It prints the median latency of each call in
milliseconds; ``--json PATH`` also writes the figures.

Filling stock moto is itself quadratic (every send scans the queue), so the
default depths for ``--stock-moto`` stop at 2,000.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from dispatch.local.emulator import LocalAWS

CALLS = ("send_batch_10", "receive_10", "change_visibility", "delete_batch_10", "get_attributes")


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stock-moto", action="store_true", help="run moto without our patches")
    parser.add_argument("--depths", help="comma-separated queue depths (default 0,2000,20000)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per depth (default 20)")
    parser.add_argument(
        "--in-flight",
        action="store_true",
        help="hold the queued messages in flight (received, not deleted) instead of visible",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    default_depths = "0,2000" if args.stock_moto else "0,2000,20000"
    depths = [int(d) for d in (args.depths or default_depths).split(",")]

    label = "moto 5.2.5 stock" if args.stock_moto else "moto 5.2.5 + dispatch.local.moto_patches"
    label += ", depth held in flight" if args.in_flight else ", depth visible"
    results: dict[int, dict[str, float]] = {}
    with LocalAWS.start(patch_moto=not args.stock_moto) as aws:
        sqs = boto3.client(
            "sqs",
            endpoint_url=aws.endpoint_url,
            region_name=aws.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto ignores credentials
            config=Config(max_pool_connections=16, retries={"max_attempts": 1}),
        )
        for depth in depths:
            aws.reset()
            queue_url = sqs.create_queue(
                QueueName=f"bench-{depth}", Attributes={"VisibilityTimeout": "30"}
            )["QueueUrl"]
            started = time.perf_counter()
            fill(sqs, queue_url, depth)
            if args.in_flight:
                hold(sqs, queue_url, depth)
            fill_s = time.perf_counter() - started
            print(f"  depth {depth:>6}: filled in {fill_s:.1f} s", file=sys.stderr)
            results[depth] = measure(sqs, queue_url, rounds=args.rounds)

    print_table(label, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"emulator": label, "unit": "ms (median)", "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def fill(sqs: Any, queue_url: str, depth: int) -> None:
    """Queue ``depth`` messages, 10 per call, from a few threads."""

    def send(start: int) -> None:
        entries = [
            {"Id": str(i), "MessageBody": f"fill-{start + i}"}
            for i in range(min(10, depth - start))
        ]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, range(0, depth, 10)))


def hold(sqs: Any, queue_url: str, depth: int) -> None:
    """Receive every queued message with a long visibility timeout (in flight, undeleted)."""
    held = 0
    while held < depth:
        answer = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=3600, WaitTimeSeconds=0
        )
        held += len(answer.get("Messages", []))


def measure(sqs: Any, queue_url: str, *, rounds: int) -> dict[str, float]:
    """Median milliseconds of each call over ``rounds`` constant-depth rounds."""
    samples: dict[str, list[float]] = {name: [] for name in CALLS}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        samples[name].append((time.perf_counter() - started) * 1000)

    for n in range(rounds):
        entries = [{"Id": str(i), "MessageBody": f"round-{n}-{i}"} for i in range(10)]
        with timed("send_batch_10"):
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        with timed("receive_10"):
            received = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )["Messages"]
        handles = [m["ReceiptHandle"] for m in received]
        with timed("change_visibility"):
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=handles[0], VisibilityTimeout=30
            )
        with timed("delete_batch_10"):
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)],
            )
        with timed("get_attributes"):
            sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def print_table(label: str, results: dict[int, dict[str, float]]) -> None:
    """One row per depth, one column per call, median ms."""
    print(f"SQS latency by queue depth, {label} (median ms)")
    header = ["depth", *CALLS, "receive+delete"]
    print("  ".join(f"{h:>17}" for h in header))
    for depth, row in results.items():
        cells = [f"{depth:>17}"] + [f"{row[name]:>17.2f}" for name in CALLS]
        cells.append(f"{row['receive_10'] + row['delete_batch_10']:>17.2f}")
        print("  ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
