"""`dispatch demo`: the example workload end to end on the embedded local AWS.

Boots the emulator, creates the queue, DLQ and table from deploy/template.yaml,
enqueues the workload from :mod:`dispatch.local.example.workload` (plus a foreign producer's
malformed messages), drains the queue with one dispatcher and in-process
workers, and prints what happened, with AWS requests per task counted from the
requests actually sent. It ends with what to try next; with ``keep`` the local AWS
stays up (its dead letters to explore from another terminal) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatch.core import constants as c
from dispatch.core.config import Endpoint, Settings
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.provision import provision
from dispatch.loop.dispatcher import Dispatcher, RunStats
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import RequestCounter, async_clients, sync_client
from dispatch.tasks.registry import default_registry
from dispatch.throttle.limits import ThrottleSnapshot

if TYPE_CHECKING:
    from dispatch.local.example.backend import Backend, BackendStats

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True, slots=True)
class ResourceReport:
    """How one protected resource fared: the point of the throttle, in figures."""

    name: str
    rate_limit_per_s: float | None
    achieved_rate_per_s: float
    max_concurrency: int | None
    peak_concurrency: int
    overloads: int
    overloads_without_throttle: int
    waits: int
    wait_total_s: float


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The demo's figures; ``ok`` is False when anything did not add up."""

    enqueued: int
    foreign: int
    stats: RunStats
    requests: dict[tuple[str, str], int]
    enqueue_s: float
    resources: tuple[ResourceReport, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every task ended where the workload says it must."""
        return not self.problems


NEXT_STEPS = (
    (
        "dispatch demo --keep",
        "run it again and keep the local AWS up to explore the dead "
        "letters (dispatch dlq list, dispatch dlq show ID, dispatch status)",
    ),
    (
        "dispatch dev",
        "the example app on a local AWS with a running dispatcher and the web "
        "console (http://127.0.0.1:8321/): enqueue from another terminal and watch "
        "each task's outcome",
    ),
    ("docs/local.md", "the demo and dispatch dev explained"),
    ("docs/operations.md", "the CLI in production: status, top, the dead-letter queue"),
)


def run_demo(
    *,
    orders: int = 240,
    console: Console | None = None,
    keep: bool = False,
    wait: Callable[[], None] | None = None,
) -> DemoResult:
    """Run the demo on a fresh embedded local AWS; print progress, the summary and what
    to try next. With ``keep``, print the ``export`` lines that reach the local AWS and
    call ``wait`` (default: until Ctrl-C) before it stops."""
    from dispatch.local.example import app, workload
    from dispatch.local.example.backend import Backend

    console = console or Console()
    with (
        LocalAWS.start() as aws,
        Backend.start(capacity=app.WAREHOUSE.max_concurrency or 1) as backend,
        environment({**aws.env(), app.BACKEND_URL_ENV: backend.url}),
    ):
        console.print(
            f"[bold]Embedded local AWS[/] on {aws.endpoint_url}; warehouse API on {backend.url} "
            f"(serves {backend.stats().capacity} requests at once, 503 beyond)"
        )
        sqs, settings = _provision(aws, console)
        unthrottled = _overloads_without_throttle(backend, calls=orders, console=console)
        counter = RequestCounter()
        enqueued, enqueue_s = _enqueue(
            settings, sqs, orders=orders, counter=counter, console=console
        )
        total = enqueued + len(workload.FOREIGN_BODIES)
        stats, snapshots = asyncio.run(_drain(settings, counter, total, console))
        reports = _resource_reports(
            snapshots, backend.stats(), resource=app.WAREHOUSE.name, unthrottled=unthrottled
        )
        result = DemoResult(
            enqueued=enqueued,
            foreign=len(workload.FOREIGN_BODIES),
            stats=stats,
            requests=counter.snapshot(),
            enqueue_s=enqueue_s,
            resources=reports,
            problems=tuple(_check(stats, workload.expected(orders), total, reports)),
        )
        _summary(console, result)
        if keep:
            _keep_running(console, {**aws.env(), **_resource_env(settings)}, wait)
        else:
            _next_steps(console)
        return result


def _resource_env(settings: Settings) -> dict[str, str]:
    from dispatch.local.example import app

    return {
        c.ENV_QUEUE_URL: settings.queue_url,
        c.ENV_DLQ_URL: settings.dlq_url,
        c.ENV_TABLE: settings.table,
        c.ENV_TASKS: app.__name__,
    }


def _next_steps(console: Console) -> None:
    from dispatch.local.dev import CONSOLE_COMMAND

    console.print("\n[bold]Next steps[/]")
    for what, why in NEXT_STEPS:
        console.print(f"  [cyan]{what}[/]: {why}", highlight=False)
    console.print(
        "\nThis run's local AWS stopped with it. To open the web console on the demo's data: "
        f"[cyan]dispatch demo --keep[/], paste the export lines it prints into another "
        f"terminal, then [cyan]{CONSOLE_COMMAND}[/] and open http://127.0.0.1:8321/",
        highlight=False,
    )


def _keep_running(console: Console, env: dict[str, str], wait: Callable[[], None] | None) -> None:
    """Print how to reach the local AWS, then wait (until Ctrl-C) before it stops."""
    from dispatch.local.dev import print_exports

    console.print("\n[bold]The local AWS stays up[/] until Ctrl-C.")
    print_exports(console, env, heading="to explore the dead letters")
    console.print(
        "then: dispatch dlq list; dispatch dlq show ID; dispatch status; "
        "dispatch dlq redrive --dry-run",
        highlight=False,
    )
    (wait or _until_interrupted)()


def _until_interrupted() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def _provision(aws: LocalAWS, console: Console) -> tuple[Any, Settings]:
    """Create the queue, DLQ and table from deploy/template.yaml; an SQS client and the
    settings that name them."""
    endpoint = Endpoint(region=aws.region, endpoint_url=aws.endpoint_url)
    sqs, dynamodb = sync_client("sqs", endpoint), sync_client("dynamodb", endpoint)
    resources = provision(sqs, dynamodb, prefix="demo")
    settings = resources.settings(region=aws.region, endpoint_url=aws.endpoint_url)
    console.print(
        f"Created queue [cyan]{resources.queue_url.rsplit('/', 1)[-1]}[/], dead-letter queue "
        f"[cyan]{resources.dlq_url.rsplit('/', 1)[-1]}[/] and table [cyan]{resources.table}[/] "
        "from deploy/template.yaml"
    )
    return sqs, settings


def _overloads_without_throttle(backend: Backend, *, calls: int, console: Console) -> int:
    """What the warehouse answers to ``calls`` calls at once, with no throttle: the 503s."""
    unthrottled = asyncio.run(_burst_without_throttle(backend.url, calls))
    backend.reset()
    console.print(
        f"Without a throttle, the same {calls} warehouse calls at once got "
        f"[red]{unthrottled} overload (503) answers[/]"
    )
    return unthrottled


def _enqueue(
    settings: Settings, sqs: Any, *, orders: int, counter: RequestCounter, console: Console
) -> tuple[int, float]:
    """Enqueue the workload in batches of 50, then a foreign producer's malformed messages;
    the tasks enqueued and the seconds it took."""
    from dispatch.local.example import workload

    messages = workload.messages(orders)
    queue = Queue(settings, counter=counter)
    started = time.perf_counter()
    with _progress(console) as progress:
        bar = progress.add_task("enqueue", total=len(messages))
        for start in range(0, len(messages), 50):
            chunk = messages[start : start + 50]
            queue.enqueue_many(chunk)
            progress.advance(bar, len(chunk))
    enqueue_s = time.perf_counter() - started
    for body in workload.FOREIGN_BODIES:
        sqs.send_message(QueueUrl=settings.queue_url, MessageBody=body)
    console.print(
        f"Enqueued {len(messages)} tasks in {enqueue_s:.2f} s, and "
        f"{len(workload.FOREIGN_BODIES)} malformed messages from a foreign producer"
    )
    return len(messages), enqueue_s


def _resource_reports(
    snapshots: tuple[ThrottleSnapshot, ...],
    seen: BackendStats,
    *,
    resource: str,
    unthrottled: int,
) -> tuple[ResourceReport, ...]:
    """The throttle's figures for ``resource`` beside what its backend saw."""
    return tuple(
        ResourceReport(
            name=snap.name,
            rate_limit_per_s=snap.configured_rate_per_s,
            achieved_rate_per_s=_achieved_rate(seen.arrivals),
            max_concurrency=snap.max_concurrency,
            peak_concurrency=seen.peak_in_flight,
            overloads=seen.overloads,
            overloads_without_throttle=unthrottled,
            waits=snap.waits,
            wait_total_s=snap.wait_total_s,
        )
        for snap in snapshots
        if snap.name == resource
    )


async def _burst_without_throttle(base_url: str, calls: int) -> int:
    """Fire ``calls`` requests at once, as unthrottled Lambda workers would; count 503s."""
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.get(f"{base_url}/work?ms=50") as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(calls)))
    return sum(1 for status in statuses if status == 503)


