"""Retry policy: how many attempts a task gets and how long to wait between them.

The waits are tenacity wait strategies, so anything tenacity offers
(``wait_fixed``, ``wait_exponential``, ``wait_random_exponential``, sums and
chains of them) can be passed as ``wait=``. Without one, the delay is
exponential from ``base_delay_s`` up to ``max_delay_s``, with full jitter
bounded below by ``base_delay_s`` ("decorrelates" retries of a burst of tasks
that failed together, as AWS's architecture blog recommends).

The dispatcher applies the delay by changing the visibility of the *same* SQS
message, so the wait is rounded up to whole seconds and capped at SQS's 12 hours.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import tenacity
from tenacity.wait import wait_base

from dispatch.core import constants as c
from dispatch.core.errors import TaskDefinitionError

__all__ = ["Retry"]


@dataclass(frozen=True, slots=True)
class Retry:
    """How a task is retried.

    ``max_attempts`` counts every run, the first included (``max_attempts=1``
    means never retry). ``retry_on`` lists the exception types worth another
    attempt; any other exception dead-letters the task at once, as does
    :class:`dispatch.PermanentError`.
    """

    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    _: KW_ONLY
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    wait: wait_base | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= c.MAX_ATTEMPTS_LIMIT:
            raise TaskDefinitionError(
                f"Retry(max_attempts={self.max_attempts}): must be between 1 and "
                f"{c.MAX_ATTEMPTS_LIMIT} (the queue's redrive policy counts "
                f"{c.REDRIVE_MAX_RECEIVE_COUNT} receives as a safety net above it)"
            )
        if not (math.isfinite(self.base_delay_s) and self.base_delay_s >= 0):
            raise TaskDefinitionError(
                f"Retry(base_delay_s={self.base_delay_s}): must be a finite number >= 0"
            )
        if not (math.isfinite(self.max_delay_s) and self.max_delay_s >= self.base_delay_s):
            raise TaskDefinitionError(
                f"Retry(max_delay_s={self.max_delay_s}): must be finite and >= base_delay_s "
                f"({self.base_delay_s})"
            )
        if self.max_delay_s > c.SQS_MAX_VISIBILITY_S:
            raise TaskDefinitionError(
                f"Retry(max_delay_s={self.max_delay_s}): SQS can hide a message for at most "
                f"{c.SQS_MAX_VISIBILITY_S} s"
            )
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on))

    def strategy(self) -> wait_base:
        """The tenacity wait strategy this policy uses."""
        if self.wait is not None:
            return self.wait
        if self.jitter:
            return tenacity.wait_random_exponential(
                multiplier=self.base_delay_s, max=self.max_delay_s, min=self.base_delay_s
            )
        return tenacity.wait_exponential(multiplier=self.base_delay_s, max=self.max_delay_s)

    def delay_s(self, attempt: int) -> int:
        """Whole seconds to wait after failed attempt number ``attempt`` (1-based).

        Rounded up (SQS visibility has a one-second grain) and capped at 12 hours.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        state = tenacity.RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        seconds = self.strategy()(state)
        return min(c.SQS_MAX_VISIBILITY_S, max(0, math.ceil(seconds)))

    def is_retryable(self, exc: BaseException) -> bool:
        """True when ``exc`` is one of the ``retry_on`` types."""
        return isinstance(exc, self.retry_on)

    def has_attempts_left(self, attempts_made: int) -> bool:
        """True while another attempt is allowed after ``attempts_made`` runs."""
        return attempts_made < self.max_attempts


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    """``retry_on`` as a tuple of exception classes: one class or any iterable of them."""
    items: Any = (value,) if isinstance(value, type) else value
    try:
        types: tuple[Any, ...] = tuple(items)
    except TypeError:
        types = ()
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TaskDefinitionError(
            f"Retry(retry_on={value!r}): must be an exception class or a non-empty tuple of them"
        )
    return types


# A RetryCallState needs a Retrying to point at; the wait strategies never use it.
_RETRYING = tenacity.Retrying()
