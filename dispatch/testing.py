"""Helpers for testing a project's tasks: run one handler, or drain a queue on the local AWS.

Two tiers, as with Dramatiq's ``StubBroker`` and ``join()`` or Celery's pytest plugin:

* **One handler, no AWS.** :func:`run_task` calls a task's handler the way a worker
  does: the arguments are checked and encoded as ``enqueue`` would (so what cannot
  go on the queue fails here too) and the handler gets them back as it would from
  the queue, with :func:`dispatch.current_task` answering. It returns what the
  handler returns and raises what it raises::

      assert run_task(charge, order_id="42", amount=5) == {"charged": 5}
      with_context(charge, attempt=3).run(order_id="42", amount=5)   # a retry

* **End to end.** :func:`drain` runs a dispatcher until the queue is empty and
  returns its :class:`~dispatch.RunStats`; the pytest plugin
  (:mod:`dispatch.pytest_plugin`, fixtures ``dispatch_local_aws`` and
  ``dispatch_env``) gives each test a fresh queue, dead-letter queue and table on
  the embedded local AWS. :func:`start_local_aws` and :func:`provision_local`
  do the same without pytest.

The local AWS runs in its own process; set ``DISPATCH_LOCAL_PYTHON`` to the
interpreter of a virtual environment where ``dispatch-aws[local]`` is installed
to keep its pinned moto out of your project's environment (docs/testing.md).

Importing this module starts nothing and makes no network call.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine
from typing import Any, Final, Generic, ParamSpec, Protocol, TypeVar, overload

import boto3

from dispatch.core.config import Settings
from dispatch.core.context import BatchContext, TaskContext, _current
from dispatch.core.envelope import Envelope, Message, MessageOptions, decode
from dispatch.core.errors import DispatchError
from dispatch.local.emulator import LocalAWS
from dispatch.local.provision import provision
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.store.aws import async_clients
from dispatch.tasks.registry import Registry, TaskSpec

__all__ = [
    # one handler, no AWS
    "TaskCall",
    "run_task",
    "run_task_async",
    "with_context",
    # end to end, on the embedded local AWS
    "LOCAL_PYTHON_ENV",
    "drain",
    "drain_async",
    "provision_local",
    "start_local_aws",
]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

LOCAL_PYTHON_ENV: Final = "DISPATCH_LOCAL_PYTHON"
"""The interpreter that runs the embedded local AWS (default: the running one)."""


class Declared(Protocol[P, R_co]):
    """What ``@task`` returns (a :class:`~dispatch.Task` or :class:`~dispatch.BatchTask`)."""

    @property
    def spec(self) -> TaskSpec:
        """The task's declaration."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Run the handler."""
        ...


# --- one handler, no AWS -------------------------------------------------------------------


