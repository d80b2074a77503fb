"""The in-process worker pool: asyncio for async handlers, threads for sync ones.

The dispatcher hands it one task at a time with :meth:`WorkerPool.run` (or one
micro-batch with :meth:`WorkerPool.run_batch`, which takes one slot); the pool
bounds how many attempts run at once (``max_workers``) and reports outcomes. It
never touches SQS or DynamoDB.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol

from dispatch.core.context import BatchContext, TaskContext
from dispatch.core.outcome import Outcome
from dispatch.tasks.registry import TaskSpec
from dispatch_workers.runtime import run_attempt, run_batch_attempt

__all__ = ["TaskRunner", "WorkerPool"]


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
        """Wait for running attempts and release resources."""
        ...


class WorkerPool:
    """Runs attempts in this process, at most ``max_workers`` at a time."""

    def __init__(self, *, max_workers: int = 32, thread_workers: int | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self._running = 0
        self._executor = ThreadPoolExecutor(
            max_workers=thread_workers or max_workers, thread_name_prefix="dispatch-worker"
        )

    @property
    def running(self) -> int:
        """Attempts running now."""
        return self._running

    async def run(
        self, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], context: TaskContext
    ) -> Outcome:
        """Run one attempt of ``spec``."""
        self._running += 1
        try:
            return await run_attempt(spec, args, kwargs, context=context, executor=self._executor)
        finally:
            self._running -= 1

    async def run_batch(
        self, spec: TaskSpec, items: Sequence[Any], context: BatchContext
    ) -> list[Outcome]:
        """Run ``spec``'s batch handler once on ``items`` (one slot for the batch)."""
        self._running += 1
        try:
            return await run_batch_attempt(spec, items, context=context, executor=self._executor)
        finally:
            self._running -= 1

    async def aclose(self) -> None:
        """Stop the threads, waiting for sync handlers still running (timed-out ones included)."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
