"""The chaos harness: enqueue, run a fleet under faults and kills, drain, and judge.

:func:`run_chaos` enqueues ``tasks`` chaos tasks (most succeed at once, some fail
transiently and succeed on a retry, a few fail for good) and, between them, ``groups``
groups of ``group_size`` children joined by a callback (``dispatch.group([...]).then(...)``),
starts ``dispatchers``
processes (:mod:`bench.chaos.dispatcher`) in which ``fault_rate`` of the AWS calls
fail (:mod:`dispatch.local.faults`), and SIGKILLs a random dispatcher at random
points of the run (each at a random share of the work done, so every kill lands
while tasks are in flight), restarting it at once. It waits until the queue is
empty with no message in flight or delayed and every task's record is final
(the groups' callbacks too, given ``callback_settle_s`` more: one never sent is lost),
then judges the run from three sources that do not trust each other: the
DynamoDB records, the dead-letter queue and the handlers' own ledger.

Every wait has a bound, and :class:`Fleet` is a context manager that kills and
reaps whatever it started, however the run ends.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import dispatch
from bench.chaos import tasks
from bench.processes import close_lifelines, kill, stop_all
from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.local.faults import ENV_FAULTS, FaultKind
from dispatch.ops.dlq import iter_dead_letters
from dispatch.producer.compose import TaskMessage
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, sync_clients
from dispatch.store.state import Status, TaskRecord

__all__ = ["FULL", "QUICK", "ChaosConfig", "ChaosError", "Fleet", "judge", "run_chaos"]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
_POLL_S: Final = 0.1
_EMPTY_CHECKS: Final = 2  # consecutive empty looks at the queue before judging
_LOG_TAIL_BYTES: Final = 2_000


class ChaosError(Exception):
    """The run could not go on (a dispatcher could not start, the drain timed out)."""


RECORD_TIME_RESOLUTION_S: Final = 0.001
"""Times in task records are kept to the millisecond (docs/formats.md)."""


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """One chaos scenario."""

    tasks: int = 3000
    dispatchers: int = 3
    fault_rate: float = 0.05
    kills: int = 10
    transient_share: float = 0.15  # fail one or two attempts, then succeed
    permanent_share: float = 0.02  # raise PermanentError: dead-lettered
    hostile_share: float = 0.01  # a str() that raises, then a result whose repr() raises
    stall_share: float = 0.01  # a sync handler stuck past its timeout on its first attempt
    min_work_ms: int = 5
    max_work_ms: int = 60
    visibility_s: int = 6
    lease_grace_s: float = 5.0
    max_in_flight: int = 32
    seed: int = 20261130
    max_drain_s: float = 900.0
    groups: int = 200  # dispatch.group([...]).then(callback), enqueued among the tasks
    group_size: int = 20  # children per group (transient_share of them fail once or twice)
    callback_settle_s: float = 30.0  # once drained, how long callbacks may take to finish
    fault_kinds: tuple[str, ...] = tuple(k.value for k in FaultKind)


FULL: Final = ChaosConfig()
QUICK: Final = ChaosConfig(tasks=300, kills=2, max_drain_s=120.0, groups=20, group_size=10)


@dataclass(slots=True)
class Kill:
    """One SIGKILL: which process, when, and how far the work was."""

    pid: int
    at: float
    executions_ended: int


@dataclass(slots=True)
class Execution:
    """One run of a handler, from the ledger."""

    task_id: str
    attempt: int
    pid: int
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    group_no: int | None = None  # a callback's: the chaos group it was made for
    received: list[Any] | None = None  # a callback's: the results it was given


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One chaos group: its number, its children's task ids in order, and the results
    its callback must receive."""

    group_no: int
    children: tuple[str, ...]
    expected: list[Any]


@dataclass(slots=True)
class RunLog:
    """What happened during the run, before any judging."""

    enqueued: dict[str, str]  # task id -> plan ("ok", "transient", "permanent", "child", ...)
    groups: dict[str, GroupPlan] = field(default_factory=dict)  # callback task id -> its group
    kills: list[Kill] = field(default_factory=list)
    restarts: int = 0
    started_at: float = 0.0
    drained_at: float = 0.0


# --- the fleet ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Process:
    process: subprocess.Popen[bytes]
    ready: Path
    log: Path
    log_file: IO[bytes]


