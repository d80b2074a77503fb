"""Pickup latency and idle cost by deployment mode, on the loopback topology.

The template's ``DispatchMode`` picks who dispatches (docs/deploy.md, "Deployment
modes"). For each mode this measures, on one embedded local AWS and the loopback
Lambda Invoke endpoint that ``dispatch dev --lambda`` uses
(:func:`dispatch.local.dev.lambda_topology`):

* **idle pickup**: enqueue -> handler start of a probe enqueued on an idle queue.
  *scheduled*: nothing receives until the next tick, so the wait for the tick is
  modelled (uniform over the schedule's period: p50 = half of it, p99 = 99 % of
  it) and added to the measured part, a tick sent right after the enqueue -> the
  handler's start. *responsive*: the producer (a fresh process's ``Queue`` with
  ``DISPATCH_WAKE_FUNCTION``) wakes the dispatcher function; all measured. The
  dispatcher lingers 1 s here, so that the queue is idle again (no promise) a
  moment after each probe; the wake path does not depend on the linger.
  *service*: a long-polling ``Dispatcher`` with in-process workers, as
  ``dispatch run`` in the container.
* **pickup under load**: probes about once a second while ``LOAD_PER_S`` no-op
  tasks a second flow, for ``load_s`` seconds, with the schedule firing every
  ``PERIOD_S`` (the first tick at once) and each dispatcher invocation's timeout
  ``PERIOD_S``, so that the run crosses an invocation's end: a probe enqueued
  while one invocation stops receiving waits for the next.
* **idle cost per queue per month**: *scheduled* and *responsive*: idle ticks of
  the real handler (:func:`bench.idle.handler_tick`) with the mode's settings,
  requests counted and billed, scaled to a month of ``rate(1 minute)``.
  *responsive* adds what one wake costs (measured: a wake on an idle queue with
  the template's linger; the producer's look and Invoke, the run's requests and
  billed duration) and, beside the idle figure, a month with one wake an hour.
  *service*: a ``Dispatcher`` idle for ``service_idle_s`` with counted clients,
  scaled to a month, plus the Fargate task at list prices (bench/prices.py) for
  the service template's default size, times its default ``MinCapacity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from bench import prices, workload
from bench.billing import BillingMeter
from bench.fleet import REPO_ROOT
from bench.idle import counted_handler_clients, handler_tick, monthly_figures, scheduled_event
from bench.latency import percentile
from bench.stage import Stage, environment, settings_env
from bench.throughput import requests_by_action
from dispatch.aws_lambda import handler as dispatcher_function
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.local.dev import (
    DevSummary,
    ServedTopology,
    Topology,
    lambda_topology,
    let_running_finish,
    template_linger_s,
)
from dispatch.loop.dispatcher import Dispatcher
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, async_clients

__all__ = ["PickupPlan", "in_process_dispatcher", "run_pickup"]

PERIOD_S: Final = 60.0
"""The schedule's period (``rate(1 minute)``) and, here, the dispatcher function's timeout."""
WORKER_TIMEOUT_S: Final = 15.0
LOAD_PER_S: Final = 20.0
IDLE_LINGER_S: Final = 1.0
_PROBE_GAP_S: Final = (0.5, 1.5)
_START_TIMEOUT_S: Final = PERIOD_S + 30.0
_MODES: Final = ("scheduled", "responsive", "service")


@dataclass(frozen=True, slots=True)
class PickupPlan:
    """How big the pickup measurement is."""

    idle_probes: int
    load_s: float  # > PERIOD_S in the full run: the load crosses an invocation's end
    idle_ticks: int
    service_idle_s: float
    wake_linger_s: float | None  # None: the template's DISPATCH_LINGER_S

    @classmethod
    def full(cls) -> PickupPlan:
        """20 probes per mode idle, 70 s of load (one invocation's end), the real linger."""
        return cls(
            idle_probes=20, load_s=70.0, idle_ticks=20, service_idle_s=60.0, wake_linger_s=None
        )

    @classmethod
    def quick(cls) -> PickupPlan:
        """5 probes, 10 s of load (no invocation ends in it), a 3 s linger for the wake."""
        return cls(idle_probes=5, load_s=10.0, idle_ticks=5, service_idle_s=10.0, wake_linger_s=3.0)


def run_pickup(stage: Stage, plan: PickupPlan) -> dict[str, Any]:
    """Every mode's pickup and idle cost; see the module doc."""
    modes: dict[str, Any] = {}
    for mode in _MODES:
        settings = stage.fresh(f"pickup-{mode}")
        env = {**stage.aws.env(), **settings_env(settings)}
        with environment(env):
            modes[mode] = _MEASURES[mode](settings, env, plan)
    esm = _esm_dollars()
    for figures in modes.values():
        figures["idle_ratio_vs_esm"] = round(figures["idle_dollars_per_month"] / esm, 4)
    return {
        "period_s": PERIOD_S,
        "load_per_s": LOAD_PER_S,
        "plan": {k: getattr(plan, k) for k in plan.__slots__},
        "esm_idle_dollars_per_month": round(esm, 5),
        "modes": modes,
    }


# --- scheduled ---------------------------------------------------------------------------------
def _scheduled(settings: Settings, env: dict[str, str], plan: PickupPlan) -> dict[str, Any]:
    topology = _topology("scheduled", linger_s=0.0)
    with _served(env, topology) as served:
        tick_ms = _idle_tick_probes(served, settings, plan.idle_probes)
        loaded = _under_load(served, settings, plan.load_s, wake=False)
    modelled = {
        "p50": round(PERIOD_S * 500 + percentile(tick_ms, 50), 1),
        "p99": round(PERIOD_S * 990 + percentile(tick_ms, 99), 1),
    }
    idle = _idle_ticks(settings, plan.idle_ticks, linger_s=0.0)
    return {
        "idle_pickup_ms": modelled,
        "idle_pickup_method": f"modelled: the wait for the next tick, uniform over {PERIOD_S:g} s, "
        "plus the measured tick -> handler start",
        "tick_to_start_ms": _summary(tick_ms),
        "load_pickup_ms": loaded["pickup_ms"],
        "load": loaded,
        "idle": idle,
        "idle_dollars_per_month": idle["dollars_per_month"]["256MB"]["total"],
    }


def _idle_tick_probes(served: ServedTopology, settings: Settings, probes: int) -> list[float]:
    """Enqueue a probe on the idle queue, then send a tick at once: tick -> start."""
    lam = _lambda_client(served)
    queue = Queue(settings)
    ticks: dict[float, float] = {}
    try:
        for _ in range(probes):
            _wait_idle(served)
            sent_at = time.time()
            queue.enqueue(workload.probe_message(sent_at))
            ticks[sent_at] = time.time()
            _send_tick(lam, served)
            _wait_started({sent_at}, timeout_s=_START_TIMEOUT_S)
    finally:
        queue.close()
    _wait_idle(served)
    starts = dict(workload.probe_starts())
    return [(starts[sent] - tick) * 1000 for sent, tick in ticks.items()]


# --- responsive --------------------------------------------------------------------------------
def _responsive(settings: Settings, env: dict[str, str], plan: PickupPlan) -> dict[str, Any]:
    with _served(env, _topology("responsive", linger_s=IDLE_LINGER_S)) as served:
        idle_ms = _wake_probes(served, settings, plan.idle_probes)
    linger_s = template_linger_s() if plan.wake_linger_s is None else plan.wake_linger_s
    with _served(env, _topology("responsive", linger_s=linger_s)) as served:
        wake = _wake_cost(served, settings, linger_s)
        loaded = _under_load(served, settings, plan.load_s, wake=True)
    idle = _idle_ticks(settings, plan.idle_ticks, linger_s=linger_s)
    idle_dollars = idle["dollars_per_month"]["256MB"]["total"]
    hourly = prices.HOURS_PER_MONTH * wake["dollars_256MB"]
    return {
        "idle_pickup_ms": _summary(idle_ms),
        "idle_pickup_method": "measured: the producer's wake -> the dispatcher function -> start",
        "load_pickup_ms": loaded["pickup_ms"],
        "load": loaded,
        "idle": idle,
        "wake": wake,
        "idle_dollars_per_month": idle_dollars,
        "one_wake_an_hour_dollars_per_month": round(idle_dollars + hourly, 5),
    }


def _wake_probes(served: ServedTopology, settings: Settings, probes: int) -> list[float]:
    """Each probe from a fresh producer (a process's first enqueue) on an idle queue."""
    wake = _wake_settings(served, settings)
    latencies = []
    for _ in range(probes):
        _wait_idle(served)
        _wait_promise_lapsed(served, settings)
        queue = Queue(wake)
        try:
            sent_at = time.time()
            queue.enqueue(workload.probe_message(sent_at))
            started = _wait_started({sent_at}, timeout_s=_START_TIMEOUT_S)[sent_at]
        finally:
            queue.close()
        latencies.append((started - sent_at) * 1000)
    _wait_idle(served)
    return latencies


def _wake_cost(served: ServedTopology, settings: Settings, linger_s: float) -> dict[str, Any]:
    """One wake on an idle queue with ``linger_s``: every request and the billed duration."""
    _wait_idle(served)
    _wait_promise_lapsed(served, settings)
    producer, run = RequestCounter(), RequestCounter()
    run_meter = BillingMeter()
    queue = Queue(_wake_settings(served, settings), counter=producer)
    before = len(served.endpoint.invocations)
    try:
        with counted_handler_clients(run, run_meter):
            sent_at = time.time()
            queue.enqueue(workload.probe_message(sent_at))
            _wait_started({sent_at}, timeout_s=_START_TIMEOUT_S)
            _wait_idle(served, timeout_s=linger_s + PERIOD_S)
            ended_at = time.time()  # within the idle wait's 50 ms poll of the run's end
    finally:
        queue.close()
    dispatchers = [
        i
        for i in served.endpoint.invocations[before:]
        if i.function == _topology("responsive", linger_s=linger_s).dispatcher_name
    ]
    if len(dispatchers) != 1:
        raise RuntimeError(f"one wake made {len(dispatchers)} dispatcher invocations, not 1")
    # An Event invocation's answer is the 202; the run goes on in the background, billed
    # from its start to its end.
    billed_s = math.ceil((ended_at - dispatchers[0].started_at) * 1000) / 1000
    usage = run_meter.snapshot().dollars()
    aws_dollars = usage["sqs"] + usage["dynamodb_writes"] + usage["dynamodb_reads"]
    look = prices.DYNAMODB_PER_MILLION_READ_UNITS / 1_000_000 / 2  # eventually consistent
    dollars = {}
    for memory_mb in prices.DISPATCHER_MEMORY_MB:
        gb_s = billed_s * memory_mb / 1024
        dollars[f"dollars_{memory_mb}MB"] = round(
            aws_dollars
            + look
            + prices.LAMBDA_PER_MILLION_REQUESTS / 1_000_000
            + gb_s * prices.LAMBDA_PER_GB_SECOND,
            8,
        )
    producer_requests = requests_by_action(producer)
    return {
        "linger_s": linger_s,
        "billed_s": billed_s,
        # the task's own record write and send are not the wake's: its look and Invoke are
        "producer_look": {k: n for k, n in producer_requests.items() if k == "dynamodb.GetItem"},
        "run_requests": requests_by_action(run),
        **dollars,
    }


def _wake_settings(served: ServedTopology, settings: Settings) -> Settings:
    return replace(settings, wake_function=served.env[c.ENV_WAKE_FUNCTION])


# --- service -----------------------------------------------------------------------------------
def _service(settings: Settings, env: dict[str, str], plan: PickupPlan) -> dict[str, Any]:
    with in_process_dispatcher(settings) as _:
        idle_ms = _long_poll_probes(settings, plan.idle_probes)
        loaded = _under_load(None, settings, plan.load_s, wake=False)
    counter, meter = RequestCounter(), BillingMeter()
    with in_process_dispatcher(settings, counter=counter, meter=meter):
        time.sleep(plan.service_idle_s)  # the measurement: what an idle dispatcher sends
    scale = prices.HOURS_PER_MONTH * 3600 / plan.service_idle_s
    # A long poll still waiting when the measurement ends is not billed by the meter yet:
    # SQS is priced from the requests sent (each well under 64 KiB), DynamoDB from the meter.
    usage = meter.snapshot().dollars()
    sqs_requests = sum(n for (service, _), n in counter.snapshot().items() if service == "sqs")
    aws = (
        sqs_requests * prices.SQS_STANDARD_PER_MILLION_REQUESTS / 1_000_000
        + usage["dynamodb_writes"]
        + usage["dynamodb_reads"]
    ) * scale
    vcpu, memory_gb, tasks = _service_defaults()
    fargate = (
        prices.HOURS_PER_MONTH
        * tasks
        * (vcpu * prices.FARGATE_PER_VCPU_HOUR + memory_gb * prices.FARGATE_PER_GB_HOUR)
    )
    return {
        "idle_pickup_ms": _summary(idle_ms),
        "idle_pickup_method": "measured: a long-polling dispatcher (dispatch run) in-process",
        "load_pickup_ms": loaded["pickup_ms"],
        "load": loaded,
        "idle": {
            "seconds": plan.service_idle_s,
            "requests": requests_by_action(counter),
            "aws_requests_per_month": round(counter.total() * scale),
            "aws_dollars_per_month": round(aws, 5),
            "fargate_dollars_per_month": round(fargate, 4),
            "fargate_task": {"vcpu": vcpu, "memory_gb": memory_gb, "tasks": tasks},
        },
        "idle_dollars_per_month": round(aws + fargate, 4),
    }


def _service_defaults() -> tuple[float, float, int]:
    """deploy/service.yaml's default task size (vCPU, GB) and MinCapacity."""
    from dispatch.local.provision import load_template

    parameters = load_template(REPO_ROOT / "deploy" / "service.yaml")["Parameters"]
    size = str(parameters["TaskSize"]["Default"])  # e.g. Cpu256Mem512
    found = re.fullmatch(r"Cpu(\d+)Mem(\d+)", size)
    if found is None:
        raise ValueError(f"deploy/service.yaml's TaskSize default {size!r} is not CpuNMemM")
    cpu_units, memory_mb = int(found[1]), int(found[2])
    return cpu_units / 1024, memory_mb / 1024, int(parameters["MinCapacity"]["Default"])


def _long_poll_probes(settings: Settings, probes: int) -> list[float]:
    queue = Queue(settings)
    latencies = []
    try:
        queue.enqueue(workload.probe_message(0.0))  # connect first, not measured
        _wait_started({0.0}, timeout_s=_START_TIMEOUT_S)
        for _ in range(probes):
            time.sleep(random.uniform(*_PROBE_GAP_S) / 5)  # the dispatcher idle, polling
            sent_at = time.time()
            queue.enqueue(workload.probe_message(sent_at))
            latencies.append((_wait_started({sent_at}, timeout_s=30)[sent_at] - sent_at) * 1000)
    finally:
        queue.close()
    return latencies


@contextlib.contextmanager
def in_process_dispatcher(
    settings: Settings, *, counter: RequestCounter | None = None, meter: BillingMeter | None = None
) -> Iterator[None]:
    """``dispatch run`` in a thread of this process: long-polling, in-process workers."""
    ready, stopped = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with async_clients(settings, counter=counter) as clients:
            if meter is not None:
                meter.attach(clients.sqs)
                meter.attach(clients.dynamodb)
            dispatcher = Dispatcher(settings, clients=clients, registry=workload.registry)
            box["loop"], box["dispatcher"] = asyncio.get_running_loop(), dispatcher
            ready.set()
            try:
                await dispatcher.run()
            finally:
                await dispatcher.runner.aclose()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            box["error"] = exc
        finally:
            ready.set()
            stopped.set()

    thread = threading.Thread(target=main, name="pickup-dispatcher", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    if "error" in box:
        raise RuntimeError(f"the dispatcher did not start: {box['error']}")
    try:
        yield
    finally:
        box["loop"].call_soon_threadsafe(box["dispatcher"].stop)
        if not stopped.wait(timeout=60):
            raise RuntimeError("the in-process dispatcher did not stop within 60 s")
    if "error" in box:
        raise RuntimeError(f"the dispatcher failed: {box['error']}")


# --- shared ------------------------------------------------------------------------------------
def _under_load(
    served: ServedTopology | None, settings: Settings, load_s: float, *, wake: bool
) -> dict[str, Any]:
    """``LOAD_PER_S`` no-op tasks a second for ``load_s``, probes about once a second,
    the schedule ticking every ``PERIOD_S`` (the first at once) when ``served``."""
    producer_settings = _wake_settings(served, settings) if wake and served else settings
    load, probes = Queue(producer_settings), Queue(producer_settings)
    stop = threading.Event()
    ticker = None
    if served is not None:
        ticker = threading.Thread(target=_ticks, args=(served, stop), daemon=True)
        ticker.start()
    sent: list[float] = []
    before = len(served.endpoint.invocations) if served is not None else 0
    began = time.monotonic()
    loader = threading.Thread(target=_load, args=(load, load_s, stop), daemon=True)
    loader.start()
    try:
        while time.monotonic() - began < load_s:
            time.sleep(random.uniform(*_PROBE_GAP_S))
            sent_at = time.time()
            probes.enqueue(workload.probe_message(sent_at))
            sent.append(sent_at)
        loader.join()
        starts = _wait_started(set(sent), timeout_s=_START_TIMEOUT_S)
    finally:
        stop.set()
        loader.join()
        if ticker is not None:
            ticker.join()
        load.close()
        probes.close()
        if served is not None:
            let_running_finish(served.endpoint, DevSummary())
    latencies = [(starts[s] - s) * 1000 for s in sent]
    result: dict[str, Any] = {
        "seconds": load_s,
        "probes": len(sent),
        "pickup_ms": _summary(latencies),
        "over_1s": sum(1 for ms in latencies if ms > 1000),
    }
    if served is not None:
        counts: dict[str, int] = {}
        for invocation in served.endpoint.invocations[before:]:
            key = f"{invocation.function.rsplit('-', 1)[-1]} {invocation.invocation_type}"
            counts[key] = counts.get(key, 0) + 1
        result["invocations"] = counts
    return result


def _load(queue: Queue, load_s: float, stop: threading.Event) -> None:
    batch, every_s = 2, 2 / LOAD_PER_S
    ends = time.monotonic() + load_s
    n = 0
    while not stop.is_set() and time.monotonic() < ends:
        queue.enqueue_many(workload.noop_messages(batch))
        n += batch
        stop.wait(every_s)


def _ticks(served: ServedTopology, stop: threading.Event) -> None:
    lam = _lambda_client(served)
    while not stop.is_set():
        _send_tick(lam, served)
        stop.wait(PERIOD_S)


def _lambda_client(served: ServedTopology) -> Any:
    from dispatch.core.config import Endpoint
    from dispatch.store.aws import sync_client
    from dispatch.store.aws_retry import INVOKE_RETRY

    endpoint = Endpoint(region=served.endpoint.region, endpoint_url=served.endpoint.endpoint_url)
    return sync_client("lambda", endpoint, retry=INVOKE_RETRY)


def _send_tick(lam: Any, served: ServedTopology) -> None:
    event = json.dumps(scheduled_event())
    lam.invoke(FunctionName=served.dispatcher, InvocationType="Event", Payload=event)


def _topology(mode: str, *, linger_s: float) -> Topology:
    return Topology(
        prefix=f"pickup-{mode}",
        schedule="rate(1 minute)",
        dispatcher_timeout_s=PERIOD_S,
        worker_timeout_s=WORKER_TIMEOUT_S,
        worker_concurrency=20,
        lease_cap=1,
        mode=mode,
        linger_s=linger_s,
    )


@contextlib.contextmanager
def _served(env: dict[str, str], topology: Topology) -> Iterator[ServedTopology]:
    with (
        lambda_topology(env, topology, registry=workload.registry) as served,
        environment(dict(served.env)),
    ):
        yield served


def _wait_idle(served: ServedTopology, *, timeout_s: float = PERIOD_S + 30) -> None:
    if not served.endpoint.wait_idle(timeout_s=timeout_s):
        raise RuntimeError(f"invocations still running after {timeout_s:g} s")


def _wait_promise_lapsed(served: ServedTopology, settings: Settings) -> None:
    """Until no dispatcher's promise to be receiving covers now (the queue is idle)."""
    from dispatch.store import awake
    from dispatch.store.aws import sync_client

    dynamodb = sync_client("dynamodb", settings)
    deadline = time.monotonic() + PERIOD_S
    while time.monotonic() < deadline:
        item = dynamodb.get_item(
            TableName=settings.table, Key=awake.awake_key(settings.queue_url), ConsistentRead=True
        ).get("Item")
        if awake.promised_until(item) < time.time() - 0.1:
            return
        time.sleep(0.1)
    raise RuntimeError("a dispatcher's promise did not lapse within a period")


def _wait_started(sent: set[float], *, timeout_s: float) -> dict[float, float]:
    """Until every probe stamped with a time in ``sent`` has started; sent -> started."""
    deadline = time.monotonic() + timeout_s
    while True:
        starts = {s: t for s, t in workload.probe_starts() if s in sent}
        if len(starts) == len(sent):
            return starts
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{len(sent) - len(starts)} probe(s) did not start in {timeout_s:g} s"
            )
        time.sleep(0.005)


def _idle_ticks(settings: Settings, ticks: int, *, linger_s: float) -> dict[str, Any]:
    """``ticks`` idle ticks of the real handler with the mode's linger; a month of them."""
    counter, meter = RequestCounter(), BillingMeter()
    tick = handler_tick(
        settings, counter, meter, extra_env={dispatcher_function.ENV_LINGER_S: f"{linger_s:g}"}
    )
    durations = []
    for _ in range(ticks):
        started = time.perf_counter()
        tick()
        durations.append(time.perf_counter() - started)
    return monthly_figures("handler", None, durations, counter, meter)


def _esm_dollars() -> float:
    requests = prices.ESM_IDLE_RECEIVES_PER_MINUTE * 60 * prices.HOURS_PER_MONTH
    return requests * prices.SQS_STANDARD_PER_MILLION_REQUESTS / 1_000_000


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "p50": round(percentile(values, 50), 1),
        "p90": round(percentile(values, 90), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


_MEASURES: Final[dict[str, Callable[[Settings, dict[str, str], PickupPlan], dict[str, Any]]]] = {
    "scheduled": _scheduled,
    "responsive": _responsive,
    "service": _service,
}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.pickup [--quick]``: this section alone, to bench/results/pickup.json."""
    import argparse

    from bench.output import to_json, write_atomically
    from dispatch.core.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.pickup", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    args = parser.parse_args(argv)
    configure_logging(level="ERROR", json=True)
    plan = PickupPlan.quick() if args.quick else PickupPlan.full()
    with Stage.start() as stage:
        result = run_pickup(stage, plan)
    out = REPO_ROOT / "bench" / "results" / f"pickup{'-quick' if args.quick else ''}.json"
    write_atomically(out, to_json(result))
    print(to_json(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- report ------------------------------------------------------------------------------------
_LABELS: Final = {
    "scheduled": "scheduled (today's default)",
    "responsive": "responsive (producers wake the dispatcher)",
    "service": "service (`dispatch run` on Fargate)",
}


def summary(section: dict[str, Any]) -> dict[str, Any]:
    """Per mode: pickup p50/p99 idle and under load, idle $ per month and / idle ESM."""
    out: dict[str, Any] = {}
    for mode, figures in (section.get("modes") or {}).items():
        out[mode] = {
            "idle_pickup_p50_ms": figures["idle_pickup_ms"]["p50"],
            "idle_pickup_p99_ms": figures["idle_pickup_ms"]["p99"],
            "load_pickup_p50_ms": figures["load_pickup_ms"]["p50"],
            "load_pickup_p99_ms": figures["load_pickup_ms"]["p99"],
            "idle_dollars_per_month": figures["idle_dollars_per_month"],
            "idle_ratio_vs_esm": figures["idle_ratio_vs_esm"],
        }
    return out


def limits(section: dict[str, Any]) -> dict[str, str]:
    """What the responsive mode's targeted figures are made of."""
    responsive = (section.get("modes") or {}).get("responsive")
    if not responsive:
        return {
            "pickup_responsive_idle_p99_ms": "not measured",
            "pickup_responsive_idle_ratio_vs_esm": "not measured",
        }
    wake = responsive["wake"]
    return {
        "pickup_responsive_idle_p99_ms": (
            "The producer's look at the promise (one GetItem), its Invoke (Event), the "
            "dispatcher function's start, its lease and first receive, the claim and the "
            "worker Invoke, all on loopback; on AWS add a cold start when the function has "
            "none warm (the import time: bench/lambda_import_time.py) and the network's "
            "round trips."
        ),
        "pickup_responsive_idle_ratio_vs_esm": (
            "An idle queue sees only the schedule's idle ticks, as in the scheduled mode "
            "(no producer enqueues, so none wakes). Each wake adds "
            f"${wake['dollars_256MB']:.6f} at 256 MB (a {wake['linger_s']:g} s linger "
            f"billed {wake['billed_s']:g} s); one wake an hour: "
            f"${responsive['one_wake_an_hour_dollars_per_month']:.4f} a month."
        ),
    }


def markdown(section: dict[str, Any]) -> list[str]:
    """The report's pickup section (nothing when it was not measured)."""
    modes = section.get("modes")
    if not modes:
        return []
    out = [
        "## 8. Pickup by deployment mode (the deployed topology on loopback)",
        "",
        "Enqueue → handler start with the dispatcher function and the worker function "
        "behind the loopback Lambda Invoke endpoint (`dispatch dev --mode ...`), one "
        f"tick every {section['period_s']:g} s; under load: {section['load_per_s']:g} "
        f"no-op tasks/s for {section['plan']['load_s']:g} s with a probe about once a "
        "second. Idle cost per queue per month at 256 MB; the service mode's is its "
        "Fargate task at list price plus its idle long polls.",
        "",
        "| mode | idle p50 ms | idle p99 ms | under load p50 ms | under load p99 ms | "
        "idle $/month | / idle ESM |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, figures in modes.items():
        idle, load = figures["idle_pickup_ms"], figures["load_pickup_ms"]
        out.append(
            f"| {_LABELS.get(mode, mode)} | {idle['p50']:,.1f} | {idle['p99']:,.1f} | "
            f"{load['p50']:,.1f} | {load['p99']:,.1f} | "
            f"{figures['idle_dollars_per_month']:.4f} | {figures['idle_ratio_vs_esm']:.3f} |"
        )
    out.append("")
    for mode, figures in modes.items():
        out.append(f"- {mode}: idle pickup {figures['idle_pickup_method']}.")
    wake = modes.get("responsive", {}).get("wake")
    if wake:
        out += [
            f"- One wake (linger {wake['linger_s']:g} s): billed {wake['billed_s']:g} s, "
            f"${wake['dollars_256MB']:.6f} at 256 MB with its requests "
            f"({', '.join(f'{k} {n}' for k, n in wake['run_requests'].items())}) and the "
            "producer's look (1 GetItem) and Invoke.",
        ]
    out.append("")
    return out
