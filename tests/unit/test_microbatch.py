"""Micro-batch tasks without AWS: declarations, enqueue checks, and how a batch
handler's return or exception becomes one outcome per item."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from dispatch import (
    Backpressure,
    BatchContext,
    BatchFailures,
    BatchTask,
    PermanentError,
    Retry,
    TaskContext,
    current_task,
    task,
)
from dispatch.core.envelope import decode
from dispatch.core.errors import EnvelopeError, InvalidArgumentsError, TaskDefinitionError
from dispatch.core.outcome import OutcomeKind
from dispatch.tasks.registry import Registry, resolve
from dispatch_workers.lambda_handler import BatchCall, TaskCall, decode_outcomes, encode_request
from dispatch_workers.pool import WorkerPool


@pytest.fixture
def registry() -> Registry:
    """A fresh registry per test."""
    return Registry()


def batch_context(n: int, *, attempts: Sequence[int] | None = None) -> BatchContext:
    """The context a dispatcher gives a batch of ``n`` items of task ``t``."""
    return BatchContext.of(
        tuple(
            TaskContext(
                task_id=f"id-{i}",
                task="t",
                attempt=attempts[i] if attempts else 1,
                max_attempts=3,
                enqueued_at=100.0 + i,
            )
            for i in range(n)
        )
    )


# --- declaring ----------------------------------------------------------------------------
def test_a_batch_declaration_returns_a_batch_task_with_its_options(registry: Registry) -> None:
    """Given @task(batch_size=, batch_window_s=) on a handler taking list[str], then it is
    a BatchTask whose spec carries the options and the element type, and calling it
    runs the handler directly on a list."""

    @task(registry=registry, batch_size=25, batch_window_s=0.5)
    def index_docs(docs: list[str]) -> int:
        return len(docs)

    assert isinstance(index_docs, BatchTask)
    batch = index_docs.spec.batch
    assert batch is not None
    assert (batch.size, batch.window_s, batch.parameter, batch.item_hint) == (25, 0.5, "docs", str)
    assert index_docs(["a", "b"]) == 2
    assert registry.get("index_docs") is index_docs.spec


def test_the_window_defaults_to_one_second(registry: Registry) -> None:
    """Given only batch_size, the window is the documented default of 1 s."""

    @task(registry=registry, batch_size=10)
    def f(items: list[int]) -> None: ...

    assert f.spec.batch is not None and f.spec.batch.window_s == 1.0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"batch_size": 0}, "batch_size=0 must be 1 to 100"),
        ({"batch_size": 101}, "batch_size=101 must be 1 to 100"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be a whole number"),
        ({"batch_size": True}, "batch_size=True must be a whole number"),
        ({"batch_size": 5, "batch_window_s": 0}, "batch_window_s=0 must be > 0 and at most 20"),
        ({"batch_size": 5, "batch_window_s": -1.0}, "batch_window_s=-1.0 must be > 0"),
        ({"batch_size": 5, "batch_window_s": 21}, "batch_window_s=21 must be > 0 and at most 20"),
        ({"batch_size": 5, "batch_window_s": float("nan")}, "batch_window_s=nan"),
        ({"batch_window_s": 1.0}, "batch_window_s= needs batch_size="),
        (
            {"batch_size": 5, "schedule": "rate(5 minutes)"},
            "a periodic task (schedule=) cannot be a batch task",
        ),
    ],
)
def test_wrong_batch_options_are_refused_at_declaration(
    registry: Registry, options: dict[str, Any], expected: str
) -> None:
    """Given a batch option out of range, the declaration fails naming the option,
    the value and the allowed range."""
    with pytest.raises(TaskDefinitionError, match="task 'f': ") as caught:

        @task(registry=registry, **options)
        def f(items: list[int]) -> None: ...

    assert expected in str(caught.value)
    assert "f" not in registry


def test_a_batch_handler_must_take_exactly_one_list_parameter(registry: Registry) -> None:
    """Given batch handlers with two parameters, none, only keywords, or a non-list
    annotation, each declaration fails saying the handler takes one list."""

    def two(items: list[int], extra: int = 0) -> None: ...
    def none() -> None: ...
    def keyword_only(*, items: list[int]) -> None: ...
    def var_args(*items: int) -> None: ...
    def not_a_list(item: int) -> None: ...
    def a_dict(items: dict[str, int]) -> None: ...

    for fn in (two, none, keyword_only, var_args):
        with pytest.raises(TaskDefinitionError, match="takes exactly one parameter, the list"):
            task(registry=registry, batch_size=5)(fn)
    for fn in (not_a_list, a_dict):
        with pytest.raises(TaskDefinitionError, match="annotate it list\\[ItemType\\]"):
            task(registry=registry, batch_size=5)(fn)
    assert len(registry) == 0


def test_unannotated_and_sequence_parameters_are_accepted(registry: Registry) -> None:
    """Given a batch handler with an unannotated parameter or a Sequence[int] one, the
    declaration works; the element type is checked only when it is known."""

    @task(registry=registry, batch_size=5)
    def loose(items):  # type: ignore[no-untyped-def]
        return None

    @task(registry=registry, batch_size=5)
    def seq(items: Sequence[int]) -> None: ...

    assert loose.spec.batch is not None and loose.spec.batch.item_hint is Any
    assert seq.spec.batch is not None and seq.spec.batch.item_hint is int


# --- enqueueing ---------------------------------------------------------------------------
def test_a_message_carries_one_item_with_the_usual_options(registry: Registry) -> None:
    """Given a batch task, message(item, ...) builds one envelope whose args are [item],
    with its own task id and the enqueue options, as for any task."""

    @task(registry=registry, batch_size=10)
    def index_docs(docs: list[dict[str, str]]) -> None: ...

    first = index_docs.message({"id": "1"}, idempotency_key="doc-1", group="g")
    second = index_docs.message({"id": "2"}, delay_s=30)

    body = json.loads(first.body)
    assert (body["task"], body["args"], body["kwargs"]) == ("index_docs", [{"id": "1"}], {})
    assert (body["idempotency_key"], body["group"]) == ("doc-1", "g")
    assert second.delay_s == 30 and first.task_id != second.task_id
    assert resolve(decode(first.body), registry) is index_docs.spec


def test_an_item_of_the_wrong_type_is_refused_at_enqueue(registry: Registry) -> None:
    """Given a handler taking list[int], enqueueing a str (or a whole list) fails before
    anything is sent, naming the expected element type."""

    @task(registry=registry, batch_size=10)
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    with pytest.raises(InvalidArgumentsError, match="the item must be int, got str"):
        total.message("7")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentsError, match="the item must be int, got list"):
        total.message([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentsError, match="not JSON-serialisable"):
        total.message({1, 2})  # type: ignore[arg-type]
    assert json.loads(total.message(7).body)["args"] == [7]


def test_a_foreign_message_with_a_wrong_item_is_refused_on_arrival(registry: Registry) -> None:
    """Given a hand-written envelope for a batch task with two args, or an item of the
    wrong type, the dispatcher's resolve refuses it (dead-lettered as bad_arguments)."""

    @task(registry=registry, batch_size=10)
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    two = '{"v":1,"id":"x1","task":"total","args":[1,2],"kwargs":{}}'
    wrong = '{"v":1,"id":"x2","task":"total","args":["one"],"kwargs":{}}'
    named = '{"v":1,"id":"x3","task":"total","args":[],"kwargs":{"numbers":[1]}}'

    with pytest.raises(EnvelopeError, match="exactly one item"):
        resolve(decode(two), registry)
    with pytest.raises(EnvelopeError, match="the item must be int, got str"):
        resolve(decode(wrong), registry)
    with pytest.raises(EnvelopeError, match="exactly one item"):
        resolve(decode(named), registry)


