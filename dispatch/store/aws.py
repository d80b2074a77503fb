"""AWS clients: factories, endpoint/region configuration, call retries, request counts.

Every client Dispatch uses is made here, never at import time, and every one
retries its calls with Dispatch's own policy (:mod:`dispatch.store.aws_retry`:
throttling errors, 5xx answers, connection failures and timeouts, with
full-jitter exponential backoff from tenacity, bounded in attempts and in total
time) in place of botocore's. Errors that survive it are turned into
:class:`dispatch.core.errors.AWSError` (or :class:`~dispatch.core.errors.ConfigurationError`
when the cause is configuration: no credentials, a queue or table that does not
exist).

:data:`CLIENT_HOOKS` is a testing hook: callables run on every client made here
(the fault injector of :mod:`dispatch.local.faults` registers itself there).
Production code never adds to it.

:class:`RequestCounter` counts the HTTP requests actually sent, per service and
action, through botocore's ``before-send`` event: the demo and the benchmarks
report those counts, not estimates.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import boto3
import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.loaders import create_loader

from dispatch.core.config import Endpoint, Settings
from dispatch.core.errors import AWSError, ConfigurationError
from dispatch.store.aws_retry import CallRetry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from types_aiobotocore_dynamodb import DynamoDBClient as AioDynamoDBClient
    from types_aiobotocore_sqs import SQSClient as AioSQSClient

__all__ = [
    "CALL_RETRY",
    "CLIENT_HOOKS",
    "AsyncClients",
    "RequestCounter",
    "SyncClients",
    "aio_client_config",
    "async_client",
    "async_clients",
    "aws_errors",
    "client_config",
    "error_code",
    "prepare_client",
    "sync_client",
    "sync_clients",
    "translate_error",
]

# Long polls wait up to 20 s, so reads must be allowed longer than that.
_READ_TIMEOUT_S: Final = 30
_CONNECT_TIMEOUT_S: Final = 5
_MISSING_RESOURCE_CODES: Final = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "ResourceNotFoundException",
    }
)
_CREDENTIAL_CODES: Final = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch"}
)


CALL_RETRY: Final = CallRetry()
"""The retry policy of every SQS and DynamoDB client (8 attempts, 20 s in all)."""

CLIENT_HOOKS: Final[list[Callable[[Any], None]]] = []
"""Testing hook: each callable is run on every client made here, after the retry
policy is installed. Only test and chaos tooling (dispatch.local) adds to it."""


def _config_options(
    max_pool_connections: int, connect_timeout_s: float, read_timeout_s: float
) -> dict[str, Any]:
    return {
        # One attempt: botocore's retries are replaced by Dispatch's (prepare_client).
        "retries": {"mode": "standard", "total_max_attempts": 1},
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
        "max_pool_connections": max_pool_connections,
    }


def client_config(
    *,
    max_pool_connections: int = 50,
    connect_timeout_s: float = _CONNECT_TIMEOUT_S,
    read_timeout_s: float = _READ_TIMEOUT_S,
) -> Config:
    """The botocore configuration every Dispatch boto3 client uses."""
    return Config(**_config_options(max_pool_connections, connect_timeout_s, read_timeout_s))


def aio_client_config(
    *,
    max_pool_connections: int = 50,
    connect_timeout_s: float = _CONNECT_TIMEOUT_S,
    read_timeout_s: float = _READ_TIMEOUT_S,
) -> AioConfig:
    """The same configuration for aiobotocore clients."""
    return AioConfig(**_config_options(max_pool_connections, connect_timeout_s, read_timeout_s))


_Session = TypeVar("_Session", bound=botocore.session.Session)
_loader_lock = threading.Lock()
_loader: Any = None  # botocore's data loader, shared by every session this process makes


def shared_models(session: _Session) -> _Session:
    """``session`` (botocore or aiobotocore), reading AWS's service models through the
    process's one data loader, so each model file is parsed once per process.

    A new session parses the SQS and DynamoDB models again (about 0.2 s of CPU); a
    scheduled dispatcher makes its clients anew on every tick (each tick has its own
    event loop, and aiobotocore clients belong to one), and in a warm Lambda
    container the loader outlives the tick. Credentials stay each session's own.
    """
    global _loader  # noqa: PLW0603 - one cache per process, by design
    with _loader_lock:
        if _loader is None:
            _loader = create_loader(session.get_config_variable("data_path"))
    session.register_component("data_loader", _loader)
    return session


def prepare_client(
    client: Any, *, retry: CallRetry = CALL_RETRY, counter: RequestCounter | None = None
) -> None:
    """Install the retry policy, the request counter and the client hooks on ``client``."""
    retry.install(client)
    if counter is not None:
        counter.attach(client)
    for hook in CLIENT_HOOKS:
        hook(client)


def sync_client(
    service: str,
    settings: Settings | Endpoint,
    *,
    retry: CallRetry = CALL_RETRY,
    counter: RequestCounter | None = None,
    config: Config | None = None,
    endpoint_url: str | None = None,
    **options: Any,
) -> Any:
    """A boto3 client for ``service`` with Dispatch's retries (``options`` go to boto3:
    credentials, for instance; ``endpoint_url`` overrides the settings' one)."""
    session = boto3.session.Session(botocore_session=shared_models(botocore.session.Session()))
    client = session.client(
        service,  # type: ignore[call-overload]
        region_name=settings.region,
        endpoint_url=endpoint_url or settings.endpoint_url,
        config=config or client_config(),
        **options,
    )
    prepare_client(client, retry=retry, counter=counter)
    return client


