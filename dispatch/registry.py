"""Task declarations: the ``@task`` decorator, :class:`TaskSpec` and :class:`Registry`.

A task is a plain function (sync or async) registered under a name. The
decorator returns a :class:`Task`, which still calls the function directly and
adds ``enqueue``/``enqueue_async``/``message``, typed with the function's own
parameters (``ParamSpec``) so a type checker catches a wrong argument at the
call site.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from dispatch import constants as c
from dispatch.cron import Schedule
from dispatch.cron import parse as parse_schedule
from dispatch.envelope import RESERVED_OPTIONS, Message, MessageOptions
from dispatch.errors import ConfigurationError, TaskDefinitionError, UnknownTaskError
from dispatch.retry import Retry
from dispatch.throttle import Resource
from dispatch.typecheck import argument_problem, resolved_hints

__all__ = ["DEFAULT_TIMEOUT_S", "Registry", "Task", "TaskSpec", "default_registry", "task"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT_S = 60.0
_HINTS: dict[Callable[..., Any], Mapping[str, Any]] = {}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything the dispatcher and the workers need to know about one task."""

    name: str
    fn: Callable[..., Any]
    retry: Retry
    timeout_s: float
    resource: Resource | None = None
    is_async: bool = False
    signature: inspect.Signature = field(default=None, compare=False)  # type: ignore[assignment]
    schedule: Schedule | None = None  # periodic: enqueued once per fire time
    track_state: bool = True  # False: lean, SQS only, no task record (docs/api.md)

    def __post_init__(self) -> None:
        if self.signature is None:
            object.__setattr__(self, "signature", inspect.signature(self.fn))

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Bind arguments to the handler's signature and check them against its
        annotations (the JSON types); raises TypeError when they do not fit."""
        bound = self.signature.bind(*args, **kwargs)
        problem = argument_problem(bound, self.hints)
        if problem is not None:
            raise TypeError(problem)
        return bound

    @property
    def hints(self) -> Mapping[str, Any]:
        """The handler's resolved parameter annotations (computed once)."""
        cached = _HINTS.get(self.fn)
        if cached is None:
            cached = _HINTS[self.fn] = resolved_hints(self.fn)
        return cached


class Task(Generic[P, R]):
    """A registered task: call it directly, or enqueue it to run on a worker."""

    def __init__(self, spec: TaskSpec, fn: Callable[P, R]) -> None:
        self.spec = spec
        self._fn = fn
        self.__name__ = spec.name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        """The name the task is registered and enqueued under."""
        return self.spec.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the handler here and now, without the queue."""
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.spec.name!r}>"

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """Build the message for one run without sending it (for ``enqueue_many``).

        The reserved keywords ``delay_s``, ``idempotency_key`` and ``group`` are
        taken as enqueue options; everything else must bind to the handler.
        """
        call_kwargs = dict(kwargs)
        options = MessageOptions.from_kwargs(
            {k: call_kwargs.pop(k) for k in RESERVED_OPTIONS if k in call_kwargs}
        )
        return Message.build(self.spec, args, call_kwargs, options)

    def with_options(
        self,
        *,
        delay_s: float | None = None,
        idempotency_key: str | None = None,
        group: str | None = None,
    ) -> BoundTask[P, R]:
        """Enqueue options, type-checked: ``charge.with_options(delay_s=60).enqueue(...)``."""
        options = MessageOptions(delay_s=delay_s, idempotency_key=idempotency_key, group=group)
        return BoundTask(self, options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Put one run on the queue (boto3, blocking); returns the task id."""
        from dispatch.queue import default_queue

        return default_queue().enqueue(self.message(*args, **kwargs))

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Put one run on the queue (aiobotocore); returns the task id."""
        from dispatch.queue import default_queue

        return await default_queue().enqueue_async(self.message(*args, **kwargs))


class BoundTask(Generic[P, R]):
    """A task with enqueue options fixed; see :meth:`Task.with_options`."""

    def __init__(self, task: Task[P, R], options: MessageOptions) -> None:
        self._task = task
        self._options = options

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """The message for one run, with these options."""
        return Message.build(self._task.spec, args, dict(kwargs), self._options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue one run with these options (boto3); returns the task id."""
        from dispatch.queue import default_queue

        return default_queue().enqueue(self.message(*args, **kwargs))

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue one run with these options (aiobotocore); returns the task id."""
        from dispatch.queue import default_queue

        return await default_queue().enqueue_async(self.message(*args, **kwargs))


class Registry:
    """Task specs by name. The default one is :data:`default_registry`; tests reset it."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}

    def register(self, spec: TaskSpec) -> None:
        """Add a spec; a different function under a taken name is refused."""
        existing = self._tasks.get(spec.name)
        if existing is not None and _qualified(existing.fn) != _qualified(spec.fn):
            raise TaskDefinitionError(
                f"task name {spec.name!r} is taken by {_qualified(existing.fn)}; "
                f"give {_qualified(spec.fn)} another name with @task(name=...)"
            )
        self._tasks[spec.name] = spec

    def get(self, name: str) -> TaskSpec:
        """The spec registered under ``name``; UnknownTaskError names the known ones."""
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(name, list(self._tasks)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def specs(self) -> list[TaskSpec]:
        """Every registered spec, sorted by name."""
        return [self._tasks[name] for name in sorted(self._tasks)]

    def reset(self) -> None:
        """Forget every task (tests call this between cases)."""
        self._tasks.clear()

    def import_modules(self, modules: Iterable[str]) -> None:
        """Import the modules that declare tasks (``DISPATCH_TASKS``), naming any that fails."""
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"cannot import task module {module!r} (from {c.ENV_TASKS} or --tasks): {exc}",
                    setting=c.ENV_TASKS,
                ) from exc


