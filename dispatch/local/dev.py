"""`dispatch dev [--lambda]`: the embedded local AWS and a dispatcher, until stopped.

Without ``lambda_mode``: the dispatcher loop runs in this process with the
in-process worker pool, as ``dispatch run`` does, against a fresh embedded local
AWS (queue, DLQ and table provisioned from deploy/template.yaml).

With ``lambda_mode``: the deployed topology, without Docker. A local Lambda
Invoke endpoint (:mod:`dispatch.local.lambda_endpoint`) serves the worker
function (``workers.lambda_handler``) and the dispatcher function
(``dispatch.lambda_handler``); a local schedule (the template's
``DispatchSchedule``, or ``schedule=``) sends EventBridge's scheduled event to
the dispatcher with ``InvocationType=Event`` over HTTP, as EventBridge does;
each invocation has the function's real deadline; the dispatcher fans out to the
worker through the same aiobotocore Invoke calls it makes in AWS.

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
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Console

from dispatch import constants as c
from dispatch import lambda_handler as dispatcher_function
from dispatch.aws import async_clients, sync_client
from dispatch.aws_retry import INVOKE_RETRY
from dispatch.config import Endpoint, Settings, parse_task_modules
from dispatch.cron import parse
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.lambda_endpoint import (
    ACCOUNT_ID,
    LocalFunction,
    LocalLambda,
    function_arn,
)
from dispatch.local.provision import load_template, provision
from dispatch.registry import Registry, default_registry

__all__ = ["DevEnvironment", "DevSummary", "run_dev", "scheduled_event"]

DEFAULT_TASKS: Final = "examples.app"
SHUTDOWN_GRACE_S: Final = 10.0
"""On stop, running invocations get this long to stop receiving, settle and release."""


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
) -> DevSummary:
    """Boot the local topology and run it until Ctrl-C or ``stop``; see the module doc.

    ``tasks`` names the task modules (default ``$DISPATCH_TASKS``, else the
    example app); ``schedule`` is an EventBridge ``rate()``/``cron()``
    expression (default: the template's ``DispatchSchedule``); the first tick
    fires at once. ``on_ready`` is called with the environment once it serves.
    """
    console = console or Console()
    stop = stop or threading.Event()
    registry = default_registry if registry is None else registry
    modules = parse_task_modules(tasks or os.environ.get(c.ENV_TASKS) or DEFAULT_TASKS)
    registry.import_modules(modules)
    with LocalAWS.start() as aws, contextlib.ExitStack() as extras:
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
        env = {**aws.env(), **resources.as_env(), c.ENV_TASKS: ",".join(modules)}
        env.update(_example_backend(modules, extras, console))
        if not lambda_mode:
            with environment(env):
                _print_exports(console, env)
                if on_ready is not None:
                    on_ready(DevEnvironment(env, None, None, None))
                console.print("dispatcher and in-process workers running; Ctrl-C stops")
                asyncio.run(_run_in_process(Settings.from_env(), registry, stop))
            return DevSummary()
        return _run_lambda_topology(
            env,
            registry=registry,
            prefix=prefix,
            schedule=schedule or _template_schedule(),
            dispatcher_timeout_s=dispatcher_timeout_s,
            worker_timeout_s=worker_timeout_s,
            worker_concurrency=worker_concurrency,
            lease_cap=lease_cap,
            console=console,
            stop=stop,
            on_ready=on_ready,
        )


def _example_backend(
    modules: Sequence[str], extras: contextlib.ExitStack, console: Console
) -> dict[str, str]:
    """The example app's warehouse API, started beside it when it runs and no URL is set
    (as the demo does), so its ``reserve_stock`` tasks have something to call."""
    if DEFAULT_TASKS not in modules or os.environ.get("EXAMPLE_BACKEND_URL"):
        return {}
    from examples import app
    from examples.backend import Backend

    backend = extras.enter_context(Backend.start(capacity=app.WAREHOUSE.max_concurrency or 1))
    console.print(f"example warehouse API on {backend.url} (for examples.app's reserve_stock)")
    return {app.BACKEND_URL_ENV: backend.url}


def _run_lambda_topology(
    env: dict[str, str],
    *,
    registry: Registry,
    prefix: str,
    schedule: str,
    dispatcher_timeout_s: float,
    worker_timeout_s: float,
    worker_concurrency: int,
    lease_cap: int,
    console: Console,
    stop: threading.Event,
    on_ready: Callable[[DevEnvironment], None] | None,
) -> DevSummary:
    from workers import lambda_handler as worker_function

    dispatcher_name, worker_name = f"{prefix}-dispatcher", f"{prefix}-worker"
    functions = [
        LocalFunction(
            worker_name,
            worker_function.make_handler(registry=registry),
            timeout_s=worker_timeout_s,
            reserved_concurrency=worker_concurrency,
        ),
        LocalFunction(
            dispatcher_name,
            dispatcher_function.make_handler(registry=registry),
            timeout_s=dispatcher_timeout_s,
        ),
    ]
    summary = DevSummary()
    parsed = parse(schedule)
    with LocalLambda.start(functions, region=env[c.ENV_REGION]) as endpoint:
        target = function_arn(dispatcher_name, qualifier="live", region=endpoint.region)
        env = {
            **env,
            dispatcher_function.ENV_LAMBDA_ENDPOINT_URL: endpoint.endpoint_url,
            dispatcher_function.ENV_WORKER_FUNCTION: f"{worker_name}:live",
            dispatcher_function.ENV_WORKER_TIMEOUT_S: str(worker_timeout_s),
            dispatcher_function.ENV_LEASE_CAP: str(lease_cap),
            dispatcher_function.ENV_SCALE_OUT_FUNCTION: target,
        }
        with environment(env):
            _print_exports(console, env)
            console.print(
                f"Lambda Invoke endpoint on {endpoint.endpoint_url}: {dispatcher_name} "
                f"(timeout {dispatcher_timeout_s:g} s) on {parsed.expression}, {worker_name} "
                f"(timeout {worker_timeout_s:g} s, reserved concurrency {worker_concurrency}); "
                "Ctrl-C stops"
            )
            if on_ready is not None:
                on_ready(DevEnvironment(env, endpoint.endpoint_url, target, f"{worker_name}:live"))
            client = sync_client(
                "lambda",
                Endpoint(region=endpoint.region, endpoint_url=endpoint.endpoint_url),
                retry=INVOKE_RETRY,
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            )
            try:
                when = datetime.now(UTC)
                while not stop.is_set():
                    event = scheduled_event(when, rule=f"{prefix}-tick", region=endpoint.region)
                    client.invoke(
                        FunctionName=target, InvocationType="Event", Payload=json.dumps(event)
                    )
                    summary.ticks += 1
                    console.print(f"{when:%H:%M:%S} tick {summary.ticks}: {_tally(endpoint)}")
                    next_fire = parsed.next_after(datetime.now(UTC))
                    if next_fire is None:
                        break
                    stop.wait(max(0.0, (next_fire - datetime.now(UTC)).total_seconds()))
                    when = next_fire
            except KeyboardInterrupt:
                console.print("stopping: running invocations settle and release")
            finally:
                endpoint.expire_running(within_s=SHUTDOWN_GRACE_S)
                endpoint.wait_idle(timeout_s=SHUTDOWN_GRACE_S + 5)
                for invocation in endpoint.invocations:
                    key = f"{invocation.function} {invocation.status}"
                    summary.invocations[key] = summary.invocations.get(key, 0) + 1
    return summary


async def _run_in_process(settings: Settings, registry: Registry, stop: threading.Event) -> None:
    from dispatch.dispatcher import Dispatcher

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


def _tally(endpoint: LocalLambda) -> str:
    counts: dict[str, int] = {}
    for invocation in endpoint.invocations:
        label = invocation.function + ("" if invocation.status < 300 else f" {invocation.status}")
        counts[label] = counts.get(label, 0) + 1
    done = ", ".join(f"{label} x{n}" for label, n in sorted(counts.items())) or "none yet"
    return f"invocations so far: {done}; running now: {endpoint.running()}"


def _print_exports(console: Console, env: Mapping[str, str]) -> None:
    console.print("In another terminal, to enqueue and look:")
    for name in (
        c.ENV_ENDPOINT_URL,
        c.ENV_REGION,
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        c.ENV_QUEUE_URL,
        c.ENV_DLQ_URL,
        c.ENV_TABLE,
        c.ENV_TASKS,
    ):
        console.print(f"  export {name}={env[name]}", highlight=False, soft_wrap=True)
