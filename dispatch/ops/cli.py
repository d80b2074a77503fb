"""The ``dispatch`` command.

Exit codes scripts can rely on: 0 success; 1 the command ran and found a
problem (the demo did not add up, a run stopped on an error, an AWS call
failed); 2 usage error; 3 configuration error (missing or wrong queue, table,
credentials); 4 not found.

Read commands take ``--json`` and then print one JSON document on stdout and
nothing else. Progress bars go to stderr, and only when stderr is a terminal
and ``--json`` is off, so a script's stdout stays clean.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatch.core import constants as c
from dispatch.core.config import Endpoint, Settings, parse_task_modules
from dispatch.core.deadletter import Reason
from dispatch.core.errors import ConfigurationError, DispatchError, TaskNotFoundError
from dispatch.ops.cli_errors import EXIT_PROBLEM
from dispatch.ops.cli_errors import errors as _errors
from dispatch.ops.pausing import describe_paused

P = ParamSpec("P")
R = TypeVar("R")

_PIPE_WIDTH = 200  # columns for tables written to a pipe or file (rich's default is 80)

DISTRIBUTION = "dispatch-aws"  # the installed distribution whose version --version prints


def _examples(*lines: str) -> str:
    """An epilog of command lines for ``--help`` (``\b``: click keeps them unwrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class _Seconds(click.ParamType[float]):
    """A finite number of seconds, at least ``minimum`` (click's FloatRange lets nan and
    inf through)."""

    name = "seconds"

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not self.minimum <= seconds <= sys.float_info.max:  # False for nan and inf
            self.fail(
                f"{value!r} is not a finite number of seconds >= {self.minimum:g}", param, ctx
            )
        return seconds


def _console() -> Console:
    """stdout for tables: the terminal's width, or wide enough for whole rows in a pipe."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=_PIPE_WIDTH)
    return console


def _progress(*, quiet: bool) -> Progress:
    """A progress bar on stderr; off with ``quiet`` (--json) or when stderr is no terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def _load_tasks(tasks: str | None, *, why: str) -> tuple[str, ...]:
    """Import the task modules (``--tasks``, else ``DISPATCH_TASKS``); none is an error
    that names the setting (``why``: what needs them), never a silent empty registry."""
    from dispatch.tasks.registry import default_registry

    modules = parse_task_modules(tasks) if tasks else Settings.from_env().task_modules
    if not modules:
        raise ConfigurationError(
            f"no task modules: {why}; set {c.ENV_TASKS} to the modules that declare your "
            f"tasks (e.g. {c.ENV_TASKS}=myapp.tasks) or pass --tasks",
            setting=c.ENV_TASKS,
        )
    default_registry.import_modules(modules)
    return modules


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION, prog_name="dispatch")
@click.option(
    "--log-level",
    default=None,
    help="structlog level (default: INFO for run, ERROR for the demo, WARNING otherwise).",
)
@click.option(
    "--log-json/--log-console", default=None, help="Log format (default: JSON off a terminal)."
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_json: bool | None) -> None:
    """Dispatch: throttled background work on AWS (SQS + DynamoDB)."""
    from dispatch.core.logs import configure_logging

    default = {"run": "INFO", "dev": "INFO", "demo": "ERROR"}.get(
        ctx.invoked_subcommand or "", "WARNING"
    )
    # dev shows each task's outcome (task_succeeded, one line each) at info; run keeps
    # them at debug: a line per task would flood production logs.
    dev = ctx.invoked_subcommand == "dev"
    configure_logging(level=log_level or default, json=log_json, outcomes=dev)


@cli.command(
    epilog=_examples(
        "dispatch demo",
        "dispatch demo --orders 1000",
        "dispatch demo --keep                # then explore the dead letters",
    )
)
@click.option(
    "--orders",
    default=240,
    show_default=True,
    type=click.IntRange(1, 5000),
    help="Orders in the workload.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the local AWS running after the summary (prints the export lines to "
    "explore it from another terminal) until Ctrl-C.",
)
@_errors
def demo(orders: int, keep: bool) -> None:
    """Run the example workload end to end on the embedded local AWS."""
    from dispatch.local.demo import run_demo

    result = run_demo(orders=orders, console=Console(), keep=keep)
    if not result.ok:
        sys.exit(EXIT_PROBLEM)


