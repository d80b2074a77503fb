"""Dispatch: throttled background work on AWS.

Declare tasks with :func:`task`, enqueue them with ``my_task.enqueue(...)`` or
:func:`enqueue_many`, run the :class:`Dispatcher`, and ask :func:`status`, or
``my_task.submit(...)`` and wait for the :class:`TaskHandle`'s result. This
module is the whole public API; everything else is internal.

Names are imported on first use (PEP 562), so a worker that only declares and
runs tasks never loads the AWS SDKs: a shorter Lambda cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatch.core.config import Settings
    from dispatch.core.context import BatchContext, TaskContext, current_task
    from dispatch.core.envelope import Message
    from dispatch.core.errors import (
        AWSError,
        Backpressure,
        BatchFailures,
        ConfigurationError,
        DispatchError,
        EnqueueError,
        EnvelopeError,
        InvalidArgumentsError,
        PartialEnqueueError,
        PayloadTooLargeError,
        PermanentError,
        ResultTimeoutError,
        TaskCancelledError,
        TaskDefinitionError,
        TaskFailedError,
        TaskNotFoundError,
        TaskTimeoutError,
        UnknownTaskError,
    )
    from dispatch.core.record import Status, TaskRecord
    from dispatch.core.resource import KeyLimits, Resource
    from dispatch.core.retry import Retry
    from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
    from dispatch.producer.cancelling import cancel
    from dispatch.producer.compose import AwaitingMessage, Chain, Group, TaskMessage, group
    from dispatch.producer.enqueue import Queue, enqueue_many, enqueue_many_async
    from dispatch.producer.handle import TaskHandle, handle
    from dispatch.producer.status import status
    from dispatch.tasks.registry import BatchTask, Registry, Task, TaskSpec, default_registry, task

__all__ = [
    # declaring tasks
    "BatchTask",
    "KeyLimits",
    "Registry",
    "Resource",
    "Retry",
    "Task",
    "TaskSpec",
    "default_registry",
    "task",
    # inside a handler
    "BatchContext",
    "TaskContext",
    "current_task",
    # enqueueing
    "Message",
    "Queue",
    "enqueue_many",
    "enqueue_many_async",
    # running
    "Dispatcher",
    "DispatcherOptions",
    "RunStats",
    "Settings",
    # task state
    "Status",
    "TaskRecord",
    "cancel",
    "status",
    # results
    "TaskHandle",
    "handle",
    # groups and chains
    "AwaitingMessage",
    "Chain",
    "Group",
    "TaskMessage",
    "group",
    # errors
    "AWSError",
    "Backpressure",
    "BatchFailures",
    "ConfigurationError",
    "DispatchError",
    "EnqueueError",
    "EnvelopeError",
    "InvalidArgumentsError",
    "PartialEnqueueError",
    "PayloadTooLargeError",
    "PermanentError",
    "ResultTimeoutError",
    "TaskCancelledError",
    "TaskDefinitionError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "UnknownTaskError",
]

_ERRORS = [
    "AWSError",
    "Backpressure",
    "BatchFailures",
    "ConfigurationError",
    "DispatchError",
    "EnqueueError",
    "EnvelopeError",
    "InvalidArgumentsError",
    "PartialEnqueueError",
    "PayloadTooLargeError",
    "PermanentError",
    "ResultTimeoutError",
    "TaskCancelledError",
    "TaskDefinitionError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "UnknownTaskError",
]
_HOME: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "dispatch.core.errors"),
    **dict.fromkeys(
        ["BatchTask", "Registry", "Task", "TaskSpec", "default_registry", "task"],
        "dispatch.tasks.registry",
    ),
    "KeyLimits": "dispatch.core.resource",
    "Resource": "dispatch.core.resource",
    "Retry": "dispatch.core.retry",
    "BatchContext": "dispatch.core.context",
    "TaskContext": "dispatch.core.context",
    "current_task": "dispatch.core.context",
    "Message": "dispatch.core.envelope",
    **dict.fromkeys(["Queue", "enqueue_many", "enqueue_many_async"], "dispatch.producer.enqueue"),
    **dict.fromkeys(["Dispatcher", "DispatcherOptions", "RunStats"], "dispatch.loop.dispatcher"),
    "Settings": "dispatch.core.config",
    **dict.fromkeys(["Status", "TaskRecord"], "dispatch.core.record"),
    "status": "dispatch.producer.status",
    "cancel": "dispatch.producer.cancelling",
    **dict.fromkeys(["TaskHandle", "handle"], "dispatch.producer.handle"),
    **dict.fromkeys(
        ["AwaitingMessage", "Chain", "Group", "TaskMessage", "group"],
        "dispatch.producer.compose",
    ),
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'dispatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
