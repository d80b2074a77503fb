"""The enqueue API over HTTP to the embedded local AWS: ids, records, batches, limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

import dispatch
from dispatch import task
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.errors import (
    EnqueueError,
    InvalidArgumentsError,
    PartialEnqueueError,
    PayloadTooLargeError,
    TaskNotFoundError,
)
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, SyncClients
from dispatch.store.state import Status
from dispatch.tasks.registry import Registry
from tests.integration.conftest import dispatch_cli, queue_counts, receive_all


class FailEntries:
    """A botocore hook that makes SQS refuse chosen SendMessageBatch entries.

    The chosen entries are taken out of the request before it is sent (so they are
    really not enqueued) and reported back in ``Failed``, as SQS reports a partial
    batch failure. Each chosen task id fails ``times`` times.
    """

    def __init__(self, task_ids: set[str], *, sender_fault: bool, times: int = 1) -> None:
        self.remaining = dict.fromkeys(task_ids, times)
        self.sender_fault = sender_fault
        self._dropped: list[dict[str, Any]] = []

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.sqs.SendMessageBatch", self._before)
        client.meta.events.register("after-call.sqs.SendMessageBatch", self._after)

    def _before(self, params: dict[str, Any], **_: Any) -> None:
        keep = []
        for entry in params["Entries"]:
            task_id = json.loads(entry["MessageBody"])["id"]
            if self.remaining.get(task_id, 0) > 0:
                self.remaining[task_id] -= 1
                self._dropped.append(entry)
            else:
                keep.append(entry)
        params["Entries"] = keep

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("Failed", []).extend(
            {
                "Id": entry["Id"],
                "SenderFault": self.sender_fault,
                "Code": "InvalidParameterValue" if self.sender_fault else "InternalError",
                "Message": "refused by the test",
            }
            for entry in self._dropped
        )
        self._dropped = []


def bodies_on_queue(clients: SyncClients, settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in receive_all(clients, settings.queue_url)]


def test_enqueue_returns_an_id_whose_status_is_queued(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a declared task, when it is enqueued with task.enqueue(...), then the id it
    returns has a queued record (dispatch.status) and the message carries the envelope."""

    @task(registry=registry)
    def charge(order_id: str, amount: int) -> None: ...

    task_id = charge.enqueue(order_id="42", amount=5)

    assert dispatch.status(task_id).status is Status.QUEUED
    (body,) = bodies_on_queue(clients, aws_env)
    assert body["id"] == task_id
    assert (body["v"], body["task"], body["kwargs"]) == (
        1,
        "charge",
        {"order_id": "42", "amount": 5},
    )


