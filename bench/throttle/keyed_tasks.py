"""The keyed section's task: one backend call per start, keyed by tenant.

As :mod:`bench.throttle.tasks`, the resource is declared from the environment when
this module is imported, so the dispatcher process (:mod:`bench.throttle.keyed_worker`)
enforces the scenario's limits; the harness imports it only to build messages.

=============================  ===============================================
variable                       meaning (default)
=============================  ===============================================
``BENCH_RATE_PER_S``           the resource's global rate (100)
``BENCH_BURST``                its burst (10)
``BENCH_KEY_RATE_PER_S``       each key's rate (50)
``BENCH_KEY_BURST``            each key's burst (5)
``BENCH_KEY_MAX_CONCURRENCY``  each key's cap (empty: none)
``BENCH_BACKEND_URL``          the backend's base URL (needed to run the task)
``BENCH_WORK_MS``              how long the backend holds each request (5)
=============================  ===============================================

Every call notes its tenant, the time it started and the time it ended
(:data:`STARTS`): the backend counts arrivals, not tenants, and the worker writes
these into its result file.
"""

from __future__ import annotations

import os
import time
from typing import Final

from bench.throttle import tasks
from dispatch import KeyLimits, Resource, Retry, task

__all__ = ["KEYED_RESOURCE", "STARTS", "call_keyed", "environment"]

ENV_KEY_RATE: Final = "BENCH_KEY_RATE_PER_S"
ENV_KEY_BURST: Final = "BENCH_KEY_BURST"
ENV_KEY_MAX_CONCURRENCY: Final = "BENCH_KEY_MAX_CONCURRENCY"
RESOURCE_NAME: Final = "bench-keyed"

STARTS: Final[list[tuple[str, float, float]]] = []
"""``(tenant, started_at, ended_at)`` per call in this process, epoch seconds."""


def _resource_from_env() -> Resource:
    cap = os.environ.get(ENV_KEY_MAX_CONCURRENCY, "")
    return Resource(
        RESOURCE_NAME,
        rate_per_s=float(os.environ.get(tasks.ENV_RATE, "100")),
        burst=int(os.environ.get(tasks.ENV_BURST, "10")),
        per_key=KeyLimits(
            rate_per_s=float(os.environ.get(ENV_KEY_RATE, "50")),
            burst=int(os.environ.get(ENV_KEY_BURST, "5")),
            max_concurrency=int(cap) if cap else None,
        ),
    )


def environment(
    *,
    rate_per_s: float,
    burst: int,
    key_rate_per_s: float,
    key_burst: int,
    key_max_concurrency: int | None,
    backend_url: str,
    work_ms: int,
) -> dict[str, str]:
    """The ``BENCH_*`` variables the dispatcher process reads its resource from."""
    return {
        tasks.ENV_RATE: repr(rate_per_s),
        tasks.ENV_BURST: str(burst),
        ENV_KEY_RATE: repr(key_rate_per_s),
        ENV_KEY_BURST: str(key_burst),
        ENV_KEY_MAX_CONCURRENCY: str(key_max_concurrency or ""),
        tasks.ENV_BACKEND_URL: backend_url,
        tasks.ENV_WORK_MS: str(work_ms),
    }


KEYED_RESOURCE: Final = _resource_from_env()


async def _call_keyed(tenant: str, n: int) -> int:
    """Note the start, call the backend (``bench.throttle.tasks``), note the end."""
    started_at = time.time()
    try:
        return await tasks.call_backend_lean(n)
    finally:
        STARTS.append((tenant, started_at, time.time()))


call_keyed = task(
    name="call_keyed",
    resource=KEYED_RESOURCE,
    key="tenant",
    retry=Retry(max_attempts=5, base_delay_s=1.0, max_delay_s=2.0),
    timeout_s=20.0,
    track_state=False,
)(_call_keyed)
"""A lean keyed task (SQS only, no record per task): on 2 cores the emulator's claim
and record per task would compete with the one dispatcher for CPU."""
