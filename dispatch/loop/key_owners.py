"""Key owners: one dispatcher at a time runs each active key, so per-key limits hold for all.

Off by default (``DispatcherOptions(key_leases=True)`` turns it on). The
dispatchers of a queue that own keys are its *members*: each writes its heartbeat
into one item every third of the TTL, and that write's answer is everyone's
heartbeat. Each key *prefers* one live member (rendezvous hashing, the same answer
on every dispatcher), and only that one asks for its lease. A keyed message that
arrives at a dispatcher meets :meth:`KeyOwners.hide_s`:

- its key is owned here (a valid lease, our heartbeat fresh): it may run;
- another member is preferred: the message is hidden for :data:`ELSEWHERE_HIDE_S`
  (paced by the caller), so a later receive, sooner or later the owner's, gets it;
  no request;
- preferred here and free: one conditional write takes the lease, then it may run;
- preferred here but held by another live member (the members changed): hidden, and
  asked again every :data:`HELD_RECHECK_S` (the holder gives it back once idle);
- held by a member whose heartbeat is stale by more than :data:`TAKEOVER_MARGIN_S`
  (it died, or lost the table): the lease is taken over, conditional on the epoch.

A lease, not the preference, decides: members that see different heartbeats for a
moment may both ask, and one wins. Cost follows the active keys: one write when a
key becomes active, one when it goes idle (held at least :data:`HOLD_S` after its
last use), one heartbeat per dispatcher every third of the TTL however many keys it
owns. When the table refuses, the key fails closed: its messages are hidden as
throttled (:data:`FAIL_CLOSED_HIDE_S`), other keys go on. An owner whose own
heartbeat could not be written stops starting its keys :data:`TAKEOVER_MARGIN_S`
before its leases lapse, and a taker waits the same margin past the lapse: clock
skew under the margin never lets two dispatchers run one key. A stopping dispatcher
gives every lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from dispatch.core.config import Settings, queue_name
from dispatch.core.errors import DispatchError
from dispatch.store.key_leases import Held, KeyLease, KeyLeaseStore, Member

if TYPE_CHECKING:
    from dispatch.loop.fairness import KeyedLine

__all__ = ["KeyOwners", "LeaseStore"]

log = structlog.get_logger("dispatch.loop.key_owners")

DEFAULT_TTL_S: Final = 15.0
"""How long a heartbeat keeps its owner's leases valid."""
TAKEOVER_MARGIN_S: Final = 2.0
"""An owner stops this long before its leases lapse by its clock; a taker waits this
long past the lapse by its own."""
HOLD_S: Final = 300.0
"""A lease is kept at least this long after its key was last used here: a key that
comes back within it costs no request (a member that joins gets its keys sooner: a
key preferred elsewhere goes back as soon as nothing of it is here)."""
ELSEWHERE_HIDE_S: Final = 1.0
"""A message of a key another dispatcher owns is hidden this long."""
ELSEWHERE_PACE: Final = 2.0
"""With other live members, a key's hidden messages come back at this many times its
rate times the live members (whichever dispatcher receives them, the owner gets about
this many times what it can start)."""
FAIL_CLOSED_HIDE_S: Final = 1.0
"""A message whose key's lease could not be read or written is hidden this long."""
JOIN_READ_S: Final = 1.0
"""Joined beside a member that ran alone: the heartbeats are read again this often
until it says it leases the keys it runs."""
CLAIMS_AT_ONCE: Final = 16
"""Lease writes at once when a lone member leases the keys it runs (another joined)."""
HELD_RECHECK_S: Final = 5.0
"""A key preferred here but held by another live dispatcher is asked for again this
often (its holder gives it back once idle)."""
FORGET_AFTER_S: Final = 600.0
"""A member whose heartbeat lapsed this long ago is removed from the members item."""

Key = tuple[str, str]  # (resource, key)


