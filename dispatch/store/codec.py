"""DynamoDB numbers, written and read one way by every module that builds items by hand.

DynamoDB sends and takes numbers as strings (``{"N": "1767225600.125"}``). Times
are stored to the millisecond by default (``places=3``); the shared throttle's
bucket keeps the microsecond (``places=6``), as its ``updated_at`` is the version
its conditional writes compare. Whole numbers are written without a fraction
(``"0"``, not ``"0.0"``), and nothing is written in exponent form that DynamoDB
would read differently from the float it came from.

:func:`decimal` is the same rule for boto3's ``TypeSerializer``, which takes
Decimals, not floats (:mod:`dispatch.store.state` serialises whole items with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["decimal", "number", "read_number"]


def decimal(value: float, *, places: int = 3) -> Decimal:
    """``value`` as the Decimal DynamoDB stores: an int exactly, a float rounded to
    ``places`` decimals (through its shortest repr, so 0.1 stays 0.1) and without a
    fraction when that leaves a whole number."""
    if isinstance(value, int):
        return Decimal(value)
    rounded = round(float(value), places)
    if rounded.is_integer():
        return Decimal(int(rounded))
    return Decimal(repr(rounded))


def number(value: float, *, places: int = 3) -> dict[str, str]:
    """The DynamoDB attribute value ``{"N": ...}`` of ``value`` (see :func:`decimal`)."""
    return {"N": str(decimal(value, places=places))}


def read_number(attribute: Mapping[str, Any] | None, default: float = 0.0) -> float:
    """The float in a DynamoDB number attribute; ``default`` when there is none
    (the attribute is absent, or holds another type)."""
    if not attribute or "N" not in attribute:
        return default
    return float(attribute["N"])
