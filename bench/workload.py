"""The benchmark's tasks, in a registry of their own.

``noop`` does nothing, so every figure measured with it is the framework's own
cost; ``noop_lean`` is the same task declared lean (``track_state=False``: SQS
only, no task record), for the lean mode's figures. ``probe`` notes when its
handler started, for the latency measurement: the producer passes the time it
called ``enqueue`` and the dispatcher process reports each probe's pair of times
when it exits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Final

from dispatch.core.envelope import Message
from dispatch.tasks.registry import Registry, task

__all__ = [
    "NOOP",
    "NOOP_LEAN",
    "PROBE",
    "TIMED",
    "noop_messages",
    "probe_message",
    "probe_starts",
    "registry",
    "returned_at",
    "timed",
]

registry: Final = Registry()
NOOP: Final = "bench.noop"
NOOP_LEAN: Final = "bench.noop_lean"
PROBE: Final = "bench.probe"
TIMED: Final = "bench.timed"

_starts_lock = threading.Lock()
_starts: list[tuple[float, float]] = []


@task(name=NOOP, registry=registry)
async def noop(n: int) -> None:
    """Nothing: the cost measured is the framework's."""


@task(name=NOOP_LEAN, registry=registry, track_state=False)
async def noop_lean(n: int) -> None:
    """Nothing, and no task record: the cost measured is the lean mode's."""


@task(name=PROBE, registry=registry)
async def probe(sent_at: float) -> None:
    """Note (sent_at, now): the producer's enqueue call and this handler's start."""
    started = time.time()
    with _starts_lock:
        _starts.append((sent_at, started))


def noop_messages(count: int, *, lean: bool = False) -> list[Message]:
    """``count`` no-op messages (``lean``: of the lean task), ready for ``enqueue_many``."""
    chosen = noop_lean if lean else noop
    return [chosen.message(n=n) for n in range(count)]


def probe_message(sent_at: float) -> Message:
    """A latency probe stamped with the time its enqueue starts."""
    return probe.message(sent_at=sent_at)


def probe_starts() -> list[tuple[float, float]]:
    """Every (sent_at, handler started) pair this process has seen, in start order."""
    with _starts_lock:
        return list(_starts)


_returns_lock = threading.Lock()
_returns: dict[str, float] = {}


@task(name=TIMED, registry=registry)
async def timed(token: str, work_s: float) -> dict[str, str]:
    """Work ``work_s``, note when the handler returns (by ``token``), return a small result."""
    await asyncio.sleep(work_s)
    with _returns_lock:
        _returns[token] = time.time()
    return {"token": token}


def returned_at(token: str) -> float | None:
    """When the ``timed`` handler of ``token`` returned (None: not yet, in this process)."""
    with _returns_lock:
        return _returns.get(token)