@cli.command(
    epilog=_examples(
        "dispatch run --tasks myapp.tasks",
        "dispatch run --until-empty          # drain the queue, then exit",
        "dispatch run --for 300 --max-in-flight 128",
        "dispatch run --finish-within 100    # in a container stopped within 120 s",
    )
)
@click.option(
    "--tasks",
    "tasks",
    metavar="MODULES",
    help=f"Comma-separated task modules (default: ${c.ENV_TASKS}).",
)
@click.option(
    "--until-empty",
    is_flag=True,
    help="Return when no message is visible, in flight or delayed and no task runs.",
)
@click.option(
    "--for",
    "for_s",
    type=_Seconds(),
    metavar="SECONDS",
    help="Run for this long, then stop.",
)
@click.option(
    "--max-in-flight",
    default=64,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Messages held at once.",
)
@click.option(
    "--finish-within",
    "finish_within_s",
    type=_Seconds(),
    metavar="SECONDS",
    help=(
        "On SIGTERM or SIGINT, let tasks in flight run this long, then release the rest "
        "to the queue (attempt not spent) and exit. Default: wait for them. Set it "
        "below a supervisor's stop timeout (ECS stopTimeout, systemd TimeoutStopSec)."
    ),
)
@_errors
def run(
    tasks: str | None,
    until_empty: bool,
    for_s: float | None,
    max_in_flight: int,
    finish_within_s: float | None,
) -> None:
    """Run the dispatcher loop against the queue and table the environment names."""
    if until_empty and for_s is not None:
        raise click.UsageError("--until-empty and --for are alternatives; pass one")
    settings = Settings.from_env()
    try:
        _load_tasks(tasks, why="a dispatcher without them would dead-letter every message")
        stats = asyncio.run(
            _run(
                settings,
                until_empty=until_empty,
                for_s=for_s,
                max_in_flight=max_in_flight,
                finish_within_s=finish_within_s,
            )
        )
    except KeyboardInterrupt:
        # Ctrl-C while starting, before the loop's own handler (a graceful stop) is
        # installed: nothing was received yet, so nothing is left half-done.
        click.echo("stopped before the loop started: nothing was received", err=True)
        return
    click.echo(
        json.dumps(
            {
                "received": stats.received,
                "succeeded": stats.succeeded,
                "retried": stats.retried,
                "dead": stats.dead,
                "dead_reasons": dict(stats.dead_reasons),
                "duplicates": stats.duplicates,
                "wall_s": round(stats.wall_s, 3),
            }
        )
    )


async def _run(
    settings: Settings,
    *,
    until_empty: bool,
    for_s: float | None,
    max_in_flight: int,
    finish_within_s: float | None = None,
) -> Any:
    from dispatch.aws_lambda.handler import (
        ENV_RESOURCE_LIMITS,
        apply_resource_limits,
        parse_resource_limits,
    )
    from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions
    from dispatch.store.aws import async_clients
    from dispatch.tasks.registry import default_registry

    # Per-deployment limits, as the Lambda dispatcher reads them (docs/deploy.md).
    limits = parse_resource_limits(os.environ.get(ENV_RESOURCE_LIMITS) or "{}")
    registry = apply_resource_limits(default_registry, limits)
    async with async_clients(settings) as clients:
        dispatcher = Dispatcher(
            settings,
            clients=clients,
            registry=registry,
            options=DispatcherOptions(max_in_flight=max_in_flight),
        )
        await dispatcher.check()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(
                sig, functools.partial(dispatcher.stop, finish_within_s=finish_within_s)
            )
        try:
            return await dispatcher.run(until_empty=until_empty, for_s=for_s)
        finally:
            await dispatcher.runner.aclose()


