"""mypy --strict checks a batch task's enqueue against the list's element type."""

from __future__ import annotations

from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parents[2]

SNIPPET = """
from dispatch import BatchTask, task


@task(batch_size=10)
def total(numbers: list[int]) -> int:
    return sum(numbers)


@task(batch_size=10, batch_window_s=0.5)
async def index_docs(docs: list[dict[str, str]]) -> None: ...


typed: BatchTask[int, int] = total
total.enqueue(7)
total.enqueue(7, delay_s=5, idempotency_key="k", group="g")
index_docs.message({"id": "1"})
total.enqueue("7")  # error: arg-type
total.enqueue(7, dealy_s=5)  # error: call-arg
index_docs.enqueue([1])  # error: arg-type
"""


def test_enqueue_is_checked_against_the_element_type(tmp_path: Path) -> None:
    """Given batch tasks over list[int] and list[dict[str, str]], mypy --strict accepts
    one item of the element type with the enqueue options, and reports an item of
    another type and a misspelt option, on their lines."""
    source = tmp_path / "batch_snippet.py"
    source.write_text(SNIPPET, encoding="utf-8")

    report, _, status = api.run(
        ["--config-file", str(REPO / "pyproject.toml"), "--no-error-summary", str(source)]
    )

    errors = sorted(
        (line.split(":")[1], line.rsplit("[", 1)[-1].rstrip("]"))
        for line in report.splitlines()
        if ": error:" in line
    )
    expected = sorted(
        (str(number), line.rsplit("# error: ", 1)[1])
        for number, line in enumerate(SNIPPET.splitlines(), start=1)
        if "# error: " in line
    )
    assert len(expected) == 3
    assert errors == expected, report
    assert 'incompatible type "str"; expected "int"' in report
    assert status == 1
