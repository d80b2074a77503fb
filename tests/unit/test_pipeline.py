"""The loop's pipeline (admit → claim → gate → run → settle) on in-memory fakes.

The fast tier: the same stages the Dispatcher builds, wired to an in-memory state
store and SQS actions (tests/unit/loop_fakes.py), so each rule is checked in
milliseconds. tests/integration runs the same stages over HTTP to the local AWS.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.core.deadletter import Reason
from dispatch.core.delivery import Delivery
from dispatch.core.errors import EnvelopeError
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.core.record import Status
from dispatch.core.resource import Resource
from dispatch.core.retry import Retry
from dispatch.core.signing import signature_attribute
from dispatch.loop.admission import Admitted, Postpone, Reject, admit
from dispatch.loop.settle import Dead, Done, RetryIn, decide
from dispatch.tasks.registry import Registry, task
from tests.unit.loop_fakes import Loop, delivery_of, until

FAIL = ErrorInfo(type="RuntimeError", message="boom")


@pytest.fixture
def registry() -> Registry:
    """A fresh registry per test."""
    return Registry()


# --- admission (pure) ------------------------------------------------------------


def test_admission_answers_each_kind_of_delivery(registry: Registry) -> None:
    """Given deliveries of each kind, admit() answers without any call: runs, waits, or never."""

    @task(registry=registry)
    def charge(order_id: str) -> None: ...

    now = 1_700_000_000.0
    good = charge.message(order_id="1")
    later = charge.with_options(delay_s=3600).message(order_id="2")
    unknown = json.loads(good.body) | {"task": "nope"}
    bad_args = json.loads(good.body) | {"kwargs": {"wrong": 1}}

    def answer(body: str) -> object:
        return admit(delivery_of(body), registry=registry, signing_keys=(), now=now)

    admitted = answer(good.body)
    assert isinstance(admitted, Admitted) and admitted.spec.name == charge.spec.name
    postponed = answer(later.body)
    assert isinstance(postponed, Postpone) and postponed.delay_s > 3500
    for body, reason in (
        ("{not json", Reason.MALFORMED),
        (json.dumps(unknown), Reason.UNKNOWN_TASK),
        (json.dumps(bad_args), Reason.BAD_ARGUMENTS),
    ):
        rejected = answer(body)
        assert isinstance(rejected, Reject) and rejected.reason is reason
        assert isinstance(rejected.error, EnvelopeError)


def test_admission_refuses_an_unsigned_body_when_keys_are_set(registry: Registry) -> None:
    """Given signing keys, an unsigned body is refused before its envelope is even read."""

    @task(registry=registry)
    def charge(order_id: str) -> None: ...

    body = charge.message(order_id="1").body
    refused = admit(delivery_of(body), registry=registry, signing_keys=("k1",), now=0.0)
    assert isinstance(refused, Reject) and refused.reason is Reason.BAD_SIGNATURE
    assert refused.task_id is None  # nothing in an unsigned body is trusted
    signed = Delivery(
        receipt="r", message_id="m", body=body, attributes=signature_attribute(("k1",), body)
    )
    assert isinstance(admit(signed, registry=registry, signing_keys=("k1",), now=0.0), Admitted)


# --- settlement decisions (pure) -------------------------------------------------


def test_decide_maps_each_outcome_to_its_settlement() -> None:
    """Given each kind of outcome, decide() answers done, retry in the policy's delay, or dead."""
    retry = Retry(max_attempts=3, base_delay_s=2.0, jitter=False)

    def outcome(kind: OutcomeKind, **extra: object) -> Outcome:
        return Outcome(kind=kind, duration_s=0.1, error=FAIL, **extra)  # type: ignore[arg-type]

    assert decide(Outcome(OutcomeKind.SUCCEEDED, 0.1), attempts=1, retry=retry) == Done()
    assert decide(outcome(OutcomeKind.RETRYABLE), attempts=2, retry=retry) == RetryIn(
        retry.delay_s(2)
    )
    assert decide(outcome(OutcomeKind.RETRYABLE), attempts=3, retry=retry) == Dead(
        Reason.MAX_ATTEMPTS
    )
    assert decide(outcome(OutcomeKind.PERMANENT), attempts=1, retry=retry) == Dead(
        Reason.PERMANENT_ERROR
    )
    assert decide(outcome(OutcomeKind.NOT_RETRYABLE), attempts=1, retry=retry) == Dead(
        Reason.NOT_RETRYABLE
    )
    slow_down = outcome(OutcomeKind.BACKPRESSURE, retry_after_s=7.2)
    assert decide(slow_down, attempts=3, retry=retry) == RetryIn(8, backpressure=True)
    assert decide(outcome(OutcomeKind.BACKPRESSURE), attempts=3, retry=retry) == RetryIn(
        retry.delay_s(1), backpressure=True
    )