@asynccontextmanager
async def async_client(
    service: str,
    settings: Settings | Endpoint,
    *,
    retry: CallRetry = CALL_RETRY,
    counter: RequestCounter | None = None,
    config: AioConfig | None = None,
    endpoint_url: str | None = None,
) -> AsyncIterator[Any]:
    """An aiobotocore client for ``service`` with Dispatch's retries, closed on exit."""
    async with shared_models(get_session()).create_client(
        service,  # type: ignore[call-overload]
        region_name=settings.region,
        endpoint_url=endpoint_url or settings.endpoint_url,
        config=config or aio_client_config(),
    ) as client:
        prepare_client(client, retry=retry, counter=counter)
        yield client


class RequestCounter:
    """Counts HTTP requests sent by the clients it is attached to, by (service, action).

    Retries are separate requests and are counted, as AWS bills them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def attach(self, client: Any) -> None:
        """Count every request ``client`` sends from now on (boto3 or aiobotocore)."""
        client.meta.events.register("before-send", self._on_send)

    def _on_send(self, event_name: str = "", **_: Any) -> None:
        parts = event_name.split(".")
        key = (parts[1], parts[2]) if len(parts) >= 3 else ("?", event_name)
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts so far."""
        with self._lock:
            return dict(self._counts)

    def total(self, service: str | None = None) -> int:
        """Requests sent, for one service or all."""
        with self._lock:
            return sum(n for (svc, _), n in self._counts.items() if service in (None, svc))

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counts.clear()


@dataclass(frozen=True, slots=True)
class SyncClients:
    """boto3 clients for the queue API and the CLI."""

    sqs: SQSClient
    dynamodb: DynamoDBClient


@dataclass(frozen=True, slots=True)
class AsyncClients:
    """aiobotocore clients for the dispatcher and ``enqueue_async``."""

    sqs: AioSQSClient
    dynamodb: AioDynamoDBClient


def sync_clients(
    settings: Settings | Endpoint, *, counter: RequestCounter | None = None
) -> SyncClients:
    """boto3 clients for the endpoint and region in ``settings``."""
    return SyncClients(
        sqs=sync_client("sqs", settings, counter=counter),
        dynamodb=sync_client("dynamodb", settings, counter=counter),
    )


@asynccontextmanager
async def async_clients(
    settings: Settings | Endpoint, *, counter: RequestCounter | None = None
) -> AsyncIterator[AsyncClients]:
    """aiobotocore clients for the endpoint and region in ``settings``, closed on exit."""
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(async_client("sqs", settings, counter=counter))
        dynamodb = await stack.enter_async_context(
            async_client("dynamodb", settings, counter=counter)
        )
        yield AsyncClients(sqs=sqs, dynamodb=dynamodb)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a failed call (``"ConditionalCheckFailedException"``);
    ``""`` for anything that is not an AWS error answer."""
    if not isinstance(exc, ClientError):
        return ""
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate_error(exc: BaseException, operation: str) -> Exception:
    """The Dispatch error for a botocore failure; callers ``raise ... from exc``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error_code(exc) or None
        message = str(error.get("Message", "")) or str(exc)
        if code in _MISSING_RESOURCE_CODES:
            return ConfigurationError(
                f"{operation}: {message} (code {code}); check DISPATCH_QUEUE_URL, "
                "DISPATCH_DLQ_URL and DISPATCH_TABLE, or create them with `dispatch init`",
            )
        if code in _CREDENTIAL_CODES:
            return ConfigurationError(
                f"{operation}: AWS refused the credentials ({code}: {message})"
            )
        return AWSError(f"{operation} failed: {code}: {message}", operation=operation, code=code)
    if isinstance(exc, NoCredentialsError):
        return ConfigurationError(
            f"{operation}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a role)"
        )
    if isinstance(exc, BotoCoreError):
        return AWSError(f"{operation} failed: {exc}", operation=operation)
    return AWSError(f"{operation} failed: {exc!r}", operation=operation)


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """Turn botocore errors raised inside the block into Dispatch errors."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate_error(exc, operation) from exc
