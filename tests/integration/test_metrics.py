"""CloudWatch metrics in Embedded Metric Format, from a real run over the emulator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dispatch import KeyLimits, PermanentError, Resource, task
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


def key_documents(documents: list[dict[str, Any]], resource: str) -> list[dict[str, Any]]:
    """The per-key-rank documents of ``resource``, by rank."""
    found = [d for d in documents if d.get("Resource") == resource and "KeyRank" in d]
    for document in found:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Dimensions"] == [["Resource", "KeyRank"]]  # never the key itself
    return sorted(found, key=lambda d: int(d["KeyRank"]))


async def test_a_keyed_resource_reports_its_busiest_keys_by_rank_not_by_key(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a keyed resource (one task at a time per key) with 8 tasks of key "big"
    and one each of six other keys, all blocked in their handlers, when the metrics are
    flushed, then one document per rank 1..5 names its key as a property (not a
    dimension, so the metric count stays bounded), "big" first with 1 in flight and
    others waiting, and no more than five ranks are written."""
    api = Resource(
        "emf-keyed", rate_per_s=100, max_concurrency=20, per_key=KeyLimits(max_concurrency=1)
    )
    release, all_started = asyncio.Event(), asyncio.Event()
    started: set[str] = set()
    others = [f"t{i}" for i in range(6)]

    @task(registry=registry, resource=api, key="tenant")
    async def sync_contact(tenant: str, n: int) -> None:
        started.add(tenant)
        if started == {"big", *others}:
            all_started.set()
        await release.wait()

    queue.enqueue_many(
        [sync_contact.message("big", n) for n in range(8)]
        + [sync_contact.message(t, 0) for t in others]
    )
    lines: list[str] = []
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(
            aws_env,
            clients=aio,
            registry=registry,
            metrics=Metrics(lines.append, queue_name="test-queue"),
        )
        running = asyncio.ensure_future(dispatcher.run(until_empty=True))
        await asyncio.wait_for(all_started.wait(), timeout=30)
        await dispatcher.flush_metrics()
        release.set()
        await running
        await dispatcher.runner.aclose()

    ranks = key_documents([json.loads(line) for line in lines], "emf-keyed")[:5]
    assert [d["KeyRank"] for d in ranks] == ["1", "2", "3", "4", "5"]
    assert ranks[0]["Key"] == "big" and ranks[0]["KeyInFlight"] == 1
    assert ranks[0]["KeyWaiting"] >= 1
    assert {d["Key"] for d in ranks[1:]} <= set(others)
    assert all(d["KeyInFlight"] == 1 and d["KeyWaiting"] == 0 for d in ranks[1:])
    every = key_documents([json.loads(line) for line in lines], "emf-keyed")
    assert len(every) == 5  # the final flush, all keys idle, writes none