@cli.command(
    epilog=_examples(
        "dispatch init                       # prints export lines",
        'eval "$(dispatch init --prefix myapp)"',
        "dispatch init --json",
    )
)
@click.option(
    "--prefix",
    default="dispatch",
    show_default=True,
    help="Name prefix of the queue, DLQ and table.",
)
@click.option("--json", "as_json", is_flag=True, help="Print {queue_url, dlq_url, table} as JSON.")
@_errors
def init(prefix: str, as_json: bool) -> None:
    """Create the queue, DLQ and table (idempotently) on the endpoint the environment names."""
    from dispatch.local.provision import provision
    from dispatch.store.aws import aws_errors, sync_clients

    clients = sync_clients(Endpoint.from_env())
    with aws_errors(f"creating the queue, DLQ and table {prefix}-*"):
        resources = provision(clients.sqs, clients.dynamodb, prefix=prefix)
    if as_json:
        click.echo(json.dumps(resources.as_json()))
        return
    for name, value in resources.as_env().items():
        click.echo(f"export {name}={value}")


ENQUEUE_CHUNK = 100  # messages per enqueue_many call in a bulk enqueue (progress steps)


def _argument_set(text: str, *, where: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) from a JSON object (keyword arguments) or list (positional)."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=where) from exc
    if not isinstance(parsed, dict | list):
        raise click.BadParameter(
            f"must be a JSON object or list, not {type(parsed).__name__}", param_hint=where
        )
    return (tuple(parsed), {}) if isinstance(parsed, list) else ((), dict(parsed))


@cli.command(
    epilog=_examples(
        """dispatch enqueue charge --args '{"order_id": 42}'""",
        "dispatch enqueue resize --args '[\"a.png\", 64]' --delay-s 30",
        "dispatch enqueue ping --count 100",
        "dispatch enqueue charge --from-file orders.jsonl",
        """dispatch enqueue charge --args '{"order_id": 42}' --group customer-7  # FIFO""",
    )
)
@click.argument("task_name", metavar="TASK")
@click.option(
    "--args",
    "args_json",
    default=None,
    help="JSON object (keyword arguments) or list (positional). Default: {}.",
)
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE",
    help="JSON lines, one argument set (object or list) per line: one task per line. "
    "'-' reads stdin.",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=1,
    show_default=True,
    help="Enqueue this many tasks with the same --args.",
)
@click.option(
    "--tasks", "tasks", metavar="MODULES", help=f"Task modules (default: ${c.ENV_TASKS})."
)
@click.option(
    "--delay-s",
    type=_Seconds(),
    help="Run no earlier than this many seconds from now.",
)
@click.option("--idempotency-key", help="The same key enqueues the task once (one task only).")
@click.option(
    "--group",
    help="FIFO message group (SQS MessageGroupId); a standard queue ignores it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the task ids.")
