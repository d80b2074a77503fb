"""The chaos run's handlers, and the ledger of every execution they record.

Each execution appends a ``start`` line before the work and an ``end`` line
after it (``ok``, ``transient`` or ``permanent``) to the ledger file of its
process: ``<CHAOS_LEDGER_DIR>/ledger-<pid>.log``, opened with O_APPEND and
written with one ``os.write`` per line, so a line is in the file the moment the
handler moves on, and a SIGKILL loses nothing already written. The ledger is
the framework's referee: it is written by the handler, not by Dispatch.

Line format (space-separated): ``start|end task_id attempt pid epoch_s [outcome]``.
A group's callback (:func:`gathered`) also writes, between the two,
``joined task_id attempt pid epoch_s group_no results``: the chaos group it was
made for and the results it received (compact JSON, no spaces).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Final

from dispatch import PermanentError, Retry, current_task, task
from dispatch.tasks.registry import Registry

__all__ = [
    "ENV_LEDGER_DIR",
    "TransientError",
    "child",
    "child_result",
    "gathered",
    "hold",
    "hostile",
    "registry",
    "stall",
    "work",
]

ENV_LEDGER_DIR: Final = "CHAOS_LEDGER_DIR"

registry = Registry()
"""The chaos tasks' own registry (the dispatcher processes run this one only)."""

_files: dict[str, int] = {}  # ledger path -> file descriptor, one per process and directory


class TransientError(Exception):
    """A failure that goes away on a later attempt."""


def _append(line: str) -> None:
    path = os.path.join(os.environ[ENV_LEDGER_DIR], f"ledger-{os.getpid()}.log")
    fd = _files.get(path)
    if fd is None:
        fd = _files[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, (line + "\n").encode())


@task(
    registry=registry,
    retry=Retry(max_attempts=8, base_delay_s=1.0, max_delay_s=2.0),
    timeout_s=5,
)
async def work(n: int, *, work_ms: int = 20, fail_times: int = 0, permanent: bool = False) -> int:
    """Work for ``work_ms``; fail the first ``fail_times`` attempts, or every attempt for
    good when ``permanent``; record the execution in the ledger either way."""
    context = current_task()
    head = f"{context.task_id} {context.attempt} {os.getpid()}"
    _append(f"start {head} {time.time():.6f}")
    await asyncio.sleep(work_ms / 1000)
    if permanent:
        _append(f"end {head} {time.time():.6f} permanent")
        raise PermanentError(f"task {n} can never succeed")
    if context.attempt <= fail_times:
        _append(f"end {head} {time.time():.6f} transient")
        raise TransientError(f"task {n}: attempt {context.attempt} of {fail_times} failing")
    _append(f"end {head} {time.time():.6f} ok")
    return n


@task(
    registry=registry,
    retry=Retry(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0),
    timeout_s=6,
)
def hold(release_path: str) -> str:
    """Block until the file ``release_path`` exists (a test holds an attempt open with it);
    a sync handler, so it blocks a worker thread, not the dispatcher's loop."""
    context = current_task()
    head = f"{context.task_id} {context.attempt} {os.getpid()}"
    _append(f"start {head} {time.time():.6f}")
    while not Path(release_path).exists():
        time.sleep(0.02)
    _append(f"end {head} {time.time():.6f} ok")
    return release_path


class Unprintable(Exception):
    """An exception whose ``str()`` raises: handler code is hostile input."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


class Unrepresentable:
    """A return value JSON cannot carry and whose ``repr()`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this result raises")


@task(
    registry=registry,
    retry=Retry(max_attempts=8, base_delay_s=1.0, max_delay_s=2.0),
    timeout_s=5,
    store_result=False,
)
async def hostile(n: int) -> Unrepresentable:
    """Raise an exception whose ``str()`` raises on the first attempt (a retryable
    failure), then return a value JSON cannot carry and whose ``repr()`` raises (a
    success: the task keeps no result, ``store_result=False``, so its attempt succeeds
    whatever it returns). Neither may escape the attempt."""
    context = current_task()
    head = f"{context.task_id} {context.attempt} {os.getpid()}"
    _append(f"start {head} {time.time():.6f}")
    await asyncio.sleep(0.005)
    if context.attempt == 1:
        _append(f"end {head} {time.time():.6f} transient")
        raise Unprintable(n)
    _append(f"end {head} {time.time():.6f} ok")
    return Unrepresentable()


STALL_TIMEOUT_S: Final = 1.0


@task(
    registry=registry,
    retry=Retry(max_attempts=8, base_delay_s=1.0, max_delay_s=2.0),
    timeout_s=STALL_TIMEOUT_S,
)
def stall(n: int, *, stuck_s: float = 3.0) -> int:
    """A sync handler stuck (on a socket, say) far past its timeout on its first
    attempt: its thread cannot be stopped and runs on while the attempt is reported
    timed out and retried; later attempts return at once. The stuck run ends in the
    ledger as ``timed_out`` (its result is discarded)."""
    context = current_task()
    head = f"{context.task_id} {context.attempt} {os.getpid()}"
    _append(f"start {head} {time.time():.6f}")
    if context.attempt == 1:
        time.sleep(stuck_s)
        _append(f"end {head} {time.time():.6f} timed_out")
        return n
    _append(f"end {head} {time.time():.6f} ok")
    return n


CHILD_STRIDE: Final = 1000
"""Room for every child's index in its result (a group holds at most 200)."""


def child_result(group_no: int, index: int) -> int:
    """What child ``index`` of chaos group ``group_no`` returns: distinct per child, so
    a callback given its results out of order, or another group's, is seen."""
    return group_no * CHILD_STRIDE + index


@task(
    registry=registry,
    retry=Retry(max_attempts=8, base_delay_s=1.0, max_delay_s=2.0),
    timeout_s=5,
)
async def child(group_no: int, index: int, *, work_ms: int = 20, fail_times: int = 0) -> int:
    """A group's child: work for ``work_ms``, fail the first ``fail_times`` attempts,
    then return :func:`child_result`; recorded in the ledger like :func:`work`."""
    context = current_task()
    head = f"{context.task_id} {context.attempt} {os.getpid()}"
    _append(f"start {head} {time.time():.6f}")
    await asyncio.sleep(work_ms / 1000)
    if context.attempt <= fail_times:
        _append(f"end {head} {time.time():.6f} transient")
        raise TransientError(f"group {group_no} child {index}: attempt {context.attempt} failing")
    _append(f"end {head} {time.time():.6f} ok")
    return child_result(group_no, index)


@task(
    registry=registry,
    retry=Retry(max_attempts=8, base_delay_s=1.0, max_delay_s=2.0),
    timeout_s=5,
)
async def gathered(results: list[Any], group_no: int) -> int:
    """A group's callback: record the chaos group it was made for and the results it
    received (``joined`` line), between its ``start`` and ``end`` lines."""
    context = current_task()
    head = f"{context.task_id} {context.attempt} {os.getpid()}"
    _append(f"start {head} {time.time():.6f}")
    received = json.dumps(results, separators=(",", ":"))
    _append(f"joined {head} {time.time():.6f} {group_no} {received}")
    await asyncio.sleep(0.01)
    _append(f"end {head} {time.time():.6f} ok")
    return len(results)
