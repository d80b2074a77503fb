"""Dispatch: throttled background work on AWS.

Declare tasks with :func:`task`, enqueue them with ``my_task.enqueue(...)`` or
:func:`enqueue_many`, run the :class:`Dispatcher`, and ask :func:`status`. This
module is the whole public API; everything else is internal.
"""

from __future__ import annotations

from dispatch.config import Settings
from dispatch.context import TaskContext, current_task
from dispatch.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.envelope import Message
from dispatch.errors import (
    AWSError,
    Backpressure,
    ConfigurationError,
    DispatchError,
    EnqueueError,
    EnvelopeError,
    InvalidArgumentsError,
    PartialEnqueueError,
    PayloadTooLargeError,
    PermanentError,
    TaskDefinitionError,
    TaskNotFoundError,
    TaskTimeoutError,
    UnknownTaskError,
)
from dispatch.queue import Queue, enqueue_many, enqueue_many_async
from dispatch.registry import Registry, Task, TaskSpec, default_registry, task
from dispatch.retry import Retry
from dispatch.state import Status, TaskRecord
from dispatch.status import status
from dispatch.throttle import Resource

__all__ = [
    # declaring tasks
    "Registry",
    "Resource",
    "Retry",
    "Task",
    "TaskSpec",
    "default_registry",
    "task",
    # inside a handler
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
    "status",
    # errors
    "AWSError",
    "Backpressure",
    "ConfigurationError",
    "DispatchError",
    "EnqueueError",
    "EnvelopeError",
    "InvalidArgumentsError",
    "PartialEnqueueError",
    "PayloadTooLargeError",
    "PermanentError",
    "TaskDefinitionError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "UnknownTaskError",
]
