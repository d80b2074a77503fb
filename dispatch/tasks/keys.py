"""Task keys: the value ``@task(key=...)`` computes from a call's arguments, and its checks.

A keyed task names a resource with per-key limits (``Resource(per_key=KeyLimits(...))``)
and says where its key comes from: the name of one of the handler's parameters, or a
callable that takes the task's arguments (the handler's signature) and returns the key.
The key must be a string an SQS ``MessageGroupId`` can carry (1 to 128 ASCII letters,
digits and punctuation); one rule holds at enqueue (nothing is sent) and on arrival (a
foreign message is dead-lettered as ``bad_arguments``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

from dispatch.core.envelope import key_problem
from dispatch.core.errors import TaskDefinitionError
from dispatch.core.resource import Resource

__all__ = ["KeyBy", "check_key", "compute_key"]

KeyBy: TypeAlias = str | Callable[..., Any]
"""Where a task's key comes from: a parameter name, or a callable over the arguments."""

_NAMED_KINDS = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


def check_key(
    task_name: str,
    key: object,
    resource: Resource | None,
    signature: inspect.Signature,
    *,
    is_batch: bool,
) -> None:
    """Refuse, at declaration, a ``key=`` that cannot work with this task and resource
    (or a keyed resource without ``key=``); TaskDefinitionError names both."""
    per_key = resource.per_key if resource is not None else None
    if key is None:
        if per_key is not None and resource is not None:
            raise TaskDefinitionError(
                f"task {task_name!r}: resource {resource.name!r} has per_key limits, so the "
                "task needs key= (the name of the handler argument that holds the key, or a "
                "callable taking the task's arguments and returning it)"
            )
        return
    if per_key is None:
        named = "no resource" if resource is None else f"resource {resource.name!r}"
        raise TaskDefinitionError(
            f"task {task_name!r}: key={key!r} needs a resource with per-key limits, but the "
            f"task names {named} without per_key; declare "
            "Resource(..., per_key=KeyLimits(...)) or drop key="
        )
    if is_batch:
        raise TaskDefinitionError(
            f"task {task_name!r}: a batch task (batch_size=) cannot have key=: one call "
            "carries many items and takes one start"
        )
    if isinstance(key, str):
        parameter = signature.parameters.get(key)
        if parameter is None or parameter.kind not in _NAMED_KINDS:
            raise TaskDefinitionError(
                f"task {task_name!r}: key={key!r} is not a named parameter of "
                f"{task_name}{signature}; name one of its parameters, or pass a callable"
            )
    elif not callable(key):
        raise TaskDefinitionError(
            f"task {task_name!r}: key= takes a parameter name (str) or a callable, got {key!r}"
        )


def compute_key(
    key_by: KeyBy, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The key of one call; ValueError says why there is none (names the key and why)."""
    if isinstance(key_by, str):
        label = f"key argument {key_by!r}"
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValueError(f"{label}: the arguments do not bind ({exc})") from exc
        bound.apply_defaults()
        if key_by not in bound.arguments:
            raise ValueError(f"{label} is missing")
        value = bound.arguments[key_by]
    else:
        label = f"key function {getattr(key_by, '__qualname__', repr(key_by))}"
        try:
            value = key_by(*args, **kwargs)
        except Exception as exc:  # a user's callable: any failure means "no key"
            raise ValueError(f"{label} raised {type(exc).__name__}: {exc}") from exc
    problem = key_problem(value)
    if problem is not None:
        raise ValueError(f"{label} gave {value!r:.80}, which is not a valid key: it {problem}")
    return str(value)
