"""The benchmark's task: one call to the protected backend (dispatch/local/example/backend.py).

The resource is declared from the environment when this module is imported, so
every dispatcher process of a scenario (``bench.throttle.worker``) enforces the
same limits; the harness imports it too, only to build messages, and then the
defaults apply (the envelope carries the task's name and arguments, not its
resource).

=============================  ===============================================
variable                       meaning (default)
=============================  ===============================================
``BENCH_RATE_PER_S``           the resource's rate (50; empty: none)
``BENCH_BURST``                its burst (10)
``BENCH_MAX_CONCURRENCY``      its concurrency cap (empty: none)
``BENCH_BACKEND_URL``          the backend's base URL (needed to run the task)
``BENCH_WORK_MS``              how long the backend holds each request (5)
``BENCH_BATCH_SIZE``           the micro-batch task's ``batch_size`` (10)
=============================  ===============================================

A 503 from the backend raises :class:`dispatch.Backpressure`, as
``dispatch.local.example.app.reserve_stock`` does, so the adaptive rate sees the overload.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

import aiohttp

from dispatch import Backpressure, Resource, Retry, task

__all__ = ["RESOURCE", "call_backend", "call_backend_batch", "close_session", "environment"]

ENV_RATE: Final = "BENCH_RATE_PER_S"
ENV_BURST: Final = "BENCH_BURST"
ENV_MAX_CONCURRENCY: Final = "BENCH_MAX_CONCURRENCY"
ENV_BACKEND_URL: Final = "BENCH_BACKEND_URL"
ENV_WORK_MS: Final = "BENCH_WORK_MS"
ENV_BATCH_SIZE: Final = "BENCH_BATCH_SIZE"
RESOURCE_NAME: Final = "bench-backend"
_HTTP_TIMEOUT_S: Final = 10.0


def _resource_from_env() -> Resource:
    rate = os.environ.get(ENV_RATE, "50")
    cap = os.environ.get(ENV_MAX_CONCURRENCY, "")
    return Resource(
        RESOURCE_NAME,
        rate_per_s=float(rate) if rate else None,
        burst=int(os.environ.get(ENV_BURST, "10")) if rate else None,
        max_concurrency=int(cap) if cap else None,
    )


def environment(
    *,
    rate_per_s: float,
    burst: int,
    max_concurrency: int | None,
    backend_url: str,
    work_ms: int,
    batch_size: int = 10,
) -> dict[str, str]:
    """The ``BENCH_*`` variables a dispatcher process reads its resource from."""
    return {
        ENV_RATE: repr(rate_per_s),
        ENV_BURST: str(burst),
        ENV_MAX_CONCURRENCY: str(max_concurrency or ""),
        ENV_BACKEND_URL: backend_url,
        ENV_WORK_MS: str(work_ms),
        ENV_BATCH_SIZE: str(batch_size),
    }


RESOURCE: Final = _resource_from_env()
_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    """One HTTP session per worker process and event loop (made on first use, in the
    running loop: the Lambda worker function runs each invocation in a loop of its own)."""
    global _session  # noqa: PLW0603 - one lazily made session per process, closed by close_session
    loop = asyncio.get_running_loop()
    if _session is None or _session.closed or _session.loop is not loop:
        _session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0),  # the throttle limits, not the client
        )
    return _session


async def close_session() -> None:
    """Close the HTTP session (the worker calls this before its event loop ends)."""
    global _session
    if _session is not None:
        session, _session = _session, None
        await session.close()


async def _call_backend(n: int) -> int:
    """``GET /work?ms=BENCH_WORK_MS``; a 503 is Backpressure (retry later, slow down)."""
    url = f"{os.environ[ENV_BACKEND_URL]}/work?ms={os.environ.get(ENV_WORK_MS, '5')}"
    async with _client().get(url) as response:
        if response.status == 503:
            retry_after_s = float(response.headers.get("Retry-After", "1"))
            raise Backpressure("backend overloaded (503)", retry_after_s=retry_after_s)
        response.raise_for_status()
        await response.read()
    return n


_RETRY = Retry(max_attempts=5, base_delay_s=1.0, max_delay_s=2.0)

call_backend = task(
    name="call_backend", resource=RESOURCE, retry=_RETRY, timeout_s=_HTTP_TIMEOUT_S + 5
)(_call_backend)
"""The backend call with a task record in DynamoDB (the default)."""

call_backend_lean = task(
    name="call_backend_lean",
    resource=RESOURCE,
    retry=_RETRY,
    timeout_s=_HTTP_TIMEOUT_S + 5,
    track_state=False,
)(_call_backend)
"""The same call as a lean task (SQS only): the throttle is the same; the emulator's
DynamoDB work per task (a claim and a record) is not."""


async def _call_backend_batch(items: list[int]) -> int:
    """One backend call for a whole batch: the batch is one start against the resource."""
    await _call_backend(len(items))
    return len(items)


call_backend_batch = task(
    name="call_backend_batch",
    resource=RESOURCE,
    retry=_RETRY,
    timeout_s=_HTTP_TIMEOUT_S + 5,
    batch_size=int(os.environ.get(ENV_BATCH_SIZE, "10")),
    batch_window_s=0.5,
)(_call_backend_batch)
"""A micro-batch task: up to ``BENCH_BATCH_SIZE`` items, one backend call (one token) a batch."""