@_errors
def enqueue(
    task_name: str,
    *,
    args_json: str | None,
    from_file: Any,
    count: int,
    tasks: str | None,
    delay_s: float | None,
    idempotency_key: str | None,
    group: str | None,
    as_json: bool,
) -> None:
    """Enqueue a task (or many: --count N, --from-file FILE); prints the task ids, one a line.

    Every argument set is checked against the handler before anything is sent.
    """
    from dispatch.core.envelope import Message, MessageOptions
    from dispatch.tasks.registry import default_registry

    if from_file is not None and (args_json is not None or count != 1):
        raise click.UsageError("--from-file gives the argument sets; drop --args and --count")
    try:
        options = MessageOptions(delay_s=delay_s, idempotency_key=idempotency_key, group=group)
    except DispatchError as exc:  # only the key or group can be wrong: _Seconds checked the delay
        raise click.BadParameter(str(exc), param_hint="--idempotency-key/--group") from exc
    sets: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    line_numbers: list[int] = []  # of each argument set in the file (blank lines skipped)
    name = getattr(from_file, "name", "FILE")
    if from_file is not None:
        for number, line in enumerate(from_file, start=1):
            if line.strip():
                sets.append(_argument_set(line, where=f"--from-file {name} line {number}"))
                line_numbers.append(number)
        if not sets:
            raise click.BadParameter(f"{name} holds no argument set", param_hint="--from-file")
    else:
        sets = [_argument_set(args_json or "{}", where="--args")] * count
    if idempotency_key is not None and len(sets) > 1:
        raise click.UsageError(
            "--idempotency-key makes every copy the same task; it enqueues one task only"
        )
    _load_tasks(tasks, why=f"dispatch enqueue needs the module that declares {task_name!r}")
    spec = default_registry.get(task_name)
    messages: list[Message] = []
    for index, (args, kwargs) in enumerate(sets):
        try:
            messages.append(Message.build(spec, args, kwargs, options))
        except DispatchError as exc:
            if from_file is None:
                raise
            raise DispatchError(f"{name} line {line_numbers[index]}: {exc}") from exc
    sent = _enqueue_in_chunks(messages, label=f"enqueue {task_name}", as_json=as_json)
    if as_json:
        click.echo(json.dumps(sent))


def _enqueue_in_chunks(messages: list[Any], *, label: str, as_json: bool) -> list[str]:
    """Enqueue with a progress bar, printing ids as they go (unless ``as_json``).

    On a failure, what was enqueued is printed (with ``as_json``, as the JSON list)
    and the error says which tasks were not, so none is lost or sent twice by a retry.
    """
    from dispatch.core.errors import PartialEnqueueError
    from dispatch.producer.enqueue import default_queue

    queue = default_queue()
    sent: list[str] = []
    with _progress(quiet=as_json or len(messages) < 2) as progress:
        bar = progress.add_task(label, total=len(messages))
        for start in range(0, len(messages), ENQUEUE_CHUNK):
            chunk = messages[start : start + ENQUEUE_CHUNK]
            try:
                ids = queue.enqueue_many(chunk)
            except DispatchError as exc:
                if isinstance(exc, ConfigurationError) and not sent:
                    raise  # nothing went: the cause alone (no credentials, no queue), exit 3
                refused = list(range(start + 1, len(messages) + 1))
                if isinstance(exc, PartialEnqueueError):
                    went = [i for i in exc.task_ids if i is not None]
                    sent.extend(went)
                    if went and not as_json:
                        click.echo("\n".join(went))
                    refused = [start + 1 + i for i in sorted(exc.failures)]
                    refused += list(range(start + len(chunk) + 1, len(messages) + 1))
                if as_json:
                    click.echo(json.dumps(sent))
                raise DispatchError(
                    f"{exc}; {len(sent)} of {len(messages)} task(s) were enqueued (their ids "
                    f"are on stdout); not enqueued: #{_ranges(refused)}"
                ) from exc
            sent.extend(ids)
            if not as_json:
                click.echo("\n".join(ids))
            progress.advance(bar, len(ids))
    return sent


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``1-3, 7``."""
    spans: list[str] = []
    for n in numbers:
        if spans and spans[-1].split("-")[-1] == str(n - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{n}"
        else:
            spans.append(str(n))
    return ", ".join(spans)


@cli.command(
    epilog=_examples(
        "dispatch status",
        "dispatch status --json | jq .queue",
        'dispatch status "$TASK_ID"          # one task record',
    )
)
@click.argument("task_id", required=False)
@click.option(
    "--max-scan",
    type=click.IntRange(min=0),
    default=c.STATUS_MAX_SCAN,
    show_default=True,
    metavar="N",
    help="Read at most N table items to count tasks by status ('at least' beyond); 0: skip.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_errors
def status(task_id: str | None, max_scan: int, as_json: bool) -> None:
    """Show the queue and DLQ depth, the oldest message's age, task counts by status and
    every throttled resource's state (rates, tokens, in flight, waiting, time spent
    waiting); or, given TASK_ID, that task's record."""
    if task_id is not None:
        record = _task_with_group(task_id)
        if as_json:
            click.echo(json.dumps(record))
        else:
            for key, value in record.items():
                click.echo(f"{key:>16}: {json.dumps(value) if isinstance(value, dict) else value}")
        return
    from dispatch.ops.overview import overview
    from dispatch.ops.top import describe_age, describe_depth, describe_stuck, resource_table
    from dispatch.producer.enqueue import default_queue
    from dispatch.throttle.status import describe_busiest_keys

    queue = default_queue()
    report = overview(queue.sync_clients(), queue.settings, max_scan=max_scan)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    click.echo(describe_depth("queue", report.queue))
    click.echo(describe_depth("dlq", report.dlq))
    click.echo(describe_age(report.oldest_message))
    tasks = report.tasks
    if tasks is None:
        click.echo("tasks: not counted (--max-scan 0)")
    else:
        prefix = "" if tasks.complete else "at least "
        counts = ", ".join(f"{name} {prefix}{n}" for name, n in tasks.counts.items())
        click.echo(f"tasks: {counts}")
        if not tasks.complete:
            click.echo(
                f"       (the count stopped after {tasks.scanned} table items: "
                "raise --max-scan to count them all)"
            )
    click.echo(f"dispatchers: {report.dispatchers} live{describe_stuck(report.stuck_threads)}")
    click.echo(describe_paused(report.paused))
    if not report.resources:
        click.echo("resources: none reported by a live dispatcher")
        return
    _console().print(resource_table(report.resources))
    for line in describe_busiest_keys(report.resources):
        click.echo(line)


