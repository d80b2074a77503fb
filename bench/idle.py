"""Idle cost per queue per month: the scheduled dispatcher against an empty queue.

A simulated hour of schedule ticks (``rate(1 minute)``: 60 of them, back to back;
fewer in ``--quick``, scaled to the hour): each tick is one invocation of the
dispatcher function as Lambda would make it, ``dispatch.aws_lambda.handler.handler``
with a scheduled event and a Lambda-like context (60 s left). Where that module
cannot be used, each tick is ``Dispatcher.run(until_empty=True)`` on fresh clients
instead, and the result says which it was.

Requests are counted from the HTTP requests the invocation's clients send
(:class:`dispatch.store.aws.RequestCounter`, plus :class:`bench.billing.BillingMeter`
for billing units), by wrapping the client factory the handler calls. Each tick's
wall time is its billed duration (rounded up to the millisecond, as Lambda bills),
priced as GB-seconds at 128 and 256 MB. Beside it: an idle SQS event source
mapping's 15 empty receives a minute.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

from bench import prices, workload
from bench.billing import BillingMeter
from bench.stage import Stage, settings_env
from bench.throughput import requests_by_action
from dispatch.core.config import Settings
from dispatch.loop.dispatcher import Dispatcher
from dispatch.store.aws import AsyncClients, RequestCounter, async_clients

__all__ = [
    "FakeLambdaContext",
    "counted_handler_clients",
    "handler_tick",
    "monthly_figures",
    "run_idle",
    "scheduled_event",
]

_FUNCTION_TIMEOUT_S: Final = 60.0
_TICK_TIMEOUT_S: Final = 30.0
HANDLER_METHOD: Final = "dispatch.aws_lambda.handler.handler"
_CLIENT_FACTORY: Final = "async_clients"  # the name the handler module calls its clients by
FALLBACK_METHOD: Final = "Dispatcher.run(until_empty=True) per tick"

Tick = Callable[[], None]


class FakeLambdaContext:
    """What the Lambda runtime passes a handler, as far as Dispatch reads it."""

    function_name = "dispatch-dispatcher"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:dispatch-dispatcher"
    log_group_name = "/aws/lambda/dispatch-dispatcher"
    log_stream_name = "bench"

    def __init__(self, *, timeout_s: float, memory_mb: int) -> None:
        self.memory_limit_in_mb = str(memory_mb)
        self.aws_request_id = uuid.uuid4().hex
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the invocation's deadline."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def scheduled_event() -> dict[str, Any]:
    """An EventBridge ``Scheduled Event``, as the dispatcher function receives it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/dispatch-schedule"],
        "detail": {},
    }


def run_idle(stage: Stage, ticks: int, *, budget_s: float) -> dict[str, Any]:
    """Run up to ``ticks`` ticks (within ``budget_s``) on an empty queue; the monthly cost."""
    settings = stage.fresh("idle")
    counter, meter = RequestCounter(), BillingMeter()
    method, note = HANDLER_METHOD, None
    try:
        tick = _handler_tick(settings, counter, meter)
    except Exception as exc:  # noqa: BLE001 - the handler is optional here: say why, go on
        method, note = FALLBACK_METHOD, f"{HANDLER_METHOD} unavailable ({exc})"
        tick = _dispatcher_tick(settings, counter, meter)
    durations: list[float] = []
    deadline = time.monotonic() + budget_s
    while len(durations) < ticks and time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            tick()
        except Exception as exc:
            if method != HANDLER_METHOD:
                raise
            note = f"{HANDLER_METHOD} could not run here ({type(exc).__name__}: {exc})"
            method, tick = FALLBACK_METHOD, _dispatcher_tick(settings, counter, meter)
            counter.reset()
            meter.reset()
            durations.clear()
            continue
        durations.append(time.perf_counter() - started)
    if counter.total() == 0:
        raise RuntimeError(f"{method}: no request was counted (are its clients instrumented?)")
    return monthly_figures(method, note, durations, counter, meter)


def _handler_tick(settings: Settings, requests: RequestCounter, meter: BillingMeter) -> Tick:
    return handler_tick(settings, requests, meter)


def handler_tick(
    settings: Settings,
    requests: RequestCounter,
    meter: BillingMeter,
    *,
    extra_env: dict[str, str] | None = None,
) -> Tick:
    """One invocation of the real dispatcher handler (with ``extra_env`` beside the
    settings), its clients counted and billed; it must end ``idle``."""
    from dispatch.aws_lambda import handler as lambda_handler

    environ = {**os.environ, **settings_env(settings), **(extra_env or {})}
    handler = lambda_handler.make_handler(registry=workload.registry, environ=environ)

    def tick() -> None:
        context = FakeLambdaContext(timeout_s=_FUNCTION_TIMEOUT_S, memory_mb=256)
        with counted_handler_clients(requests, meter):
            summary = handler(scheduled_event(), context)
        if summary.get("outcome") != "idle":
            raise RuntimeError(f"an idle tick ended {summary.get('outcome')!r}, not 'idle'")

    return tick


