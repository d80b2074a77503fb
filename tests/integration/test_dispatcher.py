"""The loop end to end over HTTP to the embedded local AWS: claim, run, settle, dead-letter."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from dispatch import PermanentError, Retry, current_task, task
from dispatch.core.config import Settings
from dispatch.core.deadletter import parse_attributes
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import drain, queue_counts, receive_all

FAST = Retry(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0, jitter=False)


def record(clients, settings: Settings, task_id: str):  # type: ignore[no-untyped-def]
    store = SyncStateStore(clients.dynamodb, settings.table)
    found = store.get(task_id)
    assert found is not None, f"no record for {task_id}"
    return found


async def test_success_runs_once_records_result_and_deletes(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given enqueued tasks (sync and async), when the dispatcher drains the queue,
    then each handler ran once, each record says succeeded with the result, and the
    queue is empty."""
    calls: list[str] = []

    @task(registry=registry)
    async def add(a: int, b: int) -> int:
        calls.append(f"add {a} {b}")
        return a + b

    @task(registry=registry)
    def shout(word: str) -> str:
        calls.append(f"shout {word}")
        return word.upper()

    ids = queue.enqueue_many([add.message(2, 3), shout.message(word="hi")])
    assert record(clients, aws_env, ids[0]).status is Status.QUEUED

    stats = await drain(aws_env, registry)

    assert sorted(calls) == ["add 2 3", "shout hi"]
    assert stats.succeeded == 2 and stats.dead == 0
    first, second = (record(clients, aws_env, i) for i in ids)
    assert (first.status, first.result, first.attempts) == (Status.SUCCEEDED, 5, 1)
    assert (second.status, second.result) == (Status.SUCCEEDED, "HI")
    assert first.finished_at is not None and first.started_at is not None
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_retry_reuses_the_same_message_and_counts_attempts_in_dynamodb(
    aws_env: Settings, registry: Registry, queue: Queue, clients, counter: RequestCounter
) -> None:
    """Given a task that fails twice then succeeds, when drained, then it ran three
    times on the same SQS message (no new message sent, receive count 3), and its
    record counts 3 attempts and ends succeeded."""
    seen: list[tuple[int, str]] = []

    @task(registry=registry, retry=FAST)
    def flaky() -> str:
        context = current_task()
        seen.append((context.attempt, context.task_id))
        if context.attempt < 3:
            raise ConnectionError(f"attempt {context.attempt} failed")
        return "ok"

    task_id = flaky.with_options().enqueue()
    sends_after_enqueue = counter.snapshot().get(("sqs", "SendMessageBatch"), 0)
    dispatcher_counter = RequestCounter()

    stats = await drain(aws_env, registry, counter=dispatcher_counter)

    assert seen == [(1, task_id), (2, task_id), (3, task_id)]
    assert stats.retried == 2 and stats.succeeded == 1
    assert ("sqs", "SendMessageBatch") not in dispatcher_counter.snapshot()
    assert sends_after_enqueue == 1
    assert ("sqs", "ChangeMessageVisibilityBatch") in dispatcher_counter.snapshot()
    final = record(clients, aws_env, task_id)
    assert (final.status, final.attempts) == (Status.SUCCEEDED, 3)
    assert final.last_error is not None and final.last_error.type == "ConnectionError"
    assert final.first_failure_at is not None