def _achieved_rate(arrivals: list[float]) -> float:
    """Requests per second between the first and the last arrival."""
    if len(arrivals) < 2:
        return 0.0
    return (len(arrivals) - 1) / (max(arrivals) - min(arrivals))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


async def _drain(
    settings: Settings, counter: RequestCounter, total: int, console: Console
) -> tuple[RunStats, tuple[ThrottleSnapshot, ...]]:
    async with async_clients(settings, counter=counter) as clients:
        dispatcher = Dispatcher(settings, clients=clients, registry=default_registry)
        await dispatcher.check()
        with _progress(console) as progress:
            bar = progress.add_task("dispatch", total=total)

            def finished() -> int:
                s = dispatcher.stats
                return s.succeeded + s.dead

            watcher = asyncio.create_task(_watch(progress, bar, finished))
            try:
                stats = await dispatcher.run(until_empty=True)
            finally:
                watcher.cancel()
            progress.update(bar, completed=finished())
        await dispatcher.runner.aclose()
        return stats, dispatcher.throttle_snapshots()


async def _watch(progress: Progress, bar: Any, finished: Callable[[], int]) -> None:
    while True:
        progress.update(bar, completed=finished())
        await asyncio.sleep(0.1)


def _check(
    stats: RunStats, expected: Any, total: int, reports: tuple[ResourceReport, ...]
) -> list[str]:
    problems = []
    for report in reports:
        if report.overloads:
            problems.append(f"{report.name}: {report.overloads} overloads despite the throttle")
        if report.max_concurrency is not None and report.peak_concurrency > report.max_concurrency:
            problems.append(
                f"{report.name}: {report.peak_concurrency} at once, over the cap of "
                f"{report.max_concurrency}"
            )
    if stats.succeeded + stats.dead != total:
        problems.append(
            f"{total} messages went in but {stats.succeeded} succeeded and {stats.dead} "
            "were dead-lettered: some were lost or ran twice"
        )
    for name in ("succeeded", "dead", "retried", "rejected"):
        got, want = getattr(stats, name), getattr(expected, name)
        if got != want:
            problems.append(f"{name}: {got}, expected {want}")
    return problems


