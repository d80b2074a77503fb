"""Task declarations: the ``@task`` decorator, :class:`TaskSpec` and :class:`Registry`.

A task is a plain function (sync or async) registered under a name. The
decorator returns a :class:`Task`, which still calls the function directly and
adds ``enqueue``/``enqueue_async``/``message``, typed with the function's own
parameters (``ParamSpec``) so a type checker catches a wrong argument at the
call site.

``@task(batch_size=..., batch_window_s=...)`` declares a micro-batch task: its
handler takes one list, and the decorator returns a :class:`BatchTask` whose
``enqueue(item)`` puts one item (its own task) on the queue, typed with the
list's element type. The dispatcher gathers items into batches
(:mod:`dispatch.loop.microbatch`).
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import math
import os
import sys
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Concatenate, Final, Generic, ParamSpec, TypeVar, overload

from dispatch.core import constants as c
from dispatch.core.envelope import RESERVED_OPTIONS, Envelope, Message, MessageOptions
from dispatch.core.errors import (
    ConfigurationError,
    EnqueueError,
    EnvelopeError,
    TaskDefinitionError,
    UnknownTaskError,
)
from dispatch.core.resource import Resource
from dispatch.core.retry import Retry
from dispatch.producer.compose import AwaitingMessage, TaskMessage, task_message
from dispatch.producer.enqueue import default_queue
from dispatch.producer.handle import TaskHandle
from dispatch.tasks.cron import Schedule
from dispatch.tasks.cron import parse as parse_schedule
from dispatch.tasks.keys import KeyBy, check_key, compute_key
from dispatch.tasks.typecheck import argument_problem, resolved_hints

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BatchOptions",
    "BatchTask",
    "Registry",
    "Task",
    "TaskSpec",
    "default_registry",
    "resolve",
    "task",
]

P = ParamSpec("P")
Q = ParamSpec("Q")  # the parameters after the first (a callback's: the first is a result)
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
_HINTS: dict[Callable[..., Any], Mapping[str, Any]] = {}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
# What a batch handler's one parameter may be annotated with: it receives a list.
_LIST_ORIGINS: Final = (
    list,
    collections.abc.Sequence,
    collections.abc.Collection,
    collections.abc.Iterable,
)
_ITEM_SIGNATURE: Final = inspect.Signature(
    [inspect.Parameter("item", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
)


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a micro-batch task's items are gathered: up to ``size`` items, or
    ``window_s`` after the first one arrived, whichever comes first."""

    size: int
    window_s: float
    parameter: str  # the handler's one (list) parameter
    item_hint: Any = Any  # the list's element type, checked at enqueue and on arrival


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
    batch: BatchOptions | None = None  # micro-batch: the handler takes a list of items
    track_state: bool = True  # False: lean, SQS only, no task record (docs/api.md)
    store_result: bool = True  # False: the handler's return value is not kept on the record
    key: KeyBy | None = None  # per-key limits: an argument name or a callable (docs/api.md)

    def key_of(self, args: Iterable[Any], kwargs: dict[str, Any]) -> str | None:
        """The key of a call (``@task(key=...)``), None for an unkeyed task; ValueError
        says why the arguments give no valid key."""
        if self.key is None:
            return None
        return compute_key(self.key, self.signature, tuple(args), kwargs)

    def __post_init__(self) -> None:
        if self.signature is None:
            object.__setattr__(self, "signature", inspect.signature(self.fn))

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Bind arguments to the handler's signature and check them against its
        annotations (the JSON types); raises TypeError when they do not fit.

        A batch task's message carries one item (``args == [item]``): it is checked
        against the list's element type and bound as a list of one.
        """
        if self.batch is not None:
            return self._bind_item(self.batch, tuple(args), kwargs)
        bound = self.signature.bind(*args, **kwargs)
        problem = argument_problem(bound, self.hints)
        if problem is not None:
            raise TypeError(problem)
        return bound

    def _bind_item(
        self, batch: BatchOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> inspect.BoundArguments:
        if kwargs or len(args) != 1:
            raise TypeError(
                f"a batch task's message carries exactly one item (args=[item], no kwargs), "
                f"got {len(args)} positional and {len(kwargs)} keyword argument(s)"
            )
        problem = argument_problem(_ITEM_SIGNATURE.bind(args[0]), {"item": batch.item_hint})
        if problem is not None:
            raise TypeError(problem.replace("argument 'item'", "the item", 1))
        return self.signature.bind([args[0]])

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

    @overload
    def message(
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskMessage[T]: ...
    @overload
    def message(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskMessage[T]: ...
    @overload
    def message(
        self: Task[Concatenate[Any, Q], Coroutine[Any, Any, T]],
        *args: Q.args,
        **kwargs: Q.kwargs,
    ) -> AwaitingMessage[T]: ...
    @overload
    def message(
        self: Task[Concatenate[Any, Q], T], *args: Q.args, **kwargs: Q.kwargs
    ) -> AwaitingMessage[T]: ...
    def message(self, *args: Any, **kwargs: Any) -> TaskMessage[Any] | AwaitingMessage[Any]:
        """Build the message for one run without sending it (for ``enqueue_many``).

        The reserved keywords ``delay_s``, ``idempotency_key`` and ``group`` are
        taken as enqueue options; everything else must bind to the handler. Without
        the handler's first argument it is a callback (an :class:`AwaitingMessage`,
        for ``.then(...)``): its first argument is the result it waits for.
        """
        call_kwargs = dict(kwargs)
        options = MessageOptions.from_kwargs(
            {k: call_kwargs.pop(k) for k in RESERVED_OPTIONS if k in call_kwargs}
        )
        return task_message(self.spec, args, call_kwargs, options)  # .then(...): a chain

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
        return default_queue().enqueue(self.message(*args, **kwargs))

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Put one run on the queue (aiobotocore); returns the task id."""
        return await default_queue().enqueue_async(self.message(*args, **kwargs))

    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    @overload
    def submit(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...
    def submit(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Enqueue one run, as :meth:`enqueue`, and return its :class:`TaskHandle`,
        typed by the handler's return type (an async handler's: what it awaits to)."""
        message = _waitable(self.spec, self.message(*args, **kwargs))
        return TaskHandle(default_queue().enqueue(message))

    @overload
    async def submit_async(
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    @overload
    async def submit_async(
        self: Task[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    async def submit_async(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """:meth:`submit` over aiobotocore."""
        message = _waitable(self.spec, self.message(*args, **kwargs))
        return TaskHandle(await default_queue().enqueue_async(message))


def _waitable(spec: TaskSpec, message: Message) -> Message:
    """The message, when its task keeps a record to wait on; a lean task's is refused."""
    if not spec.track_state:
        raise EnqueueError(
            f"task {spec.name!r} is lean (track_state=False): it keeps no record, so there "
            "is no result to wait for and nothing was enqueued; use enqueue() (which returns "
            "the id), or declare the task without track_state=False",
            task=spec.name,
        )
    return message


class BoundTask(Generic[P, R]):
    """A task with enqueue options fixed; see :meth:`Task.with_options`."""

    def __init__(self, task: Task[P, R], options: MessageOptions) -> None:
        self._task = task
        self._options = options

    @overload
    def message(
        self: BoundTask[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskMessage[T]: ...
    @overload
    def message(self: BoundTask[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskMessage[T]: ...
    @overload
    def message(
        self: BoundTask[Concatenate[Any, Q], Coroutine[Any, Any, T]],
        *args: Q.args,
        **kwargs: Q.kwargs,
    ) -> AwaitingMessage[T]: ...
    @overload
    def message(
        self: BoundTask[Concatenate[Any, Q], T], *args: Q.args, **kwargs: Q.kwargs
    ) -> AwaitingMessage[T]: ...
    def message(self, *args: Any, **kwargs: Any) -> TaskMessage[Any] | AwaitingMessage[Any]:
        """The message for one run, with these options (a callback without the first
        argument, as :meth:`Task.message`)."""
        return task_message(self._task.spec, args, dict(kwargs), self._options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue one run with these options (boto3); returns the task id."""
        return default_queue().enqueue(self.message(*args, **kwargs))

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue one run with these options (aiobotocore); returns the task id."""
        return await default_queue().enqueue_async(self.message(*args, **kwargs))

    @overload
    def submit(
        self: BoundTask[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    @overload
    def submit(self: BoundTask[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...
    def submit(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Enqueue one run with these options; returns its :class:`TaskHandle`."""
        message = _waitable(self._task.spec, self.message(*args, **kwargs))
        return TaskHandle(default_queue().enqueue(message))


class BatchTask(Generic[T, R]):
    """A registered micro-batch task: its handler takes a list of items; each
    ``enqueue(item)`` puts one item on the queue as a task of its own."""

    def __init__(self, spec: TaskSpec, fn: Callable[[list[T]], R]) -> None:
        self.spec = spec
        self._fn = fn
        self.__name__ = spec.name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        """The name the task is registered and enqueued under."""
        return self.spec.name

    def __call__(self, items: list[T], /) -> R:
        """Run the handler here and now on ``items``, without the queue."""
        return self._fn(items)

    def __repr__(self) -> str:
        return f"<BatchTask {self.spec.name!r}>"

    def message(
        self,
        item: T,
        /,
        *,
        delay_s: float | None = None,
        idempotency_key: str | None = None,
        group: str | None = None,
    ) -> Message:
        """Build the message for one item without sending it (for ``enqueue_many``)."""
        options = MessageOptions(delay_s=delay_s, idempotency_key=idempotency_key, group=group)
        return Message.build(self.spec, (item,), {}, options)

    def enqueue(
        self,
        item: T,
        /,
        *,
        delay_s: float | None = None,
        idempotency_key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Put one item on the queue (boto3, blocking); returns its task id."""
        message = self.message(item, delay_s=delay_s, idempotency_key=idempotency_key, group=group)
        return default_queue().enqueue(message)

    async def enqueue_async(
        self,
        item: T,
        /,
        *,
        delay_s: float | None = None,
        idempotency_key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Put one item on the queue (aiobotocore); returns its task id."""
        message = self.message(item, delay_s=delay_s, idempotency_key=idempotency_key, group=group)
        return await default_queue().enqueue_async(message)

    def submit(
        self,
        item: T,
        /,
        *,
        delay_s: float | None = None,
        idempotency_key: str | None = None,
        group: str | None = None,
    ) -> TaskHandle[Any]:
        """Put one item on the queue; returns its :class:`TaskHandle`. Its result is the
        item's entry of the list the handler returned (one per item), or else the whole
        return value, so it is typed ``Any``."""
        message = self.message(item, delay_s=delay_s, idempotency_key=idempotency_key, group=group)
        return TaskHandle(default_queue().enqueue(_waitable(self.spec, message)))


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
        """Import the modules that declare tasks (``DISPATCH_TASKS``), naming any that fails.

        The current folder is importable, as with ``python -m`` and ``celery -A``: a
        console script (``dispatch``) otherwise sees only its own installation, and a
        project's ``myapp.tasks`` that ``python -c "import myapp.tasks"`` finds would
        not be found from the same folder.
        """
        here = os.getcwd()
        if here not in sys.path and "" not in sys.path:
            sys.path.insert(0, here)
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"cannot import task module {module!r} (from {c.ENV_TASKS} or --tasks): "
                    f"{exc}{_import_hint(module, exc, here)}",
                    setting=c.ENV_TASKS,
                ) from exc


def _import_hint(module: str, exc: ImportError, here: str) -> str:
    """What to do when the task module's own package is not found from ``here``."""
    top = module.split(".", maxsplit=1)[0]
    if not isinstance(exc, ModuleNotFoundError) or exc.name != top:
        return ""
    return (
        f"; {top!r} is neither in the current folder ({here}) nor installed: run from the "
        f"folder that holds {top}/, add that folder to PYTHONPATH, or pip install your project"
    )


default_registry = Registry()


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    batch_size: int,
    batch_window_s: float = c.DEFAULT_BATCH_WINDOW_S,
    name: str | None = None,
    resource: Resource | None = None,
    retry: Retry | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    track_state: bool = True,
    store_result: bool = True,
    registry: Registry | None = None,
) -> Callable[[Callable[[list[T]], R]], BatchTask[T, R]]: ...


@overload
def task(
    *,
    name: str | None = None,
    resource: Resource | None = None,
    retry: Retry | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    schedule: str | None = None,
    track_state: bool = True,
    store_result: bool = True,
    key: KeyBy | None = None,
    registry: Registry | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    resource: Resource | None = None,
    retry: Retry | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    schedule: str | None = None,
    batch_size: int | None = None,
    batch_window_s: float | None = None,
    track_state: bool = True,
    store_result: bool = True,
    key: KeyBy | None = None,
    registry: Registry | None = None,
) -> Any:
    """Declare a task: ``@task`` or ``@task(resource=db, retry=Retry(...), timeout_s=30)``.

    ``name`` defaults to the function's name. ``timeout_s`` bounds one attempt.
    ``schedule`` (an EventBridge ``cron(...)`` or ``rate(...)`` expression) makes
    it periodic: dispatchers enqueue it once per fire time (docs/operations.md).
    ``batch_size`` (with ``batch_window_s``, default 1 s) makes it a micro-batch
    task: the handler takes one list and receives up to ``batch_size`` items
    gathered from the queue, or fewer once ``batch_window_s`` has passed since
    the first arrived (docs/api.md, "Micro-batch tasks").
    ``track_state=False`` makes it lean: SQS only, no DynamoDB task record, so
    about a third of a request per task instead of about 1.4, at the price of
    plain at-least-once delivery (a duplicate delivery may run twice), attempts
    counted from the message's receive count, and no ``dispatch status`` or
    ``dispatch cancel`` for it (docs/api.md, "Lean tasks").
    ``store_result=False``: the handler's return value is not kept on its record
    (whatever it is), so ``submit(...).result()`` gives None once it succeeded
    (docs/api.md, "Results").
    ``key`` (a parameter name, or a callable taking the task's arguments) gives each
    call a key for a resource with ``per_key`` limits (docs/throttle.md, "Per-key limits").
    """

    def decorate(func: Callable[..., Any]) -> Any:
        spec = _make_spec(
            func,
            name=name,
            resource=resource,
            retry=retry or Retry(),
            timeout_s=timeout_s,
            schedule=schedule,
            batch_size=batch_size,
            batch_window_s=batch_window_s,
            track_state=track_state,
            store_result=store_result,
            key=key,
        )
        (default_registry if registry is None else registry).register(spec)
        if spec.batch is not None:
            return BatchTask(spec, func)
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
    batch_size: int | None = None,
    batch_window_s: float | None = None,
    track_state: bool = True,
    store_result: bool = True,
    key: KeyBy | None = None,
) -> TaskSpec:
    """Check a ``@task`` declaration and build its spec; TaskDefinitionError names what
    cannot describe a task."""
    if not callable(fn):
        raise TaskDefinitionError(f"@task needs a function, got {fn!r}")
    task_name = _task_name(fn, name)
    _check_options(
        task_name, timeout_s=timeout_s, resource=resource, retry=retry, track_state=track_state
    )
    if not isinstance(store_result, bool):
        raise TaskDefinitionError(
            f"task {task_name!r}: store_result={store_result!r} must be True (the result "
            "is kept on the task record, the default) or False (it is not)"
        )
    signature = inspect.signature(fn)
    _check_parameter_names(task_name, signature)
    is_batch = batch_size is not None or batch_window_s is not None
    if schedule is not None and is_batch:
        raise TaskDefinitionError(
            f"task {task_name!r}: a periodic task (schedule=) cannot be a batch task "
            "(batch_size=): a schedule enqueues no items"
        )
    parsed = None if schedule is None else _schedule(task_name, schedule, signature)
    batch = None
    if is_batch:
        batch = _batch_options(task_name, fn, signature, batch_size, batch_window_s)
    check_key(task_name, key, resource, signature, is_batch=is_batch)
    return TaskSpec(
        name=task_name,
        fn=fn,
        retry=retry,
        timeout_s=float(timeout_s),
        resource=resource,
        is_async=inspect.iscoroutinefunction(fn),
        signature=signature,
        schedule=parsed,
        batch=batch,
        track_state=track_state,
        store_result=store_result,
        key=key,
    )


def _task_name(fn: Callable[..., Any], name: str | None) -> str:
    """``name``, or the function's own; refused unless 1 to 128 safe characters."""
    task_name: str = getattr(fn, "__name__", "") if name is None else name
    if not task_name or not set(task_name) <= _NAME_CHARS or len(task_name) > 128:
        raise TaskDefinitionError(
            f"task name {task_name!r}: use 1 to 128 letters, digits or _ . : -"
        )
    return task_name


def _check_parameter_names(task_name: str, signature: inspect.Signature) -> None:
    """Refuse a handler parameter named like an enqueue option (it could never be passed)."""
    clash = sorted(set(signature.parameters) & set(RESERVED_OPTIONS))
    if clash:
        raise TaskDefinitionError(
            f"task {task_name!r}: parameter name(s) {', '.join(clash)} are reserved for enqueue "
            "options (delay_s, idempotency_key, group); rename the parameter"
        )


def _schedule(task_name: str, schedule: str, signature: inspect.Signature) -> Schedule:
    """A periodic task's parsed schedule; its handler must run with no arguments."""
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
    return parsed


def _check_options(
    task_name: str,
    *,
    timeout_s: float,
    resource: Resource | None,
    retry: Retry,
    track_state: bool,
) -> None:
    """Refuse option values that cannot describe a task, naming the option."""
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


def _batch_options(
    task_name: str,
    fn: Callable[..., Any],
    signature: inspect.Signature,
    batch_size: int | None,
    batch_window_s: float | None,
) -> BatchOptions:
    """Validate a batch task's options and its handler's one list parameter."""
    size = _batch_size(task_name, batch_size)
    window_s = _batch_window_s(task_name, batch_window_s)
    parameters = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) != 1 or parameters[0].kind not in positional:
        raise TaskDefinitionError(
            f"task {task_name!r}: a batch handler takes exactly one parameter, the list of "
            f"items (e.g. def {task_name}(items: list[str]) -> ...), but it is "
            f"{task_name}{signature}"
        )
    parameter = parameters[0].name
    item_hint = _item_hint(task_name, parameter, resolved_hints(fn).get(parameter))
    return BatchOptions(size=size, window_s=window_s, parameter=parameter, item_hint=item_hint)


def _batch_size(task_name: str, batch_size: int | None) -> int:
    """``batch_size=``: a whole number of items, 1 to the most a handler call takes."""
    if batch_size is None:
        raise TaskDefinitionError(
            f"task {task_name!r}: batch_window_s= needs batch_size= (the most items per call)"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TaskDefinitionError(
            f"task {task_name!r}: batch_size={batch_size!r} must be a whole number of items"
        )
    if not 1 <= batch_size <= c.MAX_BATCH_SIZE:
        raise TaskDefinitionError(
            f"task {task_name!r}: batch_size={batch_size} must be 1 to {c.MAX_BATCH_SIZE}"
        )
    return batch_size


def _batch_window_s(task_name: str, batch_window_s: float | None) -> float:
    """``batch_window_s=`` (default 1 s): over 0 and at most the longest a message is held."""
    window_s = c.DEFAULT_BATCH_WINDOW_S if batch_window_s is None else batch_window_s
    if not (
        isinstance(window_s, int | float)
        and not isinstance(window_s, bool)
        and math.isfinite(window_s)
        and 0 < window_s <= c.MAX_BATCH_WINDOW_S
    ):
        raise TaskDefinitionError(
            f"task {task_name!r}: batch_window_s={window_s!r} must be > 0 and at most "
            f"{c.MAX_BATCH_WINDOW_S:g} seconds (held messages wait that long at most)"
        )
    return float(window_s)


def _item_hint(task_name: str, parameter: str, hint: Any) -> Any:
    """The element type of a batch handler's list parameter (``Any`` when not annotated)."""
    if hint is None or hint is list or hint is Any:
        return Any
    if typing.get_origin(hint) not in _LIST_ORIGINS:
        raise TaskDefinitionError(
            f"task {task_name!r}: a batch handler's parameter receives a list, but "
            f"{parameter!r} is annotated {hint!r}; annotate it list[ItemType]"
        )
    args = typing.get_args(hint)
    return args[0] if args else Any


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def resolve(envelope: Envelope, registry: Registry) -> TaskSpec:
    """The spec that runs this envelope; EnvelopeError for an unknown task or bad arguments."""
    if envelope.task not in registry:
        known = ", ".join(spec.name for spec in registry.specs()) or "none"
        raise EnvelopeError(
            f"unknown task {envelope.task!r} (this dispatcher knows: {known}); check "
            f"{c.ENV_TASKS} names the module that declares it",
            task_id=envelope.id,
            task=envelope.task,
        )
    spec = registry.get(envelope.task)
    try:
        spec.bind(envelope.args, envelope.kwargs)
    except TypeError as exc:
        raise EnvelopeError(
            f"arguments do not bind to {spec.name}{spec.signature}: {exc}",
            task_id=envelope.id,
            task=envelope.task,
        ) from None
    return spec
