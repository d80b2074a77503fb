"""Key owners: one dispatcher at a time runs each active key, so per-key limits hold for all.

Off by default (``DispatcherOptions(key_leases=True)`` turns it on). A keyed
message that arrives at a dispatcher meets :meth:`KeyOwners.hide_s`:

- its key is owned here (a valid lease, our heartbeat fresh): it may run;
- nobody owns it: one conditional write takes the lease, then it may run;
- another dispatcher owns it and that owner's heartbeat is fresh: the message is
  hidden for :data:`ELSEWHERE_HIDE_S`, so a later receive (of the owner, sooner or
  later) gets it; the answer is remembered, so it costs no request per message;
- the owner's heartbeat is stale (it died, or lost the table) by more than
  :data:`TAKEOVER_MARGIN_S`: the lease is taken over, conditional on the epoch read.

Cost follows the active keys: one write when a key becomes active here, one when it
goes idle (held at least :data:`HOLD_S` after its last use, so a key does not
change hands per message), one heartbeat per dispatcher every third of the TTL
however many keys it owns, and a heartbeat read per other owner at most every
:data:`ALIVE_CACHE_S`. When the table refuses, the key fails closed: its messages
are hidden as throttled (:data:`FAIL_CLOSED_HIDE_S`), other keys go on. An owner
whose own heartbeat could not be written stops starting its keys
:data:`TAKEOVER_MARGIN_S` before its leases lapse, and a taker waits the same
margin past the lapse: clock skew under the margin never lets two dispatchers run
one key. A stopping dispatcher gives every lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final, Protocol

import structlog

from dispatch.core.errors import DispatchError
from dispatch.store.key_leases import Held, KeyLease

__all__ = ["KeyOwners", "LeaseStore"]

log = structlog.get_logger("dispatch.loop.key_owners")

DEFAULT_TTL_S: Final = 15.0
"""How long a heartbeat keeps its owner's leases valid."""
TAKEOVER_MARGIN_S: Final = 2.0
"""An owner stops this long before its leases lapse by its clock; a taker waits this
long past the lapse by its own."""
HOLD_S: Final = 30.0
"""A lease is kept at least this long after its key was last used here."""
ELSEWHERE_HIDE_S: Final = 1.0
"""A message of a key another dispatcher owns is hidden this long."""
FAIL_CLOSED_HIDE_S: Final = 1.0
"""A message whose key's lease could not be read or written is hidden this long."""
ALIVE_CACHE_S: Final = 3.0
"""Another owner's heartbeat is read again at most this often."""

Key = tuple[str, str]  # (resource, key)


class LeaseStore(Protocol):
    """Where key leases live (:class:`~dispatch.store.key_leases.KeyLeaseStore`)."""

    async def acquire(self, resource: str, key: str) -> KeyLease | Held:
        """Own ``key`` unless another dispatcher does."""
        ...

    async def take_over(self, resource: str, key: str, held: Held) -> KeyLease | Held:
        """Own ``key`` in place of ``held``, if nobody changed the lease since."""
        ...

    async def release(self, lease: KeyLease) -> bool:
        """Give ``lease`` up, if it is still ours."""
        ...

    async def beat(self, until: float) -> None:
        """Our leases are valid until ``until``."""
        ...

    async def retire(self) -> None:
        """We own nothing any more."""
        ...

    async def alive_until(self, owner: str) -> float:
        """Until when ``owner``'s leases are valid."""
        ...