class TaskCall(Generic[P, R]):
    """One task's handler, ready to be called as a worker calls it, with a chosen context.

    Made by :func:`with_context`; :func:`run_task` is ``with_context(task).run``.
    """

    def __init__(
        self,
        spec: TaskSpec,
        *,
        attempt: int = 1,
        max_attempts: int | None = None,
        task_id: str | None = None,
        enqueued_at: float | None = None,
    ) -> None:
        """Prefer :func:`with_context`, which also types the call with the handler's parameters."""
        self.spec = spec
        self.max_attempts = spec.retry.max_attempts if max_attempts is None else max_attempts
        if not 1 <= attempt <= self.max_attempts:
            raise ValueError(f"attempt={attempt} must be 1 to max_attempts={self.max_attempts}")
        if task_id is not None and spec.batch is not None:
            raise ValueError("task_id= names one task; each item of a batch is a task of its own")
        self.attempt = attempt
        self.task_id = task_id
        self.enqueued_at = enqueued_at

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the handler here; an async one runs to its end in a new event loop.

        Returns what the handler returns; raises what it raises. From a coroutine
        (a running event loop) use :meth:`run_async`.
        """
        args_, kwargs_, context = self._prepare(args, kwargs)
        if not self.spec.is_async:
            return self._call_sync(args_, kwargs_, context)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._call_async(args_, kwargs_, context))
        raise RuntimeError(
            f"task {self.spec.name!r} is async and an event loop is running here: "
            "use `await run_task_async(...)` (or `await with_context(...).run_async(...)`)"
        )

    async def run_async(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await the handler (a sync one runs in a thread, as on a worker)."""
        args_, kwargs_, context = self._prepare(args, kwargs)
        if self.spec.is_async:
            return await self._call_async(args_, kwargs_, context)
        return await asyncio.to_thread(self._call_sync, args_, kwargs_, context)

    def _prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], TaskContext]:
        """The arguments as the handler gets them from the queue, and its context."""
        if self.spec.batch is None:
            envelope = self._through_the_queue(args, kwargs)
            return envelope.args, envelope.kwargs, self._context(envelope)
        if kwargs or len(args) != 1 or not isinstance(args[0], list | tuple):
            raise TypeError(f"batch task {self.spec.name!r} takes one list of items")
        envelopes = [self._through_the_queue((item,), {}) for item in args[0]]
        if not envelopes:
            raise ValueError(f"batch task {self.spec.name!r}: a batch has at least one item")
        items = [envelope.args[0] for envelope in envelopes]
        context = BatchContext.of(tuple(self._context(envelope) for envelope in envelopes))
        return (items,), {}, context

    def _through_the_queue(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Envelope:
        """Check and encode as ``enqueue`` does (InvalidArgumentsError), then decode."""
        message = Message.build(self.spec, args, dict(kwargs), MessageOptions())
        return decode(message.body)

    def _context(self, envelope: Envelope) -> TaskContext:
        return TaskContext(
            task_id=envelope.id if self.task_id is None else self.task_id,
            task=self.spec.name,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            enqueued_at=envelope.enqueued_at if self.enqueued_at is None else self.enqueued_at,
        )

    def _call_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any], context: TaskContext) -> R:
        token = _current.set(context)
        try:
            result: R = self.spec.fn(*args, **kwargs)
        finally:
            _current.reset(token)
        return result

    async def _call_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], context: TaskContext
    ) -> R:
        token = _current.set(context)
        try:
            result: R = await self.spec.fn(*args, **kwargs)
        finally:
            _current.reset(token)
        return result


@overload
def with_context(
    task: Declared[P, Coroutine[Any, Any, R]],
    /,
    *,
    attempt: int = 1,
    max_attempts: int | None = None,
    task_id: str | None = None,
    enqueued_at: float | None = None,
) -> TaskCall[P, R]: ...


@overload
def with_context(
    task: Declared[P, R],
    /,
    *,
    attempt: int = 1,
    max_attempts: int | None = None,
    task_id: str | None = None,
    enqueued_at: float | None = None,
) -> TaskCall[P, R]: ...


def with_context(
    task: Declared[P, Any],
    /,
    *,
    attempt: int = 1,
    max_attempts: int | None = None,
    task_id: str | None = None,
    enqueued_at: float | None = None,
) -> TaskCall[P, Any]:
    """``task``'s handler with a chosen context: ``with_context(charge, attempt=3).run(...)``.

    ``attempt`` (1-based) and ``max_attempts`` (default: the task's ``Retry``) are what
    ``current_task()`` reports, so ``is_last_attempt`` can be tested; ``task_id``
    defaults to a new id (``lean-...`` for a lean task), ``enqueued_at`` to now.
    ValueError for an attempt outside 1 to ``max_attempts``.
    """
    return TaskCall(
        task.spec,
        attempt=attempt,
        max_attempts=max_attempts,
        task_id=task_id,
        enqueued_at=enqueued_at,
    )