async def test_enqueue_async_uses_aiobotocore_and_returns_the_id(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a declared async task, when it is enqueued with enqueue_async, then its
    record is queued and its message is on the queue."""

    @task(registry=registry)
    async def ping(n: int) -> int:
        return n

    try:
        task_id = await ping.enqueue_async(n=1)
        second = await ping.with_options(delay_s=5).enqueue_async(n=2)
    finally:
        await queue.aclose()

    assert dispatch.status(task_id).status is Status.QUEUED
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 1, "in_flight": 0, "delayed": 1}
    assert dispatch.status(second).task == "ping"


def test_enqueue_many_sends_ten_per_request(
    aws_env: Settings,
    registry: Registry,
    queue: Queue,
    clients: SyncClients,
    counter: RequestCounter,
) -> None:
    """Given 25 messages, when enqueue_many sends them, then it makes 3 SendMessageBatch
    requests and 1 BatchWriteItem (25 records), returns the 25 ids in order, and all 25
    are on the queue."""

    @task(registry=registry)
    def bump(n: int) -> None: ...

    messages = [bump.message(n) for n in range(25)]
    ids = dispatch.enqueue_many(messages)

    assert ids == [m.task_id for m in messages]
    requests = counter.snapshot()
    assert requests[("sqs", "SendMessageBatch")] == 3
    assert requests[("dynamodb", "BatchWriteItem")] == 1
    assert sorted(b["id"] for b in bodies_on_queue(clients, aws_env)) == sorted(ids)


def test_same_idempotency_key_enqueues_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given two enqueues with the same idempotency key (and one with another key), when
    both are made, then the first two return the same id and only two messages exist."""

    @task(registry=registry)
    def ship(order_id: str) -> None: ...

    first = ship.enqueue(order_id="1", idempotency_key="order-1")  # type: ignore[call-arg]
    again = ship.with_options(idempotency_key="order-1").enqueue(order_id="1")
    other = ship.with_options(idempotency_key="order-2").enqueue(order_id="2")

    assert first == again != other
    assert sorted(b["id"] for b in bodies_on_queue(clients, aws_env)) == sorted([first, other])
    assert dispatch.status(first).idempotency_key == "order-1"


def test_an_idempotent_task_whose_producer_died_before_sending_is_sent_by_the_next_enqueue(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given an idempotent task whose record was written a minute ago but whose message was
    never sent (the producer died in between), when it is enqueued again with the same key,
    then the message is sent this time: the task is not lost."""

    @task(registry=registry)
    def ship(order_id: str) -> None: ...

    message = ship.with_options(idempotency_key="order-9").message(order_id="9")
    from dispatch.store import state

    params = state.put_queued_params(
        aws_env.table, message.envelope, now=message.envelope.enqueued_at - 60
    )
    clients.dynamodb.put_item(**params)
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 0

    task_id = queue.enqueue(message)

    assert task_id == message.task_id
    assert [b["id"] for b in bodies_on_queue(clients, aws_env)] == [task_id]
    assert dispatch.status(task_id).pending_send is False


def test_payload_over_the_limit_is_refused_before_anything_is_sent(
    aws_env: Settings, registry: Registry, queue: Queue, counter: RequestCounter
) -> None:
    """Given arguments that make the message larger than SQS allows, when enqueued, then
    PayloadTooLargeError names the size and the limit, and no AWS request was made."""

    @task(registry=registry)
    def upload(blob: str) -> None: ...

    with pytest.raises(PayloadTooLargeError, match=str(c.MAX_ENVELOPE_BYTES)) as caught:
        upload.enqueue(blob="x" * c.SQS_MAX_MESSAGE_BYTES)

    assert caught.value.size_bytes > c.MAX_ENVELOPE_BYTES
    assert counter.total() == 0


def test_arguments_that_do_not_fit_the_handler_are_refused_at_enqueue(
    aws_env: Settings, registry: Registry, queue: Queue, counter: RequestCounter
) -> None:
    """Given a handler charge(order_id, amount), when enqueued with a missing or extra
    argument or a value JSON cannot carry, then InvalidArgumentsError names it, and
    nothing is sent."""

    @task(registry=registry)
    def charge(order_id: str, amount: int) -> None: ...

    with pytest.raises(InvalidArgumentsError, match="missing a required argument: 'amount'"):
        charge.enqueue(order_id="1")  # type: ignore[call-arg]
    with pytest.raises(InvalidArgumentsError, match="unexpected keyword argument 'colour'"):
        charge.enqueue(order_id="1", amount=2, colour="red")  # type: ignore[call-arg]
    with pytest.raises(InvalidArgumentsError, match="argument 'amount' is not JSON"):
        charge.enqueue(order_id="1", amount=object())  # type: ignore[arg-type]
    assert counter.total() == 0


async def test_values_a_handler_would_not_get_back_are_refused_by_every_enqueue(
    aws_env: Settings,
    registry: Registry,
    queue: Queue,
    clients: SyncClients,
    counter: RequestCounter,
) -> None:
    """Given arguments nested 10,000 deep, an integer beyond 64 bits, a dict with an int
    key, a lone surrogate, or an idempotency key holding one, when enqueued through
    enqueue, enqueue_async, enqueue_many or with_options(...), then each is a
    DispatchError naming the argument or option (never RecursionError or
    UnicodeEncodeError), no AWS request is made and the queue stays empty."""

    @task(registry=registry)
    def ship(order: Any) -> None: ...

    deep: Any = None
    for _ in range(10_000):
        deep = [deep]

    with pytest.raises(InvalidArgumentsError, match=r"argument 'order' at .* nested more than"):
        ship.enqueue(order=deep)
    with pytest.raises(InvalidArgumentsError, match=r"argument 'order' at \['n'\] .*64-bit"):
        await ship.enqueue_async(order={"n": 2**64})
    with pytest.raises(InvalidArgumentsError, match="argument 'order' has the key 1"):
        dispatch.enqueue_many([ship.message(order={"a": 1}), ship.message(order={1: "a"})])
    with pytest.raises(InvalidArgumentsError, match="argument 'order' is not valid Unicode"):
        ship.with_options(delay_s=5).enqueue(order="\ud800")
    with pytest.raises(EnqueueError, match=r"idempotency_key=.*not valid Unicode"):
        ship.enqueue(order="1", idempotency_key="\ud800")  # type: ignore[call-arg]

    assert counter.total() == 0
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_the_cli_takes_a_finite_delay_and_refuses_nan_as_a_usage_error(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given `dispatch enqueue` with --delay-s 120.5, then nan, then inf, when each runs,
    then the first enqueues a delayed task and the others exit with the usage status 2
    naming --delay-s, sending nothing. (A delay long enough to outlast the two other
    commands' start-up on a loaded machine: 1.5 s once ran out before the count.)"""
    common = ["enqueue", "send_receipt", "--tasks", "dispatch.local.example.app"]
    args = ["--args", '{"order_id": "1", "email": "a@example.com"}']

    delayed = dispatch_cli(*common, *args, "--delay-s", "120.5")
    refused = [dispatch_cli(*common, *args, "--delay-s", value) for value in ("nan", "inf")]

    assert delayed.returncode == 0, delayed.stderr
    for result in refused:
        assert result.returncode == 2
        assert "Invalid value for '--delay-s'" in result.stderr
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 1}


def test_transient_partial_batch_failures_are_sent_again(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given SQS refusing two entries of a batch once for a transient reason, when
    enqueue_many runs, then it sends those two again and every message is on the queue
    exactly once."""

    @task(registry=registry)
    def bump(n: int) -> None: ...

    messages = [bump.message(n) for n in range(12)]
    FailEntries({messages[3].task_id, messages[11].task_id}, sender_fault=False).attach(
        queue.sync_clients().sqs
    )

    ids = queue.enqueue_many(messages)

    assert ids == [m.task_id for m in messages]
    assert sorted(b["id"] for b in bodies_on_queue(clients, aws_env)) == sorted(ids)


def test_refused_entries_are_reported_never_dropped_silently(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given SQS refusing one entry for good (sender fault), when enqueue_many runs, then
    PartialEnqueueError gives None at that index and the ids of the rest, the rest are
    on the queue, and the refused task has no record left behind."""

    @task(registry=registry)
    def bump(n: int) -> None: ...

    messages = [bump.message(n) for n in range(5)]
    FailEntries({messages[2].task_id}, sender_fault=True, times=99).attach(queue.sync_clients().sqs)

    with pytest.raises(PartialEnqueueError) as caught:
        queue.enqueue_many(messages)

    expected = [m.task_id for m in messages]
    expected[2] = None  # type: ignore[call-overload]
    assert caught.value.task_ids == expected
    assert "InvalidParameterValue" in caught.value.failures[2]
    on_queue = sorted(b["id"] for b in bodies_on_queue(clients, aws_env))
    assert on_queue == sorted(i for i in expected if i is not None)
    with pytest.raises(TaskNotFoundError):
        dispatch.status(messages[2].task_id)
