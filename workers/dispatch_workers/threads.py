"""Daemon threads for sync handlers that survive handlers stuck for ever.

Python cannot stop a thread: a sync handler that runs past its timeout keeps its
thread after its attempt was reported failed (a handler blocked on a socket may
keep it for ever). :class:`HandlerThreads` keeps ``max_workers`` threads free for
new work: a thread left running by an attempt that ended without it (timed out,
or released by the dispatcher) is *stuck*; it is counted, logged
(``handler_thread_stuck`` with the task, its id and how long it has run) and
replaced by a new thread, up to ``max_stuck`` extra threads. Past that bound the
stuck threads eat into the capacity and :attr:`HandlerThreads.healthy` turns
false (``handler_threads_over_limit``). A stuck handler that ends after all gives
its thread back (``handler_thread_freed``). The threads are daemon threads, so
an abandoned one never keeps the process from exiting (the interpreter joins a
``ThreadPoolExecutor``'s threads at exit, which would hang on a stuck handler).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

import structlog

from dispatch.core.context import current_task

__all__ = ["HandlerThreads"]

log = structlog.get_logger("dispatch_workers.pool")

P = ParamSpec("P")
T = TypeVar("T")


class HandlerThreads(Executor):
    """Daemon threads for sync handlers, ``max_workers`` of them free for work.

    A job whose future is cancelled while it runs (what asyncio does when an
    attempt's timeout expires, or the attempt is released, while it awaits the
    job) is *abandoned*: its thread is counted stuck until the handler returns,
    and, while at most ``max_stuck`` threads are stuck, another thread is
    started in its place. A job is labelled with the task whose attempt
    submitted it (``current_task()`` at submission) so that logs can name it.
    Threads are started on demand and are daemon threads: a stuck one never
    keeps the interpreter from exiting.
    """

    def __init__(
        self, max_workers: int, *, max_stuck: int | None = None, name_prefix: str = "handler"
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if max_stuck is not None and max_stuck < 0:
            raise ValueError(f"max_stuck must be >= 0, got {max_stuck}")
        self.max_workers = max_workers
        self.max_stuck = max_workers if max_stuck is None else max_stuck
        self._name_prefix = name_prefix
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[_Job] = deque()
        self._running: set[_Job] = set()
        self._stuck: set[_Job] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False

    @property
    def stuck(self) -> int:
        """Threads running a job that was abandoned."""
        return len(self._stuck)

    @property
    def healthy(self) -> bool:
        """True while stuck threads are all replaced (at most ``max_stuck`` of them)."""
        return len(self._stuck) <= self.max_stuck

    @property
    def threads(self) -> int:
        """Threads alive now (idle, running or stuck)."""
        return len(self._threads)

    def outstanding(self) -> list[_Job]:
        """The jobs running (stuck ones included) or waiting for a thread."""
        with self._lock:
            return [*self._running, *self._pending]

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; a thread runs it as soon as one is free."""
        job = _Job(self, functools.partial(fn, *args, **kwargs), _submitting_task())
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._pending.append(job)
            self._grow()
            self._wake.notify()
        return job

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more jobs; idle threads end. ``wait=True`` joins every thread, stuck
        ones included: :meth:`WorkerPool.aclose` waits for a bounded time instead."""
        with self._lock:
            self._closed = True
            cancelled = list(self._pending) if cancel_futures else []
            self._wake.notify_all()
            threads = list(self._threads)
        for job in cancelled:
            job.cancel()
        if wait:
            for thread in threads:
                thread.join()

    def _budget(self) -> int:
        """Threads allowed: ``max_workers``, plus one per stuck thread up to ``max_stuck``."""
        return self.max_workers + min(len(self._stuck), self.max_stuck)

    def _grow(self) -> None:
        """Start threads while jobs outnumber idle threads, within the budget (lock held)."""
        idle = len(self._threads) - len(self._running)
        while len(self._pending) > idle and len(self._threads) < self._budget():
            thread = threading.Thread(
                target=self._work, name=f"{self._name_prefix}_{next(self._numbers)}", daemon=True
            )
            self._threads.add(thread)
            thread.start()
            idle += 1

    def _work(self) -> None:
        while (job := self._next()) is not None:
            job.run()
            self._finished(job)

    def _next(self) -> _Job | None:
        """The next job to run, once there is one; None when this thread should end."""
        me = threading.current_thread()
        with self._lock:
            while True:
                if len(self._threads) > self._budget() or (self._closed and not self._pending):
                    self._threads.discard(me)
                    return None
                if not self._pending:
                    self._wake.wait()
                    continue
                job = self._pending.popleft()
                if job.set_running_or_notify_cancel():
                    job.started_at = time.monotonic()
                    self._running.add(job)
                    return job

    def _finished(self, job: _Job) -> None:
        with self._lock:
            self._running.discard(job)
            was_stuck = job in self._stuck
            self._stuck.discard(job)
            stuck = len(self._stuck)
        if was_stuck:
            log.info(
                "handler_thread_freed",
                task=job.task,
                task_id=job.task_id,
                ran_s=round(time.monotonic() - job.started_at, 3),
                stuck_threads=stuck,
            )

    def _abandon(self, job: _Job) -> None:
        """The caller stopped waiting for a running job: its thread is stuck."""
        with self._lock:
            if job not in self._running or job in self._stuck:
                return
            self._stuck.add(job)
            stuck = len(self._stuck)
            self._grow()
        log.warning(
            "handler_thread_stuck",
            task=job.task,
            task_id=job.task_id,
            running_s=round(time.monotonic() - job.started_at, 3),
            stuck_threads=stuck,
            max_stuck_threads=self.max_stuck,
        )
        if stuck == self.max_stuck + 1:
            log.error(
                "handler_threads_over_limit",
                stuck_threads=stuck,
                max_stuck_threads=self.max_stuck,
                live_threads=self.max_workers + self.max_stuck - stuck,
            )

    def _forget(self, job: _Job) -> None:
        """A job cancelled before it started leaves the queue."""
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)


class _Job(Future[Any]):
    """One call queued on, or running in, a :class:`HandlerThreads` thread."""

    def __init__(
        self, threads: HandlerThreads, call: Callable[[], Any], label: tuple[str, str]
    ) -> None:
        super().__init__()
        self._threads = threads
        self._call = call
        self.task, self.task_id = label
        self.started_at = 0.0

    def run(self) -> None:
        """Run the call in this thread; its result or exception goes to the future."""
        try:
            result = self._call()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits, as ThreadPoolExecutor does
            self.set_exception(exc)
        else:
            self.set_result(result)

    def cancel(self) -> bool:
        """Cancel a job not started yet; a running one cannot stop, so it is abandoned."""
        if super().cancel():
            self._threads._forget(self)
            return True
        if not self.done():
            self._threads._abandon(self)
        return False


def _submitting_task() -> tuple[str, str]:
    """(task name, task id) of the attempt submitting a job, to name it in logs."""
    try:
        context = current_task()
    except RuntimeError:
        return ("?", "?")
    return (context.task, context.task_id)
