"""One benchmark scenario end to end, with every process it starts accounted for.

For a :class:`Scenario` :func:`run_scenario` empties the emulator, provisions a
fresh queue, DLQ and table (a prefix of their own), enqueues enough tasks to keep
the resource saturated for the whole window, starts a backend and N dispatcher
processes (:mod:`bench.throttle.worker`), waits until every one is ready, says
``go`` to all at once, runs the window (halving the backend's capacity half-way
in an adaptive scenario), sends SIGTERM, and collects the backend's records and
each worker's result file into a :class:`RunData`.

Every wait is bounded, and :class:`WorkerGroup` is a context manager whose exit
terminates, then kills, whatever is still running and reaps it: however a
scenario ends (an error, Ctrl-C), no dispatcher outlives it. The workers also
stop by themselves when the harness's end of their stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal

import boto3
from botocore.config import Config

from bench.processes import send, stop_all
from bench.throttle import tasks
from dispatch.core import constants as c
from dispatch.core.config import Endpoint, Settings
from dispatch.core.envelope import Message
from dispatch.local.emulator import LocalAWS
from dispatch.local.example.backend import Backend, BackendStats
from dispatch.local.provision import Provisioned, provision
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import sync_clients

__all__ = [
    "process_env",
    "RunData",
    "Scenario",
    "ScenarioError",
    "WorkerGroup",
    "calibrate_emulator",
    "fresh_resources",
    "max_in_flight_for",
    "run_scenario",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SATURATION_FACTOR: Final = 1.2
MAX_IN_FLIGHT: Final = 64
"""Each worker's ``DispatcherOptions.max_in_flight`` (the default), or its share of the
rate when higher: a dispatcher holds about a second of work (claims on their way, waiters,
running tasks), so at 200/s 64 messages leave the throttle short of waiters
(measured: 173-193/s with 64, 198/s with 160 held)."""
READY_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 30.0
KILL_TIMEOUT_S: Final = 5.0
WORKER_SAFETY_MARGIN_S: Final = 60.0
"""A worker stops by itself this long after the window should have ended."""
_ENQUEUE_CHUNK: Final = 100
_ENQUEUE_CONCURRENCY: Final = 4
_LOG_TAIL_BYTES: Final = 2_000

Kind = Literal["accuracy", "cap", "adaptive"]


class ScenarioError(Exception):
    """A scenario could not run to the end (a worker failed to start or died)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One configuration: a resource, a backend and N dispatchers for ``seconds``."""

    name: str
    kind: Kind
    rate_per_s: float
    burst: int
    dispatchers: int
    seconds: float
    work_ms: int = 5
    max_concurrency: int | None = None
    capacity: int = 1000
    capacity_after: int | None = None  # adaptive: the capacity from half the window on
    track_state: bool = True  # False: lean tasks, no claim or record per task

    @property
    def tasks_to_enqueue(self) -> int:
        """Enough to keep the resource saturated for the whole window.

        ``rate x seconds x 1.2 + burst``, plus what the dispatchers may hold at
        once: a dispatcher hides the messages it cannot start within its horizon
        (for the backlog's duration, often past the end of a short window), so
        at 5 /s the first term alone ran the queue dry before the end.
        """
        saturating = math.ceil(self.rate_per_s * self.seconds * SATURATION_FACTOR) + self.burst
        return saturating + self.dispatchers * self.max_in_flight

    @property
    def max_in_flight(self) -> int:
        """Each dispatcher's ``max_in_flight``: see :func:`max_in_flight_for`."""
        return max_in_flight_for(self.rate_per_s, self.dispatchers)

    def worker_env(self, backend_url: str) -> dict[str, str]:
        """The ``BENCH_*`` variables :mod:`bench.throttle.tasks` reads."""
        return tasks.environment(
            rate_per_s=self.rate_per_s,
            burst=self.burst,
            max_concurrency=self.max_concurrency,
            backend_url=backend_url,
            work_ms=self.work_ms,
        )


def max_in_flight_for(rate_per_s: float, dispatchers: int) -> int:
    """Each dispatcher's ``max_in_flight``: :data:`MAX_IN_FLIGHT`, or its share of the rate."""
    return max(MAX_IN_FLIGHT, math.ceil(rate_per_s / dispatchers))


@dataclass(slots=True)
class RunData:
    """What one scenario produced, before any figure is computed."""

    scenario: Scenario
    enqueued: int
    enqueue_s: float
    go_at: float
    stop_at: float
    halved_at: float | None
    backend: BackendStats
    workers: list[dict[str, Any]]
    emulator_cpu_s: float | None
    harness_cpu_s: float
    machine_busy_s: float | None  # every process on the machine, over the window
    notes: list[str] = field(default_factory=list)


def run_scenario(
    aws: LocalAWS,
    scenario: Scenario,
    *,
    index: int,
    workdir: Path,
    template: Mapping[str, Any],
) -> RunData:
    """Run ``scenario`` on ``aws`` (emptied first); see the module docstring.

    ``template`` is deploy/template.yaml as loaded once at the start of the run,
    so that every scenario is provisioned from the same definitions.
    """
    resources, settings = fresh_resources(aws, f"bench-throttle-{index}", template=template)
    started = time.perf_counter()
    enqueued = enqueue(settings, scenario.tasks_to_enqueue, track_state=scenario.track_state)
    enqueue_s = time.perf_counter() - started

    with Backend.start(capacity=scenario.capacity) as backend:
        env = process_env(aws, resources, scenario.worker_env(backend.url))
        scenario_dir = workdir / f"{index:02d}-{scenario.name}"
        scenario_dir.mkdir(parents=True)
        with WorkerGroup(
            scenario.dispatchers,
            env=env,
            directory=scenario_dir,
            max_run_s=scenario.seconds + WORKER_SAFETY_MARGIN_S,
            max_in_flight=scenario.max_in_flight,
        ) as group:
            group.wait_ready(timeout_s=READY_TIMEOUT_S)
            backend.reset()
            emulator_cpu_before = process_cpu_s(aws.pid)
            harness_cpu_before = time.process_time()
            machine_before = machine_busy_s()
            go_at = group.go()
            halved_at = None
            halve_at = go_at + scenario.seconds / 2
            end_at = go_at + scenario.seconds
            while (now := time.time()) < end_at:
                group.check_running()
                if scenario.capacity_after is not None and halved_at is None and now >= halve_at:
                    backend.set_capacity(scenario.capacity_after)
                    halved_at = time.time()
                time.sleep(min(0.05, max(0.0, end_at - now)))
            stop_at = time.time()
            emulator_cpu_after = process_cpu_s(aws.pid)
            harness_cpu_s = time.process_time() - harness_cpu_before
            machine_after = machine_busy_s()
            notes = group.stop(timeout_s=STOP_TIMEOUT_S)
        workers = group.results()
        seen = backend.stats()

    emulator_cpu_s = (
        None
        if emulator_cpu_before is None or emulator_cpu_after is None
        else emulator_cpu_after - emulator_cpu_before
    )
    return RunData(
        scenario=scenario,
        enqueued=enqueued,
        enqueue_s=enqueue_s,
        go_at=go_at,
        stop_at=stop_at,
        halved_at=halved_at,
        backend=seen,
        workers=workers,
        emulator_cpu_s=emulator_cpu_s,
        harness_cpu_s=harness_cpu_s,
        machine_busy_s=(
            None
            if machine_before is None or machine_after is None
            else machine_after - machine_before
        ),
        notes=notes,
    )


def process_env(aws: LocalAWS, resources: Provisioned, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a dispatcher process: this one's, the local AWS, the
    provisioned resources, ``extra``, and the checkout on ``PYTHONPATH``."""
    return {
        **os.environ,
        **aws.env(),
        **resources.as_env(),
        **extra,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def fresh_resources(
    aws: LocalAWS, prefix: str, *, template: Mapping[str, Any]
) -> tuple[Provisioned, Settings]:
    """Empty the emulator and provision a queue, DLQ and table under ``prefix``."""
    aws.reset()
    clients = sync_clients(Endpoint(region=aws.region, endpoint_url=aws.endpoint_url))
    resources = provision(clients.sqs, clients.dynamodb, prefix=prefix, template=template)
    return resources, resources.settings(region=aws.region, endpoint_url=aws.endpoint_url)


def calibrate_emulator(
    aws: LocalAWS,
    *,
    template: Mapping[str, Any],
    seconds: float = 3.0,
    threads: int = 8,
) -> dict[str, Any]:
    """How many DynamoDB UpdateItems a second the emulator serves flat out.

    UpdateItem is most of a task's cost here (claim, settlement, leases), so
    this is the ceiling under every figure of the benchmark. ``threads`` boto3
    clients hammer distinct items for ``seconds``; the emulator's CPU over that
    time says whether it, or this process, was the limit.
    """
    aws.reset()
    clients = sync_clients(Endpoint(region=aws.region, endpoint_url=aws.endpoint_url))
    table = provision(
        clients.sqs, clients.dynamodb, prefix="bench-throttle-calibration", template=template
    ).table
    # One attempt per call and short timeouts: no hidden retries in the figure, and
    # a thread never outlives the measurement by sleeping in a retry loop.
    dynamodb = boto3.session.Session().client(
        "dynamodb",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=Config(
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=2,
            read_timeout=5,
            max_pool_connections=threads,
        ),
    )
    cpu_before, started = process_cpu_s(aws.pid), time.perf_counter()
    deadline = time.monotonic() + seconds

    def hammer(k: int) -> int:
        calls = 0
        while time.monotonic() < deadline:
            dynamodb.update_item(
                TableName=table,
                Key={c.TABLE_HASH_KEY: {"S": f"calibration#{k}"}},
                UpdateExpression="ADD calls :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
            calls += 1
        return calls

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="calibrate") as pool:
        calls = sum(pool.map(hammer, range(threads)))
    elapsed = time.perf_counter() - started
    cpu_after = process_cpu_s(aws.pid)
    cpu_pct = (
        None
        if cpu_before is None or cpu_after is None
        else round((cpu_after - cpu_before) / elapsed * 100, 1)
    )
    return {
        "update_item_per_s": round(calls / elapsed, 1),
        "emulator_cpu_pct_of_one_core": cpu_pct,
        "client_threads": threads,
        "seconds": round(elapsed, 2),
    }


def enqueue(settings: Settings, count: int, *, track_state: bool = True) -> int:
    """Enqueue ``count`` tasks through the public queue API, a few batches at a time.

    On asyncio rather than threads, so that an interruption (Ctrl-C, SIGTERM)
    cancels it at once instead of waiting for threads stuck in retries.
    """
    return asyncio.run(_enqueue(settings, count, track_state=track_state))


async def _enqueue(settings: Settings, count: int, *, track_state: bool) -> int:
    queue = Queue(settings)
    call = tasks.call_backend if track_state else tasks.call_backend_lean
    messages: list[Message] = [call.message(n) for n in range(count)]
    chunks = [messages[i : i + _ENQUEUE_CHUNK] for i in range(0, count, _ENQUEUE_CHUNK)]
    in_flight = asyncio.Semaphore(_ENQUEUE_CONCURRENCY)

    async def send(chunk: list[Message]) -> int:
        async with in_flight:
            return len(await queue.enqueue_many_async(chunk))

    try:
        return sum(await asyncio.gather(*(send(chunk) for chunk in chunks)))
    finally:
        await queue.aclose()


def machine_busy_s() -> float | None:
    """CPU seconds every core of this machine has spent busy since boot (Linux /proc)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    jiffies = [int(f) for f in fields]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)  # idle + iowait
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class _Worker:
    process: subprocess.Popen[bytes]
    ready: Path
    result: Path
    log: Path
    log_file: IO[bytes]


class WorkerGroup:
    """N dispatcher processes (:mod:`bench.throttle.worker`, or ``module``), started together.

    Use it as a context manager: on exit every worker still running is sent
    SIGTERM, then SIGKILL after :data:`KILL_TIMEOUT_S`, and reaped; its stdin,
    the worker's lifeline, is closed either way.
    """

    def __init__(
        self,
        count: int,
        *,
        env: dict[str, str],
        directory: Path,
        max_run_s: float,
        max_in_flight: int = MAX_IN_FLIGHT,
        extra_args: tuple[str, ...] = (),
        module: str = "bench.throttle.worker",
    ):
        self._workers: list[_Worker] = []
        try:
            for k in range(count):
                self._workers.append(
                    self._start(
                        k,
                        env=env,
                        directory=directory,
                        max_run_s=max_run_s,
                        max_in_flight=max_in_flight,
                        extra_args=extra_args,
                        module=module,
                    )
                )
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _start(
        k: int,
        *,
        env: dict[str, str],
        directory: Path,
        max_run_s: float,
        max_in_flight: int,
        extra_args: tuple[str, ...],
        module: str,
    ) -> _Worker:
        ready, result, log = (directory / f"worker-{k}.{ext}" for ext in ("ready", "json", "log"))
        log_file = log.open("wb")
        command = [
            sys.executable,
            "-m",
            module,
            "--ready",
            str(ready),
            "--result",
            str(result),
            "--max-run-s",
            f"{max_run_s:g}",
            "--max-in-flight",
            str(max_in_flight),
            *extra_args,
        ]
        try:
            process = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and our module
                command,
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=log_file,
                env=env,
                cwd=REPO_ROOT,
                # Its own session: Ctrl-C reaches the harness only, which then stops
                # the workers in order (they would stop on SIGINT too).
                start_new_session=True,
            )
        except OSError:
            log_file.close()
            raise
        return _Worker(process=process, ready=ready, result=result, log=log, log_file=log_file)

    def wait_ready(self, *, timeout_s: float) -> None:
        """Return once every worker has created its ready file; ScenarioError otherwise."""
        deadline = time.monotonic() + timeout_s
        while not all(w.ready.exists() for w in self._workers):
            self.check_running()
            if time.monotonic() >= deadline:
                raise ScenarioError(f"workers not ready within {timeout_s:g} s")
            time.sleep(0.05)

    def go(self) -> float:
        """Tell every worker to start; returns the time (epoch s) it was told."""
        at = time.time()
        for worker in self._workers:
            assert worker.process.stdin is not None
            worker.process.stdin.write(b"go\n")
            worker.process.stdin.flush()
        return at

    def wait_exited(self, *, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every worker to exit by itself; True when all did."""
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def check_running(self) -> None:
        """ScenarioError (with its log) if any worker has exited already."""
        for k, worker in enumerate(self._workers):
            code = worker.process.poll()
            if code is not None:
                raise ScenarioError(
                    f"worker {k} exited early with status {code}; its log ends with:\n"
                    f"{_tail(worker.log)}"
                )

    def stop(self, *, timeout_s: float) -> list[str]:
        """SIGTERM every worker, wait up to ``timeout_s`` in all; kill the rest.

        Returns a note for each worker that had to be killed.
        """
        processes = [worker.process for worker in self._workers]
        for process in processes:
            send(process, signal.SIGTERM)
        killed = stop_all(processes, grace_s=timeout_s, term_wait_s=None)
        note = "worker {} did not stop within {:g} s of SIGTERM: killed"
        return [note.format(k, timeout_s) for k in killed]

    def results(self) -> list[dict[str, Any]]:
        """Each worker's result file, or an error entry naming why there is none."""
        results = []
        for k, worker in enumerate(self._workers):
            try:
                results.append(json.loads(worker.result.read_text()))
            except (OSError, ValueError) as exc:
                results.append(
                    {
                        "error": f"worker {k}: no result ({exc}); exit status "
                        f"{worker.process.returncode}; log: {_tail(worker.log)}"
                    }
                )
        return results

    def close(self) -> None:
        """Stop (SIGTERM, then SIGKILL) and reap every worker; close its pipes and log."""
        stop_all(
            [worker.process for worker in self._workers], grace_s=0.0, term_wait_s=KILL_TIMEOUT_S
        )
        for worker in self._workers:
            worker.log_file.close()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-_LOG_TAIL_BYTES:]
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return data.decode("utf-8", "replace").strip() or "(empty)"
