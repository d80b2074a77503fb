"""How every ``dispatch`` command reports a failure: one clear line and an exit code.

Shared by the commands of :mod:`dispatch.ops.cli` and those in modules of their own
(:mod:`dispatch.ops.cli_tasks`), which cannot import that module (it imports them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from dispatch.core.errors import ConfigurationError, DispatchError, TaskNotFoundError

__all__ = ["EXIT_CONFIG", "EXIT_NOT_FOUND", "EXIT_PROBLEM", "errors"]

P = ParamSpec("P")
R = TypeVar("R")

EXIT_PROBLEM = 1
EXIT_CONFIG = 3
EXIT_NOT_FOUND = 4


def errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print Dispatch errors as one clear line and exit with their code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return _translated(fn, *args, **kwargs)
        except TaskNotFoundError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        except ConfigurationError as exc:
            click.echo(f"configuration error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except DispatchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_PROBLEM)

    return wrapper


def _translated(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn``, with any AWS error it lets out as a Dispatch error (no credentials, a
    missing queue: configuration; an endpoint that does not answer: an AWS error),
    never a botocore traceback."""
    from botocore.exceptions import BotoCoreError, ClientError

    from dispatch.store.aws import translate_error

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as exc:
        operation = getattr(exc, "operation_name", None) or "an AWS call"
        raise translate_error(exc, operation) from exc