default_registry = Registry()


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    resource: Resource | None = None,
    retry: Retry | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    schedule: str | None = None,
    track_state: bool = True,
    registry: Registry | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    resource: Resource | None = None,
    retry: Retry | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    schedule: str | None = None,
    track_state: bool = True,
    registry: Registry | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare a task: ``@task`` or ``@task(resource=db, retry=Retry(...), timeout_s=30)``.

    ``name`` defaults to the function's name. ``timeout_s`` bounds one attempt.
    ``schedule`` (an EventBridge ``cron(...)`` or ``rate(...)`` expression) makes
    it periodic: dispatchers enqueue it once per fire time (docs/operations.md).
    ``track_state=False`` makes it lean: SQS only, no DynamoDB task record, so
    about a third of a request per task instead of about 1.4, at the price of
    plain at-least-once delivery (a duplicate delivery may run twice), attempts
    counted from the message's receive count, and no ``dispatch status`` or
    ``dispatch cancel`` for it (docs/api.md, "Lean tasks").
    """

    def decorate(func: Callable[P, R]) -> Task[P, R]:
        spec = _make_spec(
            func,
            name=name,
            resource=resource,
            retry=retry or Retry(),
            timeout_s=timeout_s,
            schedule=schedule,
            track_state=track_state,
        )
        (default_registry if registry is None else registry).register(spec)
        return Task(spec, func)

    if fn is not None:
        return decorate(fn)
    return decorate


def _make_spec(
    fn: Callable[..., Any],
    *,
    name: str | None,
    resource: Resource | None,
    retry: Retry,
    timeout_s: float,
    schedule: str | None = None,
    track_state: bool = True,
) -> TaskSpec:
    if not callable(fn):
        raise TaskDefinitionError(f"@task needs a function, got {fn!r}")
    task_name = getattr(fn, "__name__", "") if name is None else name
    if not task_name or not set(task_name) <= _NAME_CHARS or len(task_name) > 128:
        raise TaskDefinitionError(
            f"task name {task_name!r}: use 1 to 128 letters, digits or _ . : -"
        )
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise TaskDefinitionError(f"task {task_name!r}: timeout_s={timeout_s!r} must be > 0")
    if timeout_s > c.SQS_MAX_VISIBILITY_S:
        raise TaskDefinitionError(
            f"task {task_name!r}: timeout_s={timeout_s} is over SQS's 12-hour visibility limit"
        )
    if resource is not None and not isinstance(resource, Resource):
        raise TaskDefinitionError(
            f"task {task_name!r}: resource= takes a dispatch.Resource, got {resource!r}"
        )
    if not isinstance(retry, Retry):
        raise TaskDefinitionError(
            f"task {task_name!r}: retry= takes a dispatch.Retry, got {retry!r}"
        )
    if not isinstance(track_state, bool):
        raise TaskDefinitionError(
            f"task {task_name!r}: track_state={track_state!r} must be True (a task record in "
            "DynamoDB, the default) or False (lean: SQS only, no record)"
        )
    signature = inspect.signature(fn)
    clash = sorted(set(signature.parameters) & set(RESERVED_OPTIONS))
    if clash:
        raise TaskDefinitionError(
            f"task {task_name!r}: parameter name(s) {', '.join(clash)} are reserved for enqueue "
            "options (delay_s, idempotency_key, group); rename the parameter"
        )
    parsed = None
    if schedule is not None:
        try:
            parsed = parse_schedule(schedule)
        except ConfigurationError as exc:
            raise TaskDefinitionError(f"task {task_name!r}: schedule={schedule!r}: {exc}") from exc
        try:
            signature.bind()
        except TypeError as exc:
            raise TaskDefinitionError(
                f"task {task_name!r}: a scheduled task is enqueued with no arguments, but "
                f"{task_name}{signature} needs some ({exc})"
            ) from exc
    return TaskSpec(
        name=task_name,
        fn=fn,
        retry=retry,
        timeout_s=float(timeout_s),
        resource=resource,
        is_async=inspect.iscoroutinefunction(fn),
        signature=signature,
        schedule=parsed,
        track_state=track_state,
    )


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