class Fleet:
    """Dispatcher processes that can be killed and replaced; all reaped on exit."""

    def __init__(self, *, env: Mapping[str, str], workdir: Path, config: ChaosConfig) -> None:
        self._env = dict(env)
        self.workdir = workdir
        self._config = config
        self._started = 0
        self.live: list[_Process] = []
        self.dead: list[_Process] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> _Process:
        """Start one more dispatcher (not waiting for it to be ready)."""
        n = self._started
        self._started += 1
        ready, log = self.workdir / f"ready-{n}", self.workdir / f"dispatcher-{n}.log"
        env = dict(self._env)
        if env.get(ENV_FAULTS):
            faults = json.loads(env[ENV_FAULTS])
            faults["seed"] = self._config.seed + n  # each process its own draws
            env[ENV_FAULTS] = json.dumps(faults)
        log_file = log.open("wb")
        command = [
            sys.executable,
            "-m",
            "bench.chaos.dispatcher",
            "--ready",
            str(ready),
            "--visibility-s",
            str(self._config.visibility_s),
            "--lease-grace-s",
            str(self._config.lease_grace_s),
            "--max-in-flight",
            str(self._config.max_in_flight),
        ]
        try:
            process = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and our module
                command,
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        except OSError:
            log_file.close()
            raise
        started = _Process(process=process, ready=ready, log=log, log_file=log_file)
        self.live.append(started)
        return started

    def wait_ready(self, *, timeout_s: float) -> None:
        """Return once every live dispatcher is ready; ChaosError otherwise."""
        deadline = time.monotonic() + timeout_s
        while not all(p.ready.exists() for p in self.live):
            self.check_running()
            if time.monotonic() >= deadline:
                raise ChaosError(f"dispatchers not ready within {timeout_s:g} s")
            time.sleep(0.05)

    def check_running(self) -> None:
        """ChaosError (with its log) if a dispatcher exited by itself."""
        for p in self.live:
            if p.process.poll() is not None:
                raise ChaosError(
                    f"dispatcher {p.process.pid} exited with status {p.process.returncode}; "
                    f"its log ends with:\n{_tail(p.log)}"
                )

    def kill_one(self, rng: random.Random) -> int:
        """SIGKILL a random ready dispatcher (any live one if none is ready yet); its pid."""
        ready = [p for p in self.live if p.ready.exists()] or self.live
        return self.kill_one_process(rng.choice(ready))

    def kill_one_process(self, victim: _Process) -> int:
        """SIGKILL ``victim`` (a live dispatcher of this fleet) and reap it; its pid."""
        kill(victim.process)
        close_lifelines([victim.process])
        self.live.remove(victim)
        self.dead.append(victim)
        return victim.process.pid

    def close(self) -> None:
        """Close every lifeline, wait a bounded time, kill the rest; reap all."""
        stop_all([p.process for p in self.live], grace_s=STOP_TIMEOUT_S, term_wait_s=None)
        for p in self.live + self.dead:
            p.log_file.close()
        self.dead.extend(self.live)
        self.live.clear()


# --- the run -------------------------------------------------------------------------------


def plan_tasks(config: ChaosConfig, rng: random.Random) -> list[tuple[Any, str]]:
    """The messages to enqueue, each with its plan ("ok", "transient", "permanent",
    "hostile" or "stall")."""
    planned = []
    for n in range(config.tasks):
        draw = rng.random()
        work_ms = rng.randint(config.min_work_ms, config.max_work_ms)
        hostile_until = config.permanent_share + config.transient_share + config.hostile_share
        if draw < config.permanent_share:
            planned.append((tasks.work.message(n, work_ms=work_ms, permanent=True), "permanent"))
        elif draw < config.permanent_share + config.transient_share:
            fail_times = rng.choice((1, 2))
            message = tasks.work.message(n, work_ms=work_ms, fail_times=fail_times)
            planned.append((message, "transient"))
        elif draw < hostile_until:
            planned.append((tasks.hostile.message(n), "hostile"))
        elif draw < hostile_until + config.stall_share:
            planned.append((tasks.stall.message(n), "stall"))
        else:
            planned.append((tasks.work.message(n, work_ms=work_ms), "ok"))
    return planned