@cli.command()
@click.option(
    "--interval-s",
    type=_Seconds(minimum=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the frame's data as JSON (one object a line, each refresh, without --once).",
)
@_errors
def top(interval_s: float, once: bool, as_json: bool) -> None:
    """A live view: per task the dispatch rate, successes, retries, dead letters and tasks
    in flight; per resource the rates, tokens, in flight vs cap, waiting and wait time;
    the queue and DLQ depth. Ctrl-C quits."""
    import time

    from dispatch.ops.top import read_frame, render, run_live
    from dispatch.producer.enqueue import default_queue

    queue = default_queue()
    clients, settings = queue.sync_clients(), queue.settings

    def read() -> Any:
        return read_frame(clients, settings)

    if once:
        frame = read()
        if as_json:
            click.echo(json.dumps(frame.to_dict()))
        else:
            _console().print(render(frame))
        return
    if as_json:
        try:
            while True:
                click.echo(json.dumps(read().to_dict()))
                time.sleep(interval_s)
        except KeyboardInterrupt:
            return
    run_live(read, interval_s=interval_s, console=Console())


@cli.command(
    epilog=_examples(
        "dispatch dev                        # the example app",
        "dispatch dev --tasks myapp.tasks",
        'dispatch dev --lambda --schedule "rate(1 minute)"',
        "dispatch dev --mode responsive          # producers wake the dispatcher function",
    )
)
@click.option(
    "--lambda",
    "lambda_mode",
    is_flag=True,
    help="The deployed topology locally: dispatcher and worker functions behind a loopback "
    "Lambda Invoke endpoint, on the template's schedule.",
)
@click.option(
    "--tasks",
    "tasks",
    metavar="MODULES",
    help=f"Task modules (default: ${c.ENV_TASKS}, else dispatch.local.example.app).",
)
@click.option(
    "--schedule", default=None, help="rate()/cron() (default: the template's DispatchSchedule)."
)
@click.option(
    "--mode",
    type=click.Choice(["scheduled", "responsive", "service"]),
    default=None,
    help="The template's DispatchMode: scheduled and responsive run the Lambda topology "
    "(--lambda implied; responsive prints the exports that let producers wake the "
    "dispatcher), service runs `dispatch run` in this process, as the container does. "
    "Default: scheduled with --lambda, else service.",
)
@click.option(
    "--ui-port",
    type=click.IntRange(0, 65_535),
    default=8321,
    show_default=True,
    help="Serve the web console (dispatch ui) on 127.0.0.1 at this port; 0: a free one.",
)
@click.option("--no-ui", is_flag=True, help="Do not serve the web console.")
@_errors
def dev(
    *,
    lambda_mode: bool,
    tasks: str | None,
    schedule: str | None,
    mode: str | None,
    ui_port: int,
    no_ui: bool,
) -> None:
    """Run the embedded local AWS and a dispatcher (local workers, or --lambda) until
    Ctrl-C, with the web console beside it."""
    from dispatch.local.dev import DevEnvironment, run_dev
    from dispatch.ops.cli_ui import BesideConsole

    if mode == "service" and lambda_mode:
        raise click.UsageError(
            "--mode service runs the dispatcher in this process (as `dispatch run` does in "
            "the service container), not the Lambda topology: drop --lambda"
        )
    if mode is None:
        mode = "scheduled" if lambda_mode else "service"
    console = Console()
    beside = None if no_ui else BesideConsole(port=ui_port)

    def ready(dev_env: DevEnvironment) -> None:
        if beside is not None:
            beside.start(
                dev_env.env, lambda line: console.print(line, highlight=False, soft_wrap=True)
            )

    try:
        run_dev(
            lambda_mode=mode != "service",
            tasks=tasks,
            schedule=schedule,
            mode=mode,
            console=console,
            on_ready=ready,
            console_served=beside is not None,
        )
    except KeyboardInterrupt:
        # Ctrl-C before the dispatcher's own handler is installed (the first moment after
        # "running" is printed): the local AWS was stopped on the way out; a clean exit.
        click.echo("stopped", err=True)
    finally:
        if beside is not None:
            beside.stop()


def _task_with_group(task_id: str) -> dict[str, Any]:
    """One task's record as JSON, with its children's progress when it is a group's
    callback or a chain's step (``"group"``)."""
    from dispatch.producer.compose import group_progress
    from dispatch.producer.status import status as task_status

    record = task_status(task_id).to_dict()
    progress = None if task_id.startswith("lean-") else group_progress(task_id)
    if progress is not None:
        record["group"] = progress
    return record


@cli.command("task")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def task_record(task_id: str, as_json: bool) -> None:
    """Show one task's full record: status, attempts, times, last error, result."""
    record = _task_with_group(task_id)
    if as_json:
        click.echo(json.dumps(record))
        return
    for key, value in record.items():
        if key == "last_error":
            click.echo(f"{'last_error':>16}: {value['type']}: {value['message']}")
            for line in value.get("traceback", "").rstrip().splitlines():
                click.echo(f"{'':>18}{line}")
            continue
        click.echo(f"{key:>16}: {json.dumps(value) if isinstance(value, dict) else value}")


@cli.command(
    epilog=_examples(
        "dispatch cancel 0b7c2e...",
        "dispatch cancel --task charge --status queued --dry-run",
        "dispatch cancel --task charge --status running --since 10m",
    )
)
@click.argument("task_id", required=False)
@click.option("--task", "task_name", metavar="NAME", help="Bulk: only tasks of this name.")
@click.option(
    "--status",
    "status_name",
    type=click.Choice(["queued", "retrying", "running"]),
    help="Bulk: only tasks in this status (default: all three).",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Bulk: only those that entered the status at or after this: a duration ago (2h) "
    "or an ISO-8601 time (queued: enqueued; retrying: last failed; running: started).",
)
@click.option("--dry-run", is_flag=True, help="Bulk: count what matches; cancel nothing.")
@click.option("--by", metavar="WHO", help="Recorded as who cancelled (default: user@host).")
@click.option("--json", "as_json", is_flag=True, help="Print the record (bulk: the counts).")
@_errors
def cancel(
    *,
    task_id: str | None,
    task_name: str | None,
    status_name: str | None,
    since: str | None,
    dry_run: bool,
    by: str | None,
    as_json: bool,
) -> None:
    """Cancel a task by id, or every task a filter selects (--task, --status, --since).

    A queued or retrying task is cancelled at once (its message is dropped unrun). A
    running one is asked to stop: every dispatcher reads the request within 5 s, and
    the one running it interrupts an async handler, raises a sync handler's
    current_task().cancel_requested, and records the task cancelled (never retried,
    never dead-lettered) whatever the handler then returns.

    In bulk, queued tasks are not indexed, so the tasks are found by one Scan of the
    whole table (it reads every item once: about 1 read unit per 8 KB); each is then
    cancelled with a conditional write on the status the Scan saw. Interrupted, run it
    again: what was cancelled no longer matches, nothing is cancelled twice, and a task
    that left the filter meanwhile is left alone. --dry-run prints the counts first.
    """
    import time

    from dispatch.ops.cancelling import cancel_by_filter, cancel_one

    bulk = task_name is not None or status_name is not None
    if task_id is not None and (bulk or since is not None or dry_run):
        raise click.UsageError("give a TASK_ID or a filter (--task, --status), not both")
    if task_id is None and not bulk:
        raise click.UsageError("give a TASK_ID, or a filter: --task NAME and/or --status S")
    if task_id is not None:
        click.echo(cancel_one(task_id, by=by, as_json=as_json))
        return
    from dispatch.ops.listing import ListingError, parse_time

    try:
        since_at = None if since is None else parse_time(since, now=time.time(), option="--since")
    except ListingError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    with _progress(quiet=as_json) as progress:
        bar = progress.add_task("scanning the table", total=None)
        shown = cancel_by_filter(
            task=task_name,
            status=status_name,
            since=since_at,
            by=by,
            dry_run=dry_run,
            as_json=as_json,
            progress=lambda n: progress.advance(bar, n),
        )
    click.echo(shown)


@cli.group()
def dlq() -> None:
    """The dead-letter queue: list, show, redrive, purge."""


def _dlq_context() -> tuple[Any, Settings]:
    from dispatch.producer.enqueue import default_queue

    queue = default_queue()
    return queue.sync_clients(), queue.settings


@dlq.command("list")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="List at most this many dead letters.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per message.")
@_errors
def dlq_list(limit: int, as_json: bool) -> None:
    """List dead-lettered messages with their reason (they stay on the queue)."""
    from dispatch.ops.dlq import iter_dead_letters, release

    clients, settings = _dlq_context()
    entries = list(iter_dead_letters(clients, settings, limit=limit))
    release(clients, settings, entries)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries]))
        return
    table = Table(title=f"dead letters ({len(entries)})", title_justify="left")
    for column in ("message id", "task", "task id", "reason", "error", "attempts"):
        table.add_column(column)
    for e in entries:
        error = e.failure.get("error", {})
        table.add_row(
            e.message_id,
            e.task or "-",
            e.task_id or "-",
            e.reason,
            f"{error.get('type', '')}: {error.get('message', '')}"[:80],
            str(e.failure.get("attempts", "-")),
        )
    _console().print(table)


