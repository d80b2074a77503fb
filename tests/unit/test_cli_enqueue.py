"""`dispatch enqueue` refuses a bad option value as a usage error (exit status 2).

The options are checked before any task module is imported or AWS is called, so
these run without the emulator; the integration tests enqueue for real.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dispatch.ops.cli import cli

USAGE_ERROR = 2


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e309", "-1", "soon", ""])
def test_a_delay_that_is_not_a_finite_number_of_seconds_is_a_usage_error(value: str) -> None:
    """Given --delay-s nan, infinity, a negative or no number at all, when `dispatch
    enqueue` parses its options, then it exits with the usage status 2 naming --delay-s,
    like every other bad option, instead of failing later with status 1."""
    result = CliRunner().invoke(cli, ["enqueue", "ping", f"--delay-s={value}"])

    assert result.exit_code == USAGE_ERROR, result.output
    assert "Invalid value for '--delay-s'" in result.output


@pytest.mark.parametrize(
    ("key", "words"),
    [("order-\udcff", "not valid Unicode"), ("", "1 to 256 characters"), ("k" * 257, "1 to 256")],
    ids=["undecodable-argv-byte", "empty", "too-long"],
)
def test_an_idempotency_key_that_could_not_be_stored_is_a_usage_error(key: str, words: str) -> None:
    """Given --idempotency-key holding an argv byte that is not UTF-8 (Python reads it as a
    lone surrogate), or an empty or over-long key, when `dispatch enqueue` runs, then it
    exits with status 2 naming the option before importing tasks or sending anything."""
    result = CliRunner().invoke(cli, ["enqueue", "ping", "--idempotency-key", key])

    assert result.exit_code == USAGE_ERROR, result.output
    assert "--idempotency-key" in result.output
    assert words in result.output