@dataclass(frozen=True, slots=True)
class PlannedGroup:
    """A group to enqueue: its children's messages, its callback's, what it must get."""

    group_no: int
    children: list[TaskMessage]
    callback: Any  # gathered.message(group_no=...): a message awaiting the results
    expected: list[Any]


def plan_groups(config: ChaosConfig, rng: random.Random) -> list[PlannedGroup]:
    """``groups`` groups of ``group_size`` children (``transient_share`` of them fail
    once or twice before succeeding) and a callback each."""
    planned = []
    for group_no in range(config.groups):
        children = []
        for index in range(config.group_size):
            work_ms = rng.randint(config.min_work_ms, config.max_work_ms)
            fail_times = rng.choice((1, 2)) if rng.random() < config.transient_share else 0
            children.append(
                tasks.child.message(group_no, index, work_ms=work_ms, fail_times=fail_times)
            )
        expected = [tasks.child_result(group_no, i) for i in range(config.group_size)]
        callback = tasks.gathered.message(group_no=group_no)
        planned.append(PlannedGroup(group_no, children, callback, expected))
    return planned


def enqueue_all(queue: Queue, planned: list[tuple[Any, str]], groups: list[PlannedGroup]) -> RunLog:
    """Enqueue the tasks with the groups spread evenly among them (each group after its
    share of the tasks); the run's log of what went out."""
    run = RunLog(enqueued={})
    bounds = [len(planned) * k // (len(groups) + 1) for k in range(len(groups) + 2)]
    for k in range(len(groups) + 1):
        part = planned[bounds[k] : bounds[k + 1]]
        ids = queue.enqueue_many([message for message, _ in part])
        run.enqueued.update(zip(ids, (plan for _, plan in part), strict=True))
        if k == len(groups):
            break
        made = groups[k]
        handle = dispatch.group(made.children, queue=queue).then(made.callback)
        children = tuple(message.task_id for message in made.children)
        run.enqueued.update(dict.fromkeys(children, "child"))
        run.groups[handle.id] = GroupPlan(made.group_no, children, made.expected)
    return run


def run_chaos(
    config: ChaosConfig,
    *,
    settings: Settings,
    env: Mapping[str, str],
    workdir: Path,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run ``config`` on the queue, DLQ and table of ``settings``; the judged figures.

    ``env`` is the environment the dispatchers get (the AWS endpoint and the
    ``DISPATCH_*`` variables); ``workdir`` receives the ledger, the fault log and
    each dispatcher's log.
    """
    rng = random.Random(config.seed)
    planned = plan_tasks(config, rng)
    groups = plan_groups(config, rng)
    queue = Queue(settings)
    try:
        run = enqueue_all(queue, planned, groups)
    finally:
        queue.close()
    say(f"enqueued {len(run.enqueued)} tasks ({len(run.groups)} groups among them)")
    fault_log = workdir / "faults.log"
    child_env = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        tasks.ENV_LEDGER_DIR: str(workdir),
        ENV_FAULTS: json.dumps(
            {"rate": config.fault_rate, "kinds": list(config.fault_kinds), "log": str(fault_log)}
        ),
    }
    executions = len(run.enqueued) + len(run.groups)  # at least: one per task and callback
    kill_points = sorted(int(rng.uniform(0.05, 0.85) * executions) for _ in range(config.kills))
    clients = sync_clients(settings)
    try:
        with Fleet(env=child_env, workdir=workdir, config=config) as fleet:
            for _ in range(config.dispatchers):
                fleet.start()
            fleet.wait_ready(timeout_s=READY_TIMEOUT_S)
            run.started_at = time.time()
            say(f"{config.dispatchers} dispatchers running")
            _chaos_until_drained(
                config,
                fleet,
                run=run,
                kill_points=kill_points,
                rng=rng,
                clients=clients,
                settings=settings,
                say=say,
            )
            run.drained_at = time.time()
        say("drained; judging")
        return judge(config, run, clients, settings, workdir)
    finally:
        clients.sqs.close()
        clients.dynamodb.close()


def _chaos_until_drained(
    config: ChaosConfig,
    fleet: Fleet,
    *,
    run: RunLog,
    kill_points: list[int],
    rng: random.Random,
    clients: SyncClients,
    settings: Settings,
    say: Callable[[str], None],
) -> None:
    ledger = LedgerTail(fleet.workdir)
    deadline = time.monotonic() + config.max_drain_s
    empty_looks, next_look = 0, 0.0
    settle_until: float | None = None  # drained, tasks final: the callbacks' last chance
    while True:
        if time.monotonic() >= deadline:
            raise ChaosError(f"not drained within {config.max_drain_s:g} s")
        ended = ledger.ended()
        while kill_points and ended >= kill_points[0]:
            kill_points.pop(0)
            pid = fleet.kill_one(rng)
            run.kills.append(Kill(pid=pid, at=time.time(), executions_ended=ended))
            fleet.start()
            run.restarts += 1
            say(f"SIGKILL {pid} after {ended} executions; restarted")
        fleet.check_running()
        if time.monotonic() >= next_look:
            next_look = time.monotonic() + 1.0
            if _queue_empty(clients, settings.queue_url) and not kill_points:
                empty_looks += 1
                if empty_looks >= _EMPTY_CHECKS:
                    tasks_open, callbacks_open = _not_final(clients, settings, run)
                    if not tasks_open and not callbacks_open:
                        return
                    if not tasks_open:
                        # A callback is sent before its last child's message is deleted, so
                        # an empty queue with every task final leaves none on its way: wait
                        # a bounded time, then judge the rest lost.
                        settle_until = settle_until or time.monotonic() + config.callback_settle_s
                        if time.monotonic() >= settle_until:
                            say(f"{callbacks_open} callbacks not final; judging them as they are")
                            return
            else:
                empty_looks, settle_until = 0, None
        time.sleep(_POLL_S)


def _queue_empty(clients: SyncClients, url: str) -> bool:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    counts = clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return all(int(counts.get(name, "0")) == 0 for name in names)


def _not_final(clients: SyncClients, settings: Settings, run: RunLog) -> tuple[int, int]:
    """How many enqueued tasks, and how many callbacks, have no final record yet."""
    records = read_records(clients, settings)

    def open_among(task_ids: Iterable[str]) -> int:
        return sum(1 for t in task_ids if t not in records or not records[t].status.is_final)

    return open_among(run.enqueued), open_among(run.groups)


class LedgerTail:
    """Counts ``end`` lines in the ledger files of a directory as they grow."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._offsets: dict[Path, int] = {}
        self._ended = 0

    def ended(self) -> int:
        """Executions that have ended so far, in every process."""
        for path in self._directory.glob("ledger-*.log"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(complete)
            self._ended += complete.count(b"\nend ") + int(complete.startswith(b"end "))
        return self._ended


# --- judging -------------------------------------------------------------------------------


def read_records(clients: SyncClients, settings: Settings) -> dict[str, TaskRecord]:
    """Every task record in the table, by task id."""
    records: dict[str, TaskRecord] = {}
    paginator = clients.dynamodb.get_paginator("scan")
    for page in paginator.paginate(
        TableName=settings.table,
        ConsistentRead=True,
        FilterExpression="begins_with(pk, :prefix)",
        ExpressionAttributeValues={":prefix": {"S": c.TASK_KEY_PREFIX}},
    ):
        for item in page.get("Items", []):
            record = TaskRecord.from_item(item)
            records[record.task_id] = record
    return records


def read_ledger(directory: Path) -> dict[str, list[Execution]]:
    """Every execution the handlers recorded, by task id, in start order (a callback's
    with the group and results it recorded)."""
    open_runs: dict[tuple[str, int, int], Execution] = {}
    by_task: dict[str, list[Execution]] = defaultdict(list)
    for path in sorted(directory.glob("ledger-*.log")):
        for line in path.read_text().splitlines():
            parts = line.split(maxsplit=6)
            if len(parts) < 5:
                continue  # a line cut by a SIGKILL mid-write (os.write makes this unlikely)
            what, task_id, attempt, pid, at = parts[:5]
            key = (task_id, int(attempt), int(pid))
            if what == "start":
                execution = Execution(task_id, int(attempt), int(pid), float(at))
                open_runs[key] = execution
                by_task[task_id].append(execution)
            elif what == "end" and key in open_runs:
                execution = open_runs.pop(key)
                execution.ended_at = float(at)
                execution.outcome = parts[5] if len(parts) > 5 else None
            elif what == "joined" and key in open_runs and len(parts) == 7:
                execution = open_runs[key]
                execution.group_no = int(parts[5])
                execution.received = json.loads(parts[6])
    for executions in by_task.values():
        executions.sort(key=lambda e: e.started_at)
    return by_task


def read_faults(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Injected faults by kind and by operation, from the shared fault log."""
    kinds: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                kinds[parts[2]] += 1
                operations[parts[3]] += 1
    return kinds, operations


def judge(
    config: ChaosConfig,
    run: RunLog,
    clients: SyncClients,
    settings: Settings,
    workdir: Path,
) -> dict[str, Any]:
    """The figures of a finished run (docs/reliability.md defines each)."""
    records = read_records(clients, settings)
    letters: dict[str, str] = {}
    letter_copies = 0
    for entry in iter_dead_letters(clients, settings):
        letter_copies += 1
        if entry.task_id is not None:
            letters[entry.task_id] = entry.reason
    ledger = read_ledger(workdir)
    kinds, operations = read_faults(workdir / "faults.log")
    wall_s = max(0.0, run.drained_at - run.started_at)
    return {
        "enqueued": len(run.enqueued),
        "faults": sum(kinds.values()),
        "kills": len(run.kills),
        **score(run, records=records, letters=letters, ledger=ledger),
        "planned": dict(Counter(run.enqueued.values())),
        "executions": sum(len(e) for e in ledger.values()),
        "dead_letter_copies": letter_copies,
        "faults_by_kind": dict(sorted(kinds.items())),
        "faults_by_operation": dict(operations.most_common()),
        "restarts": run.restarts,
        "kill_points": [k.executions_ended for k in run.kills],
        "wall_s": round(wall_s, 1),
        "tasks_per_s": round(len(run.enqueued) / wall_s, 1) if wall_s else None,
        "config": asdict(config),
    }


def score(
    run: RunLog,
    *,
    records: Mapping[str, TaskRecord],
    letters: Mapping[str, str],
    ledger: Mapping[str, list[Execution]],
) -> dict[str, Any]:
    """Judge every enqueued task from its record, its dead letter (task id -> reason)
    and its executions in the ledger; then every group's callback (:func:`score_groups`)."""
    kill_at = {k.pid: k.at for k in run.kills}

    succeeded = dead = lost = rerun_after_success = unexpected_dead = concurrent = 0
    after_return = interrupted = without_crash = stuck = 0
    lost_ids: list[str] = []
    reruns: list[dict[str, Any]] = []
    dead_reasons: Counter[str] = Counter()
    for task_id, plan in run.enqueued.items():
        record = records.get(task_id)
        executions = ledger.get(task_id, [])
        if plan == "stall":
            # The first attempt is stuck past its timeout by design: its thread runs on
            # beside the retry (Python cannot stop it) and is judged apart.
            stuck += sum(1 for e in executions if e.attempt == 1)
            executions = [e for e in executions if e.attempt != 1]
        ok_runs = [e for e in executions if e.outcome == "ok"]
        if record is not None and record.status is Status.SUCCEEDED and ok_runs:
            succeeded += 1
            finished = record.finished_at or 0.0
            # finished_at is stored to the millisecond: a run of a handler that took
            # less than that may start after its own rounded finish.
            if any(e.started_at > finished + RECORD_TIME_RESOLUTION_S for e in executions):
                rerun_after_success += 1
                reruns.append(
                    {
                        "task_id": task_id,
                        "plan": plan,
                        "finished_at": finished,
                        "executions": [
                            [e.attempt, e.pid, e.started_at, e.ended_at, e.outcome]
                            for e in executions
                        ],
                    }
                )
        elif record is not None and record.status is Status.DEAD and task_id in letters:
            dead += 1
            dead_reasons[letters[task_id]] += 1
            unexpected_dead += plan != "permanent"
        else:
            lost += 1
            lost_ids.append(task_id)
        for earlier in executions[:-1]:
            if earlier.pid not in kill_at:
                # Ran again, yet its process was never killed: not the crash window.
                without_crash += earlier.outcome in ("ok", None)
            elif earlier.outcome == "ok":
                after_return += 1
            elif earlier.outcome is None:
                interrupted += 1
        concurrent += _overlaps(executions, kill_at)

    return {
        "succeeded": succeeded,
        "dead": dead,
        "lost": lost,
        "rerun_after_success": rerun_after_success,
        "repeated_in_window": after_return + interrupted,
        "repeated_detail": {
            "handler_returned_before_the_crash": after_return,
            "handler_interrupted_by_the_crash": interrupted,
        },
        "repeated_without_crash": without_crash,
        "dead_reasons": dict(sorted(dead_reasons.items())),
        "unexpected_dead": unexpected_dead,
        "concurrent_executions": concurrent,
        "stuck_sync_runs": stuck,
        "lost_task_ids": lost_ids[:20],
        "reruns_after_success": reruns[:20],
        **score_groups(run, records=records, ledger=ledger),
    }


def score_groups(
    run: RunLog,
    *,
    records: Mapping[str, TaskRecord],
    ledger: Mapping[str, list[Execution]],
) -> dict[str, Any]:
    """Judge every group's callback: it ran once every child succeeded, once, with its
    own group's results in the children's order.

    A callback run again because a SIGKILL fell between its start and the record of
    its success is the at-least-once window every task has (``repeated_in_window``):
    it is counted apart, in ``callbacks_repeated_in_window``. ``callbacks_repeated``
    counts the rest: a rerun after an earlier run in a process that was not killed,
    a run that started after the callback's recorded success, or two runs at once
    (what a callback message sent twice and not dropped by the claim would cause).
    """
    kill_at = {k.pid: k.at for k in run.kills}
    ran = lost = repeated = in_window = wrong = incomplete = 0
    lost_ids: list[str] = []
    repeats: list[dict[str, Any]] = []
    wrongs: list[dict[str, Any]] = []
    for callback_id, made in run.groups.items():
        record = records.get(callback_id)
        executions = ledger.get(callback_id, [])
        succeeded = _succeeded(record)
        ran += any(e.outcome == "ok" for e in executions)
        if not all(_succeeded(records.get(child)) for child in made.children):
            incomplete += 1  # a child lost or dead: judged among the tasks
        elif not succeeded or not any(e.outcome == "ok" for e in executions):
            lost += 1
            lost_ids.append(callback_id)
        received = [e for e in executions if e.received is not None or e.outcome == "ok"]
        if any(e.group_no != made.group_no or e.received != made.expected for e in received):
            wrong += 1
            wrongs.append(
                {
                    "callback_id": callback_id,
                    "group_no": made.group_no,
                    "expected": made.expected,
                    "received": [[e.group_no, e.received] for e in received],
                }
            )
        if len(executions) < 2:
            continue
        finished = record.finished_at if record is not None and succeeded else None
        after_success = finished is not None and any(
            e.started_at > finished + RECORD_TIME_RESOLUTION_S for e in executions
        )
        unexplained = any(
            e.pid not in kill_at and e.outcome in ("ok", None) for e in executions[:-1]
        )
        if after_success or unexplained or _overlaps(executions, kill_at):
            repeated += 1
            repeats.append(
                {
                    "callback_id": callback_id,
                    "group_no": made.group_no,
                    "finished_at": finished,
                    "executions": [
                        [e.attempt, e.pid, e.started_at, e.ended_at, e.outcome] for e in executions
                    ],
                }
            )
        else:
            in_window += 1
    return {
        "groups": len(run.groups),
        "callbacks_run": ran,
        "callbacks_lost": lost,
        "callbacks_repeated": repeated,
        "callbacks_repeated_in_window": in_window,
        "callbacks_wrong_results": wrong,
        "groups_incomplete": incomplete,
        "lost_callback_ids": lost_ids[:20],
        "repeated_callbacks": repeats[:20],
        "wrong_callbacks": wrongs[:20],
    }


def _succeeded(record: TaskRecord | None) -> bool:
    return record is not None and record.status is Status.SUCCEEDED


def _overlaps(executions: list[Execution], kill_at: Mapping[int, float]) -> int:
    """Executions of one task that started while an earlier one was still running (a
    killed process's unfinished execution ends at its kill)."""
    spans = sorted(
        (e.started_at, e.ended_at if e.ended_at is not None else kill_at.get(e.pid, e.started_at))
        for e in executions
    )
    overlaps, running_until = 0, float("-inf")
    for start, end in spans:
        overlaps += start < running_until
        running_until = max(running_until, end)
    return overlaps


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-_LOG_TAIL_BYTES:]
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return data.decode("utf-8", "replace").strip() or "(empty)"
