"""Groups (fan-out / fan-in) and chains, end to end over HTTP to the embedded local AWS:
the callback runs once with the children's results in order, a chain passes each
result on, a dead child kills the callback as ``dependency_failed`` until it is
redriven, and the join counts a child once however often its success is settled or
however many dispatchers race over the last children."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from typing import Any

import pytest

import dispatch
from dispatch import Dispatcher, DispatcherOptions, Retry, TaskFailedError, task
from dispatch.core.config import Settings
from dispatch.core.envelope import decode
from dispatch.loop.join import Joiner
from dispatch.ops.dlq import redrive
from dispatch.producer.compose import group_progress
from dispatch.producer.enqueue import Queue
from dispatch.store import state
from dispatch.store.aws import SyncClients, async_clients
from dispatch.store.joins import DEPENDENCY_FAILED, group_key
from dispatch.tasks.registry import Registry
from tests.integration.conftest import WAIT_S, dispatch_cli, queue_counts, receive_all

ONE_ATTEMPT = Retry(max_attempts=1)


async def _drain(settings: Settings, registry: Registry) -> Dispatcher:
    """One dispatcher run until the queue is empty; returns it (its joiner's count)."""
    async with async_clients(settings) as aio:
        dispatcher = Dispatcher(
            settings, clients=aio, registry=registry, options=DispatcherOptions()
        )
        try:
            await dispatcher.run(until_empty=True)
        finally:
            await dispatcher.runner.aclose()
        return dispatcher


def _group_item(clients: SyncClients, settings: Settings, group_id: str) -> dict[str, Any]:
    answer = clients.dynamodb.get_item(
        TableName=settings.table, Key=group_key(group_id), ConsistentRead=True
    )
    return dict(answer["Item"])


def _callback_group(clients: SyncClients, settings: Settings, callback_id: str) -> str:
    answer = clients.dynamodb.get_item(
        TableName=settings.table, Key=state.task_key(callback_id), ConsistentRead=True
    )
    return str(answer["Item"]["waits_for"]["S"])


async def test_a_group_of_five_runs_its_callback_once_with_the_results_in_order(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a group of five children that finish in reverse order and a callback,
    when drained, then the callback ran once, with the five results in the children's
    order, and its handle returns its result."""
    calls: list[list[int]] = []

    @task(registry=registry)
    async def price(sku: int) -> int:
        await asyncio.sleep(0.05 * (5 - sku))  # the last child finishes first
        return sku * 10

    @task(registry=registry)
    def sum_prices(results: list[int]) -> int:
        calls.append(results)
        return sum(results)

    total = dispatch.group([price.message(sku=s) for s in range(5)]).then(sum_prices.message())
    assert total.status() == "queued"
    before = group_progress(total.id)
    assert before is not None and (before["children"], before["done"]) == (5, 0)

    await _drain(aws_env, registry)

    assert total.result(timeout_s=5) == 100
    assert calls == [[0, 10, 20, 30, 40]]
    after = group_progress(total.id)
    assert after is not None and (after["done"], after["callback_sent"]) == (5, True)
    assert group_progress("0" * 32) is None  # no such record: no group
    for command in ("status", "task"):  # both show the callback's children's progress
        shown = dispatch_cli(command, total.id, "--json")
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        assert (record["status"], record["group"]["done"]) == ("succeeded", 5)


async def test_the_async_forms_make_the_same_group_and_chain(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a group made with then_async and a chain with submit_async, when drained,
    then both handles give their callbacks' results."""

    @task(registry=registry)
    async def inc(n: int) -> int:
        return n + 1

    @task(registry=registry)
    def total(results: list[int]) -> int:
        return sum(results)

    try:
        grouped = await dispatch.group([inc.message(n) for n in range(3)]).then_async(
            total.message()
        )
        chained = await inc.message(1).then(inc.message()).submit_async()
        await _drain(aws_env, registry)
        assert await grouped.result_async(timeout_s=5) == 6
        assert await chained.result_async(timeout_s=5) == 3
    finally:
        await queue.aclose()


async def test_a_chain_passes_each_result_to_the_next_step(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a chain a → b → c, when drained, then each step got the previous one's
    result as its first argument (with its own arguments after it), and the chain's
    handle is the last step's."""
    seen: list[tuple[str, Any]] = []

    @task(registry=registry)
    def fetch(url: str) -> str:
        seen.append(("fetch", url))
        return f"<{url}>"

    @task(registry=registry)
    def parse(text: str, suffix: str) -> int:
        seen.append(("parse", text))
        return len(text + suffix)

    @task(registry=registry)
    async def double(n: int) -> int:
        seen.append(("double", n))
        return 2 * n

    chain = fetch.message(url="abc").then(parse.message(suffix="!!")).then(double.message())
    handle = chain.submit()
    assert handle.id == chain.last_id

    await _drain(aws_env, registry)

    assert handle.result(timeout_s=5) == 14
    assert seen == [("fetch", "abc"), ("parse", "<abc>"), ("double", 7)]


async def test_a_dead_child_kills_the_callback_and_a_redrive_completes_the_group(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a group whose second child fails for good on its first run, when drained,
    then the callback did not run, its record is dead as dependency_failed naming that
    child, and result() raises TaskFailedError; when the child is fixed and its dead
    letter redriven, then the group completes and the callback runs once."""
    broken = {"yes": True}
    calls: list[list[str]] = []

    @task(registry=registry, retry=ONE_ATTEMPT)
    def step(name: str) -> str:
        if name == "b" and broken["yes"]:
            raise ValueError("b is broken")
        return name.upper()

    @task(registry=registry)
    def join_names(results: list[str]) -> str:
        calls.append(results)
        return "".join(results)

    children = [step.message(name=n) for n in ("a", "b", "c")]
    handle = dispatch.group(children).then(join_names.message())
    await _drain(aws_env, registry)

    with pytest.raises(TaskFailedError) as caught:
        handle.result(timeout_s=5)
    assert caught.value.reason == DEPENDENCY_FAILED
    assert caught.value.error_type == "DependencyFailed"
    assert children[1].task_id in (caught.value.error_message or "")
    assert children[0].task_id not in (caught.value.error_message or "")
    assert calls == []

    broken["yes"] = False
    report = redrive(clients, aws_env)
    assert len(report.redriven) == 1
    await _drain(aws_env, registry)

    assert handle.result(timeout_s=5) == "ABC"
    assert calls == [["A", "B", "C"]]


async def test_a_cancelled_child_kills_the_callback_instead_of_leaving_it_waiting(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a group of two whose second child is cancelled while queued, when drained,
    then the first ran, the callback did not, and result() raises TaskFailedError
    (dependency_failed) naming the cancelled child and saying the group cannot complete,
    rather than waiting for ever."""
    calls: list[list[str]] = []

    @task(registry=registry)
    def step(name: str) -> str:
        return name.upper()

    @task(registry=registry)
    def join_names(results: list[str]) -> str:
        calls.append(results)
        return "".join(results)

    children = [step.message(name=n) for n in ("a", "b")]
    handle = dispatch.group(children).then(join_names.message())
    assert dispatch.handle(children[1].task_id).status() == "queued"
    cancelled = dispatch_cli("cancel", children[1].task_id)
    assert cancelled.returncode == 0, cancelled.stderr
    await _drain(aws_env, registry)

    with pytest.raises(TaskFailedError) as caught:
        handle.result(timeout_s=5)
    assert caught.value.reason == DEPENDENCY_FAILED
    message = caught.value.error_message or ""
    assert f"{children[1].task_id} (cancelled)" in message
    assert "cannot complete" in message
    assert dispatch.handle(children[0].task_id).status() == "succeeded"
    assert calls == []
    for url in (aws_env.queue_url, aws_env.dlq_url):  # nothing left waiting, nothing dead
        assert queue_counts(clients, url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_a_step_given_the_wrong_type_is_rejected_with_why_and_kills_the_rest(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a chain a → b → c where b takes a list but a returns a string, when
    drained, then b is dead as bad_arguments and its result() says which argument was
    wrong (not "no error recorded"), c is dead as dependency_failed rather than
    waiting for ever, and neither b nor c ran."""
    ran: list[str] = []

    @task(registry=registry)
    def fetch() -> str:
        return "text"

    @task(registry=registry)
    def parse(lines: list[str]) -> int:
        ran.append("parse")
        return len(lines)

    b, c = parse.message(), parse.message()
    last = fetch.message().then(b).then(c).submit()
    await _drain(aws_env, registry)

    with pytest.raises(TaskFailedError) as caught:
        dispatch.handle(b.task_id).result(timeout_s=5)
    assert caught.value.reason == "bad_arguments"
    assert "lines" in (caught.value.error_message or ""), caught.value
    with pytest.raises(TaskFailedError) as later:
        last.result(timeout_s=5)
    assert later.value.reason == DEPENDENCY_FAILED
    assert f"{b.task_id} (bad_arguments)" in (later.value.error_message or "")
    assert ran == []


async def test_a_dead_step_kills_every_later_step_of_a_chain(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a chain a → b → c whose first step dies, when drained, then b and c are
    both dead as dependency_failed and neither ran."""
    ran: list[str] = []

    @task(registry=registry, retry=ONE_ATTEMPT)
    def first() -> int:
        raise ValueError("no")

    @task(registry=registry)
    def later(n: int) -> int:
        ran.append("later")
        return n

    b, c = later.message(), later.message()
    handle = first.message().then(b).then(c).submit()
    await _drain(aws_env, registry)

    assert dispatch.handle(b.task_id).status() == "dead"
    with pytest.raises(TaskFailedError, match=DEPENDENCY_FAILED):
        handle.result(timeout_s=5)
    assert ran == []


async def test_a_success_settled_twice_is_counted_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a completed group, when a child's success is joined again (the join
    called twice) and a copy of a child's message is delivered again, then no second
    callback message is sent and the callback ran once."""
    calls: list[list[int]] = []

    @task(registry=registry)
    def square(n: int) -> int:
        return n * n

    @task(registry=registry)
    def collect(results: list[int]) -> int:
        calls.append(results)
        return sum(results)

    children = [square.message(n=n) for n in range(3)]
    handle = dispatch.group(children).then(collect.message())
    first = await _drain(aws_env, registry)
    assert (first.joiner.callbacks_sent, handle.result(timeout_s=5)) == (1, 5)

    group_id = _callback_group(clients, aws_env, handle.id)
    joined = decode(children[2].body)
    joined = dataclasses.replace(joined, join=group_id)
    async with async_clients(aws_env) as aio:
        joiner = Joiner(aio.dynamodb, aio.sqs, aws_env, clock=lambda: 1.0e9)
        assert await joiner.succeeded(joined) and await joiner.succeeded(joined)
    clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=joined.to_json())
    again = await _drain(aws_env, registry)

    assert (joiner.callbacks_sent, again.joiner.callbacks_sent) == (0, 0)
    assert again.stats.duplicates == 1
    assert calls == [[0, 1, 4]]
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_a_success_recorded_but_never_joined_is_joined_by_its_redelivery(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given a group whose only child's record says succeeded (with its result) but
    was never joined (its dispatcher died between the record and the join, its
    message still on the queue), when drained, then the redelivery joins it and the
    callback runs once with that result."""
    calls: list[list[str]] = []

    @task(registry=registry)
    def never_runs() -> str:
        raise AssertionError("a succeeded task never runs again")

    @task(registry=registry)
    def after(results: list[str]) -> int:
        calls.append(results)
        return len(results)

    child = never_runs.message()
    handle = dispatch.group([child]).then(after.message())
    # The dispatcher that ran it wrote the success, then died: the message stays.
    body = receive_all(clients, aws_env.queue_url)[0]
    clients.dynamodb.update_item(
        TableName=aws_env.table,
        Key=state.task_key(child.task_id),
        UpdateExpression="SET #s = :ok, #r = :r",
        ExpressionAttributeNames={"#s": "status", "#r": "result"},
        ExpressionAttributeValues={":ok": {"S": "succeeded"}, ":r": {"S": '"done"'}},
    )
    clients.sqs.change_message_visibility(
        QueueUrl=aws_env.queue_url, ReceiptHandle=body["ReceiptHandle"], VisibilityTimeout=0
    )

    await _drain(aws_env, registry)

    assert handle.result(timeout_s=5) == 1
    assert calls == [["done"]]


async def test_two_joiners_racing_over_the_last_two_children_send_one_callback(
    aws_env: Settings, registry: Registry, queue: Queue, clients: SyncClients
) -> None:
    """Given ten groups of two children whose records both say succeeded, when two
    joiners (two dispatchers' worth) join the two children of each group at the same
    moment, then every group's callback is sent exactly once."""

    @task(registry=registry)
    def child(n: int) -> int:
        return n

    @task(registry=registry)
    def callback(results: list[int]) -> int:
        return sum(results)

    groups = []
    for g in range(10):
        children = [child.message(n=g), child.message(n=g + 100)]
        handle = dispatch.group(children).then(callback.message())
        for message in children:
            clients.dynamodb.update_item(
                TableName=aws_env.table,
                Key=state.task_key(message.task_id),
                UpdateExpression="SET #s = :ok",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":ok": {"S": "succeeded"}},
            )
        group_id = _callback_group(clients, aws_env, handle.id)
        groups.append([dataclasses.replace(m.envelope, join=group_id) for m in children])

    async with async_clients(aws_env) as one, async_clients(aws_env) as two:
        left = Joiner(one.dynamodb, one.sqs, aws_env, clock=lambda: 1.0e9)
        right = Joiner(two.dynamodb, two.sqs, aws_env, clock=lambda: 1.0e9)
        for first, second in groups:
            assert all(await asyncio.gather(left.succeeded(first), right.succeeded(second)))

    assert left.callbacks_sent + right.callbacks_sent == 10
    sent = [decode(m["Body"]) for m in receive_all(clients, aws_env.queue_url)]
    callbacks = Counter(e.id for e in sent if e.task == "callback")
    assert len(callbacks) == 10 and set(callbacks.values()) == {1}
    for envelope in sent:
        if envelope.task == "callback":
            assert len(envelope.args[0]) == 2


async def test_two_dispatchers_on_one_queue_run_each_callback_once(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given four groups of ten children, when two dispatchers drain the queue at the
    same time, then every callback ran once with its ten results in order."""
    calls: Counter[int] = Counter()
    results: dict[int, list[int]] = {}

    @task(registry=registry)
    async def part(g: int, n: int) -> int:
        await asyncio.sleep(0.01 * (n % 3))
        return g * 100 + n

    @task(registry=registry)
    def whole(parts: list[int], g: int) -> int:
        calls[g] += 1
        results[g] = parts
        return len(parts)

    handles = [
        dispatch.group([part.message(g=g, n=n) for n in range(10)]).then(whole.message(g=g))
        for g in range(4)
    ]
    await asyncio.gather(_drain(aws_env, registry), _drain(aws_env, registry))
    await _drain(aws_env, registry)  # whatever one of them left for the other's callback

    assert [h.result(timeout_s=WAIT_S) for h in handles] == [10, 10, 10, 10]
    assert calls == {0: 1, 1: 1, 2: 1, 3: 1}
    assert results == {g: [g * 100 + n for n in range(10)] for g in range(4)}
