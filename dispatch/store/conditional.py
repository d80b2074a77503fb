"""A conditional write DynamoDB refused: how to recognise the refusal and read what refused it.

Every state transition, lease and throttle update is a conditional write; its
condition failing is an answer (someone else got there first), not a fault, and
the caller decides what it means. :func:`is_condition_failure` tells it apart
from every other error; :func:`old_item` reads the item that made the condition
fail, when the request asked for it (``ReturnValuesOnConditionCheckFailure``).
"""

from __future__ import annotations

from typing import Any, Final, TypeGuard

from botocore.exceptions import ClientError

from dispatch.store.aws import error_code

__all__ = ["CONDITION_FAILED", "is_condition_failure", "old_item"]

CONDITION_FAILED: Final = "ConditionalCheckFailedException"
"""The error code of a conditional write whose condition did not hold."""


def is_condition_failure(exc: BaseException) -> TypeGuard[ClientError]:
    """True when ``exc`` is DynamoDB refusing a conditional write (any other error,
    botocore's or not, is False)."""
    return error_code(exc) == CONDITION_FAILED


def old_item(exc: ClientError) -> dict[str, Any] | None:
    """The item a failed conditional write returned (ReturnValuesOnConditionCheckFailure)."""
    item: Any = dict(exc.response).get("Item")
    return dict(item) if item else None
