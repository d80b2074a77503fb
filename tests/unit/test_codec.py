"""DynamoDB numbers as Dispatch writes and reads them (dispatch.store.codec).

Every item built by hand (throttle buckets and slots, leases, dispatcher reports,
cancels, redrives) and every record serialised by boto3 goes through the same rule:
whole numbers without a fraction, others rounded to ``places`` decimals, never in
exponent form, and read back as the float that was meant.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer
from hypothesis import given
from hypothesis import strategies as st

from dispatch.store.codec import decimal, number, read_number

# DynamoDB's number grammar as Dispatch writes it: no exponent, no leading '+'.
PLAIN_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d*[1-9])?")
# Epoch seconds, durations, rates and token levels: everything Dispatch stores fits.
STORED_FLOATS = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (0.0, "0"),
        (7, "7"),
        (-3.0, "-3"),
        (1767225600.0, "1767225600"),
        (1767225600 + 86400, "1767312000"),
    ],
)
def test_whole_numbers_are_written_without_a_fraction(value: float, expected: str) -> None:
    """Given a whole number (int or float), when encoded, then it has no fraction."""
    assert number(value) == {"N": expected}


def test_times_are_rounded_to_the_millisecond_by_default() -> None:
    """Given a time with sub-millisecond digits, when encoded with the default places,
    then the millisecond is kept and the rest rounded away."""
    assert number(1767225600.1254) == {"N": "1767225600.125"}
    assert number(1767225600.1256) == {"N": "1767225600.126"}


def test_more_places_keep_the_microsecond() -> None:
    """Given the throttle's six places, when a time is encoded, then its microsecond stays."""
    assert number(1767225600.123456, places=6) == {"N": "1767225600.123456"}
    assert number(2.5e-5, places=6) == {"N": "0.000025"}


def test_a_float_is_written_as_its_shortest_repr_not_its_binary_expansion() -> None:
    """Given 0.1 (not exactly representable in binary), when encoded, then it is "0.1"."""
    assert number(0.1) == {"N": "0.1"}
    assert decimal(0.1) == Decimal("0.1")


def test_a_value_rounded_to_a_whole_number_has_no_fraction() -> None:
    """Given a value below half the last place, or just under a whole number, when
    encoded, then it is that whole number: "0", not "0.0" or "1e-07"; "3", not "3.0"."""
    assert number(1e-7, places=6) == {"N": "0"}
    assert number(-1e-9) == {"N": "0"}
    assert number(2.9999) == {"N": "3"}


@given(STORED_FLOATS, st.sampled_from([3, 6]))
def test_every_number_is_plain_and_reads_back_as_the_rounded_value(
    value: float, places: int
) -> None:
    """Given any float Dispatch might store, when encoded and read back, then the text
    is a plain decimal (no exponent) and the float is the value rounded to ``places``."""
    text = number(value, places=places)["N"]

    assert PLAIN_NUMBER.fullmatch(text), text
    assert read_number({"N": text}) == round(value, places)


@given(STORED_FLOATS)
def test_boto3_serialises_the_decimal_to_the_same_text(value: float) -> None:
    """Given any float, when boto3's TypeSerializer (the task records' path) serialises
    :func:`decimal`, then it accepts it and writes exactly what :func:`number` writes."""
    assert TypeSerializer().serialize(decimal(value)) == number(value)


@pytest.mark.parametrize(
    ("attribute", "default", "expected"),
    [
        ({"N": "12.5"}, 0.0, 12.5),
        ({"N": "-3"}, 0.0, -3.0),
        (None, 0.0, 0.0),
        (None, 9.5, 9.5),
        ({}, 1.0, 1.0),
        ({"S": "12"}, 4.0, 4.0),
    ],
)
def test_read_number_reads_numbers_and_falls_back_to_the_default(
    attribute: dict[str, Any] | None, default: float, expected: float
) -> None:
    """Given a number attribute, its float; given none or another type, the default."""
    assert read_number(attribute, default) == expected
