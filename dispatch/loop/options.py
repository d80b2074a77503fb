"""How a dispatcher polls and holds messages (its options), and what one run did (its stats)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from dispatch.core import constants as c
from dispatch.core.errors import ConfigurationError

__all__ = ["MAX_RECEIVE_CONCURRENCY", "DispatcherOptions", "RunStats"]

MAX_RECEIVE_CONCURRENCY: Final = 10
"""The most receives one dispatcher keeps out at once (``receive_concurrency``)."""


@dataclass(frozen=True, slots=True)
class DispatcherOptions:
    """How the loop polls and holds messages."""

    max_in_flight: int = 64  # messages held at once (waiting to start or running)
    wait_time_s: int = c.SQS_MAX_WAIT_S  # long-poll length
    drain_wait_time_s: int = 1  # long-poll length in --until-empty mode, to notice the end
    visibility_timeout_s: int = 30  # hidden for this long at receive; extended while held
    flush_s: float = 0.2  # how long a batch (deletes, visibility changes, records) may wait to fill
    throttle_horizon_s: float = 5.0  # a task that cannot start within this is deferred
    receive_concurrency: int = 3  # receives out at once while each brings a whole batch
    batch_claims: bool = True  # claims and successes in batches of conditional PartiQL UPDATEs
    linger_s: float = 0.0  # until_empty: the queue is empty only once nothing came for this long
    pause_refresh_s: float = 5.0  # how often the pauses (dispatch pause) are read again
    key_leases: bool = True  # one owner per active key across dispatchers (docs/throttle.md)
    key_lease_ttl_s: float = 15.0  # a key owner's heartbeat keeps its leases this long

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight={self.max_in_flight}: must be >= 1")
        if not 0 <= self.wait_time_s <= c.SQS_MAX_WAIT_S:
            raise ConfigurationError(f"wait_time_s={self.wait_time_s}: must be 0 to 20")
        if not 2 <= self.visibility_timeout_s <= c.SQS_MAX_VISIBILITY_S:
            raise ConfigurationError(
                f"visibility_timeout_s={self.visibility_timeout_s}: must be 2 to 43200"
            )
        if not 0.1 <= self.pause_refresh_s <= 60:
            raise ConfigurationError(
                f"pause_refresh_s={self.pause_refresh_s}: must be 0.1 to 60 seconds"
            )
        if not 3 <= self.key_lease_ttl_s <= 300:
            raise ConfigurationError(
                f"key_lease_ttl_s={self.key_lease_ttl_s}: must be 3 to 300 seconds"
            )
        if not 0 <= self.linger_s <= c.MAX_LINGER_S:
            raise ConfigurationError(f"linger_s={self.linger_s}: must be 0 to {c.MAX_LINGER_S}")
        if not 1 <= self.receive_concurrency <= MAX_RECEIVE_CONCURRENCY:
            raise ConfigurationError(
                f"receive_concurrency={self.receive_concurrency}: "
                f"must be 1 to {MAX_RECEIVE_CONCURRENCY}"
            )


@dataclass(slots=True)
class RunStats:
    """What one run of the loop did."""

    received: int = 0
    started: int = 0
    succeeded: int = 0
    retried: int = 0
    backpressure: int = 0
    dead: int = 0
    cancelled: int = 0  # attempts that settled cancelled (dispatch cancel while running)
    rejected: int = 0
    duplicates: int = 0
    deferred: int = 0
    recalled: int = 0  # deferred messages made visible before their time
    postponed: int = 0
    released: int = 0
    peak_in_flight: int = 0
    throttle_wait_s: float = 0.0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def wall_s(self) -> float:
        """Seconds the run took."""
        return max(0.0, self.finished_at - self.started_at)
