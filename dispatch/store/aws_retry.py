"""The one retry policy for every AWS call Dispatch makes.

botocore's own retries are switched off on every client (:mod:`dispatch.store.aws`
makes them all) and :class:`CallRetry` takes their place on botocore's
``needs-retry`` event, which boto3 and aiobotocore both emit after each attempt
of each call (aiobotocore awaits the sleep it returns). So every call, sync or
async, goes through the same three steps:

1. :func:`classify` names what went wrong, or nothing worth a retry::

       throttled         a throttling error code or HTTP 429: AWS did nothing
       not_connected     no connection was made (refused, connect timeout): nothing sent
       server_error      HTTP 5xx, InternalError, ServiceUnavailable: it may have been done
       connection_lost   reset, closed, read timeout, torn response: it may have been done

   Anything else (a 4xx such as ConditionalCheckFailedException, bad
   parameters, missing credentials) is an answer, not a fault, and is never
   retried.
2. the policy says whether that kind is retried for this client: every kind
   for SQS and DynamoDB; for Lambda Invoke only ``not_connected`` (a throttle
   there is backpressure, and an invoke that may have run must not run twice);
3. tenacity's strategies give the sleep: full-jitter exponential backoff
   (``wait_random_exponential``), stopping after ``max_attempts`` attempts or
   before the call's total time (attempts and sleeps, measured from the first
   attempt) would pass ``max_total_s`` (``stop_after_attempt | stop_before_delay``).

Some loops retry by themselves what an answered call left undone (unprocessed
items of a BatchWriteItem, entries SQS refused for a transient reason, a whole
batch call that failed after its retries, a cap that refused this dispatcher).
They pause between rounds with a :class:`Backoff`: a tenacity wait strategy read
at the round's number, so they speak the same ``wait_exponential`` vocabulary.

What makes a repeated request safe is documented where the request is made
(docs/reliability.md lists every call): a repeat of a conditional write fails its
condition, batches report per entry, a duplicate SQS message is dropped by the
claim.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import structlog
import tenacity
from botocore.exceptions import (
    ChecksumError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

__all__ = [
    "attempts_at_most",
    "INVOKE_RETRY",
    "THROTTLING_CODES",
    "TRANSIENT_CODES",
    "Backoff",
    "CallRetry",
    "Failure",
    "classify",
]

log = structlog.get_logger("dispatch.store.aws")

THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "KmsThrottled",
        "KMS.ThrottlingException",
    }
)
"""Error codes by which AWS services say "too fast": the request was not carried out."""

TRANSIENT_CODES: Final = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServiceException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
"""Error codes of server-side faults (whatever the HTTP status they come with)."""

_STARTED_KEY: Final = "dispatch_call_started_s"


class Failure(StrEnum):
    """What went wrong with one attempt of an AWS call, as far as a retry cares."""

    THROTTLED = "throttled"
    NOT_CONNECTED = "not_connected"
    SERVER_ERROR = "server_error"
    CONNECTION_LOST = "connection_lost"

    @property
    def may_have_run(self) -> bool:
        """True when AWS may have carried the request out before the failure."""
        return self in (Failure.SERVER_ERROR, Failure.CONNECTION_LOST)


def classify(response: Any = None, exception: BaseException | None = None) -> Failure | None:
    """The failure of one attempt, from botocore's ``needs-retry`` arguments; None when
    the attempt got an answer (success or an error that a retry would not change)."""
    if exception is not None:
        return _exception_failure(exception)
    if response is None:
        return None
    http_response, parsed = response
    status = int(getattr(http_response, "status_code", 0) or 0)
    code = str((parsed or {}).get("Error", {}).get("Code", "") or "")
    if code in THROTTLING_CODES or status == 429:
        return Failure.THROTTLED
    if code in TRANSIENT_CODES or status >= 500:
        return Failure.SERVER_ERROR
    return None


def _exception_failure(exception: BaseException) -> Failure | None:
    if isinstance(exception, ConnectionError):
        # EndpointConnectionError, ConnectTimeoutError, SSLError, ProxyConnectionError.
        return Failure.NOT_CONNECTED
    if isinstance(exception, HTTPClientError | ChecksumError | IncompleteReadError):
        # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError, a torn body.
        return Failure.CONNECTION_LOST
    return None


def _default_stop(max_attempts: int, max_total_s: float) -> stop_base:
    return tenacity.stop_after_attempt(max_attempts) | tenacity.stop_before_delay(max_total_s)


@dataclass(frozen=True, slots=True)
class CallRetry:
    """How one client retries its calls: which failures, how long to wait, when to stop.

    ``max_attempts`` counts every attempt, the first included; ``max_total_s``
    bounds a call's attempts and sleeps together (no retry starts that would end
    its sleep past it). ``stop=`` and ``wait=`` accept any tenacity strategies
    instead of the defaults built from these numbers.
    """

    max_attempts: int = 8
    max_total_s: float = 20.0
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    retry_on: frozenset[Failure] = frozenset(Failure)
    stop: stop_base | None = field(default=None, compare=False)
    wait: wait_base | None = field(default=None, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"CallRetry(max_attempts={self.max_attempts}): must be >= 1")
        if not self.max_total_s > 0:
            raise ValueError(f"CallRetry(max_total_s={self.max_total_s}): must be > 0")
        if not 0 <= self.base_delay_s <= self.max_delay_s:
            raise ValueError(
                f"CallRetry(base_delay_s={self.base_delay_s}, max_delay_s={self.max_delay_s}): "
                "need 0 <= base_delay_s <= max_delay_s"
            )

    def stop_strategy(self) -> stop_base:
        """The tenacity stop strategy: attempts and total time."""
        return self.stop or _default_stop(self.max_attempts, self.max_total_s)

    def wait_strategy(self) -> wait_base:
        """The tenacity wait strategy: exponential backoff with full jitter."""
        return self.wait or tenacity.wait_random_exponential(
            multiplier=self.base_delay_s, max=self.max_delay_s
        )

    def sleep_s(
        self, failure: Failure | None, *, attempts: int, started_s: float, now_s: float
    ) -> float | None:
        """Seconds to sleep before the next attempt, or None to stop (and raise).

        ``attempts`` is how many attempts were made so far; ``started_s`` is when
        the first began, ``now_s`` is now (both on :attr:`clock`).
        """
        if failure is None or failure not in self.retry_on:
            return None
        state = _call_state(attempts, started_s=started_s, now_s=now_s)
        sleep = float(self.wait_strategy()(state))
        state.upcoming_sleep = sleep
        if self.stop_strategy()(state):
            return None
        return sleep

    def install(self, client: Any) -> None:
        """Replace botocore's retry handler on ``client`` (boto3 or aiobotocore) with this
        policy. The client must have been made with botocore's retries at one attempt."""
        events = client.meta.events
        service = client.meta.service_model.service_id.hyphenize()
        # botocore registers its own handler under this id; ours takes its place.
        events.unregister(f"needs-retry.{service}", unique_id=f"retry-config-{service}")
        events.register(
            f"before-call.{service}", self._on_call, unique_id=f"dispatch-retry-start-{service}"
        )
        events.register(
            f"needs-retry.{service}", self._on_needs_retry, unique_id=f"dispatch-retry-{service}"
        )

    def _on_call(self, context: dict[str, Any] | None = None, **_: Any) -> None:
        if context is not None:
            context[_STARTED_KEY] = self.clock()

    def _on_needs_retry(
        self,
        *,
        attempts: int,
        response: Any = None,
        caught_exception: BaseException | None = None,
        request_dict: Mapping[str, Any] | None = None,
        operation: Any = None,
        **_: Any,
    ) -> float | None:
        failure = classify(response, caught_exception)
        if failure is None:
            return None
        limit = _ATTEMPT_LIMIT.get()
        if limit is not None and attempts >= limit:
            return None  # the caller asked for no more attempts (see attempts_at_most)
        now = self.clock()
        context = (request_dict or {}).get("context") or {}
        started = float(context.get(_STARTED_KEY, now))
        sleep = self.sleep_s(failure, attempts=attempts, started_s=started, now_s=now)
        name = getattr(operation, "name", "?")
        if sleep is None:
            log.info("aws_call_gave_up", operation=name, attempts=attempts, failure=failure.value)
            return None
        log.info(
            "aws_call_retry",
            operation=name,
            attempt=attempts,
            failure=failure.value,
            sleep_s=round(sleep, 3),
        )
        return sleep


