"""Results, without AWS: the waiter's pacing, the result check on the worker Lambda's path,
the declaration option, and mypy's view of ``submit(...).result()``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mypy import api

from dispatch import TaskDefinitionError, TaskHandle, task
from dispatch.core import constants as c
from dispatch.core.context import TaskContext
from dispatch.core.errors import ResultNotSerializableError, ResultTooLargeError
from dispatch.core.result import result_json
from dispatch.producer.handle import MAX_PAUSE_S, pause_s
from dispatch.tasks.registry import Registry
from dispatch_workers.lambda_handler import TaskCall, WorkerHandler

REPO = Path(__file__).resolve().parents[2]


def test_the_pause_between_reads_doubles_from_50_ms_to_one_second() -> None:
    """Given a waiter that has read a record n times, then its next pause is 0.05 s
    doubled n-1 times, never over one second: a long wait reads once a second."""
    pauses = [pause_s(n) for n in range(1, 9)]

    assert pauses == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert pause_s(10_000) == MAX_PAUSE_S == 1.0


@pytest.mark.parametrize("timeout_s", [-1, float("nan"), float("inf"), "5", True])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(timeout_s: Any) -> None:
    """Given a timeout_s that is negative, NaN, infinite or not a number, when result() is
    called, then ValueError names it before any request is sent."""
    handle: TaskHandle[Any] = TaskHandle("0" * 32)

    with pytest.raises(ValueError, match=r"timeout_s=.*: give a number of seconds >= 0"):
        handle.result(timeout_s=timeout_s)


def test_the_stored_json_is_measured_as_the_record_keeps_it() -> None:
    """Given results at and over the limit (non-ASCII text counts as its \\u escapes),
    when encoded, then the limit is MAX_RESULT_BYTES of compact JSON, and NaN is refused."""
    assert len(result_json("x" * (c.MAX_RESULT_BYTES - 2), task="t")) == c.MAX_RESULT_BYTES
    assert result_json({"a": [1, 2]}, task="t") == '{"a":[1,2]}'
    with pytest.raises(ResultTooLargeError) as caught:
        result_json("é" * 700, task="t")  # 700 escapes of 6 bytes, and the quotes
    assert (caught.value.size_bytes, caught.value.limit_bytes) == (4_202, c.MAX_RESULT_BYTES)
    with pytest.raises(ResultNotSerializableError, match="returned a float that JSON cannot"):
        result_json(float("nan"), task="t")


@pytest.mark.parametrize("value", [None, 0, "no", [False]])
def test_store_result_must_be_a_bool(value: Any) -> None:
    """Given store_result that is not True or False, when declared, then
    TaskDefinitionError names the option."""

    def charge() -> int:
        return 1

    with pytest.raises(TaskDefinitionError, match=r"store_result=.* must be True .* or False"):
        task(store_result=value, registry=Registry())(charge)


def test_the_worker_lambda_fails_an_attempt_whose_result_is_too_large() -> None:
    """Given the worker Lambda's handler and a task returning a result over the limit,
    when invoked as the dispatcher invokes it, then the outcome it answers is a permanent
    failure (dead-lettered at once, not retried: the handler's work is done) naming the
    size and the limit (the same check as the in-process pool's)."""
    registry = Registry()

    @task(registry=registry, name="big")
    def big() -> str:
        return "x" * c.MAX_RESULT_BYTES

    worker = WorkerHandler(registry=registry, task_modules=(), thread_workers=1)
    context = TaskContext(task_id="t-1", task="big", attempt=1, max_attempts=3, enqueued_at=0.0)
    call = TaskCall(task="big", args=(), kwargs={}, context=context)

    outcome: dict[str, Any] = worker({"v": 1, "tasks": [call.to_dict()]}, None)["outcomes"][0]

    assert outcome["kind"] == "permanent" and "result" not in outcome
    assert outcome["error"]["type"] == "ResultTooLargeError"
    assert (
        f"{c.MAX_RESULT_BYTES + 2} bytes as JSON, over the limit of" in outcome["error"]["message"]
    )


TYPING_SNIPPET = """
from typing import Any

import dispatch
from dispatch import TaskHandle, task


@task
async def charge(order_id: str, amount_cents: int) -> dict[str, int]:
    return {order_id: amount_cents}


@task(retry=None)
def shout(word: str) -> str:
    return word.upper()


@task(batch_size=10)
def total(numbers: list[int]) -> int:
    return sum(numbers)


reveal_type(charge.submit(order_id="4", amount_cents=5).result())  # reveal: dict[str, int]
reveal_type(shout.submit(word="hi").result())  # reveal: str
reveal_type(shout.with_options(delay_s=5).submit(word="hi"))  # reveal: TaskHandle[str]
reveal_type(dispatch.handle("id").result())  # reveal: Any
reveal_type(total.submit(3))  # reveal: TaskHandle[Any]
reveal_type(charge.enqueue(order_id="42", amount_cents=500))  # reveal: str


async def main() -> None:
    handle = await charge.submit_async(order_id="42", amount_cents=5)
    reveal_type(await handle.result_async(timeout_s=1))  # reveal: dict[str, int]


count: int = shout.submit(word="hi").result()  # error: assignment
charge.submit(order_id=42, amount_cents=500)  # error: call-overload
shout.submit(word="hi").result(30)  # error: call-arg


@task
def sum_totals(results: list[dict[str, int]], currency: str = "EUR") -> int:
    return sum(sum(r.values()) for r in results)


# The contract's own examples: a callback's message leaves out its first argument.
joined = dispatch.group([charge.message(order_id="1", amount_cents=2)]).then(sum_totals.message())
reveal_type(joined.result())  # reveal: int
reveal_type(sum_totals.message())  # reveal: AwaitingMessage[int]
reveal_type(charge.message(order_id="1", amount_cents=2))  # reveal: TaskMessage[dict[str, int]]
first = charge.message(order_id="1", amount_cents=2)
chain = first.then(shout.message()).then(sum_totals.message())
reveal_type(chain)  # reveal: Chain[int]
reveal_type(chain.submit().result())  # reveal: int
dispatch.enqueue_many([sum_totals.message()])  # error: list-item
fanned = dispatch.group([shout.message(word="a")])
late: str = fanned.then(sum_totals.message()).result()  # error: assignment
"""


def short(revealed: str) -> str:
    """A revealed type without module paths (mypy versions differ in printing them)."""
    return re.sub(r"\b[a-z_]\w*\.", "", revealed)


def test_mypy_types_the_result_by_the_handlers_return_annotation(tmp_path: Path) -> None:
    """Given tasks (async, sync, batch) and their handles, when mypy --strict (the
    project's config) checks the sample, then result() is revealed as the handler's
    return type (an async handler's awaited type), dispatch.handle's as Any, and using
    the result as another type, a wrong argument or a positional timeout are errors."""
    source = tmp_path / "results_snippet.py"
    source.write_text(TYPING_SNIPPET, encoding="utf-8")

    report, _, status = api.run(
        ["--config-file", str(REPO / "pyproject.toml"), "--no-error-summary", str(source)]
    )

    lines = TYPING_SNIPPET.splitlines()
    revealed = {
        line.split(":")[1]: short(line.split('"')[1])
        for line in report.splitlines()
        if "Revealed type is" in line
    }
    expected_reveals = {
        str(n): line.rsplit("# reveal: ", 1)[1]
        for n, line in enumerate(lines, start=1)
        if "# reveal: " in line
    }
    errors = sorted(
        (line.split(":")[1], line.rsplit("[", 1)[-1].rstrip("]"))
        for line in report.splitlines()
        if ": error:" in line
    )
    expected_errors = sorted(
        (str(n), line.rsplit("# error: ", 1)[1])
        for n, line in enumerate(lines, start=1)
        if "# error: " in line
    )
    assert len(expected_reveals) == 12 and len(expected_errors) == 5
    assert revealed == expected_reveals, report
    assert errors == expected_errors, report
    assert status == 1
