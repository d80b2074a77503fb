"""AWS clients: factories, endpoint/region configuration, call retries, request counts.

Every client Dispatch uses is made here, never at import time. botocore's
"standard" retry mode retries throttling errors, 5xx answers and connection
failures with exponential backoff and jitter inside each call. Errors that
survive it are turned into :class:`dispatch.errors.AWSError` (or
:class:`~dispatch.errors.ConfigurationError` when the cause is configuration:
no credentials, a queue or table that does not exist).

:class:`RequestCounter` counts the HTTP requests actually sent, per service and
action, through botocore's ``before-send`` event: the demo and the benchmarks
report those counts, not estimates.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import boto3
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from dispatch.config import Endpoint, Settings
from dispatch.errors import AWSError, ConfigurationError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from types_aiobotocore_dynamodb import DynamoDBClient as AioDynamoDBClient
    from types_aiobotocore_sqs import SQSClient as AioSQSClient

__all__ = [
    "AsyncClients",
    "RequestCounter",
    "SyncClients",
    "aio_client_config",
    "async_clients",
    "aws_errors",
    "client_config",
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


def _config_options(max_attempts: int, max_pool_connections: int) -> dict[str, Any]:
    return {
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "read_timeout": _READ_TIMEOUT_S,
        "max_pool_connections": max_pool_connections,
    }


def client_config(*, max_attempts: int = 8, max_pool_connections: int = 50) -> Config:
    """The botocore configuration every Dispatch boto3 client uses."""
    return Config(**_config_options(max_attempts, max_pool_connections))


def aio_client_config(*, max_attempts: int = 8, max_pool_connections: int = 50) -> AioConfig:
    """The same configuration for aiobotocore clients."""
    return AioConfig(**_config_options(max_attempts, max_pool_connections))


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
    session = boto3.session.Session()
    config = client_config()
    sqs = session.client(
        "sqs", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config
    )
    dynamodb = session.client(
        "dynamodb", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config
    )
    if counter is not None:
        counter.attach(sqs)
        counter.attach(dynamodb)
    return SyncClients(sqs=sqs, dynamodb=dynamodb)


@asynccontextmanager
async def async_clients(
    settings: Settings | Endpoint, *, counter: RequestCounter | None = None
) -> AsyncIterator[AsyncClients]:
    """aiobotocore clients for the endpoint and region in ``settings``, closed on exit."""
    session = get_session()
    config = aio_client_config()
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.create_client(
                "sqs",
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                config=config,
            )
        )
        dynamodb = await stack.enter_async_context(
            session.create_client(
                "dynamodb",
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                config=config,
            )
        )
        if counter is not None:
            counter.attach(sqs)
            counter.attach(dynamodb)
        yield AsyncClients(sqs=sqs, dynamodb=dynamodb)


def translate_error(exc: BaseException, operation: str) -> Exception:
    """The Dispatch error for a botocore failure; callers ``raise ... from exc``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or None
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