class KeyOwners:
    """The keys this dispatcher owns, and what it knows of the others'."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        busy: Callable[[str, str], bool],
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._busy = busy  # (resource, key) -> tasks of it wait or run here
        self._ttl_s = ttl_s
        self._clock = clock
        self._owned: dict[Key, KeyLease] = {}
        self._used_at: dict[Key, float] = {}
        self._elsewhere: dict[Key, Held] = {}
        self._alive: dict[str, tuple[float, float]] = {}  # owner -> (until, read at)
        self._valid_until = 0.0  # our own leases, by our clock (heartbeat less margin)
        self._asking: dict[Key, asyncio.Future[None]] = {}
        self._beating: asyncio.Task[None] | None = None

    def owns(self, resource: str, key: str) -> bool:
        """Whether ``key`` is owned here and our heartbeat keeps the lease valid now."""
        return (resource, key) in self._owned and self._clock() < self._valid_until

    def owned(self) -> int:
        """How many keys this dispatcher owns now."""
        return len(self._owned)

    async def hide_s(self, resource: str, key: str) -> float | None:
        """None when a message of ``key`` may run here (the key owned here, taken if
        free); else the seconds to hide it."""
        k = (resource, key)
        while (asking := self._asking.get(k)) is not None:
            await asyncio.shield(asking)  # one request per key at a time
        if k in self._owned:
            return self._use(k)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asking[k] = done
        try:
            return await self._find_owner(k)
        except DispatchError as exc:
            log.warning("key_lease_failed", resource=resource, key=key, error=str(exc))
            return FAIL_CLOSED_HIDE_S
        finally:
            del self._asking[k]
            done.set_result(None)

    def _use(self, k: Key) -> float | None:
        if self._clock() >= self._valid_until:
            return FAIL_CLOSED_HIDE_S  # our heartbeat lapsed: fail closed
        self._used_at[k] = self._clock()
        return None

    async def _find_owner(self, k: Key) -> float | None:
        held = self._elsewhere.get(k)
        if held is not None and await self._alive_now(held.owner):
            return ELSEWHERE_HIDE_S
        # Our heartbeat first: a lease must never name an owner whose heartbeat another
        # dispatcher could read as missing (it would take the key over at once).
        if self._clock() >= self._valid_until - self._ttl_s / 2:
            await self._beat()
        if self._beating is None:
            self._beating = asyncio.ensure_future(self._beat_forever())
        resource, key = k
        answer: KeyLease | Held
        if held is None:
            answer = await self._store.acquire(resource, key)
        else:
            answer = await self._store.take_over(resource, key, held)
        if isinstance(answer, Held) and not answer.owner:
            answer = await self._store.acquire(resource, key)  # released meanwhile
        if isinstance(answer, Held) and not await self._alive_now(answer.owner):
            held = answer
            answer = await self._store.take_over(resource, key, answer)
        if isinstance(answer, Held):
            self._elsewhere[k] = answer
            return ELSEWHERE_HIDE_S
        self._elsewhere.pop(k, None)
        self._owned[k] = answer
        if held is not None and held.owner:
            log.info("key_taken_over", resource=resource, key=key, previous=held.owner)
        return self._use(k)

    async def _alive_now(self, owner: str) -> bool:
        """Whether ``owner``'s heartbeat is fresh, with :data:`TAKEOVER_MARGIN_S` to
        spare: read again only once the ``until`` last read has passed (a heartbeat
        only moves on), and at most every :data:`ALIVE_CACHE_S`."""
        now = self._clock()
        until, read_at = self._alive.get(owner, (0.0, -ALIVE_CACHE_S))
        if now >= until and now - read_at >= ALIVE_CACHE_S:
            until = await self._store.alive_until(owner)
            self._alive[owner] = (until, now)
        return now < until + TAKEOVER_MARGIN_S

    async def _beat(self) -> None:
        sent_at = self._clock()
        await self._store.beat(sent_at + self._ttl_s)
        self._valid_until = sent_at + self._ttl_s - TAKEOVER_MARGIN_S

    async def _beat_forever(self) -> None:
        """Renew our heartbeat every third of the TTL, and give back idle keys."""
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self._beat()
            except DispatchError as exc:
                log.warning("key_heartbeat_failed", error=str(exc))
            await self._release_idle()

    async def _release_idle(self) -> None:
        now = self._clock()
        idle = [
            k
            for k in self._owned
            if now - self._used_at.get(k, 0.0) >= HOLD_S and not self._busy(*k)
        ]
        await self._release(idle)

    async def _release(self, keys: list[Key]) -> None:
        # No longer ours from now (before any request): a message of one of them that
        # comes meanwhile takes the lease again (its epoch moves on, and the delete
        # conditional on the old epoch then leaves it be).
        leases = [self._owned.pop(k) for k in keys]
        for k in keys:
            self._used_at.pop(k, None)
        answers = await asyncio.gather(
            *(self._store.release(lease) for lease in leases), return_exceptions=True
        )
        for lease, answer in zip(leases, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning(
                    "key_lease_not_released",
                    resource=lease.resource,
                    key=lease.key,
                    error=str(answer),
                )

    async def aclose(self) -> None:
        """The dispatcher stops: every lease goes back now, and the heartbeat."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        if not self._owned and not self._valid_until:
            return
        await self._release(list(self._owned))
        try:
            await self._store.retire()
        except DispatchError as exc:
            log.warning("key_heartbeat_not_retired", error=str(exc))
        self._valid_until = 0.0