@given(
    kind=st.sampled_from(list(OutcomeKind)),
    attempts=st.integers(min_value=1, max_value=20),
    max_attempts=st.integers(min_value=1, max_value=20),
)
def test_only_backpressure_retries_past_the_last_attempt(
    kind: OutcomeKind, attempts: int, max_attempts: int
) -> None:
    """For any outcome and attempt count, a retry that spends an attempt happens only while
    attempts are left; backpressure (not the task's fault) gives its attempt back."""
    retry = Retry(max_attempts=max_attempts, jitter=False)
    decision = decide(Outcome(kind, 0.0, error=FAIL), attempts=attempts, retry=retry)
    if isinstance(decision, RetryIn) and not decision.backpressure:
        assert kind is OutcomeKind.RETRYABLE and attempts < max_attempts
    if kind is OutcomeKind.BACKPRESSURE:
        assert isinstance(decision, RetryIn) and decision.backpressure
    if kind is OutcomeKind.SUCCEEDED:
        assert decision == Done()


# --- the pipeline on fakes -------------------------------------------------------


async def test_a_task_that_succeeds_is_recorded_deleted_and_counted_once(
    registry: Registry,
) -> None:
    """Given a task that returns, its record ends succeeded, its message is deleted, and one
    settlement event reaches both the run's stats and the published activity."""

    @task(registry=registry)
    def add(a: int, b: int) -> int:
        return a + b

    loop = Loop(registry)
    message = add.message(a=2, b=3)
    await loop.pipeline.process(delivery_of(message))
    await loop.aclose()

    record = loop.transitions.records[message.task_id]
    assert (record.status, record.attempts, record.result) == (Status.SUCCEEDED, 1, 5)
    assert loop.sqs.deleted == ["receipt-1"]
    assert (loop.stats.started, loop.stats.succeeded) == (1, 1)
    counts = loop.activity.snapshot()["tasks"][add.spec.name]
    assert (counts["dispatched"], counts["succeeded"]) == (1, 1)


async def test_a_failure_with_attempts_left_waits_its_backoff_on_the_same_message(
    registry: Registry,
) -> None:
    """Given a handler that fails with attempts left, the message is hidden for the policy's
    delay (not deleted, not copied) and the record is retrying with the error."""

    @task(registry=registry, retry=Retry(max_attempts=3, base_delay_s=4.0, jitter=False))
    def flaky() -> None:
        raise RuntimeError("boom")

    loop = Loop(registry)
    message = flaky.message()
    await loop.pipeline.process(delivery_of(message))
    await loop.aclose()

    record = loop.transitions.records[message.task_id]
    assert (record.status, record.attempts) == (Status.RETRYING, 1)
    assert record.last_error is not None and record.last_error.type == "RuntimeError"
    assert loop.sqs.hidden == {"receipt-1": 4}
    assert loop.sqs.deleted == [] and loop.sqs.dead_letters == []


async def test_the_last_failed_attempt_is_dead_lettered_with_its_reason_then_deleted(
    registry: Registry,
) -> None:
    """Given the last attempt fails, the DLQ gets a letter with reason and attempts, then the
    message is deleted; when the DLQ send fails the message is kept, never lost."""

    @task(registry=registry, retry=Retry(max_attempts=1))
    def broken() -> None:
        raise RuntimeError("boom")

    loop = Loop(registry)
    message = broken.message()
    await loop.pipeline.process(delivery_of(message))
    [letter] = loop.sqs.dead_letters
    assert (letter.reason, letter.attempts, letter.task_id) == (
        Reason.MAX_ATTEMPTS,
        1,
        message.task_id,
    )
    assert loop.sqs.deleted == ["receipt-1"]
    assert loop.transitions.records[message.task_id].status is Status.DEAD

    loop.sqs.dead_letter_fails = True
    await loop.pipeline.process(delivery_of("{not json", n=2))
    await loop.aclose()
    assert "receipt-2" not in loop.sqs.deleted
    assert (loop.stats.rejected, loop.stats.dead) == (1, 1)