@overload
def run_task(
    task: Declared[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
) -> R: ...


@overload
def run_task(task: Declared[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...


def run_task(task: Declared[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
    """Call ``task``'s handler once as a worker would, first attempt, without AWS.

    The arguments are checked and encoded as by ``task.enqueue`` (an
    :class:`~dispatch.InvalidArgumentsError` for what cannot go on the queue) and
    the handler receives them decoded, as from a message (a tuple arrives as a
    list). Inside, ``current_task()`` answers (a ``BatchContext`` for a batch task,
    called with its list). An async handler runs to its end in a new event loop
    (from a coroutine, use :func:`run_task_async`). Returns what the handler
    returns; raises what it raises. ``timeout_s`` is not enforced here: a timeout
    is the dispatcher's to test, with :func:`drain`. For another attempt or a
    chosen task id, use :func:`with_context`.
    """
    return TaskCall[P, Any](task.spec).run(*args, **kwargs)


@overload
async def run_task_async(
    task: Declared[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
) -> R: ...


@overload
async def run_task_async(task: Declared[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...


async def run_task_async(task: Declared[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
    """:func:`run_task` from a coroutine: awaits an async handler, runs a sync one in a thread."""
    return await TaskCall[P, Any](task.spec).run_async(*args, **kwargs)


# --- end to end, on the embedded local AWS -------------------------------------------------


async def drain_async(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    **options: Any,
) -> RunStats:
    """Run one dispatcher until no message is visible, in flight or delayed, and no task
    runs; return what it did.

    ``settings`` default to the environment (``Settings.from_env()``, what the
    ``dispatch_env`` fixture sets), ``registry`` to the default one (where ``@task``
    registers). ``options`` are :class:`~dispatch.DispatcherOptions` keywords.
    Retries are waited for: give tasks under test a short ``Retry(base_delay_s=...)``.
    """
    settings = Settings.from_env() if settings is None else settings
    async with async_clients(settings) as clients:
        dispatcher = Dispatcher(
            settings, clients=clients, registry=registry, options=DispatcherOptions(**options)
        )
        try:
            return await dispatcher.run(until_empty=True)
        finally:
            await dispatcher.runner.aclose()


def drain(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    **options: Any,
) -> RunStats:
    """:func:`drain_async` from sync code (a new event loop); from a coroutine, await that."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(drain_async(settings, registry=registry, **options))
    raise RuntimeError("an event loop is running here: use `await drain_async(...)`")


def start_local_aws(*, python: str | None = None, startup_timeout_s: float = 30.0) -> LocalAWS:
    """Start the embedded local AWS on 127.0.0.1 (stop it with ``.stop()`` or ``with``).

    ``python`` (default: ``$DISPATCH_LOCAL_PYTHON``, else this interpreter) runs it:
    the interpreter of a virtual environment where ``dispatch-aws[local]`` is
    installed keeps its pinned moto out of yours. The returned object's
    ``endpoint_url``, ``env()`` and ``reset()`` are what tests use.
    """
    python = python or os.environ.get(LOCAL_PYTHON_ENV) or None
    if python is not None and not os.access(python, os.X_OK):
        raise DispatchError(
            f"{LOCAL_PYTHON_ENV}={python}: no executable there; give the python of a virtual "
            "environment where dispatch-aws[local] is installed (docs/testing.md)"
        )
    try:
        return LocalAWS.start(python=python, startup_timeout_s=startup_timeout_s)
    except DispatchError as exc:
        where = f"{LOCAL_PYTHON_ENV}={python}" if python else "this environment"
        raise DispatchError(
            f"{exc}\nThe local AWS needs moto as pinned by dispatch-aws[local] in {where}; to "
            f"keep your own moto, point {LOCAL_PYTHON_ENV} at a separate virtual "
            "environment's python (docs/testing.md)"
        ) from exc


def provision_local(aws: LocalAWS, *, prefix: str | None = None) -> dict[str, str]:
    """Create a fresh queue, dead-letter queue and table on ``aws``; return the
    environment that points Dispatch at them (``AWS_*`` and ``DISPATCH_*``)."""
    env = aws.env()
    options: dict[str, Any] = {
        "endpoint_url": aws.endpoint_url,
        "region_name": aws.region,
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }
    sqs = boto3.client("sqs", **options)
    dynamodb = boto3.client("dynamodb", **options)
    try:
        name = prefix or f"test-{uuid.uuid4().hex[:12]}"
        resources = provision(sqs, dynamodb, prefix=name)
    finally:
        sqs.close()
        dynamodb.close()
    return {**env, **resources.as_env()}
