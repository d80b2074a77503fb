"""Composition: groups (fan-out / fan-in) and chains, made at enqueue time.

``dispatch.group([messages]).then(callback)`` enqueues the children and returns the
callback's :class:`~dispatch.producer.handle.TaskHandle`; the callback runs once,
after every child succeeded, with their results in order as its first argument.
``first.then(second)`` (a :class:`TaskMessage`, what ``task.message(...)`` returns)
is a :class:`Chain`: ``second`` runs with ``first``'s result as its first argument.

Making one writes, before any child is sent, each link's join item
(``group#<id>``, :mod:`dispatch.store.joins`) and each callback's ``queued``
record, so a handle on the callback can be waited on at once; then the children go
out through the ordinary enqueue, each envelope naming its group (``join``). The
dispatchers do the rest (:mod:`dispatch.loop.join`).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar, overload

from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.envelope import (
    Envelope,
    Message,
    MessageOptions,
    TaskShape,
    is_lean_task_id,
)
from dispatch.core.errors import (
    EnqueueError,
    InvalidArgumentsError,
    PartialEnqueueError,
    PayloadTooLargeError,
)
from dispatch.producer.enqueue import (
    Call,
    Plan,
    Queue,
    default_queue,
    enqueue_plan,
    run_async,
    run_sync,
)
from dispatch.producer.handle import TaskHandle
from dispatch.store import joins, state

__all__ = ["AwaitingMessage", "Chain", "Group", "TaskMessage", "group", "task_message"]

_GROUP: Final = "group"
_CHAIN: Final = "chain"

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")


class AwaitingMessage(Protocol[T_co]):
    """What ``task.message(...)`` is to a type checker when it lacks only the handler's
    first argument (``sum_prices.message()``): a callback for ``.then(...)``, whose first
    argument is the result it waits for, and whose own result is ``T_co``. It is not a
    :class:`Message`, so passing it to ``enqueue`` is a type error (and, at run time,
    the binding error)."""

    @property
    def task_id(self) -> str:
        """The callback's task id."""
        ...

    def result_of(self) -> T_co:
        """Typing only: what the handler returns (the handle's result type)."""
        ...


@dataclass(frozen=True, slots=True)
class TaskMessage(Message, Generic[T]):
    """A :class:`~dispatch.core.envelope.Message` that can be chained: ``.then(next)``;
    ``T`` is what its handler returns (an async handler's: what it awaits to).

    ``awaiting`` is set when the handler's first parameter is left for a result
    (``parse.message()`` for ``def parse(text: str)``): such a message can only be
    a callback (``.then(it)``); enqueued on its own it raises the binding error.
    """

    awaiting: str | None = field(default=None, compare=False)

    def result_of(self) -> T:
        """Typing only (:class:`AwaitingMessage`): a message has no result to give."""
        raise TypeError("a message has no result: submit it and wait on its handle")

    @overload
    def then(self, message: TaskMessage[U] | AwaitingMessage[U]) -> Chain[U]: ...
    @overload
    def then(self, message: Message) -> Chain[Any]: ...
    def then(self, message: Message | AwaitingMessage[Any]) -> Chain[Any]:
        """A chain: ``message`` runs with this one's result as its first argument."""
        return Chain((self, _message(message)))


def _message(message: Message | AwaitingMessage[Any]) -> Message:
    """A callback as the message it is (``task.message`` builds one either way)."""
    if not isinstance(message, Message):
        raise TypeError(f"expected a task's message, got {type(message).__name__}")
    return message


class _AwaitingFirst:
    """A task's shape whose first parameter comes later (the result of what it waits for).

    Only the binding is checked for such a message: the other arguments' types are
    checked by the dispatcher when it runs (``bad_arguments`` otherwise).
    """

    def __init__(self, spec: TaskShape) -> None:
        self._spec = spec
        self.name = spec.name
        self.signature = spec.signature
        self.track_state = spec.track_state

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        return self.signature.bind(None, *args, **kwargs)

    def key_of(self, args: Iterable[Any], kwargs: dict[str, Any]) -> str | None:
        try:
            return self._spec.key_of((None, *args), kwargs)
        except (ValueError, TypeError):
            return None  # a key taken from the result is not known yet


def task_message(
    spec: TaskShape, args: Iterable[Any], kwargs: dict[str, Any], options: MessageOptions
) -> TaskMessage[Any]:
    """``task.message(...)``: the message for one run, or (when the arguments only lack
    the first one) a message awaiting a result, for ``.then(...)``."""
    args = tuple(args)
    try:
        built = Message.build(spec, args, kwargs, options)
        return TaskMessage(built.envelope, built.body, built.delay_s)
    except InvalidArgumentsError as exc:
        try:
            built = Message.build(_AwaitingFirst(spec), args, kwargs, options)
        except InvalidArgumentsError:
            raise exc from None
        return TaskMessage(built.envelope, built.body, built.delay_s, awaiting=str(exc))


