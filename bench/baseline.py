"""The consumer most people write first, to compare Dispatch with.

The producer sends one SendMessage per task. The consumer long-polls for up to 10
messages, runs the handler on each, and deletes each with its own DeleteMessage:
about 2.1 SQS requests per task, as Celery's SQS transport makes. It keeps no task
state, so it makes no DynamoDB request at all. boto3, one thread, as in most
tutorials. It stops once it has handled as many messages as were sent (so it never
ends on an empty 20-second poll), or at its deadline.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from bench.billing import BillingMeter
from bench.cpu import Utilisation
from bench.stage import Stage
from bench.throughput import Phase, Run, requests_by_action
from dispatch.core.config import Settings
from dispatch.store.aws import RequestCounter, sync_clients

__all__ = ["drain_baseline", "handle", "run_baseline"]

_LONG_POLL_S: Final = 20


def handle(n: int) -> None:
    """The same nothing as ``bench.noop``."""


def run_baseline(stage: Stage, tasks: int, *, name: str, timeout_s: float) -> Run:
    """Fresh resources, ``tasks`` SendMessage calls, then the receive/run/delete loop."""
    settings = stage.fresh(name)
    queue_url = settings.queue_url
    bodies = [json.dumps({"n": n}) for n in range(tasks)]

    counter, meter = RequestCounter(), BillingMeter()
    sqs: Any = sync_clients(settings, counter=counter).sqs
    meter.attach(sqs)
    before = stage.cpu()
    started = time.perf_counter()
    for body in bodies:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    produced = Phase(
        seconds=time.perf_counter() - started,
        done=len(bodies),
        requests=requests_by_action(counter),
        usage=meter.snapshot(),
        cpu=Utilisation.between(before, stage.cpu()),
    )

    drained = drain_baseline(stage, settings, tasks, timeout_s=timeout_s)
    return Run(kind="baseline", tasks=tasks, enqueue=produced, drain=drained)


def drain_baseline(stage: Stage, settings: Settings, tasks: int, *, timeout_s: float) -> Phase:
    """The consumer's loop on a queue holding ``tasks`` messages: receive 10, run each,
    delete each with its own DeleteMessage, until all are handled or ``timeout_s``."""
    queue_url = settings.queue_url
    counter, meter = RequestCounter(), BillingMeter()
    sqs: Any = sync_clients(settings, counter=counter).sqs
    meter.attach(sqs)
    handled = 0
    before = stage.cpu()
    started = time.perf_counter()
    deadline = started + timeout_s
    while handled < tasks and time.perf_counter() < deadline:
        wait_s = max(0, min(_LONG_POLL_S, int(deadline - time.perf_counter())))
        answer = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
        )
        for message in answer.get("Messages", []):
            handle(**json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            handled += 1
    return Phase(
        seconds=time.perf_counter() - started,
        done=min(handled, tasks),
        requests=requests_by_action(counter),
        usage=meter.snapshot(),
        cpu=Utilisation.between(before, stage.cpu()),
    )