class LeaseStore(Protocol):
    """Where key leases live (:class:`~dispatch.store.key_leases.KeyLeaseStore`)."""

    owner: str

    async def acquire(self, resource: str, key: str) -> KeyLease | Held:
        """Own ``key`` unless another dispatcher does."""
        ...

    async def take_over(self, resource: str, key: str, held: Held) -> KeyLease | Held:
        """Own ``key`` in place of ``held``, if nobody changed the lease since."""
        ...

    async def release(self, lease: KeyLease) -> bool:
        """Give ``lease`` up, if it is still ours."""
        ...

    async def beat(
        self, until: float, forget: Collection[str] = (), *, leasing: bool = True
    ) -> dict[str, Member]:
        """Our leases are valid until ``until`` (``leasing``: we run only leased keys);
        every member's heartbeat now."""
        ...

    async def retire(self) -> None:
        """We own nothing any more."""
        ...


class KeyOwners:
    """The keys this dispatcher owns, the queue's members, and what it knows of the
    others' keys."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        busy: Callable[[str, str], bool],
        active: Callable[[], Iterable[Key]] = tuple,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._me = store.owner
        self._busy = busy  # (resource, key) -> tasks of it wait or run here
        self._active = active  # every (resource, key) with tasks waiting or running here
        self._ttl_s = ttl_s
        self._clock = clock
        self._owned: dict[Key, KeyLease] = {}
        self._used_at: dict[Key, float] = {}
        self._elsewhere: dict[Key, tuple[Held, float]] = {}  # -> (held, asked at)
        self._members: dict[str, Member] = {}  # as of the last beat
        self._members_read_at = -math.inf
        self._valid_until = 0.0  # our own leases, by our clock (heartbeat less margin)
        self._alone = False  # the only member: keys run unleased
        self._leasing = True  # what our heartbeat says: only leased keys run here
        self._claiming: asyncio.Task[None] | None = None
        self._asking: dict[Key, asyncio.Future[None]] = {}
        self._beating: asyncio.Task[None] | None = None
        self._beat_lock = asyncio.Lock()

    @classmethod
    def of_queue(
        cls,
        dynamodb: Any,
        settings: Settings,
        owner: str,
        lines: Mapping[str, KeyedLine],
        ttl_s: float = DEFAULT_TTL_S,
    ) -> KeyOwners:
        """The key owners of dispatcher ``owner`` on the settings' queue, whose keys are
        busy while their fair ``lines`` (by resource) hold or run them."""
        store = KeyLeaseStore(
            dynamodb, table=settings.table, owner=owner, queue=queue_name(settings.queue_url)
        )

        def busy(resource: str, key: str) -> bool:
            line = lines.get(resource)
            return line is not None and line.busy(key)

        def active() -> list[Key]:
            return [(name, key) for name, line in lines.items() for key in line.active()]

        return cls(store, busy=busy, active=active, ttl_s=ttl_s)

    def owns(self, resource: str, key: str) -> bool:
        """Whether ``key`` may start here now: owned here (or this dispatcher is the
        queue's only member), and our heartbeat keeps that valid."""
        fresh = self._clock() < self._valid_until
        return fresh and (self._alone or (resource, key) in self._owned)

    def owned(self) -> int:
        """How many keys this dispatcher owns now."""
        return len(self._owned)

    def live(self) -> int:
        """How many dispatchers of the queue own keys now (at least this one)."""
        return 1 + sum(1 for owner in self._members if owner != self._me and self._live(owner))

    def pace(self) -> float:
        """How many times its rate a key's messages come back when hidden here: each
        reaches its owner with one chance in the live members, so they come back at
        :data:`ELSEWHERE_PACE` times the live members: the owner gets about twice what
        it can start (measured, 100 keys at 1/s on 2 dispatchers: 0.96/s each at
        2 x 2, 0.86/s at 2)."""
        live = self.live()
        return ELSEWHERE_PACE * live if live > 1 else 1.0

    def preferred(self, resource: str, key: str) -> str:
        """The live member ``key`` prefers (rendezvous hashing over the members' last
        heartbeats, this dispatcher always among them): the only one that asks for its
        lease, so the others cost no request for it."""
        candidates = [o for o in self._members if self._live(o)]
        if self._me not in candidates:
            candidates.append(self._me)
        return max(candidates, key=lambda owner: _weight(owner, resource, key))

    async def hide_s(self, resource: str, key: str) -> float | None:
        """None when a message of ``key`` may run here (the key owned here, taken if
        free and preferred here); else the seconds to hide it."""
        k = (resource, key)
        if self._alone and self._clock() < self._valid_until - self._ttl_s / 2:
            return None  # the only member, heartbeat fresh: nothing to ask
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
        if k in self._owned:
            self._used_at[k] = self._clock()
        return None

    async def _find_owner(self, k: Key) -> float | None:
        # Our heartbeat first: a lease must never name an owner whose heartbeat another
        # dispatcher could read as missing (it would take the key over at once); and
        # its answer says who else is alive.
        if self._clock() >= self._valid_until - self._ttl_s / 2:
            await self._beat()
        if self._beating is None:
            self._beating = asyncio.ensure_future(self._beat_forever())
        resource, key = k
        if self._alone:
            return self._use(k)  # the only member: no lease to ask for
        if not await self._others_leasing():
            return ELSEWHERE_HIDE_S  # a member may still run keys unleased
        if self.preferred(resource, key) != self._me:
            return ELSEWHERE_HIDE_S  # its preferred owner takes it: no request here
        known = self._elsewhere.get(k)
        if known is not None:
            held, asked_at = known
            if self._clock() - asked_at < HELD_RECHECK_S and await self._alive_now(
                held.owner, since=asked_at
            ):
                return ELSEWHERE_HIDE_S  # held by a live owner that gives it back when idle
        asked_at = self._clock()
        answer = await self._take(k)
        if isinstance(answer, Held):
            self._elsewhere[k] = (answer, asked_at)
            return ELSEWHERE_HIDE_S
        self._elsewhere.pop(k, None)
        self._owned[k] = answer
        return self._use(k)

    async def _take(self, k: Key) -> KeyLease | Held:
        """Ask for ``k``'s lease (one conditional write); a holder whose heartbeat
        lapsed past the margin is taken over, conditional on the epoch it held."""
        asked_at = self._clock()
        answer = await self._store.acquire(*k)
        if isinstance(answer, Held) and not await self._alive_now(answer.owner, since=asked_at):
            held = answer
            answer = await self._store.take_over(*k, held)
            if isinstance(answer, KeyLease):
                log.info("key_taken_over", resource=k[0], key=k[1], previous=held.owner)
        return answer

    async def _alive_now(self, owner: str, *, since: float) -> bool:
        """Whether ``owner``'s heartbeat is fresh, with :data:`TAKEOVER_MARGIN_S` to
        spare. A heartbeat only moves on, so a fresh one read is enough; one that looks
        lapsed (or missing) is trusted only from a read made after ``since`` (when its
        lease was found), else read again: a lease is written only after its owner's
        first heartbeat, so one read before that heartbeat would look dead."""
        if not owner:
            return False  # given back meanwhile
        if not self._looks_alive(owner) and self._members_read_at <= since:
            await self._beat()
        return self._looks_alive(owner)

    def _looks_alive(self, owner: str) -> bool:
        """``owner``'s heartbeat, with the takeover margin: its leases may still hold."""
        member = self._members.get(owner)
        return member is not None and self._clock() < member.until + TAKEOVER_MARGIN_S

    def _live(self, owner: str) -> bool:
        """``owner``'s heartbeat has not lapsed: it receives, and keys may prefer it."""
        member = self._members.get(owner)
        return member is not None and self._clock() < member.until

    async def _others_leasing(self) -> bool:
        """Whether every other member whose heartbeat may still hold runs only leased
        keys. One that ran alone (keys unleased, no request per key) leases the keys it
        runs once it sees another member, then says so in its heartbeat; until then no
        lease is asked for here (read again at most every :data:`JOIN_READ_S`)."""

        def ready() -> bool:
            return all(
                m.leasing or not self._looks_alive(o)
                for o, m in self._members.items()
                if o != self._me
            )

        if not ready() and self._clock() - self._members_read_at >= JOIN_READ_S:
            await self._beat()
        return ready()

    async def _beat(self) -> None:
        """Renew our heartbeat (one write, whose answer is every member's), and follow
        the members: alone, keys run unleased; beside others, only leased keys run.
        One at a time: a caller that finds a beat under way waits for its answer."""
        if self._beat_lock.locked():
            async with self._beat_lock:
                return
        async with self._beat_lock:
            await self._follow_members()

    async def _follow_members(self) -> None:
        members = await self._write_beat()
        others = any(o != self._me and self._looks_alive(o) for o in members)
        claiming = self._claiming is not None and not self._claiming.done()
        if others and self._alone:
            log.info("key_owners_joined", members=len(members))
            self._alone = False  # from now on only leased keys start here
            self._claiming = asyncio.ensure_future(self._claim_active())
        elif not others and not self._alone and not claiming:
            if self._leasing:
                # Alone: say so before running a key unleased (a joiner then waits).
                self._leasing = False
                members = await self._write_beat()
            if any(o != self._me and self._looks_alive(o) for o in members):
                self._leasing = True  # someone joined meanwhile: stay leasing
                await self._write_beat()
            else:
                lapsed = sorted(o for o in members if o != self._me)
                log.info("key_owners_alone", lapsed=lapsed)
                self._alone = True

    async def _write_beat(self) -> dict[str, Member]:
        sent_at = self._clock()
        forget = [o for o, m in self._members.items() if sent_at - m.until > FORGET_AFTER_S]
        self._members = await self._store.beat(sent_at + self._ttl_s, forget, leasing=self._leasing)
        self._members_read_at = sent_at
        self._valid_until = sent_at + self._ttl_s - TAKEOVER_MARGIN_S
        return self._members

    async def _claim_active(self) -> None:
        """Another member joined: lease every key with tasks here (run unleased while
        alone), then say in our heartbeat that we lease, so the joiner may ask for
        keys. A key not won stops starting here (its lease is another's)."""
        gate = asyncio.Semaphore(CLAIMS_AT_ONCE)

        async def claim(k: Key) -> None:
            async with gate:
                try:
                    answer = await self._take(k)
                except DispatchError as exc:
                    log.warning("key_lease_failed", resource=k[0], key=k[1], error=str(exc))
                    return
            if isinstance(answer, KeyLease):
                self._owned[k] = answer
                self._used_at[k] = self._clock()

        await asyncio.gather(*(claim(k) for k in self._active() if k not in self._owned))
        self._leasing = True
        try:
            await self._write_beat()
        except DispatchError as exc:
            log.warning("key_heartbeat_failed", error=str(exc))

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
        """Give back keys unused for :data:`HOLD_S`, and at once those another live
        member is now preferred for (one joined) with nothing of them here."""
        now = self._clock()
        self._elsewhere = {
            k: (held, at) for k, (held, at) in self._elsewhere.items() if now - at < HELD_RECHECK_S
        }
        idle = [
            k
            for k in self._owned
            if not self._busy(*k)
            and (now - self._used_at.get(k, 0.0) >= HOLD_S or self.preferred(*k) != self._me)
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
        for task in (self._beating, self._claiming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._beating = self._claiming = None
        if not self._owned and not self._valid_until:
            return
        await self._release(list(self._owned))
        try:
            await self._store.retire()
        except DispatchError as exc:
            log.warning("key_heartbeat_not_retired", error=str(exc))
        self._valid_until = 0.0


def _weight(owner: str, resource: str, key: str) -> int:
    """Rendezvous weight of ``owner`` for ``key``: the same on every dispatcher."""
    digest = hashlib.blake2b(f"{owner}\0{resource}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