_ATTEMPT_LIMIT: ContextVar[int | None] = ContextVar("dispatch_attempt_limit", default=None)


@contextmanager
def attempts_at_most(attempts: int) -> Iterator[None]:
    """Calls made inside the block (in this task or thread) make at most ``attempts``
    attempts, whatever the client's policy: for a call whose failure is itself the
    answer (a probe of what an endpoint can do), not something to wait out."""
    token = _ATTEMPT_LIMIT.set(attempts)
    try:
        yield
    finally:
        _ATTEMPT_LIMIT.reset(token)


@dataclass(frozen=True, slots=True)
class Backoff:
    """The pause between the rounds of a loop that retries by itself.

    ``wait`` is a tenacity wait strategy (``wait_exponential(multiplier=0.05, max=2.0)``)
    read at the number of the round that just left work undone (1 for the first).
    With ``full_jitter`` the pause is drawn uniformly between 0 and that value, as
    tenacity's ``wait_random_exponential`` does; ``uniform`` is the draw, passed in
    so a caller (or a test) can make it deterministic.
    """

    wait: wait_base
    full_jitter: bool = field(default=True, kw_only=True)

    def pause_s(
        self, attempt: int, *, uniform: Callable[[float, float], float] = random.uniform
    ) -> float:
        """Seconds to pause after round ``attempt`` (1 for the first) left work undone."""
        bound = float(self.wait(_call_state(attempt)))
        return uniform(0.0, bound) if self.full_jitter else bound


def _call_state(
    attempt: int, *, started_s: float = 0.0, now_s: float = 0.0
) -> tenacity.RetryCallState:
    """What tenacity's strategies read: the attempt number, and when the call started and
    its last attempt ended."""
    state = tenacity.RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.start_time = started_s
    state.outcome_timestamp = now_s
    return state


INVOKE_RETRY: Final = CallRetry(
    max_attempts=3, max_total_s=5.0, retry_on=frozenset({Failure.NOT_CONNECTED})
)
"""Lambda Invoke: retried only when no connection was made. A throttle is backpressure
at once, and an invocation that may have run (a 5xx, a lost response) is not repeated."""

# A RetryCallState needs a Retrying to point at; the strategies used here never read it.
_RETRYING: Final = tenacity.Retrying()
