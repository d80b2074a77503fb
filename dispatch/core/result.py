"""How a task record keeps a handler's result: compact JSON of at most ``MAX_RESULT_BYTES``.

One function measures it, for the worker that checks a result before reporting
its attempt succeeded (:mod:`dispatch_workers.runtime`) and for the dispatcher
that writes it (:mod:`dispatch.store.state`), so both agree to the byte.
"""

from __future__ import annotations

import json
from typing import Any

from dispatch.core import constants as c
from dispatch.core.errors import ResultNotSerializableError, ResultTooLargeError

__all__ = ["result_json"]


def result_json(value: Any, *, task: str) -> str:
    """``value`` as its record keeps it: compact JSON (ASCII, NaN refused).

    Raises :class:`ResultNotSerializableError` when JSON cannot carry it and
    :class:`ResultTooLargeError` when it is over ``MAX_RESULT_BYTES``.
    """
    try:
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ResultNotSerializableError(
            task=task, type_name=type(value).__name__, why=str(exc)[:200]
        ) from None
    size = len(encoded)  # ASCII: one byte per character
    if size > c.MAX_RESULT_BYTES:
        raise ResultTooLargeError(task=task, size_bytes=size, limit_bytes=c.MAX_RESULT_BYTES)
    return encoded