@dlq.command("show")
@click.argument("message_or_task_id")
@click.option("--json", "as_json", is_flag=True, help="Print compact JSON (one line).")
@_errors
def dlq_show(message_or_task_id: str, as_json: bool) -> None:
    """Show one dead letter (by SQS message id or task id): body and full failure, as
    indented JSON (compact with --json)."""
    from dispatch.ops.dlq import iter_dead_letters, release

    clients, settings = _dlq_context()
    entries = list(iter_dead_letters(clients, settings))
    release(clients, settings, entries)
    for e in entries:
        if message_or_task_id in (e.message_id, e.task_id):
            click.echo(json.dumps(e.to_dict(with_body=True), indent=None if as_json else 2))
            return
    raise TaskNotFoundError(message_or_task_id)


@dlq.command(
    "redrive",
    epilog=_examples(
        "dispatch dlq redrive --dry-run",
        "dispatch dlq redrive --task charge --limit 10",
        "dispatch dlq redrive --task charge --reason max_attempts --since 2h --dry-run",
    ),
)
@click.option("--task", "task_name", help="Only tasks of this name.")
@click.option(
    "--reason",
    type=click.Choice([r.value for r in Reason]),
    help="Only tasks dead-lettered for this reason.",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Only those dead-lettered at or after this: a duration ago (2h) or an ISO-8601 time.",
)
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="At most this many.")
@click.option("--dry-run", is_flag=True, help="Show what would move; move nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def dlq_redrive(
    *,
    task_name: str | None,
    reason: str | None,
    since: str | None,
    limit: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Put dead tasks back on the queue with their attempts reset (--dry-run: count them
    first). Interrupted, run it again: what moved stays moved, nothing runs twice."""
    import time

    from dispatch.ops.dlq import redrive
    from dispatch.ops.listing import ListingError, parse_time

    try:
        since_at = None if since is None else parse_time(since, now=time.time(), option="--since")
    except ListingError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    clients, settings = _dlq_context()
    with _progress(quiet=as_json) as progress:
        bar = progress.add_task("redrive", total=limit)
        report = redrive(
            clients,
            settings,
            task=task_name,
            limit=limit,
            dry_run=dry_run,
            progress=lambda n: progress.advance(bar, n),
            reason=reason,
            since=since_at,
        )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    verb = "would redrive" if dry_run else "redrove"
    click.echo(f"{verb} {len(report.redriven)} task(s); left {report.skipped} on the DLQ")
    if report.not_dead:
        removed = sum(1 for n in report.not_dead if n.removed)
        click.echo(
            f"{'would skip' if dry_run else 'skipped'} {len(report.not_dead)} dead letter(s) "
            f"whose task is not dead ({removed} of finished tasks "
            f"{'would be ' if dry_run else ''}removed from the DLQ):"
        )
        for n in report.not_dead:
            click.echo(f"  {n.entry.task_id} ({n.entry.task}): {n.why}")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Confirm: delete every dead letter for good.")
@_errors
def dlq_purge(yes: bool) -> None:
    """Delete every message on the dead-letter queue."""
    from dispatch.ops.dlq import purge

    if not yes:
        raise click.UsageError("purge deletes every dead letter for good; pass --yes to confirm")
    clients, settings = _dlq_context()
    purge(clients, settings)
    click.echo("dead-letter queue purged")


@cli.group()
def cron() -> None:
    """EventBridge cron()/rate() expressions."""


@cron.command("next")
@click.argument("expression")
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="How many fire times to print.",
)
@click.option("--after", help="ISO-8601 time to start from (default: now, UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of ISO-8601 UTC times.")
@_errors
def cron_next(expression: str, count: int, after: str | None, as_json: bool) -> None:
    """Print the next fire times of EXPRESSION (UTC)."""
    import datetime as dt
    import itertools

    from dispatch.tasks.cron import parse

    schedule = parse(expression)
    if after is None:
        start = dt.datetime.now(dt.UTC)
    else:
        try:
            start = dt.datetime.fromisoformat(after.replace("Z", "+00:00"))
        except ValueError as exc:
            raise click.BadParameter(
                f"not an ISO-8601 time: {after}", param_hint="--after"
            ) from exc
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.UTC)
    times = [
        t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        for t in itertools.islice(schedule.iter_after(start), count)
    ]
    if as_json:
        click.echo(json.dumps(times))
    else:
        click.echo("\n".join(times))


from dispatch.ops.cli_control import (  # noqa: E402 - commands in their own module
    pause_command,
    pauses_command,
    resume_command,
)
from dispatch.ops.cli_tasks import tasks as _tasks  # noqa: E402 - a command in its own module
from dispatch.ops.cli_ui import ui as _ui  # noqa: E402 - a command in its own module

cli.add_command(_tasks)
cli.add_command(_ui)
for _command in (pause_command, resume_command, pauses_command):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli()