@dataclass(frozen=True, slots=True)
class _Link:
    """One join: these children, then this callback."""

    group_id: str
    kind: str
    children: tuple[str, ...]
    callback: Envelope


def _check(message: Message, role: str) -> None:
    task = message.envelope.task
    if is_lean_task_id(message.task_id):
        raise EnqueueError(
            f"task {task!r} is lean (track_state=False): a {role} needs a task record "
            "(its success is counted from it, its result read from it)",
            task=task,
        )
    if message.envelope.idempotency_key is not None:
        raise EnqueueError(
            f"task {task!r}: a {role} cannot carry an idempotency_key (its id must be new, "
            "so that the group counts its own run)",
            task=task,
        )
    if message.envelope.join is not None:
        raise EnqueueError(f"task {task!r}: this message is already part of a group", task=task)


def _joined(message: Message, group_id: str | None) -> Message:
    envelope = dataclasses.replace(message.envelope, join=group_id)
    joined = Message(envelope, envelope.to_json(), message.delay_s)
    if joined.size_bytes > c.MAX_ENVELOPE_BYTES:
        raise PayloadTooLargeError(
            task=envelope.task, size_bytes=joined.size_bytes, limit_bytes=c.MAX_ENVELOPE_BYTES
        )
    return joined


def _callback_envelope(message: Message, group_id: str | None) -> Envelope:
    envelope = dataclasses.replace(message.envelope, join=group_id)
    size = len(envelope.to_json().encode("utf-8"))
    if size > c.MAX_CALLBACK_BODY_BYTES:
        raise PayloadTooLargeError(
            task=envelope.task, size_bytes=size, limit_bytes=c.MAX_CALLBACK_BODY_BYTES
        )
    return envelope


def _compose_plan(
    settings: Settings, links: Sequence[_Link], children: Sequence[Message], now: float
) -> Plan[list[str]]:
    """Write every join item and callback record (new ids: created, never overwritten),
    then enqueue the children."""
    for link in links:
        for item in (
            joins.group_item(
                link.group_id,
                kind=link.kind,
                children=list(link.children),
                callback=link.callback,
                now=now,
            ),
            joins.callback_record_item(link.callback, link.group_id, now),
        ):
            yield Call(
                "dynamodb",
                "put_item",
                {
                    "TableName": settings.table,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(pk)",
                },
            )
    try:
        ids: list[str] = yield from enqueue_plan(settings, children, now)
    except EnqueueError as exc:
        # Children that never went out can never succeed: no callback waits for them.
        sent = exc.task_ids if isinstance(exc, PartialEnqueueError) else [None] * len(children)
        unsent = [m.task_id for m, i in zip(children, sent, strict=True) if i is None]
        error = {
            "type": "EnqueueFailed",
            "message": f"child task(s) {', '.join(unsent)} could not be enqueued: {exc}",
            "traceback": "",
        }
        for link in links:
            params = joins.callback_dead_params(
                settings.table, link.callback.id, now=now, error=error
            )
            yield Call("dynamodb", "update_item", params)
        raise
    return ids


class Group:
    """Children enqueued together; :meth:`then` names the callback that joins them."""

    def __init__(self, messages: Iterable[Message], *, queue: Queue | None = None) -> None:
        self.messages = tuple(messages)
        self._queue = queue
        if not 1 <= len(self.messages) <= c.MAX_GROUP_CHILDREN:
            raise EnqueueError(
                f"a group holds 1 to {c.MAX_GROUP_CHILDREN} children, got {len(self.messages)} "
                "(their results must fit the callback's message)"
            )
        if len({m.task_id for m in self.messages}) != len(self.messages):
            raise EnqueueError("a group's children must be distinct messages (one id each)")
        for message in self.messages:
            _check(message, "group's child")

    def _plan(self, callback: Message) -> tuple[Plan[list[str]], str]:
        _check(callback, "callback")
        group_id = uuid.uuid4().hex
        link = _Link(
            group_id,
            _GROUP,
            tuple(m.task_id for m in self.messages),
            _callback_envelope(callback, None),
        )
        queue = self._queue or default_queue()
        children = [_joined(m, group_id) for m in self.messages]
        return _compose_plan(queue.settings, [link], children, time.time()), callback.task_id

    @overload
    def then(self, callback: TaskMessage[T] | AwaitingMessage[T]) -> TaskHandle[T]: ...
    @overload
    def then(self, callback: Message) -> TaskHandle[Any]: ...
    def then(self, callback: Message | AwaitingMessage[Any]) -> TaskHandle[Any]:
        """Enqueue the children; ``callback`` runs once after all succeeded, with their
        results (a list, in order) as its first argument. Returns its handle, typed by
        the callback's return type."""
        plan, callback_id = self._plan(_message(callback))
        queue = self._queue or default_queue()
        run_sync(plan, queue.sync_clients())
        return TaskHandle(callback_id, queue=self._queue)

    @overload
    async def then_async(self, callback: TaskMessage[T] | AwaitingMessage[T]) -> TaskHandle[T]: ...
    @overload
    async def then_async(self, callback: Message) -> TaskHandle[Any]: ...
    async def then_async(self, callback: Message | AwaitingMessage[Any]) -> TaskHandle[Any]:
        """:meth:`then` over aiobotocore."""
        plan, callback_id = self._plan(_message(callback))
        queue = self._queue or default_queue()
        await run_async(plan, await queue.aclients())
        return TaskHandle(callback_id, queue=self._queue)


