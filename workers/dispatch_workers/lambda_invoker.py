"""Fan-out to the worker Lambda: a :class:`~dispatch_workers.pool.TaskRunner` over Lambda Invoke.

The dispatcher hands it one attempt at a time, as it would to the in-process
pool. Short attempts (``timeout_s`` up to ``batch_max_timeout_s``) are packed
into micro-batches of up to ``batch_size`` per invocation: a batch goes out when
it is full, after ``batch_window_s``, or before it would pass Lambda's 6 MB
request limit. At most ``max_concurrency`` invocations are in flight. Each
invocation is synchronous (``RequestResponse``) and answers with one outcome per
attempt (:mod:`dispatch_workers.lambda_handler`).

How every way an Invoke can end becomes an outcome:

=================================================  ==================  ============================
Invoke ended with                                  outcome             why
=================================================  ==================  ============================
200, outcomes in the payload                       as the worker said  handled: the handler's own
                                                                       success or failure
200 + ``X-Amz-Function-Error``, a timeout          retryable           the attempt ran out of time
200 + ``X-Amz-Function-Error``, anything else      retryable           the worker crashed
``TooManyRequestsException`` (429) and other       backpressure        Lambda throttled or was
throttling or transient service errors                                 unavailable: not delivered,
                                                                       no attempt spent
could not connect                                  backpressure        not delivered
read timeout, connection lost after sending        retryable           it may have run
request over 6 MB (ours or the service's 413)      split the batch;    a single attempt that can
                                                   alone: not          never be delivered
                                                   retryable
any other client error (not found, access denied)  backpressure        a deployment problem: logged
                                                                       as an error, no attempt spent
=================================================  ==================  ============================

Every message the queue accepts fits in one invocation (``MAX_CALL_BYTES`` is
below the limit), so ``enqueue``'s own size check is the clear, early error for
a task that could never be delivered.

A micro-batch task's batch (:meth:`LambdaInvoker.run_batch`) is one call whose
handler runs once for all its items: it goes out in an invocation of its own
(it is a batch already) and its items' outcomes come back one per item. An
Invoke failure ends every item of it the way the table says.

The client is passed in (an aiobotocore Lambda client, made without retries so
a throttle surfaces at once as backpressure instead of inside botocore).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from dispatch.core import constants as c
from dispatch.core.context import BatchContext, TaskContext
from dispatch.core.errors import ConfigurationError
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.tasks.registry import TaskSpec
from dispatch_workers.lambda_handler import (
    BatchCall,
    Call,
    TaskCall,
    decode_outcomes,
    encode_call,
    encode_request,
)

if TYPE_CHECKING:
    from types_aiobotocore_lambda import LambdaClient

__all__ = [
    "INVOKE_MAX_REQUEST_BYTES",
    "MAX_CALL_BYTES",
    "InvokerOptions",
    "InvokerStats",
    "LambdaInvoker",
    "outcome_for_client_error",
    "outcome_for_function_error",
    "outcome_for_transport_error",
]

log = structlog.get_logger("dispatch_workers.lambda_invoker")

INVOKE_MAX_REQUEST_BYTES: Final = 6 * 1024 * 1024
"""Lambda's limit on a synchronous Invoke's request (and response) payload: 6 MB."""
CALL_OVERHEAD_BYTES: Final = 1_024
"""Bytes one attempt adds to the request beyond its arguments: names, ids, context."""
BATCH_OVERHEAD_BYTES: Final = 64
"""Bytes of the request around its attempts (``{"v":1,"tasks":[...]}`` is 18), rounded up."""
MAX_CALL_BYTES: Final = c.MAX_ENVELOPE_BYTES + CALL_OVERHEAD_BYTES
"""The largest attempt the queue can carry; far below the Invoke limit."""

_STREAM_FROM_BYTES: Final = 1024 * 1024

THROTTLED_CODES: Final = frozenset({"TooManyRequestsException", "EC2ThrottledException"})
UNAVAILABLE_CODES: Final = frozenset(
    {
        "ServiceException",
        "ResourceNotReadyException",
        "ResourceConflictException",
        "EC2UnexpectedException",
        "ENILimitReachedException",
        "ENINotReadyException",
        "SubnetIPAddressLimitReachedException",
        "SnapStartNotReadyException",
        "SnapStartTimeoutException",
        "EFSMountTimeoutException",
        "EFSMountConnectivityException",
        "EFSIOException",
    }
)
TOO_LARGE_CODES: Final = frozenset(
    {"RequestTooLargeException", "SerializedRequestEntityTooLargeException"}
)
TIMEOUT_ERROR_TYPES: Final = frozenset({"Sandbox.Timedout"})


@dataclass(frozen=True, slots=True)
class InvokerOptions:
    """How the invoker batches and bounds invocations."""

    max_concurrency: int = 16  # invocations in flight at once
    batch_size: int = 10  # attempts per invocation at most; 1 turns batching off
    batch_window_s: float = 0.02  # how long a batch may wait to fill
    batch_max_timeout_s: float = 10.0  # only attempts with timeout_s up to this are batched
    max_request_bytes: int = INVOKE_MAX_REQUEST_BYTES
    throttled_retry_after_s: float = 1.0  # retry hint after a throttle without Retry-After
    unavailable_retry_after_s: float = 5.0  # ... after a service or deployment problem

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency={self.max_concurrency}: must be >= 1")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size={self.batch_size}: must be >= 1")
        if self.batch_window_s < 0:
            raise ConfigurationError(f"batch_window_s={self.batch_window_s}: must be >= 0")
        if self.max_request_bytes < MAX_CALL_BYTES + BATCH_OVERHEAD_BYTES:
            raise ConfigurationError(
                f"max_request_bytes={self.max_request_bytes}: must hold the largest message "
                f"({MAX_CALL_BYTES + BATCH_OVERHEAD_BYTES} bytes)"
            )


@dataclass(slots=True)
class InvokerStats:
    """What the invoker did: invocations, attempts per invocation, how they ended."""

    invocations: int = 0
    attempts: int = 0
    throttled: int = 0
    function_errors: int = 0
    splits: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def attempts_per_invocation(self) -> float:
        """Mean micro-batch size."""
        return self.attempts / self.invocations if self.invocations else 0.0


@dataclass(slots=True)
class _Pending:
    call: Call
    size: int
    future: asyncio.Future[list[Outcome]]  # one outcome per item of the call


class LambdaInvoker:
    """Runs attempts on the worker function through Lambda Invoke (RequestResponse)."""

    def __init__(
        self,
        client: LambdaClient,
        *,
        function_name: str,
        options: InvokerOptions | None = None,
    ) -> None:
        self.function_name = function_name
        self.options = options or InvokerOptions()
        self.stats = InvokerStats()
        self._client = client
        self._semaphore = asyncio.Semaphore(self.options.max_concurrency)
        self._batch: list[_Pending] = []
        self._batch_bytes = BATCH_OVERHEAD_BYTES
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: dict[asyncio.Task[None], list[_Pending]] = {}

    async def run(
        self, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], context: TaskContext
    ) -> Outcome:
        """Run one attempt on the worker function; never raises for a failure."""
        call = TaskCall(task=spec.name, args=args, kwargs=kwargs, context=context)
        size = len(encode_call(call)) + 1  # and a comma in the batch's list
        pending = _Pending(call, size, asyncio.get_running_loop().create_future())
        if self.options.batch_size == 1 or spec.timeout_s > self.options.batch_max_timeout_s:
            self._start([pending])
        else:
            self._add_to_batch(pending)
        (outcome,) = await pending.future
        return outcome

    async def run_batch(
        self, spec: TaskSpec, items: Sequence[Any], context: BatchContext
    ) -> list[Outcome]:
        """Run a batch handler once on the worker function, in an invocation of its
        own; one outcome per item, in order; never raises for a failure."""
        call = BatchCall(task=spec.name, items=tuple(items), contexts=context.items)
        pending = _Pending(call, 0, asyncio.get_running_loop().create_future())
        self._start([pending])
        return await pending.future

    @property
    def stuck_threads(self) -> int:
        """None here: the handlers run in the worker function, not in this process."""
        return 0

    @property
    def healthy(self) -> bool:
        """Always: a stuck handler holds a worker invocation, not this process."""
        return True

    async def aclose(self) -> None:
        """Send what is batched and wait for the invocations someone still waits for.

        An invocation whose every attempt was given up (released at a deadline) is
        abandoned, not awaited: its outcome could not be settled any more.
        """
        self._flush()
        for task, batch in list(self._tasks.items()):
            if all(pending.future.done() for pending in batch):
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- batching ---------------------------------------------------------------------

    def _add_to_batch(self, pending: _Pending) -> None:
        if self._batch and self._batch_bytes + pending.size > self.options.max_request_bytes:
            self._flush()
        self._batch.append(pending)
        self._batch_bytes += pending.size
        if len(self._batch) >= self.options.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.options.batch_window_s, self._flush
            )

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch, self._batch_bytes = self._batch, [], BATCH_OVERHEAD_BYTES
        if batch:
            self._start(batch)

    def _start(self, batch: list[_Pending]) -> None:
        task = asyncio.get_running_loop().create_task(self._invoke(batch))
        self._tasks[task] = batch
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _invoke(self, batch: list[_Pending]) -> None:
        try:
            async with self._semaphore:
                outcomes = await self._invoke_batch([p.call for p in batch])
        except Exception as exc:  # reported as the batch's outcome (and logged), never lost
            log.exception("invoke_failed_unexpectedly", function=self.function_name)
            failed = _outcome(OutcomeKind.RETRYABLE, type(exc).__name__, str(exc))
            outcomes = [failed] * sum(p.call.size for p in batch)
        start = 0
        for pending in batch:
            mine = outcomes[start : start + pending.call.size]
            start += pending.call.size
            for outcome in mine:
                self.stats.outcomes[outcome.kind.value] += 1
            if not pending.future.done():  # the dispatcher may have given the attempt up
                pending.future.set_result(mine)

    # --- one invocation -------------------------------------------------------------

    async def _invoke_batch(self, calls: list[Call]) -> list[Outcome]:
        """One outcome per item of ``calls`` (a plain attempt is one item)."""
        payload = encode_request(calls)
        if len(payload) > self.options.max_request_bytes:
            return await self._split_or_refuse(calls, len(payload))
        n = sum(call.size for call in calls)
        self.stats.invocations += 1
        self.stats.attempts += n
        client: Any = self._client
        try:
            response = await client.invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                # aiohttp streams a file object; a large bytes body would block the loop.
                Payload=io.BytesIO(payload) if len(payload) > _STREAM_FROM_BYTES else payload,
            )
            body = await response["Payload"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in TOO_LARGE_CODES:
                return await self._split_or_refuse(calls, len(payload))
            if code in THROTTLED_CODES:
                self.stats.throttled += 1
            elif code not in UNAVAILABLE_CODES:
                log.error(
                    "worker_invoke_refused", function=self.function_name, code=code, error=str(exc)
                )
            outcome = outcome_for_client_error(exc, self.options)
        except BotoCoreError as exc:
            outcome = outcome_for_transport_error(exc, self.options)
        else:
            return self._response_outcomes(response.get("FunctionError"), body, n)
        return [outcome] * n

    def _response_outcomes(self, function_error: str | None, body: bytes, n: int) -> list[Outcome]:
        if function_error:
            self.stats.function_errors += 1
            return [outcome_for_function_error(function_error, body)] * n
        try:
            return decode_outcomes(json.loads(body), n)
        except ValueError as exc:
            return [_outcome(OutcomeKind.RETRYABLE, "BadWorkerResponse", str(exc))] * n

    async def _split_or_refuse(self, calls: list[Call], size: int) -> list[Outcome]:
        if len(calls) == 1 and isinstance(calls[0], BatchCall) and calls[0].size > 1:
            # A batch handler's items split over two runs (each still a batch).
            self.stats.splits += 1
            first, second = calls[0].halves()
            return await self._invoke_batch([first]) + await self._invoke_batch([second])
        if len(calls) == 1:
            return calls[0].size * [
                _outcome(
                    OutcomeKind.NOT_RETRYABLE,
                    "PayloadTooLargeError",
                    f"the Invoke request is {size} bytes, over Lambda's limit of "
                    f"{self.options.max_request_bytes}: this task can never be delivered",
                )
            ]
        self.stats.splits += 1
        half = len(calls) // 2
        return await self._invoke_batch(calls[:half]) + await self._invoke_batch(calls[half:])


def outcome_for_client_error(exc: ClientError, options: InvokerOptions) -> Outcome:
    """The outcome of an Invoke the Lambda service refused (nothing ran)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "")) or "ClientError"
    message = str(error.get("Message", "")) or str(exc)
    if code in THROTTLED_CODES:
        hint = _retry_after(dict(exc.response))
        retry_after = hint if hint is not None else options.throttled_retry_after_s
        return _outcome(OutcomeKind.BACKPRESSURE, code, message, retry_after_s=retry_after)
    # Unavailable, or refused for a deployment problem: not the task's fault either.
    return _outcome(
        OutcomeKind.BACKPRESSURE, code, message, retry_after_s=options.unavailable_retry_after_s
    )