async def test_last_attempt_dead_letters_with_the_failure(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task that always fails, when drained, then after max_attempts it is on
    the DLQ with its original body and the failure (type, message, traceback,
    attempts, first and last failure time), off the main queue, and recorded dead."""

    @task(registry=registry, retry=Retry(max_attempts=2, base_delay_s=1, max_delay_s=1))
    def doomed(n: int) -> None:
        raise ValueError(f"bad n={n}")

    message = doomed.message(n=7)
    queue.enqueue(message)

    stats = await drain(aws_env, registry)

    assert stats.dead == 1 and stats.dead_reasons == {"max_attempts": 1}
    letters = receive_all(clients, aws_env.dlq_url)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["Body"] == message.body
    failure = parse_attributes(letter["MessageAttributes"])
    assert failure["reason"] == "max_attempts"
    assert failure["error"]["type"] == "ValueError"
    assert failure["error"]["message"] == "bad n=7"
    assert "raise ValueError" in failure["error"]["traceback"]
    assert failure["attempts"] == 2
    assert failure["task_id"] == message.task_id and failure["task"] == "doomed"
    assert failure["first_failure_at"] < failure["last_failure_at"]
    assert letter["MessageAttributes"]["dispatch-reason"]["StringValue"] == "max_attempts"
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}
    dead = record(clients, aws_env, message.task_id)
    assert (dead.status, dead.attempts, dead.dead_reason) == (Status.DEAD, 2, "max_attempts")


async def test_permanent_error_and_unlisted_exceptions_skip_retries(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a handler raising PermanentError and one raising an exception outside
    retry_on, when drained, then both are dead-lettered after one attempt."""

    @task(registry=registry, retry=FAST)
    def refuse() -> None:
        raise PermanentError("card reported stolen")

    @task(registry=registry, retry=Retry(3, 1.0, 1.0, retry_on=(ConnectionError,)))
    def typo() -> None:
        raise KeyError("missing")

    ids = queue.enqueue_many([refuse.message(), typo.message()])
    stats = await drain(aws_env, registry)

    assert stats.retried == 0
    assert stats.dead_reasons == {"permanent_error": 1, "not_retryable": 1}
    assert [record(clients, aws_env, i).attempts for i in ids] == [1, 1]
    reasons = {
        parse_attributes(m["MessageAttributes"])["task"]: parse_attributes(m["MessageAttributes"])
        for m in receive_all(clients, aws_env.dlq_url)
    }
    refused = reasons["refuse"]["error"]
    assert (refused["type"], refused["message"]) == ("PermanentError", "card reported stolen")
    assert set(refused) == {"type", "message", "traceback"}
    # the traceback is the handler's own: it names the raising line and ends in the error
    assert 'raise PermanentError("card reported stolen")' in refused["traceback"]
    assert refused["traceback"].rstrip().endswith("PermanentError: card reported stolen")
    assert reasons["typo"]["reason"] == "not_retryable"


async def test_malformed_messages_are_dead_lettered_with_the_reason_and_the_loop_goes_on(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given bodies a foreign producer might send (not JSON, not an envelope, another
    version, an unknown task, arguments that do not bind) around a good task, when
    drained, then each bad one is on the DLQ at once with a reason naming the
    problem, and the good task still ran."""
    ran = threading.Event()

    @task(registry=registry)
    def charge(order_id: str) -> None:
        ran.set()

    bad = {
        "not json {": ("malformed", "not JSON"),
        json.dumps([1, 2]): ("malformed", "not an object"),
        json.dumps({"v": 2, "id": "x", "task": "charge"}): ("malformed", "version 2"),
        json.dumps({"v": 1, "id": "y", "task": "chrage", "args": [], "kwargs": {}}): (
            "unknown_task",
            "unknown task 'chrage'",
        ),
        json.dumps({"v": 1, "id": "z", "task": "charge", "args": [], "kwargs": {"x": 1}}): (
            "bad_arguments",
            "missing a required argument: 'order_id'",
        ),
    }
    for body in bad:
        clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=body)
    good = queue.enqueue(charge.message(order_id="1"))

    stats = await drain(aws_env, registry)

    assert ran.is_set() and stats.succeeded == 1
    assert stats.rejected == len(bad) and stats.retried == 0
    letters = receive_all(clients, aws_env.dlq_url)
    assert sorted(m["Body"] for m in letters) == sorted(bad)
    for letter in letters:
        failure = parse_attributes(letter["MessageAttributes"])
        reason, words = bad[letter["Body"]]
        assert failure["reason"] == reason
        assert words in failure["error"]["message"]
    assert record(clients, aws_env, good).status is Status.SUCCEEDED
    unknown = record(clients, aws_env, "y")
    assert (unknown.status, unknown.dead_reason) == (Status.DEAD, "unknown_task")


async def test_duplicate_delivery_of_a_finished_task_does_not_run_it_again(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task that succeeded, when SQS delivers its message again (a duplicate
    send of the same body), then the handler does not run a second time and the
    duplicate is deleted."""
    runs: list[int] = []

    @task(registry=registry)
    def once() -> None:
        runs.append(1)

    message = once.message()
    queue.enqueue(message)
    await drain(aws_env, registry)
    clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=message.body)

    stats = await drain(aws_env, registry)

    assert runs == [1]
    assert stats.duplicates == 1 and stats.started == 0
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 0
    assert record(clients, aws_env, message.task_id).attempts == 1


async def test_a_handler_past_its_timeout_fails_the_attempt_and_is_retried(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given an async handler that hangs on its first attempt, when it runs past
    timeout_s, then that attempt fails with TaskTimeoutError and the retry succeeds."""

    @task(registry=registry, retry=FAST, timeout_s=0.2)
    async def slow() -> str:
        if current_task().attempt == 1:
            await asyncio.sleep(30)
        return "done"

    task_id = queue.enqueue(slow.message())
    stats = await drain(aws_env, registry)

    assert stats.retried == 1 and stats.succeeded == 1
    final = record(clients, aws_env, task_id)
    assert final.status is Status.SUCCEEDED and final.attempts == 2
    assert final.last_error is not None and final.last_error.type == "TaskTimeoutError"
    assert "timeout of 0.2 s" in final.last_error.message


async def test_visibility_is_extended_while_a_long_task_runs(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a visibility timeout of 2 s and a task that runs 5 s, when drained, then
    the message is never delivered a second time while the task runs."""
    runs: list[float] = []

    @task(registry=registry, timeout_s=20)
    async def long_job() -> None:
        runs.append(time.monotonic())
        await asyncio.sleep(5)

    queue.enqueue(long_job.message())
    stats = await drain(aws_env, registry, visibility_timeout_s=2)

    assert len(runs) == 1
    assert stats.received == 1 and stats.deferred == 0 and stats.succeeded == 1


async def test_until_empty_waits_for_delayed_messages(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task enqueued with delay_s=2, when the dispatcher runs until empty,
    then it does not return before the task ran."""
    ran_at: list[float] = []

    @task(registry=registry)
    def later() -> None:
        ran_at.append(time.time())

    enqueued_at = time.time()
    later.with_options(delay_s=2).enqueue()
    assert queue_counts(clients, aws_env.queue_url)["delayed"] == 1

    stats = await drain(aws_env, registry)

    assert stats.succeeded == 1
    assert len(ran_at) == 1 and ran_at[0] - enqueued_at >= 1.5


async def test_delays_longer_than_sqs_allows_are_carried_by_the_envelope(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task due later than SQS's 15-minute delay allows (its envelope carries
    an eta), when a dispatcher receives it early, then it sends it back delayed
    instead of running it, and it runs once it is due."""
    ran: list[float] = []

    @task(registry=registry)
    def reminder() -> None:
        ran.append(time.time())

    far = reminder.with_options(delay_s=3600).message()
    assert far.envelope.eta is not None and far.sqs_delay_seconds() == 900
    queue.enqueue(far)
    assert queue_counts(clients, aws_env.queue_url)["delayed"] == 1

    # The same mechanism, due in 3 s, sent without SQS delay so it arrives early.
    soon = json.loads(far.body)
    soon["id"], soon["eta"] = "soon-1", time.time() + 3
    clients.sqs.purge_queue(QueueUrl=aws_env.queue_url)
    clients.sqs.send_message(QueueUrl=aws_env.queue_url, MessageBody=json.dumps(soon))

    stats = await drain(aws_env, registry)

    assert stats.postponed == 1 and stats.succeeded == 1
    assert len(ran) == 1 and ran[0] >= soon["eta"] - 1


async def test_work_that_cannot_finish_by_the_deadline_is_released_at_once(
    aws_env: Settings, registry: Registry, queue: Queue, clients
) -> None:
    """Given a task still running when the dispatcher's finish_by deadline comes (a Lambda
    invocation about to end), when the run ends, then the message is visible again at
    once (no stale visibility timeout), the attempt is given back, and the next run
    completes it as attempt 1."""
    from dispatch.loop.dispatcher import Dispatcher
    from dispatch.store.aws import async_clients

    attempts: list[int] = []

    @task(registry=registry, timeout_s=60)
    async def slow() -> None:
        attempts.append(current_task().attempt)
        if len(attempts) == 1:
            await asyncio.sleep(60)

    task_id = queue.enqueue(slow.message())
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(aws_env, clients=aio, registry=registry)
        started = time.monotonic()
        stats = await dispatcher.run(for_s=1, finish_by=time.time() + 2)
        await dispatcher.runner.aclose()

    assert time.monotonic() - started < 10
    assert stats.released == 1 and stats.succeeded == 0
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 1
    released = record(clients, aws_env, task_id)
    assert (released.status, released.attempts) == (Status.RETRYING, 0)

    stats = await drain(aws_env, registry)

    assert stats.succeeded == 1 and attempts == [1, 1]
