"""`dispatch dev [--lambda] [--mode MODE]`: the embedded local AWS and a dispatcher, until stopped.

Without ``lambda_mode`` (or with the ``service`` mode): the dispatcher loop runs in
this process with the in-process worker pool, as ``dispatch run`` does in the
service container, against a fresh embedded local AWS (queue, DLQ and table
provisioned from deploy/template.yaml).

With ``lambda_mode``: the deployed topology, without Docker. A local Lambda
Invoke endpoint (:mod:`dispatch.local.lambda_endpoint`) serves the worker
function (``dispatch_workers.lambda_handler``) and the dispatcher function
(``dispatch.aws_lambda.handler``); a local schedule (the template's
``DispatchSchedule``, or ``schedule=``) sends EventBridge's scheduled event to
the dispatcher with ``InvocationType=Event`` over HTTP, as EventBridge does;
each invocation has the function's real deadline; the dispatcher fans out to the
worker through the same aiobotocore Invoke calls it makes in AWS. In the
``responsive`` mode the dispatcher function also gets the template's
``DISPATCH_LINGER_S``, and the printed exports include ``DISPATCH_WAKE_FUNCTION``
and ``AWS_ENDPOINT_URL_LAMBDA``: a producer in another terminal then wakes the
dispatcher when it enqueues on an idle queue, as the stack's producers do.

Either way it prints the ``export`` lines that point another terminal at the
same emulator (``dispatch enqueue ...``, ``dispatch status``), and runs until
Ctrl-C (or ``stop`` is set), then lets running invocations finish: their
deadline is brought forward, so they stop receiving, settle and release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Console

from dispatch.aws_lambda import handler as dispatcher_function
from dispatch.core import constants as c
from dispatch.core.config import Endpoint, Settings, parse_task_modules
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.lambda_endpoint import (
    ACCOUNT_ID,
    LocalFunction,
    LocalLambda,
    function_arn,
)
from dispatch.local.provision import load_template, provision
from dispatch.producer.wake import ENV_LAMBDA_ENDPOINT_URL
from dispatch.store.aws import async_clients, sync_client
from dispatch.store.aws_retry import INVOKE_RETRY
from dispatch.tasks.cron import Schedule, parse
from dispatch.tasks.registry import Registry, default_registry

__all__ = [
    "MODES",
    "DevEnvironment",
    "DevSummary",
    "Topology",
    "ServedTopology",
    "lambda_topology",
    "let_running_finish",
    "print_exports",
    "run_dev",
    "scheduled_event",
    "template_linger_s",
]

DEFAULT_TASKS: Final = "dispatch.local.example.app"
SHUTDOWN_GRACE_S: Final = 10.0
"""On stop, running invocations get this long to stop receiving, settle and release."""
CONSOLE_COMMAND: Final = "dispatch ui"
"""The web console (``dispatch.ops.cli_ui``), printed with the export lines."""
MODES: Final = ("scheduled", "responsive", "service")
"""The template's ``DispatchMode`` values (deploy/template.yaml)."""


@dataclass(frozen=True, slots=True)
class DevEnvironment:
    """What a running ``dispatch dev`` offers: the variables that reach it."""

    env: Mapping[str, str]
    lambda_endpoint_url: str | None
    dispatcher_function: str | None
    worker_function: str | None


@dataclass(slots=True)
class DevSummary:
    """What happened until the stop."""

    ticks: int = 0
    invocations: dict[str, int] = field(default_factory=dict)  # "<function> <status>" -> n


