"""A protected resource and its limits: rate, burst, concurrency cap, adaptive floor, per key.

What a task names with ``@task(resource=...)``; :mod:`dispatch.throttle` enforces it.
``per_key=KeyLimits(...)`` gives each key value (a tenant, a customer) its own
limits inside the resource's (docs/throttle.md, "Per-key limits").
"""

from __future__ import annotations

import math
import re
from dataclasses import KW_ONLY, dataclass
from typing import Final, NoReturn

from dispatch.core.errors import ConfigurationError

__all__ = [
    "DEFAULT_BACKPRESSURE_COOLDOWN_S",
    "DEFAULT_DECREASE_FACTOR",
    "DEFAULT_FLOOR_FRACTION",
    "DEFAULT_RECOVERY_S",
    "KeyLimits",
    "MAX_RESOURCE_NAME_LENGTH",
    "Resource",
    "default_burst",
    "require_positive_finite",
]

DEFAULT_BACKPRESSURE_COOLDOWN_S: Final = 1.0
"""Minimum seconds between two decreases of the adaptive rate.

Tasks started together fail together: one overload episode sends a burst of
``Backpressure`` within about a second, and it should halve the rate once, not
collapse it to the floor. Sustained overload still gets through quickly: five
halvings, one per second, take the rate from the configured value to the 5 % floor.
"""

DEFAULT_DECREASE_FACTOR: Final = 0.5
"""The adaptive rate is multiplied by this on backpressure (the classic AIMD halving)."""

DEFAULT_FLOOR_FRACTION: Final = 0.05
"""Without ``Resource.min_rate_per_s``, the adaptive rate never drops below 5 % of the
configured rate, so an overloaded resource still sees some traffic to recover on."""

DEFAULT_RECOVERY_S: Final = 30.0
"""By default the adaptive rate climbs back at ``configured rate / 30`` per second of
successes: 15 s to recover from one halving, 28.5 s from the 5 % floor."""

MAX_RESOURCE_NAME_LENGTH: Final = 64
"""A resource name becomes part of a DynamoDB key and of metric dimensions."""

_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]+")


