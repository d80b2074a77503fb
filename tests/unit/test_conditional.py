"""A refused conditional write, told apart from every other failure (dispatch.store.conditional).

Every module that writes conditionally (task states, enqueue, cancel, the shared
throttle, dispatcher leases) asks :func:`is_condition_failure` whether an error is
DynamoDB's "someone else got there first"; a wrong answer either swallows a real
fault or turns an ordinary race into an error.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from dispatch.store.aws import error_code
from dispatch.store.conditional import CONDITION_FAILED, is_condition_failure, old_item


def client_error(code: str | None, **response: Any) -> ClientError:
    """A ClientError as botocore raises it for ``code`` (None: an answer with no Error)."""
    answer: dict[str, Any] = dict(response)
    if code is not None:
        answer["Error"] = {"Code": code, "Message": "m"}
    return ClientError(answer, "UpdateItem")  # type: ignore[arg-type]


def test_a_failed_condition_is_recognised() -> None:
    """Given DynamoDB's ConditionalCheckFailedException, then it is a condition failure."""
    assert is_condition_failure(client_error(CONDITION_FAILED))


def test_the_modeled_exception_class_of_a_real_client_is_recognised() -> None:
    """Given the exception class boto3 raises for the code (a ClientError subclass made by
    the client's error factory), when it is raised, then it is a condition failure."""
    client = boto3.client("dynamodb", region_name="us-east-1")  # makes no request
    try:
        error = client.exceptions.ConditionalCheckFailedException(
            {"Error": {"Code": CONDITION_FAILED, "Message": "The conditional request failed"}},
            "PutItem",
        )
    finally:
        client.close()

    assert is_condition_failure(error)


@pytest.mark.parametrize(
    "error",
    [
        client_error("ValidationException"),
        client_error("ProvisionedThroughputExceededException"),
        client_error("TransactionCanceledException"),
        client_error(None),
        EndpointConnectionError(endpoint_url="http://x"),
        NoCredentialsError(),
        RuntimeError(CONDITION_FAILED),
    ],
    ids=["validation", "throttled", "transaction", "no-error", "no-connection", "creds", "other"],
)
def test_every_other_failure_is_not_a_condition_failure(error: BaseException) -> None:
    """Given any other AWS error answer, a connection failure, missing credentials, or an
    exception merely mentioning the code, then it is not a condition failure."""
    assert not is_condition_failure(error)


def test_error_code_names_the_aws_code_and_nothing_for_other_errors() -> None:
    """Given an AWS error answer, its code; given anything else, an empty string."""
    assert error_code(client_error("ValidationException")) == "ValidationException"
    assert error_code(client_error(None)) == ""
    assert error_code(EndpointConnectionError(endpoint_url="http://x")) == ""


def test_old_item_is_the_item_the_refused_write_returned() -> None:
    """Given a refusal with ReturnValuesOnConditionCheckFailure's item, then that item;
    given none (or an empty one), None."""
    item = {"pk": {"S": "task#1"}, "status": {"S": "running"}}

    assert old_item(client_error(CONDITION_FAILED, Item=item)) == item
    assert old_item(client_error(CONDITION_FAILED)) is None
    assert old_item(client_error(CONDITION_FAILED, Item={})) is None
