"""CloudWatch metrics in Embedded Metric Format, from a real run over the emulator."""

from __future__ import annotations

import json
from typing import Any

from dispatch import PermanentError, Resource, task
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher
from dispatch.loop.metrics import Metrics
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import async_clients
from dispatch.tasks.registry import Registry


def metric_values(documents: list[dict[str, Any]], dimension: str, value: str) -> dict[str, Any]:
    """Metric name -> value in the document whose ``dimension`` is ``value``."""
    for document in documents:
        if document.get(dimension) == value:
            (directive,) = document["_aws"]["CloudWatchMetrics"]
            assert directive["Namespace"] == "Dispatch"
            assert directive["Dimensions"] == [[dimension]]
            return {m["Name"]: document[m["Name"]] for m in directive["Metrics"]}
    raise AssertionError(f"no document for {dimension}={value}")


async def test_a_run_emits_counts_per_task_and_resource_state_as_emf(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given three tasks of which one fails for good, on a throttled resource, when a
    dispatcher drains them, then the EMF documents it writes count them per task and
    report the resource's effective rate and the queue's age."""
    api = Resource("emf-api", rate_per_s=50, burst=5)

    @task(registry=registry, resource=api)
    def sync_order(n: int) -> None:
        if n == 2:
            raise PermanentError("order 2 was deleted")

    queue.enqueue_many([sync_order.message(n) for n in range(3)])
    lines: list[str] = []
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env,
            clients=aio,
            registry=registry,
            metrics=Metrics(lines.append, queue_name="test-queue"),
        )
        await dispatcher.run(until_empty=True)
        await dispatcher.runner.aclose()

    documents = [json.loads(line) for line in lines]
    per_task = metric_values(documents, "Task", "sync_order")
    assert (per_task["Dispatched"], per_task["Succeeded"], per_task["DeadLettered"]) == (3, 2, 1)
    assert per_task["Retried"] == 0
    per_resource = metric_values(documents, "Resource", "emf-api")
    assert per_resource["EffectiveRate"] == 50
    assert per_resource["InFlight"] == 0
    assert metric_values(documents, "Queue", "test-queue")["QueueAge"] >= 0
