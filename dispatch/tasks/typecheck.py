"""Arguments against the handler's annotations, for the JSON types a message can carry.

A task's arguments travel as JSON, so a wrong type is caught before it is sent
(``enqueue`` raises InvalidArgumentsError) and again when a message arrives (a
foreign producer's message is dead-lettered as ``bad_arguments``), instead of
failing deep inside the handler. Only what JSON can carry is checked: ``str``,
``int`` (not ``bool``), ``float`` (``int`` accepted), ``bool``, ``None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, unions, ``Optional``,
``Literal`` and ``Any``. Any other annotation (a class, a TypedDict, a forward
reference that cannot be resolved) is left to the handler.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["argument_problem", "resolved_hints"]


def resolved_hints(fn: Callable[..., Any]) -> Mapping[str, Any]:
    """The handler's parameter annotations, resolved; empty when they cannot be."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints are simply not checked
        return {}
    hints.pop("return", None)
    return hints


def argument_problem(bound: inspect.BoundArguments, hints: Mapping[str, Any]) -> str | None:
    """Why a bound argument does not match its annotation, or None when all do."""
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        if hint is None:
            continue
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            values = list(value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            values = list(value.values())
        else:
            values = [value]
        for item in values:
            if _matches(item, hint) is False:
                return f"argument {name!r} must be {_describe(hint)}, got {type(item).__name__}"
    return None


def _matches(value: Any, hint: Any) -> bool | None:  # noqa: PLR0911, PLR0912 - one case per JSON type
    """True/False when the hint can be checked, None when it is outside JSON's types."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        answers = [_matches(value, arg) for arg in args]
        if any(a is True for a in answers):
            return True
        return None if any(a is None for a in answers) else False
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        item_hint = (
            args[0] if args and (origin is list or (len(args) == 2 and args[1] is ...)) else None
        )
        if item_hint is None:
            return True
        results = [_matches(v, item_hint) for v in value]
        return not any(r is False for r in results)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            results = [_matches(v, args[1]) for v in value.values()]
            return not any(r is False for r in results)
        return True
    return None


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