def outcome_for_transport_error(exc: BotoCoreError, options: InvokerOptions) -> Outcome:
    """The outcome of an Invoke that failed on the way (no answer from Lambda)."""
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        # Never reached Lambda: nothing ran.
        return _outcome(
            OutcomeKind.BACKPRESSURE,
            "LambdaUnreachable",
            str(exc),
            retry_after_s=options.unavailable_retry_after_s,
        )
    if isinstance(exc, ReadTimeoutError):
        return _outcome(OutcomeKind.RETRYABLE, "TaskTimeoutError", f"Invoke: {exc}")
    # Sent, then lost: the attempt may have run, so it counts.
    return _outcome(OutcomeKind.RETRYABLE, type(exc).__name__, str(exc))


def outcome_for_function_error(function_error: str, body: bytes) -> Outcome:
    """The outcome of an invocation whose function failed (``X-Amz-Function-Error``)."""
    try:
        detail = json.loads(body) if body else {}
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    error_type = str(detail.get("errorType") or f"Function{function_error}Error")
    message = str(detail.get("errorMessage") or body[:1000].decode("utf-8", "replace"))
    if error_type in TIMEOUT_ERROR_TYPES or "Task timed out after" in message:
        return _outcome(
            OutcomeKind.RETRYABLE, "TaskTimeoutError", f"the worker invocation timed out: {message}"
        )
    trace = detail.get("stackTrace")
    traceback = "".join(trace) if isinstance(trace, list) else ""
    return Outcome(
        kind=OutcomeKind.RETRYABLE,
        duration_s=0.0,
        error=ErrorInfo(type=error_type, message=message, traceback=traceback),
    )


def _retry_after(response: dict[str, Any]) -> float | None:
    value = response.get("retryAfterSeconds") or (
        response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
    )
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _outcome(
    kind: OutcomeKind, error_type: str, message: str, *, retry_after_s: float | None = None
) -> Outcome:
    return Outcome(
        kind=kind,
        duration_s=0.0,
        error=ErrorInfo(type=error_type, message=message),
        retry_after_s=retry_after_s,
    )
