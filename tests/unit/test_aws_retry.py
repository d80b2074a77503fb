"""Dispatch's retry policy for AWS calls: what is retried, how long it waits, when it stops.

The policy is driven here the way botocore drives it (one decision per failed
attempt) with an injected clock: no real sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from dispatch.store.aws_retry import INVOKE_RETRY, THROTTLING_CODES, CallRetry, Failure, classify


def answer(status: int, code: str | None = None) -> tuple[AWSResponse, dict[str, Any]]:
    """A (response, parsed) pair as botocore hands it to ``needs-retry``."""
    parsed: dict[str, Any] = {"ResponseMetadata": {"HTTPStatusCode": status}}
    if code is not None:
        parsed["Error"] = {"Code": code, "Message": "m"}
    return AWSResponse("http://x", status, {}, None), parsed


@pytest.mark.parametrize("code", sorted(THROTTLING_CODES))
def test_every_throttling_code_is_throttled(code: str) -> None:
    """Given an answer with a throttling code (whatever its status), it is a throttle."""
    assert classify(answer(400, code)) is Failure.THROTTLED


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, "Whatever", Failure.THROTTLED),
        (500, "InternalError", Failure.SERVER_ERROR),
        (500, "InternalServerError", Failure.SERVER_ERROR),
        (503, "ServiceUnavailable", Failure.SERVER_ERROR),
        (502, None, Failure.SERVER_ERROR),
        (400, "ConditionalCheckFailedException", None),
        (400, "AWS.SimpleQueueService.NonExistentQueue", None),
        (403, "AccessDeniedException", None),
        (200, None, None),
    ],
)
def test_answers_are_classified_by_code_and_status(
    status: int, code: str | None, expected: Failure | None
) -> None:
    """Given an HTTP answer, a throttle or a server fault is a failure to retry; a
    client error such as a failed condition is an answer, never retried."""
    assert classify(answer(status, code)) is expected


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (EndpointConnectionError(endpoint_url="u"), Failure.NOT_CONNECTED),
        (ConnectTimeoutError(endpoint_url="u"), Failure.NOT_CONNECTED),
        (ConnectionClosedError(endpoint_url="u"), Failure.CONNECTION_LOST),
        (ReadTimeoutError(endpoint_url="u"), Failure.CONNECTION_LOST),
        (NoCredentialsError(), None),
        (ValueError("bug"), None),
    ],
)
def test_exceptions_are_classified(exception: Exception, expected: Failure | None) -> None:
    """Given an exception instead of an answer, connection failures are retried (and
    those after sending are marked as possibly carried out); anything else is not."""
    assert classify(None, exception) is expected
    if expected is not None:
        assert expected.may_have_run is (expected is Failure.CONNECTION_LOST)


def run_failing_call(
    policy: CallRetry, *, attempt_s: float, failure: Failure = Failure.THROTTLED
) -> tuple[int, float, list[float]]:
    """Drive ``policy`` through a call that fails every attempt; each attempt takes
    ``attempt_s`` on a fake clock. Returns (attempts, elapsed, sleeps)."""
    now, sleeps, attempts = 0.0, [], 0
    while True:
        now += attempt_s
        attempts += 1
        sleep = policy.sleep_s(failure, attempts=attempts, started_s=0.0, now_s=now)
        if sleep is None:
            return attempts, now, sleeps
        sleeps.append(sleep)
        now += sleep


def test_a_call_stops_after_max_attempts() -> None:
    """Given instant attempts, when every one fails, then there are exactly
    ``max_attempts`` of them."""
    attempts, _, sleeps = run_failing_call(CallRetry(max_attempts=5), attempt_s=0.0)
    assert attempts == 5 and len(sleeps) == 4


def test_a_call_stops_before_its_total_time_would_pass_the_bound() -> None:
    """Given slow attempts and a high attempt cap, when every attempt fails, then no
    retry is started whose sleep would end past ``max_total_s``: the call ends within
    the bound plus its last attempt."""
    policy = CallRetry(max_attempts=1000, max_total_s=3.0, base_delay_s=0.2, max_delay_s=1.0)
    for _ in range(200):
        attempts, elapsed, _ = run_failing_call(policy, attempt_s=0.4)
        assert attempts < 1000
        assert elapsed - 0.4 < 3.0  # everything before the last attempt fits the bound
        assert elapsed <= 3.0 + 0.4


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    """Given many draws, each sleep lies in [0, min(max, base * 2**(n-1))] and the
    draws spread over that range (full jitter, not a fixed step)."""
    policy = CallRetry(max_attempts=50, max_total_s=1e9, base_delay_s=0.1, max_delay_s=2.0)
    for attempt in range(1, 10):
        cap = min(2.0, 0.1 * 2 ** (attempt - 1))
        draws = [
            policy.sleep_s(Failure.SERVER_ERROR, attempts=attempt, started_s=0.0, now_s=0.0)
            for _ in range(300)
        ]
        assert all(d is not None and 0.0 <= d <= cap for d in draws)
        values = [d for d in draws if d is not None]
        assert min(values) < cap * 0.2 and max(values) > cap * 0.8


def test_the_invoke_policy_retries_only_calls_that_never_connected() -> None:
    """Given the Lambda Invoke policy, a throttle (backpressure), a 5xx or a lost
    answer (the function may have run) is not retried; a refused connection is."""
    for failure in (Failure.THROTTLED, Failure.SERVER_ERROR, Failure.CONNECTION_LOST):
        assert INVOKE_RETRY.sleep_s(failure, attempts=1, started_s=0.0, now_s=0.0) is None
    assert (
        INVOKE_RETRY.sleep_s(Failure.NOT_CONNECTED, attempts=1, started_s=0.0, now_s=0.0)
        is not None
    )


def test_no_failure_means_no_retry() -> None:
    """Given an attempt that got an answer, the policy never asks for another."""
    assert CallRetry().sleep_s(None, attempts=1, started_s=0.0, now_s=0.0) is None


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"max_total_s": 0}, {"base_delay_s": 2.0, "max_delay_s": 1.0}],
)
def test_bad_bounds_are_refused_with_the_field_named(options: dict[str, Any]) -> None:
    """Given a policy that cannot work, construction fails naming the field."""
    with pytest.raises(ValueError, match=next(iter(options))):
        CallRetry(**options)