def group(messages: Iterable[Message], *, queue: Queue | None = None) -> Group:
    """``dispatch.group([task.message(...), ...]).then(callback.message())``."""
    return Group(messages, queue=queue)


@dataclass(frozen=True, slots=True)
class Chain(Generic[T]):
    """Messages run one after another, each getting the previous one's result as its
    first argument; nothing is sent until :meth:`enqueue` or :meth:`submit`. ``T`` is
    what the last step returns."""

    steps: tuple[Message, ...]
    queue: Queue | None = field(default=None, compare=False)

    @overload
    def then(self, message: TaskMessage[U] | AwaitingMessage[U]) -> Chain[U]: ...
    @overload
    def then(self, message: Message) -> Chain[Any]: ...
    def then(self, message: Message | AwaitingMessage[Any]) -> Chain[Any]:
        """The chain with one more step at its end."""
        return Chain((*self.steps, _message(message)), self.queue)

    def _plan(self) -> Plan[list[str]]:
        if len({m.task_id for m in self.steps}) != len(self.steps):
            raise EnqueueError("a chain's steps must be distinct messages (one id each)")
        for position, message in enumerate(self.steps):
            _check(message, "chain's step")
            awaiting = getattr(message, "awaiting", None)  # a TaskMessage's, if it is one
            if position == 0 and awaiting:
                raise InvalidArgumentsError(str(awaiting), task=message.envelope.task)
        group_ids = [uuid.uuid4().hex for _ in self.steps[1:]]
        links = [
            _Link(
                group_ids[i],
                _CHAIN,
                (self.steps[i].task_id,),
                _callback_envelope(
                    self.steps[i + 1], group_ids[i + 1] if i + 1 < len(group_ids) else None
                ),
            )
            for i in range(len(group_ids))
        ]
        first = _joined(self.steps[0], group_ids[0] if group_ids else None)
        queue = self.queue or default_queue()
        return _compose_plan(queue.settings, links, [first], time.time())

    @property
    def last_id(self) -> str:
        """The task id of the last step: what the chain's handle waits for."""
        return self.steps[-1].task_id

    def enqueue(self) -> str:
        """Send the first step (every later one waits in the table); returns the last
        step's task id."""
        run_sync(self._plan(), (self.queue or default_queue()).sync_clients())
        return self.last_id

    async def enqueue_async(self) -> str:
        """:meth:`enqueue` over aiobotocore."""
        await run_async(self._plan(), await (self.queue or default_queue()).aclients())
        return self.last_id

    def submit(self) -> TaskHandle[T]:
        """:meth:`enqueue`, returning the last step's handle."""
        return TaskHandle(self.enqueue(), queue=self.queue)

    async def submit_async(self) -> TaskHandle[T]:
        """:meth:`submit` over aiobotocore."""
        return TaskHandle(await self.enqueue_async(), queue=self.queue)


def group_progress(task_id: str, *, queue: Queue | None = None) -> dict[str, Any] | None:
    """For a group's callback (or a chain's later step): how far its group is, as
    ``{"group", "kind", "children", "done", "failed", "callback_sent"}``; None for any
    other task. Two consistent reads (the record, then the group's item)."""
    clients = (queue or default_queue()).sync_clients()
    table = (queue or default_queue()).settings.table
    record = clients.dynamodb.get_item(
        TableName=table, Key=state.task_key(task_id), ConsistentRead=True
    ).get("Item")
    if not record or "waits_for" not in record:
        return None
    group_id = str(record["waits_for"]["S"])
    item = clients.dynamodb.get_item(
        TableName=table, Key=joins.group_key(group_id), ConsistentRead=True
    ).get("Item")
    if not item:
        return {"group": group_id, "missing": True}
    found = joins.GroupState.from_item(dict(item))
    return {
        "group": group_id,
        "kind": found.kind,
        "children": len(found.children),
        "done": len(found.done),
        "failed": sorted(found.failed),
        "callback_sent": found.sent_at is not None,
    }
