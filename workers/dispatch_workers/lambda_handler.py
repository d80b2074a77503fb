"""The worker Lambda: runs the tasks of one invocation and returns their outcomes.

The dispatcher invokes this function synchronously (``RequestResponse``) with a
micro-batch of one or more attempts, and gets one outcome per attempt back::

    request  {"v": 1, "tasks": [{"task": "charge", "args": [], "kwargs": {...},
                                  "context": {"task_id": "...", "attempt": 1,
                                              "max_attempts": 5, "enqueued_at": 1767225600.1}}]}
    response {"v": 1, "outcomes": [{"kind": "succeeded", "duration_s": 0.01, "result": ...}]}

A micro-batch task (``@task(batch_size=...)``) travels as one batch call whose
handler runs once for all its items, and answers one outcome per item, in
place (outcomes are flat, in the order of the items)::

    request  {"v": 1, "tasks": [{"task": "index_docs", "batch": [
                 {"item": "doc-1", "context": {"task_id": "...", "attempt": 1, ...}},
                 {"item": "doc-2", "context": {"task_id": "...", "attempt": 2, ...}}]}]}
    response {"v": 1, "outcomes": [{"kind": "succeeded", ...}, {"kind": "retryable", ...}]}

The attempts of a batch run concurrently (sync handlers in threads). A handler's
failure is an outcome, never an error of the invocation. The worker owns no
state: it never creates an SQS or DynamoDB client (it needs no AWS permission at
all); the dispatcher that invoked it records and settles every outcome.

Sync handlers run on :class:`~dispatch_workers.pool.HandlerThreads` shared by
every invocation of the process (an execution environment lives on between
invocations), with the in-process pool's policy: a handler's ``timeout_s``
starts when it starts in its thread, and a thread still running a handler
whose attempt timed out is counted stuck (``handler_thread_stuck``) and
replaced, up to ``thread_workers`` extra threads; past that,
:attr:`WorkerHandler.healthy` is false.

Task modules come from ``DISPATCH_TASKS`` and are imported on the first
invocation, not at import time, so a broken module is reported as an outcome
(retryable: a gradual deployment may be half way) rather than an init crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from dispatch.core import constants as c
from dispatch.core.config import parse_task_modules
from dispatch.core.context import BatchContext, TaskContext
from dispatch.core.errors import ConfigurationError, UnknownTaskError
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.tasks.registry import Registry, TaskSpec, default_registry
from dispatch_workers.runtime import run_attempt, run_batch_attempt
from dispatch_workers.threads import HandlerThreads

__all__ = [
    "PAYLOAD_VERSION",
    "BatchCall",
    "Call",
    "TaskCall",
    "WorkerHandler",
    "decode_outcomes",
    "encode_call",
    "encode_request",
    "handler",
    "make_handler",
]

PAYLOAD_VERSION: Final = 1
TIME_MARGIN_S: Final = 1.0
"""Each attempt's timeout is cut to end this long before the invocation's deadline."""
THREAD_WORKERS: Final = 32
"""Threads free for sync handlers, shared by every invocation of this process (each
stuck thread is replaced, up to as many again)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TaskCall:
    """One attempt in an invocation: which task, its arguments and its context."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: TaskContext

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the request's ``tasks`` entries)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "context": _context_dict(self.context),
        }

    @property
    def size(self) -> int:
        """Outcomes this call answers: one."""
        return 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskCall:
        """Inverse of :meth:`to_dict`; ValueError when a field is missing or mistyped."""
        try:
            ctx = data["context"]
            name = str(data["task"])
            return cls(
                task=name,
                args=tuple(data.get("args") or ()),
                kwargs=dict(data.get("kwargs") or {}),
                context=_context_from(ctx, name),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a task call: {exc!r}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class BatchCall:
    """One run of a batch handler: its items, each with its own task's context."""

    task: str
    items: tuple[Any, ...]
    contexts: tuple[TaskContext, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a request's ``tasks`` entry with a ``batch`` list)."""
        return {
            "task": self.task,
            "batch": [
                {"item": item, "context": _context_dict(context)}
                for item, context in zip(self.items, self.contexts, strict=True)
            ],
        }

    @property
    def size(self) -> int:
        """Outcomes this call answers: one per item."""
        return len(self.items)

    @property
    def context(self) -> BatchContext:
        """What ``current_task()`` returns inside the handler."""
        return BatchContext.of(self.contexts)

    def halves(self) -> tuple[BatchCall, BatchCall]:
        """The first and second half of the items, as two calls (to fit a request)."""
        half = len(self.items) // 2
        return (
            BatchCall(self.task, self.items[:half], self.contexts[:half]),
            BatchCall(self.task, self.items[half:], self.contexts[half:]),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchCall:
        """Inverse of :meth:`to_dict`; ValueError when a field is missing or mistyped."""
        try:
            name = str(data["task"])
            entries = data["batch"]
            if not isinstance(entries, list) or not entries:
                raise TypeError("'batch' must be a non-empty list")
            return cls(
                task=name,
                items=tuple(entry["item"] for entry in entries),
                contexts=tuple(_context_from(entry["context"], name) for entry in entries),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a batch call: {exc!r}") from exc


Call = TaskCall | BatchCall
"""One entry of a request: an attempt, or a batch handler's run."""


def _context_dict(context: TaskContext) -> dict[str, Any]:
    return {
        "task_id": context.task_id,
        "attempt": context.attempt,
        "max_attempts": context.max_attempts,
        "enqueued_at": context.enqueued_at,
    }


def _context_from(ctx: Any, name: str) -> TaskContext:
    return TaskContext(
        task_id=str(ctx["task_id"]),
        task=name,
        attempt=int(ctx["attempt"]),
        max_attempts=int(ctx["max_attempts"]),
        enqueued_at=float(ctx.get("enqueued_at") or 0.0),
    )


def encode_request(calls: Sequence[Call]) -> bytes:
    """The Invoke payload for ``calls`` (UTF-8 JSON, non-ASCII kept as is: sizes
    stay those of the queue messages)."""
    body = {"v": PAYLOAD_VERSION, "tasks": [call.to_dict() for call in calls]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_call(call: Call) -> bytes:
    """One attempt as it appears in a request (to size micro-batches)."""
    return json.dumps(call.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_outcomes(payload: Any, expected: int) -> list[Outcome]:
    """The outcomes in a worker's response; ValueError when it is not one."""
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        raise ValueError("not a worker response (no 'v': 1)")
    raw = payload.get("outcomes")
    if not isinstance(raw, list) or len(raw) != expected:
        raise ValueError(f"expected {expected} outcomes, got {raw!r:.200}")
    try:
        return [Outcome.from_dict(item) for item in raw]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed outcome: {exc!r}") from exc


class WorkerHandler:
    """The Lambda handler callable: ``handler(event, context) -> response``.

    Thread-safe, so the local Invoke endpoint may run invocations concurrently
    (Lambda itself never does within one execution environment).
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        task_modules: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        thread_workers: int = THREAD_WORKERS,
    ) -> None:
        self._registry = default_registry if registry is None else registry
        self._task_modules = task_modules
        self._environ = environ
        self._thread_workers = thread_workers
        self._lock = threading.Lock()
        self._loaded = False
        self._executor: HandlerThreads | None = None

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        """Run the batch in ``event``; always returns a response with one outcome per task."""
        tasks = event.get("tasks") if isinstance(event, dict) else None
        if not isinstance(tasks, list) or event.get("v") != PAYLOAD_VERSION:
            # A caller that is not our invoker: refuse loudly (an Unhandled error).
            raise ValueError("expected {'v': 1, 'tasks': [...]} from the Dispatch invoker")
        remaining_s = _remaining_s(context)
        outcomes = asyncio.run(self._run_all(tasks, remaining_s))
        return {"v": PAYLOAD_VERSION, "outcomes": [_bounded(o).to_dict() for o in outcomes]}

    async def _run_all(self, tasks: list[Any], remaining_s: float | None) -> list[Outcome]:
        load_error = self._load()
        answers = await asyncio.gather(
            *(
                self._run_batch(t, remaining_s, load_error)
                if isinstance(t, dict) and "batch" in t
                else self._run_single(t, remaining_s, load_error)
                for t in tasks
            )
        )
        return [outcome for answer in answers for outcome in answer]

    async def _run_single(
        self, raw: Any, remaining_s: float | None, load_error: ConfigurationError | None
    ) -> list[Outcome]:
        return [await self._run_one(raw, remaining_s, load_error)]

    async def _run_batch(
        self, raw: dict[str, Any], remaining_s: float | None, load_error: ConfigurationError | None
    ) -> list[Outcome]:
        entries = raw.get("batch")
        n = len(entries) if isinstance(entries, list) and entries else 1
        try:
            call = BatchCall.from_dict(raw)
        except ValueError as exc:
            return [_failure(OutcomeKind.NOT_RETRYABLE, "BadTaskCall", str(exc))] * n
        if load_error is not None:
            return [_failure(OutcomeKind.RETRYABLE, type(load_error).__name__, str(load_error))] * n
        try:
            spec = self._registry.get(call.task)
        except UnknownTaskError as exc:
            return [_failure(OutcomeKind.RETRYABLE, "UnknownTaskError", str(exc))] * n
        if spec.batch is None:
            # Retryable, as for an unknown task: another version may declare it a batch task.
            message = f"task {call.task!r} is not a batch task in this worker"
            return [_failure(OutcomeKind.RETRYABLE, "TaskDefinitionError", message)] * n
        return await run_batch_attempt(
            _within(spec, remaining_s), call.items, context=call.context, executor=self._threads()
        )

    async def _run_one(
        self, raw: Any, remaining_s: float | None, load_error: ConfigurationError | None
    ) -> Outcome:
        try:
            call = TaskCall.from_dict(raw)
        except ValueError as exc:
            return _failure(OutcomeKind.NOT_RETRYABLE, "BadTaskCall", str(exc))
        if load_error is not None:
            return _failure(OutcomeKind.RETRYABLE, type(load_error).__name__, str(load_error))
        try:
            spec = self._registry.get(call.task)
        except UnknownTaskError as exc:
            # Retryable: during a gradual deployment the other version may know it.
            return _failure(OutcomeKind.RETRYABLE, "UnknownTaskError", str(exc))
        return await run_attempt(
            _within(spec, remaining_s),
            call.args,
            call.kwargs,
            context=call.context,
            executor=self._threads(),
        )

    def _load(self) -> ConfigurationError | None:
        """Import the task modules once; the error, if they cannot be imported."""
        with self._lock:
            if self._loaded:
                return None
            modules = self._task_modules
            if modules is None:
                env = os.environ if self._environ is None else self._environ
                modules = parse_task_modules(env.get(c.ENV_TASKS, ""))
            try:
                self._registry.import_modules(modules)
            except ConfigurationError as exc:
                return exc
            self._loaded = True
            return None

    @property
    def stuck_threads(self) -> int:
        """Threads still running a sync handler whose attempt already timed out."""
        return 0 if self._executor is None else self._executor.stuck

    @property
    def healthy(self) -> bool:
        """False once more threads are stuck than are replaced: sync handlers then run
        on fewer than ``thread_workers`` threads until the process is replaced."""
        return self._executor is None or self._executor.healthy

    def _threads(self) -> HandlerThreads:
        # Not the event loop's default executor: asyncio.run() would wait for a
        # timed-out sync handler's thread before the invocation could return.
        with self._lock:
            if self._executor is None:
                self._executor = HandlerThreads(
                    self._thread_workers, name_prefix="dispatch-lambda-worker"
                )
            return self._executor


def make_handler(
    *,
    registry: Registry | None = None,
    task_modules: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Callable[[Any, Any], dict[str, Any]]:
    """A worker handler on ``registry`` (default: the default registry, with the
    modules named by ``DISPATCH_TASKS``)."""
    return WorkerHandler(registry=registry, task_modules=task_modules, environ=environ)


handler = make_handler()
"""The entry point the SAM template names: ``dispatch_workers.lambda_handler.handler``."""


def _within(spec: TaskSpec, remaining_s: float | None) -> TaskSpec:
    """The spec with its timeout cut to end before the invocation's deadline: time
    out in the handler (a clean outcome) rather than losing the whole invocation
    to the function's own timeout."""
    if remaining_s is not None and spec.timeout_s > remaining_s - TIME_MARGIN_S:
        return dataclasses.replace(spec, timeout_s=max(0.001, remaining_s - TIME_MARGIN_S))
    return spec


def _remaining_s(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining() / 1000.0 if callable(remaining) else None


def _failure(kind: OutcomeKind, error_type: str, message: str) -> Outcome:
    return Outcome(kind=kind, duration_s=0.0, error=ErrorInfo(type=error_type, message=message))


def _bounded(outcome: Outcome) -> Outcome:
    """The outcome without a result over MAX_RESULT_BYTES, so a batch's response stays
    far below Lambda's 6 MB. The runtime already fails an attempt whose result is over
    the limit (:mod:`dispatch_workers.runtime`), so this only guards the response."""
    if outcome.result is None:
        return outcome
    # Measured exactly as dispatch.store.state measures what it stores.
    size = len(json.dumps(outcome.result, separators=(",", ":")).encode())
    if size <= c.MAX_RESULT_BYTES:
        return outcome
    return dataclasses.replace(outcome, result=None)