# --- configuration -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The limits of each key of a resource: ``Resource(..., per_key=KeyLimits(...))``.

    ::

        crm = Resource("crm-api", rate_per_s=100, burst=20, max_concurrency=40,
                       per_key=KeyLimits(rate_per_s=5, burst=2, max_concurrency=2))

    Each distinct key (what ``@task(key=...)`` computes from a task's arguments) gets
    its own token bucket (``rate_per_s``, ``burst``) and cap (``max_concurrency``),
    inside the resource's global limits. The fields mean what they mean on
    :class:`Resource`; at least one of ``rate_per_s`` and ``max_concurrency`` is
    required. A bad value raises :class:`~dispatch.core.errors.ConfigurationError`
    naming the field.
    """

    _: KW_ONLY
    rate_per_s: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        rate = self.rate_per_s
        if rate is not None:
            rate = _positive_finite("KeyLimits", "rate_per_s", rate)
            object.__setattr__(self, "rate_per_s", rate)
        if self.burst is not None:
            if rate is None:
                _fail("KeyLimits", "burst", "needs rate_per_s (a burst of what rate?)")
            _positive_int("KeyLimits", "burst", self.burst)
        elif rate is not None:
            object.__setattr__(self, "burst", default_burst(rate))
        if self.max_concurrency is not None:
            _positive_int("KeyLimits", "max_concurrency", self.max_concurrency)
        if rate is None and self.max_concurrency is None:
            _fail("KeyLimits", "rate_per_s", "or max_concurrency must be set (else no limit)")


@dataclass(frozen=True, slots=True)
class Resource:
    """A protected resource: how fast and how many tasks at once may use it.

    ::

        db = Resource("orders-db", rate_per_s=50, burst=10, max_concurrency=20)
        partner = Resource("partner-api", rate_per_s=0.5)  # one call every 2 s
        pool = Resource("pg-pool", max_concurrency=20)  # a cap and no rate

    ``name`` identifies the resource everywhere (logs, metrics, the shared bucket):
    1 to 64 characters from ``A-Z a-z 0-9 . _ : -``. Every task that names the same
    resource shares its limits.

    ``rate_per_s`` is tokens per second (fractions allowed); ``None`` means no rate
    limit. ``burst`` is how many tasks may start at once after a quiet spell; it
    needs a rate and defaults to ``max(1, ceil(rate_per_s))``. ``max_concurrency``
    caps the tasks running at once (``None``: no cap). At least one of
    ``rate_per_s`` and ``max_concurrency`` is required. ``min_rate_per_s`` is the
    floor of the adaptive rate under backpressure (default: 5 % of ``rate_per_s``).
    ``per_key`` (a :class:`KeyLimits`) limits each key of the tasks that name the
    resource with ``@task(key=...)``, inside these limits; it may not be wider.

    Frozen, hashable, equal by value (after the burst default is filled in). A bad
    value raises :class:`~dispatch.core.errors.ConfigurationError` naming the resource
    and the field (also in its ``setting`` attribute).
    """

    name: str
    _: KW_ONLY
    rate_per_s: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None
    min_rate_per_s: float | None = None
    per_key: KeyLimits | None = None

    def __post_init__(self) -> None:
        _validate_name(self.name)
        if self.per_key is not None:
            self._check_per_key(self.per_key)
        rate = self.rate_per_s
        if rate is not None:
            rate = self._positive_finite("rate_per_s", rate)
            object.__setattr__(self, "rate_per_s", rate)
        if self.burst is not None:
            if rate is None:
                self._fail("burst", "needs rate_per_s (a burst of what rate?)")
            self._positive_int("burst", self.burst)
        elif rate is not None:
            object.__setattr__(self, "burst", default_burst(rate))
        if self.max_concurrency is not None:
            self._positive_int("max_concurrency", self.max_concurrency)
        if self.min_rate_per_s is not None:
            if rate is None:
                self._fail("min_rate_per_s", "needs rate_per_s (it is the floor of that rate)")
            floor = self._positive_finite("min_rate_per_s", self.min_rate_per_s)
            if floor > rate:
                self._fail("min_rate_per_s", f"must not exceed rate_per_s={rate:g}, got {floor:g}")
            object.__setattr__(self, "min_rate_per_s", floor)
        if rate is None and self.max_concurrency is None:
            raise ConfigurationError(
                f"Resource {self.name!r}: set rate_per_s, max_concurrency or both "
                "(with neither it limits nothing)",
                setting="rate_per_s",
            )

    def _check_per_key(self, per_key: object) -> None:
        """A key's limits are a :class:`KeyLimits` and never wider than the resource's."""
        if not isinstance(per_key, KeyLimits):
            self._fail("per_key", f"takes a dispatch.KeyLimits, got {per_key!r}")
        for field in ("rate_per_s", "max_concurrency"):
            mine, theirs = getattr(self, field), getattr(per_key, field)
            if mine is not None and theirs is not None and theirs > mine:
                self._fail("per_key", f"{field}={theirs:g} exceeds the resource's {mine:g}")

    def _fail(self, field: str, problem: str) -> NoReturn:
        _fail(f"Resource {self.name!r}", field, problem)

    def _positive_finite(self, field: str, value: object) -> float:
        return _positive_finite(f"Resource {self.name!r}", field, value)

    def _positive_int(self, field: str, value: object) -> None:
        _positive_int(f"Resource {self.name!r}", field, value)


def _fail(owner: str, field: str, problem: str) -> NoReturn:
    raise ConfigurationError(f"{owner}: {field} {problem}", setting=field)


def _positive_finite(owner: str, field: str, value: object) -> float:
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float: not finite either
            number = math.inf
    if not (math.isfinite(number) and number > 0):
        _fail(owner, field, f"must be a finite number > 0, got {value!r}")
    return number


def _positive_int(owner: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(owner, field, f"must be an integer >= 1, got {value!r}")


def _validate_name(name: object) -> None:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_RESOURCE_NAME_LENGTH
        or not _NAME_PATTERN.fullmatch(name)
    ):
        raise ConfigurationError(
            f"Resource name {name!r} is not valid: use 1 to {MAX_RESOURCE_NAME_LENGTH} "
            "characters from A-Z a-z 0-9 . _ : -",
            setting="name",
        )


def default_burst(rate_per_s: float) -> int:
    """One second's worth of tokens, and at least one."""
    return max(1, math.ceil(rate_per_s))


def require_positive_finite(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