def scheduled_event(
    when: datetime, *, rule: str, region: str = c.DEFAULT_REGION, account: str = ACCOUNT_ID
) -> dict[str, Any]:
    """The event an EventBridge schedule rule sends its Lambda target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule}"],
        "detail": {},
    }


def run_dev(
    *,
    lambda_mode: bool,
    tasks: str | None,
    mode: str = "scheduled",
    prefix: str = "dev",
    schedule: str | None = None,
    dispatcher_timeout_s: float = 60.0,
    worker_timeout_s: float = 60.0,
    worker_concurrency: int = 10,
    lease_cap: int = 1,
    registry: Registry | None = None,
    console: Console | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[DevEnvironment], None] | None = None,
    console_served: bool = False,
) -> DevSummary:
    """Boot the local topology and run it until Ctrl-C or ``stop``; see the module doc.

    ``tasks`` names the task modules (default ``$DISPATCH_TASKS``, else the
    example app); ``schedule`` is an EventBridge ``rate()``/``cron()``
    expression (default: the template's ``DispatchSchedule``); the first tick
    fires at once. ``mode`` is the template's ``DispatchMode`` (``service``: the
    dispatcher in this process, as ``lambda_mode=False``). ``on_ready`` gets the
    environment once it serves; ``console_served``: the caller serves the console."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    console = console or Console()
    stop = stop or threading.Event()
    registry = default_registry if registry is None else registry
    modules = parse_task_modules(tasks or os.environ.get(c.ENV_TASKS) or DEFAULT_TASKS)
    registry.import_modules(modules)
    with LocalAWS.start() as aws, contextlib.ExitStack() as extras:
        env = {**_provision(aws, prefix=prefix), c.ENV_TASKS: ",".join(modules)}
        env.update(_example_backend(modules, extras, console))
        suggest_ui = not console_served
        if not lambda_mode or mode == "service":
            _serve_in_process(
                env, registry, console=console, stop=stop, on_ready=on_ready, suggest_ui=suggest_ui
            )
            return DevSummary()
        topology = Topology(
            prefix=prefix,
            mode=mode,
            schedule=schedule or _template_schedule(),
            dispatcher_timeout_s=dispatcher_timeout_s,
            worker_timeout_s=worker_timeout_s,
            worker_concurrency=worker_concurrency,
            lease_cap=lease_cap,
        )
        return _run_lambda_topology(
            env,
            topology,
            registry=registry,
            console=console,
            stop=stop,
            on_ready=on_ready,
            suggest_ui=suggest_ui,
        )