def _summary(console: Console, result: DemoResult) -> None:
    """Print the outcome, each protected resource's figures, the AWS requests per task,
    and the problems found (or that there were none)."""
    console.print(_outcome_table(result.stats, enqueued=result.enqueued, foreign=result.foreign))
    for report in result.resources:
        console.print(_resource_table(report))
    console.print(_requests_table(result.requests, tasks=result.enqueued + result.foreign))
    if result.problems:
        for problem in result.problems:
            console.print(f"[bold red]problem:[/] {problem}")
    else:
        console.print("[bold green]Every task accounted for: none lost, none run twice.[/]")


def _outcome_table(stats: RunStats, *, enqueued: int, foreign: int) -> Table:
    """What became of the tasks: succeeded, retried, dead-lettered (and why), how fast."""
    table = Table(title="Dispatch demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("tasks enqueued", str(enqueued))
    table.add_row("foreign malformed messages", str(foreign))
    table.add_row("succeeded", f"[green]{stats.succeeded}[/]")
    table.add_row("retries (same message, backoff)", str(stats.retried))
    table.add_row("dead-lettered", f"[red]{stats.dead}[/]")
    for reason, count in sorted(stats.dead_reasons.items()):
        table.add_row(f"  reason: {reason}", str(count))
    table.add_row("duplicate deliveries skipped", str(stats.duplicates))
    table.add_row("peak tasks in flight", str(stats.peak_in_flight))
    table.add_row("drain wall time", f"{stats.wall_s:.2f} s")
    table.add_row(
        "drain throughput",
        f"{(stats.succeeded + stats.dead) / max(stats.wall_s, 1e-9):.0f} tasks/s",
    )
    return table


def _resource_table(report: ResourceReport) -> Table:
    """One protected resource as its backend saw it, beside the same calls unthrottled."""
    limit = f"{report.rate_limit_per_s:g}/s" if report.rate_limit_per_s else "no limit"
    cap = str(report.max_concurrency) if report.max_concurrency else "no cap"
    mean = report.wait_total_s / report.waits if report.waits else 0.0
    table = Table(
        title=f"Protected resource {report.name} (as its backend saw it)",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("rate achieved / limit", f"{report.achieved_rate_per_s:.1f}/s / {limit}")
    table.add_row("peak at once / cap", f"{report.peak_concurrency} / {cap}")
    table.add_row("overload answers (503)", f"[green]{report.overloads}[/]")
    table.add_row("  same calls without a throttle", f"[red]{report.overloads_without_throttle}[/]")
    table.add_row("tasks that waited for it", str(report.waits))
    table.add_row("  mean wait", f"{mean:.2f} s")
    return table


def _requests_table(requests: dict[tuple[str, str], int], *, tasks: int) -> Table:
    """The AWS requests actually sent, per service and action, and per task."""
    table = Table(title="AWS requests per task (counted, all phases)", title_justify="left")
    table.add_column("service")
    table.add_column("action")
    table.add_column("requests", justify="right")
    table.add_column("per task", justify="right")
    for (service, action), count in sorted(requests.items()):
        table.add_row(service, action, str(count), f"{count / tasks:.3f}")
    total = sum(requests.values())
    table.add_row("[bold]all[/]", "", f"[bold]{total}[/]", f"[bold]{total / tasks:.3f}[/]")
    return table