@contextmanager
def counted_handler_clients(requests: RequestCounter, meter: BillingMeter) -> Iterator[None]:
    """While open, every client the dispatcher handler makes is counted and billed.

    The handler makes its clients with ``dispatch.store.aws.async_clients`` (imported into
    its module); that name is wrapped to attach the bench's counter and meter to each
    client it makes, in any thread (a local Lambda endpoint's invocations too).
    """
    from dispatch.aws_lambda import handler as lambda_handler

    original = getattr(lambda_handler, _CLIENT_FACTORY)

    @asynccontextmanager
    async def counted(
        config: Any, *, counter: RequestCounter | None = None
    ) -> AsyncIterator[AsyncClients]:
        async with original(config, counter=counter) as clients:
            _attach(clients, requests, meter)
            yield clients

    setattr(lambda_handler, _CLIENT_FACTORY, counted)
    try:
        yield
    finally:
        setattr(lambda_handler, _CLIENT_FACTORY, original)


def _dispatcher_tick(settings: Settings, counter: RequestCounter, meter: BillingMeter) -> Tick:
    """Fresh clients and one ``Dispatcher.run(until_empty=True)``, as a handler would."""

    async def run() -> None:
        async with async_clients(settings, counter=counter) as clients:
            _attach(clients, None, meter)
            dispatcher = Dispatcher(settings, clients=clients, registry=workload.registry)
            try:
                await dispatcher.run(until_empty=True, for_s=_TICK_TIMEOUT_S)
            finally:
                await dispatcher.runner.aclose()

    return lambda: asyncio.run(run())


def _attach(clients: AsyncClients, counter: RequestCounter | None, meter: BillingMeter) -> None:
    for client in (clients.sqs, clients.dynamodb):
        if counter is not None:
            counter.attach(client)
        meter.attach(client)


def monthly_figures(
    method: str,
    note: str | None,
    durations: list[float],
    counter: RequestCounter,
    meter: BillingMeter,
) -> dict[str, Any]:
    """Idle ticks' requests, units and billed durations, scaled to a month of ticks."""
    ticks = len(durations)
    if not ticks:
        raise RuntimeError("no idle tick completed within the time budget")
    per_month = prices.SCHEDULE_TICKS_PER_HOUR * prices.HOURS_PER_MONTH
    scale = per_month / ticks
    usage = meter.snapshot()
    requests = requests_by_action(counter)
    billed_ms = [math.ceil(d * 1000) for d in durations]
    mean_billed_s = statistics.fmean(billed_ms) / 1000
    usage_dollars = usage.dollars()
    monthly: dict[str, dict[str, float]] = {}
    for memory_mb in prices.DISPATCHER_MEMORY_MB:
        gb_s = per_month * mean_billed_s * memory_mb / 1024
        lines = {
            "sqs": usage_dollars["sqs"] * scale,
            "dynamodb": (usage_dollars["dynamodb_writes"] + usage_dollars["dynamodb_reads"])
            * scale,
            "lambda_requests": per_month * prices.LAMBDA_PER_MILLION_REQUESTS / 1_000_000,
            "lambda_gb_s": gb_s * prices.LAMBDA_PER_GB_SECOND,
            "schedule": per_month * prices.SCHEDULE_PER_MILLION_INVOCATIONS / 1_000_000,
        }
        lines["total"] = sum(lines.values())
        monthly[f"{memory_mb}MB"] = {k: round(v, 5) for k, v in lines.items()} | {
            "gb_s": round(gb_s, 1)
        }
    esm_requests = prices.ESM_IDLE_RECEIVES_PER_MINUTE * 60 * prices.HOURS_PER_MONTH
    esm_dollars = esm_requests * prices.SQS_STANDARD_PER_MILLION_REQUESTS / 1_000_000
    return {
        "method": method,
        "note": note,
        "ticks": ticks,
        "tick_ms": {
            "p50": round(statistics.median(durations) * 1000, 1),
            "mean": round(statistics.fmean(durations) * 1000, 1),
            "max": round(max(durations) * 1000, 1),
        },
        "requests_per_tick": {k: round(n / ticks, 3) for k, n in requests.items()},
        "usage": usage.to_json(),
        "per_month": {
            "ticks": per_month,
            "aws_requests": round(sum(requests.values()) * scale),
            "sqs_requests": round(usage.sqs_billed_requests * scale),
            "dynamodb_write_units": round(usage.total_write_units * scale),
            "dynamodb_read_units": round(usage.total_read_units * scale),
            "lambda_invocations": per_month,
        },
        "dollars_per_month": monthly,
        "esm": {
            "receives_per_minute": prices.ESM_IDLE_RECEIVES_PER_MINUTE,
            "requests_per_month": esm_requests,
            "dollars_per_month": round(esm_dollars, 5),
        },
        "ratio_vs_esm": {
            name: round(lines["total"] / esm_dollars, 4) for name, lines in monthly.items()
        },
    }