def _provision(aws: LocalAWS, *, prefix: str) -> dict[str, str]:
    """Create the queue, DLQ and table from deploy/template.yaml on the emulator; the
    environment that points at them."""
    local = Endpoint(region=aws.region, endpoint_url=aws.endpoint_url)
    options: dict[str, Any] = {
        "aws_access_key_id": aws.env()["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws.env()["AWS_SECRET_ACCESS_KEY"],
    }
    resources = provision(
        sync_client("sqs", local, **options),
        sync_client("dynamodb", local, **options),
        prefix=prefix,
    )
    return {**aws.env(), **resources.as_env()}


def _serve_in_process(
    env: dict[str, str],
    registry: Registry,
    *,
    console: Console,
    stop: threading.Event,
    on_ready: Callable[[DevEnvironment], None] | None,
    suggest_ui: bool = True,
) -> None:
    """Run the dispatcher loop and the in-process workers here until stopped."""
    with environment(env):
        print_exports(console, env, suggest_ui=suggest_ui)
        if on_ready is not None:
            on_ready(DevEnvironment(env, None, None, None))
        console.print("dispatcher and in-process workers running; Ctrl-C stops")
        asyncio.run(_run_in_process(Settings.from_env(), registry, stop))


def _example_backend(
    modules: Sequence[str], extras: contextlib.ExitStack, console: Console
) -> dict[str, str]:
    """The example app's warehouse API, started beside it when it runs and no URL is set
    (as the demo does), so its ``reserve_stock`` tasks have something to call."""
    if DEFAULT_TASKS not in modules or os.environ.get("EXAMPLE_BACKEND_URL"):
        return {}
    from dispatch.local.example import app
    from dispatch.local.example.backend import Backend

    backend = extras.enter_context(Backend.start(capacity=app.WAREHOUSE.max_concurrency or 1))
    console.print(
        f"example warehouse API on {backend.url} (for dispatch.local.example.app's reserve_stock)"
    )
    return {app.BACKEND_URL_ENV: backend.url}


@dataclass(frozen=True, slots=True)
class Topology:
    """The deployed topology as ``dispatch dev --lambda`` runs it: two functions and a schedule."""

    prefix: str
    schedule: str  # an EventBridge rate() or cron() expression
    dispatcher_timeout_s: float
    worker_timeout_s: float
    worker_concurrency: int  # the worker function's reserved concurrency
    lease_cap: int  # dispatchers per queue at once
    mode: str = "scheduled"  # scheduled | responsive (service has no dispatcher function)
    linger_s: float | None = None  # responsive: None follows the template's DISPATCH_LINGER_S

    @property
    def dispatcher_name(self) -> str:
        """The dispatcher function's name."""
        return f"{self.prefix}-dispatcher"

    @property
    def worker_name(self) -> str:
        """The worker function's name."""
        return f"{self.prefix}-worker"


@dataclass(frozen=True, slots=True)
class ServedTopology:
    """A running :func:`lambda_topology`: where it serves and the environment that reaches it."""

    endpoint: LocalLambda
    dispatcher: str  # the dispatcher function's live alias ARN: the schedule's target
    env: Mapping[str, str]  # the caller's environment plus the functions' settings


@contextlib.contextmanager
def lambda_topology(
    env: Mapping[str, str], topology: Topology, *, registry: Registry
) -> Iterator[ServedTopology]:
    """Both functions on a local Invoke endpoint, with the template's settings for
    ``topology.mode``; the caller sends the ticks. On exit, running invocations are
    left to the caller (:func:`let_running_finish`)."""
    if topology.mode not in ("scheduled", "responsive"):
        raise ValueError(f"the {topology.mode!r} mode has no dispatcher function to serve")
    functions = _local_functions(topology, registry)
    with LocalLambda.start(functions, region=env[c.ENV_REGION]) as endpoint:
        target = function_arn(topology.dispatcher_name, qualifier="live", region=endpoint.region)
        yield ServedTopology(
            endpoint,
            target,
            _lambda_env(env, topology, endpoint_url=endpoint.endpoint_url, target=target),
        )


def _run_lambda_topology(
    env: dict[str, str],
    topology: Topology,
    *,
    registry: Registry,
    console: Console,
    stop: threading.Event,
    on_ready: Callable[[DevEnvironment], None] | None,
    suggest_ui: bool = True,
) -> DevSummary:
    """Serve both functions on a local Invoke endpoint and send the dispatcher its
    scheduled events until stopped; then let running invocations settle."""
    summary = DevSummary()
    parsed = parse(topology.schedule)
    with lambda_topology(env, topology, registry=registry) as served:
        endpoint, target = served.endpoint, served.dispatcher
        with environment(served.env):
            exports = (c.ENV_WAKE_FUNCTION, ENV_LAMBDA_ENDPOINT_URL)
            print_exports(
                console,
                served.env,
                extra=exports if topology.mode == "responsive" else (),
                suggest_ui=suggest_ui,
            )
            console.print(
                f"Lambda Invoke endpoint on {endpoint.endpoint_url}: {topology.dispatcher_name} "
                f"(timeout {topology.dispatcher_timeout_s:g} s) on {parsed.expression}"
                f"{_mode_note(topology, served.env)}, "
                f"{topology.worker_name} (timeout {topology.worker_timeout_s:g} s, reserved "
                f"concurrency {topology.worker_concurrency}); Ctrl-C stops"
            )
            if on_ready is not None:
                worker = f"{topology.worker_name}:live"
                on_ready(DevEnvironment(served.env, endpoint.endpoint_url, target, worker))
            try:
                _tick(
                    served.env,
                    endpoint,
                    target,
                    parsed,
                    prefix=topology.prefix,
                    console=console,
                    stop=stop,
                    summary=summary,
                )
            except KeyboardInterrupt:
                console.print("stopping: running invocations settle and release")
            finally:
                let_running_finish(endpoint, summary)
    return summary


def _mode_note(topology: Topology, env: Mapping[str, str]) -> str:
    if topology.mode != "responsive":
        return ""
    return (
        f", responsive: woken by producers that export {c.ENV_WAKE_FUNCTION}, lingering "
        f"{env[dispatcher_function.ENV_LINGER_S]} s after its last task"
    )


def _local_functions(topology: Topology, registry: Registry) -> list[LocalFunction]:
    """The worker and the dispatcher function, with the template's settings."""
    from dispatch_workers import lambda_handler as worker_function

    return [
        LocalFunction(
            topology.worker_name,
            worker_function.make_handler(registry=registry),
            timeout_s=topology.worker_timeout_s,
            reserved_concurrency=topology.worker_concurrency,
        ),
        LocalFunction(
            topology.dispatcher_name,
            dispatcher_function.make_handler(registry=registry),
            timeout_s=topology.dispatcher_timeout_s,
        ),
    ]


def _lambda_env(
    env: Mapping[str, str], topology: Topology, *, endpoint_url: str, target: str
) -> dict[str, str]:
    """``env`` plus the dispatcher function's settings, as the template sets them for
    ``topology.mode`` (responsive: the linger, and the producers' wake target)."""
    linger_s = topology.linger_s
    if linger_s is None:
        linger_s = template_linger_s() if topology.mode == "responsive" else 0.0
    wake = {c.ENV_WAKE_FUNCTION: target, ENV_LAMBDA_ENDPOINT_URL: endpoint_url}
    return {
        **env,
        **(wake if topology.mode == "responsive" else {}),
        dispatcher_function.ENV_LINGER_S: f"{linger_s:g}",
        dispatcher_function.ENV_LAMBDA_ENDPOINT_URL: endpoint_url,
        dispatcher_function.ENV_WORKER_FUNCTION: f"{topology.worker_name}:live",
        dispatcher_function.ENV_WORKER_TIMEOUT_S: str(topology.worker_timeout_s),
        dispatcher_function.ENV_LEASE_CAP: str(topology.lease_cap),
        dispatcher_function.ENV_SCALE_OUT_FUNCTION: target,
    }


def _tick(
    env: Mapping[str, str],
    endpoint: LocalLambda,
    target: str,
    schedule: Schedule,
    *,
    prefix: str,
    console: Console,
    stop: threading.Event,
    summary: DevSummary,
) -> None:
    """Send the dispatcher EventBridge's scheduled event at each fire time (the first at
    once), with ``InvocationType=Event``, until ``stop`` is set or the schedule ends."""
    client = sync_client(
        "lambda",
        Endpoint(region=endpoint.region, endpoint_url=endpoint.endpoint_url),
        retry=INVOKE_RETRY,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    when = datetime.now(UTC)
    while not stop.is_set():
        event = scheduled_event(when, rule=f"{prefix}-tick", region=endpoint.region)
        client.invoke(FunctionName=target, InvocationType="Event", Payload=json.dumps(event))
        summary.ticks += 1
        console.print(f"{when:%H:%M:%S} tick {summary.ticks}: {_tally(endpoint)}")
        next_fire = schedule.next_after(datetime.now(UTC))
        if next_fire is None:
            break
        stop.wait(max(0.0, (next_fire - datetime.now(UTC)).total_seconds()))
        when = next_fire


def let_running_finish(endpoint: LocalLambda, summary: DevSummary) -> None:
    """Bring running invocations' deadline forward so they settle and release; wait for
    them, and count every invocation by function and status."""
    endpoint.expire_running(within_s=SHUTDOWN_GRACE_S)
    endpoint.wait_idle(timeout_s=SHUTDOWN_GRACE_S + 5)
    for invocation in endpoint.invocations:
        key = f"{invocation.function} {invocation.status}"
        summary.invocations[key] = summary.invocations.get(key, 0) + 1


async def _run_in_process(settings: Settings, registry: Registry, stop: threading.Event) -> None:
    from dispatch.loop.dispatcher import Dispatcher

    async with async_clients(settings) as clients:
        dispatcher = Dispatcher(settings, clients=clients, registry=registry)
        watcher = asyncio.create_task(asyncio.to_thread(stop.wait))
        watcher.add_done_callback(lambda _: dispatcher.stop())
        if threading.current_thread() is threading.main_thread():
            import signal

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, dispatcher.stop)
        try:
            await dispatcher.run()
        finally:
            stop.set()  # ends the watcher's thread
            await watcher
            await dispatcher.runner.aclose()


def _template_schedule() -> str:
    parameters = load_template().get("Parameters") or {}
    return str((parameters.get("DispatchSchedule") or {}).get("Default") or "rate(1 minute)")


def template_linger_s() -> float:
    """The responsive mode's ``DISPATCH_LINGER_S`` in deploy/template.yaml."""
    function = load_template()["Resources"]["DispatcherFunction"]["Properties"]
    linger = function["Environment"]["Variables"][dispatcher_function.ENV_LINGER_S]
    condition, responsive, _ = linger["Fn::If"]
    if condition != "Responsive":
        raise ValueError(f"DISPATCH_LINGER_S follows {condition!r}, not the Responsive condition")
    return float(responsive)


def _tally(endpoint: LocalLambda) -> str:
    counts: dict[str, int] = {}
    for invocation in endpoint.invocations:
        label = invocation.function + ("" if invocation.status < 300 else f" {invocation.status}")
        counts[label] = counts.get(label, 0) + 1
    done = ", ".join(f"{label} x{n}" for label, n in sorted(counts.items())) or "none yet"
    return f"invocations so far: {done}; running now: {endpoint.running()}"


def print_exports(
    console: Console,
    env: Mapping[str, str],
    *,
    heading: str = "to enqueue and look",
    extra: Sequence[str] = (),
    suggest_ui: bool = True,
) -> None:
    """The ``cd`` and ``export`` lines that point another terminal at this local AWS
    (and, unless ``suggest_ui`` is off, the ``dispatch ui`` line that opens the console)."""
    console.print(f"In another terminal, {heading}:")
    # The task modules import from this folder (as with `python -m`): the other
    # terminal's commands must run from it too.
    console.print(f"  cd {shlex.quote(os.getcwd())}", highlight=False, soft_wrap=True)
    for name in (
        c.ENV_ENDPOINT_URL,
        c.ENV_REGION,
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        c.ENV_QUEUE_URL,
        c.ENV_DLQ_URL,
        c.ENV_TABLE,
        c.ENV_TASKS,
        *extra,
    ):
        console.print(f"  export {name}={env[name]}", highlight=False, soft_wrap=True)
    if not suggest_ui:
        return
    console.print(
        f"  {CONSOLE_COMMAND}   # the web console on this local AWS: http://127.0.0.1:8321/ "
        "(--allow-actions to pause, redrive, purge from the page)",
        highlight=False,
        soft_wrap=True,
    )