# --- BatchFailures ------------------------------------------------------------------------
def test_batch_failures_refuses_what_names_no_item() -> None:
    """BatchFailures needs a non-empty mapping of index or task id to an exception."""
    with pytest.raises(TypeError, match="non-empty mapping"):
        BatchFailures({})
    with pytest.raises(TypeError, match="names no item"):
        BatchFailures({1.5: ValueError()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="not an exception"):
        BatchFailures({0: "bad"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="takes a list"):
        BatchFailures({0: ValueError()}, results="abc")

    failures = BatchFailures({0: ValueError("bad doc"), "id-2": PermanentError("gone")})
    assert "2 item(s) of the batch failed" in str(failures)
    assert "ValueError: bad doc" in str(failures)


# --- one outcome per item -----------------------------------------------------------------
async def run_batch(spec_task: BatchTask[Any, Any], items: list[Any], **kw: Any) -> list[Any]:
    """Run the batch handler in a worker pool, as the dispatcher does."""
    async with WorkerPool(max_workers=2) as pool:
        return await pool.run_batch(spec_task.spec, items, batch_context(len(items), **kw))


async def test_a_returning_handler_succeeds_every_item_with_its_own_result(
    registry: Registry,
) -> None:
    """Given a handler returning one result per item, each item succeeds with its own;
    a handler returning something else gives every item that value."""

    @task(registry=registry, batch_size=10)
    def double(numbers: list[int]) -> list[int]:
        return [2 * n for n in numbers]

    @task(registry=registry, batch_size=10)
    async def count(numbers: list[int]) -> int:
        return len(numbers)

    doubled = await run_batch(double, [1, 2, 3])
    counted = await run_batch(count, [1, 2, 3])

    assert [(o.kind, o.result) for o in doubled] == [(OutcomeKind.SUCCEEDED, n) for n in (2, 4, 6)]
    assert [o.result for o in counted] == [3, 3, 3]


async def test_batch_failures_fail_only_the_named_items(registry: Registry) -> None:
    """Given a handler raising BatchFailures for item 1 (retryable), the item with task
    id id-2 (PermanentError) and item 3 (Backpressure), those items get those outcomes
    and the others succeed with their results."""

    @task(registry=registry, batch_size=10, retry=Retry(retry_on=(ConnectionError,)))
    def index_docs(docs: list[str]) -> None:
        raise BatchFailures(
            {
                1: ConnectionError("search node down"),
                "id-2": PermanentError("document deleted"),
                3: Backpressure("slow down", retry_after_s=4),
                4: KeyError("not in retry_on"),
            },
            results=[f"ok {d}" for d in docs],
        )

    outcomes = await run_batch(index_docs, ["a", "b", "c", "d", "e", "f"])

    assert [o.kind for o in outcomes] == [
        OutcomeKind.SUCCEEDED,
        OutcomeKind.RETRYABLE,
        OutcomeKind.PERMANENT,
        OutcomeKind.BACKPRESSURE,
        OutcomeKind.NOT_RETRYABLE,
        OutcomeKind.SUCCEEDED,
    ]
    assert (outcomes[0].result, outcomes[5].result) == ("ok a", "ok f")
    assert outcomes[1].error is not None and outcomes[1].error.summary() == (
        "ConnectionError: search node down"
    )
    assert outcomes[2].error is not None and outcomes[2].error.type == "PermanentError"
    assert outcomes[3].retry_after_s == 4


async def test_an_exception_fails_every_item_the_same_way(registry: Registry) -> None:
    """Given a handler that raises, or runs past timeout_s, every item of the batch gets
    that attempt's failure; BatchFailures naming no item of the batch fails them all,
    saying why."""

    @task(registry=registry, batch_size=10)
    def broken(docs: list[str]) -> None:
        raise RuntimeError("index is read-only")

    @task(registry=registry, batch_size=10, timeout_s=0.05)
    async def slow(docs: list[str]) -> None:
        await asyncio.sleep(5)

    @task(registry=registry, batch_size=10)
    def confused(docs: list[str]) -> None:
        raise BatchFailures({7: ValueError("x")})

    raised = await run_batch(broken, ["a", "b"])
    timed_out = await run_batch(slow, ["a", "b"])
    wrong = await run_batch(confused, ["a", "b"])

    assert [(o.kind, o.error.summary()) for o in raised if o.error] == [
        (OutcomeKind.RETRYABLE, "RuntimeError: index is read-only")
    ] * 2
    assert [(o.kind, o.error.type) for o in timed_out if o.error] == [
        (OutcomeKind.RETRYABLE, "TaskTimeoutError")
    ] * 2
    assert all(o.kind is OutcomeKind.RETRYABLE for o in wrong)
    assert wrong[0].error is not None and "names item 7, but the batch has 2" in (
        wrong[0].error.message
    )


async def test_current_task_is_the_batch_context_with_each_items_own(registry: Registry) -> None:
    """Inside a batch handler, current_task() is a BatchContext: the items' task ids and
    attempts in list order; the batch's attempt is the highest, its task id the first."""
    seen: list[object] = []  # checked below: an assert in the handler would only fail it

    @task(registry=registry, batch_size=10)
    def look(docs: list[str]) -> None:
        seen.append(current_task())

    await run_batch(look, ["a", "b", "c"], attempts=[1, 3, 2])

    (context,) = seen
    assert isinstance(context, BatchContext)
    assert context.task_ids == ("id-0", "id-1", "id-2")
    assert [item.attempt for item in context.items] == [1, 3, 2]
    assert (context.task_id, context.attempt, context.enqueued_at) == ("id-0", 3, 100.0)
    assert context.is_last_attempt and not context.items[0].is_last_attempt


# --- the Lambda wire format ---------------------------------------------------------------
def test_a_batch_call_round_trips_and_answers_one_outcome_per_item() -> None:
    """A batch call in a worker request encodes each item with its context, decodes to
    the same call, and its half-splits keep the items in order."""
    context = batch_context(3)
    call = BatchCall(task="t", items=("a", "b", "c"), contexts=context.items)
    single = TaskCall(task="u", args=(1,), kwargs={}, context=context.items[0])

    request = json.loads(encode_request([call, single]))

    assert request["tasks"][0]["batch"][1] == {
        "item": "b",
        "context": {"task_id": "id-1", "attempt": 1, "max_attempts": 3, "enqueued_at": 101.0},
    }
    assert BatchCall.from_dict(request["tasks"][0]) == call
    assert call.context == context
    first, second = call.halves()
    assert (first.items, second.items) == (("a",), ("b", "c"))
    with pytest.raises(ValueError, match="not a batch call"):
        BatchCall.from_dict({"task": "t", "batch": []})
    with pytest.raises(ValueError, match="expected 4 outcomes"):
        decode_outcomes({"v": 1, "outcomes": [{"kind": "succeeded"}] * 3}, 4)