async def test_a_duplicate_delivery_of_a_finished_task_is_deleted_without_running(
    registry: Registry,
) -> None:
    """Given a task that already succeeded, a second copy of its message is deleted and the
    handler does not run again."""
    calls: list[str] = []

    @task(registry=registry)
    def once(x: str) -> None:
        calls.append(x)

    loop = Loop(registry)
    message = once.message(x="a")
    await loop.pipeline.process(delivery_of(message, n=1))
    await loop.pipeline.process(delivery_of(message, n=2))
    await loop.aclose()

    assert calls == ["a"]
    assert loop.sqs.deleted == ["receipt-1", "receipt-2"]
    assert loop.stats.duplicates == 1


async def test_a_throttled_task_past_the_horizon_is_deferred_with_its_attempt_given_back(
    registry: Registry,
) -> None:
    """Given a resource whose next token is 10 s away and a 5 s horizon, the second task is
    hidden until about then and its claim given back: queued, no attempt spent."""
    slow = Resource("slow-api", rate_per_s=0.1, burst=1)

    @task(registry=registry, resource=slow)
    def call(n: int) -> None: ...

    loop = Loop(registry, horizon_s=5.0)
    first, second = call.message(n=1), call.message(n=2)
    await loop.pipeline.process(delivery_of(first, n=1))
    await loop.pipeline.process(delivery_of(second, n=2))
    await loop.aclose()

    assert loop.transitions.records[first.task_id].status is Status.SUCCEEDED
    deferred = loop.transitions.records[second.task_id]
    assert (deferred.status, deferred.attempts) == (Status.QUEUED, 0)
    assert loop.sqs.hidden == {"receipt-2": math.ceil(1 / 0.1)}
    assert (loop.stats.deferred, loop.stats.started) == (1, 1)


async def test_a_batch_item_given_back_while_its_claim_is_on_the_way_gets_the_claim_back(
    registry: Registry,
) -> None:
    """Given a micro-batch item whose delivery is released (a deadline) while its claim is in
    flight, the claim that lands is given back: the record returns to queued with its
    attempt refunded, instead of staying running until its lease expires."""
    ran: list[list[str]] = []

    @task(registry=registry, batch_size=1, batch_window_s=0.05)
    def index(items: list[str]) -> None:
        ran.append(items)

    loop = Loop(registry)
    loop.transitions.claim_gate = asyncio.Event()
    message = index.message("doc-1")
    delivery = delivery_of(message)
    handling = asyncio.create_task(loop.pipeline.process(delivery))
    await until(lambda: "claim" in loop.transitions.calls)

    handling.cancel()  # the dispatcher releases unfinished work at its deadline
    with pytest.raises(asyncio.CancelledError):
        await handling
    await loop.pipeline.release(delivery)
    loop.transitions.claim_gate.set()
    await until(lambda: "give_back" in loop.transitions.calls)
    await loop.aclose()

    record = loop.transitions.records[message.task_id]
    assert (record.status, record.attempts) == (Status.QUEUED, 0)
    assert ran == []
    assert loop.sqs.hidden == {"receipt-1": 0}


async def test_a_batch_stopped_while_its_claims_are_on_the_way_gives_every_claim_back(
    registry: Registry,
) -> None:
    """Given a batch whose claims are in flight when the dispatcher releases its items and
    stops the batch (a deadline), when the claims land, then each is given back: queued,
    attempts refunded, the handler never called."""
    ran: list[list[str]] = []

    @task(registry=registry, batch_size=2, batch_window_s=0.05)
    def index(items: list[str]) -> None:
        ran.append(items)

    loop = Loop(registry)
    loop.transitions.claim_gate = asyncio.Event()
    messages = [index.message("a"), index.message("b")]
    handling = [
        asyncio.create_task(loop.pipeline.process(delivery_of(m, n=i)))
        for i, m in enumerate(messages, 1)
    ]
    await until(lambda: loop.transitions.calls.count("claim") == 2)
    for task_handling in handling:
        task_handling.cancel()
    await asyncio.gather(*handling, return_exceptions=True)
    closing = asyncio.create_task(loop.pipeline.batches.aclose())
    await asyncio.sleep(0)
    loop.transitions.claim_gate.set()
    await closing
    await loop.runner.aclose()

    records = [loop.transitions.records[m.task_id] for m in messages]
    assert [(r.status, r.attempts) for r in records] == [(Status.QUEUED, 0)] * 2
    assert ran == []
