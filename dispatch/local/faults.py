"""A fault injector for AWS calls, at the botocore level, for tests and the chaos run.

:class:`FaultInjector` attaches to a client's ``before-send`` event (boto3 and
aiobotocore alike), so everything above the HTTP request runs for real: the
retry policy, the error translation, the dispatcher's handling. A chosen
fraction of requests fails in one of these ways (:class:`FaultKind`)::

    throttle        400 ThrottlingException (DynamoDB: ProvisionedThroughputExceededException,
                    Lambda: 429 TooManyRequestsException); nothing reaches the emulator
    server_error    500 InternalError; nothing reaches the emulator
    unavailable     503 ServiceUnavailable; nothing reaches the emulator
    reset           the connection is reset before the request is sent (ConnectionClosedError)
    not_connected   no connection can be made (EndpointConnectionError)
    read_timeout    the request is carried out, the answer never comes (ReadTimeoutError)
    slow            the answer comes, ``slow_s`` late
    lost_response   the request is carried out, the connection drops before the answer
                    (ConnectionClosedError): what exposes a retry that is not idempotent

It counts what it injected, by kind (:attr:`FaultInjector.counts`).

Testing only. Nothing in production reads :data:`ENV_FAULTS`: the chaos run's
dispatcher processes call :func:`install_from_env`, which puts an injector on
every client :mod:`dispatch.store.aws` makes from then on (through its testing hook
:data:`dispatch.store.aws.CLIENT_HOOKS`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from aiobotocore.awsrequest import AioAWSResponse
from aiobotocore.client import AioBaseClient
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from dispatch.store.aws import CLIENT_HOOKS

__all__ = ["ENV_FAULTS", "FaultInjector", "FaultKind", "install_from_env"]

ENV_FAULTS: Final = "DISPATCH_LOCAL_FAULTS"
"""JSON: ``{"rate": 0.05, "kinds": ["throttle", ...], "seed": 1, "slow_s": 0.3,
"operations": ["UpdateItem", ...], "log": "/path"}`` (all optional but ``rate``).
``log`` names a file that gets one line per injected fault (O_APPEND, so the
count survives a SIGKILL of the process)."""


class FaultKind(StrEnum):
    """How an injected fault shows itself to the client."""

    THROTTLE = "throttle"
    SERVER_ERROR = "server_error"
    UNAVAILABLE = "unavailable"
    RESET = "reset"
    NOT_CONNECTED = "not_connected"
    READ_TIMEOUT = "read_timeout"
    SLOW = "slow"
    LOST_RESPONSE = "lost_response"

    @property
    def reaches_server(self) -> bool:
        """True when the request is carried out despite the fault."""
        return self in (FaultKind.READ_TIMEOUT, FaultKind.SLOW, FaultKind.LOST_RESPONSE)


_THROTTLE_CODES: Final = {
    "dynamodb": ("ProvisionedThroughputExceededException", 400),
    "lambda": ("TooManyRequestsException", 429),
}
_ERRORS: Final = {
    FaultKind.THROTTLE: ("ThrottlingException", 400),
    FaultKind.SERVER_ERROR: ("InternalError", 500),
    FaultKind.UNAVAILABLE: ("ServiceUnavailable", 503),
}

Match = Callable[[str, bytes], bool]
"""``match(operation, request_body)``: True for a request that may be faulted."""


class FaultInjector:
    """Makes ``rate`` of the requests of the clients it is attached to fail.

    ``kinds`` are drawn uniformly; ``seed`` makes the draws repeatable;
    ``operations`` (API names such as ``"UpdateItem"``) and ``match`` narrow the
    requests that may fail; ``limit`` caps the faults injected in all (``rate=1,
    limit=1`` fails exactly the first matching request). ``on_fault`` is called
    with the kind and the operation of each fault injected.
    """

    def __init__(
        self,
        *,
        rate: float,
        kinds: tuple[FaultKind, ...] = tuple(FaultKind),
        seed: int | None = None,
        slow_s: float = 0.3,
        operations: frozenset[str] | None = None,
        match: Match | None = None,
        limit: int | None = None,
        on_fault: Callable[[FaultKind, str], None] | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate={rate}: must be between 0 and 1")
        if not kinds:
            raise ValueError("kinds: name at least one FaultKind")
        self.rate = rate
        self.kinds = tuple(FaultKind(k) for k in kinds)
        self.slow_s = slow_s
        self.operations = operations
        self.limit = limit
        self._match = match
        self._on_fault = on_fault
        self._random = random.Random(seed)  # noqa: S311 - fault draws, not security
        self._lock = threading.Lock()
        self.counts: Counter[FaultKind] = Counter()

    @property
    def total(self) -> int:
        """Faults injected so far, of every kind."""
        with self._lock:
            return sum(self.counts.values())

    def attach(self, client: Any) -> None:
        """Fault the requests ``client`` sends from now on (boto3 or aiobotocore)."""
        service = client.meta.service_model.service_id.hyphenize()
        handler = self._async_handler(client) if isinstance(client, AioBaseClient) else None
        client.meta.events.register(f"before-send.{service}", handler or self._sync_handler(client))

    @contextmanager
    def installed(self) -> Iterator[FaultInjector]:
        """Attach to every client :mod:`dispatch.store.aws` makes inside the block."""
        CLIENT_HOOKS.append(self.attach)
        try:
            yield self
        finally:
            CLIENT_HOOKS.remove(self.attach)

    # --- the draw ---------------------------------------------------------------------

    def _draw(self, event_name: str, request: Any) -> tuple[FaultKind, str, str] | None:
        parts = event_name.split(".")
        service = parts[1] if len(parts) > 1 else "?"
        operation = parts[2] if len(parts) > 2 else "?"
        if self.operations is not None and operation not in self.operations:
            return None
        if self._match is not None and not self._match(operation, _body(request)):
            return None
        with self._lock:
            if self.limit is not None and sum(self.counts.values()) >= self.limit:
                return None
            if self._random.random() >= self.rate:
                return None
            kind = self._random.choice(self.kinds)
            self.counts[kind] += 1
        if self._on_fault is not None:
            self._on_fault(kind, operation)
        return kind, service, operation

    # --- boto3 ------------------------------------------------------------------------

    def _sync_handler(self, client: Any) -> Callable[..., Any]:
        def before_send(request: Any, event_name: str = "", **_: Any) -> Any:
            drawn = self._draw(event_name, request)
            if drawn is None:
                return None
            kind, service, _operation = drawn
            if kind in _ERRORS:
                return _error_response(AWSResponse, request.url, kind, service)
            if kind is FaultKind.SLOW:
                time.sleep(self.slow_s)
                return None
            if kind.reaches_server:
                answer = client._endpoint._send(request)
                _ = answer.content  # read it all: the connection goes back to the pool
            raise _exception(kind, request.url)

        return before_send

    # --- aiobotocore ------------------------------------------------------------------

    def _async_handler(self, client: Any) -> Callable[..., Any]:
        async def before_send(request: Any, event_name: str = "", **_: Any) -> Any:
            drawn = self._draw(event_name, request)
            if drawn is None:
                return None
            kind, service, _operation = drawn
            if kind in _ERRORS:
                return _error_response(AioAWSResponse, request.url, kind, service)
            if kind is FaultKind.SLOW:
                await asyncio.sleep(self.slow_s)
                return None
            if kind.reaches_server:
                answer = await client._endpoint._send(request)
                await answer.content
            raise _exception(kind, request.url)

        return before_send


class _Body:
    """The raw body of an injected answer, readable as botocore and aiobotocore read it."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data

    async def read(self) -> bytes:
        return self._data


