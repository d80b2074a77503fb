"""The in-process worker pool: asyncio for async handlers, threads for sync ones.

The dispatcher hands it one task at a time with :meth:`WorkerPool.run` (or one
micro-batch with :meth:`WorkerPool.run_batch`, which takes one slot); the pool
bounds how many attempts run at once (``max_workers``) and reports outcomes. It
never touches SQS or DynamoDB.

Stuck sync handlers. Python cannot stop a thread: a sync handler that runs past
its timeout keeps its thread after its attempt was reported failed (a handler
blocked on a socket may keep it for ever). The threads are
:class:`~dispatch_workers.threads.HandlerThreads`, which keep ``thread_workers`` (by default
``max_workers``) threads free for new work: a thread left running by an attempt
that ended without it (timed out, or released by the dispatcher) is *stuck*; it
is counted (:attr:`WorkerPool.stuck_threads`), logged (``handler_thread_stuck``
with the task, its id and how long it has run) and replaced by a new thread, up
to ``max_stuck_threads`` extra threads (by default as many as
``thread_workers``). Past that bound the stuck threads eat into the pool's
capacity and :attr:`WorkerPool.healthy` turns false (``handler_threads_over_limit``
is logged): only a new process frees those threads, so the process should stop
and let its supervisor start another. A stuck handler that ends after all gives
its thread back (``handler_thread_freed``). Waiting for a free thread never
counts against a task's ``timeout_s``: its clock starts when its handler starts
(:mod:`dispatch_workers.runtime`).

Shutdown is bounded: :meth:`WorkerPool.aclose` waits up to ``grace_s``
(:data:`SHUTDOWN_GRACE_S` by default) for the handlers still running in
threads, then abandons them, logging how many and for which tasks
(``handler_threads_abandoned``), and returns. The threads are daemon threads, so
an abandoned one never keeps the process from exiting (the interpreter joins a
``ThreadPoolExecutor``'s threads at exit, which would hang on a stuck handler).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Protocol

import structlog

from dispatch.core.context import BatchContext, TaskContext
from dispatch.core.outcome import Outcome
from dispatch.tasks.registry import TaskSpec
from dispatch_workers.runtime import run_attempt, run_batch_attempt
from dispatch_workers.threads import HandlerThreads

__all__ = ["SHUTDOWN_GRACE_S", "TaskRunner", "WorkerPool"]

log = structlog.get_logger("dispatch_workers.pool")

SHUTDOWN_GRACE_S: Final = 10.0
"""How long :meth:`WorkerPool.aclose` waits for sync handlers still running by default."""


class TaskRunner(Protocol):
    """What the dispatcher needs from an execution plane (in-process pool or Lambda)."""

    async def run(
        self, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], context: TaskContext
    ) -> Outcome:
        """Run one attempt and report how it ended; never raises for a handler's failure."""
        ...

    async def run_batch(
        self, spec: TaskSpec, items: Sequence[Any], context: BatchContext
    ) -> list[Outcome]:
        """Run a batch handler once on ``items`` (one attempt of each item's task);
        one outcome per item, in order; never raises for a handler's failure."""
        ...

    async def aclose(self) -> None:
        """Wait (for a bounded time) for running attempts and release resources."""
        ...

    @property
    def stuck_threads(self) -> int:
        """Handler threads still running after their attempt ended (0: none kept here)."""
        ...

    @property
    def healthy(self) -> bool:
        """False when the plane lost capacity that only a new process gets back."""
        ...


class WorkerPool:
    """Runs attempts in this process, at most ``max_workers`` at a time."""

    def __init__(
        self,
        *,
        max_workers: int = 32,
        thread_workers: int | None = None,
        max_stuck_threads: int | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self._running = 0
        self._closed = False
        self._threads = HandlerThreads(
            thread_workers or max_workers,
            max_stuck=max_stuck_threads,
            name_prefix="dispatch-worker",
        )

    @property
    def running(self) -> int:
        """Attempts running now."""
        return self._running

    @property
    def stuck_threads(self) -> int:
        """Threads still running a sync handler whose attempt already ended (timed out or
        released): each holds a thread until its handler returns, if ever."""
        return self._threads.stuck

    @property
    def max_stuck_threads(self) -> int:
        """How many stuck threads are replaced by new ones before the pool is unhealthy."""
        return self._threads.max_stuck

    @property
    def healthy(self) -> bool:
        """False once more threads are stuck than ``max_stuck_threads``: the pool now
        runs sync handlers on fewer than ``max_workers`` threads, and only a new
        process gets them back (the dispatcher should stop and be restarted)."""
        return self._threads.healthy

    async def run(
        self, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], context: TaskContext
    ) -> Outcome:
        """Run one attempt of ``spec``."""
        self._running += 1
        try:
            return await run_attempt(spec, args, kwargs, context=context, executor=self._threads)
        finally:
            self._running -= 1

    async def run_batch(
        self, spec: TaskSpec, items: Sequence[Any], context: BatchContext
    ) -> list[Outcome]:
        """Run ``spec``'s batch handler once on ``items`` (one slot for the batch)."""
        self._running += 1
        try:
            return await run_batch_attempt(spec, items, context=context, executor=self._threads)
        finally:
            self._running -= 1

    async def aclose(self, *, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop the threads: wait up to ``grace_s`` for the sync handlers still running
        (stuck ones included), then abandon those still running and return.

        Never hangs on a stuck handler; calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._threads.shutdown(wait=False)
        jobs = self._threads.outstanding()
        if not jobs:
            return
        waiting = {asyncio.wrap_future(job): job for job in jobs}
        done, late = await asyncio.wait(waiting, timeout=max(0.0, grace_s))
        for future in done:
            if not future.cancelled():
                future.exception()  # seen: asyncio would log it as never retrieved
        if not late:
            return
        abandoned = [waiting[future] for future in late if waiting[future].running()]
        for future in late:
            future.cancel()  # cancels a job not started yet, abandons a running one
        log.warning(
            "handler_threads_abandoned",
            count=len(abandoned),
            tasks=sorted(job.task for job in abandoned),
            task_ids=sorted(job.task_id for job in abandoned),
            never_started=len(late) - len(abandoned),
            grace_s=grace_s,
        )

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