def _body(request: Any) -> bytes:
    body = getattr(request, "body", b"") or b""
    return body if isinstance(body, bytes) else str(body).encode()


def _error_response(cls: type[AWSResponse], url: str, kind: FaultKind, service: str) -> Any:
    code, status = _ERRORS[kind]
    if kind is FaultKind.THROTTLE:
        code, status = _THROTTLE_CODES.get(service, (code, status))
    body = json.dumps({"__type": code, "message": f"injected {kind.value} fault"}).encode()
    headers: Any = {
        "Content-Type": "application/x-amz-json-1.0",
        "x-amzn-RequestId": "injected-fault",
        "x-amzn-ErrorType": code,
        "Content-Length": str(len(body)),
    }
    return cls(url, status, headers, _Body(body))


def _exception(kind: FaultKind, url: str) -> Exception:
    error = ConnectionResetError(f"injected {kind.value} fault")
    if kind is FaultKind.NOT_CONNECTED:
        return EndpointConnectionError(endpoint_url=url, error=error)
    if kind is FaultKind.READ_TIMEOUT:
        return ReadTimeoutError(endpoint_url=url, error=error)
    return ConnectionClosedError(endpoint_url=url, error=error)


def from_config(config: Mapping[str, Any]) -> FaultInjector:
    """An injector from the JSON form of :data:`ENV_FAULTS`."""
    log_path = config.get("log")
    on_fault = _append_line(Path(log_path)) if log_path else None
    operations = config.get("operations")
    return FaultInjector(
        rate=float(config["rate"]),
        kinds=tuple(FaultKind(k) for k in config.get("kinds", list(FaultKind))),
        seed=config.get("seed"),
        slow_s=float(config.get("slow_s", 0.3)),
        operations=frozenset(operations) if operations else None,
        on_fault=on_fault,
    )


def install_from_env(environ: Mapping[str, str] | None = None) -> FaultInjector | None:
    """Put an injector configured by :data:`ENV_FAULTS` on every client made from now
    on; None (and nothing installed) when the variable is unset."""
    raw = (os.environ if environ is None else environ).get(ENV_FAULTS)
    if not raw:
        return None
    try:
        injector = from_config(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{ENV_FAULTS}={raw!r}: {exc}") from exc
    CLIENT_HOOKS.append(injector.attach)
    return injector


def _append_line(path: Path) -> Callable[[FaultKind, str], None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(kind: FaultKind, operation: str) -> None:
        os.write(fd, f"{time.time():.3f} {os.getpid()} {kind.value} {operation}\n".encode())

    return append
