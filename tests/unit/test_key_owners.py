"""Key owners without AWS: taking a free key once, leaving a live owner's key alone, taking
a stale one over only past its margin, failing closed, giving idle keys back."""

from __future__ import annotations

import asyncio

from dispatch.core.errors import AWSError
from dispatch.loop.key_owners import (
    ELSEWHERE_HIDE_S,
    FAIL_CLOSED_HIDE_S,
    HOLD_S,
    TAKEOVER_MARGIN_S,
    KeyOwners,
)
from dispatch.store.key_leases import Held, KeyLease


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TableOfLeases:
    """The lease and heartbeat items of one table, in memory, with the store's
    conditions; shared by the :class:`FakeStore` of each dispatcher."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], tuple[str, int]] = {}  # -> (owner, epoch)
        self.beats: dict[str, float] = {}
        self.requests = 0
        self.down = False


class FakeStore:
    """A :class:`~dispatch.store.key_leases.KeyLeaseStore` over a :class:`TableOfLeases`."""

    def __init__(self, table: TableOfLeases, owner: str) -> None:
        self.table = table
        self.owner = owner

    def _request(self) -> None:
        if self.table.down:
            raise AWSError("throttled", operation="UpdateItem", code="ThrottlingException")
        self.table.requests += 1

    def _write(self, resource: str, key: str) -> KeyLease:
        # Another dispatcher that read this lease would take the key over at once if
        # its owner had no heartbeat yet.
        assert self.owner in self.table.beats, "a lease named an owner with no heartbeat"
        _, epoch = self.table.leases.get((resource, key), ("", 0))
        self.table.leases[(resource, key)] = (self.owner, epoch + 1)
        return KeyLease(resource, key, epoch + 1)

    async def acquire(self, resource: str, key: str) -> KeyLease | Held:
        self._request()
        await asyncio.sleep(0)
        owner, epoch = self.table.leases.get((resource, key), (self.owner, 0))
        if owner != self.owner:
            return Held(owner, epoch)
        return self._write(resource, key)

    async def take_over(self, resource: str, key: str, held: Held) -> KeyLease | Held:
        self._request()
        owner, epoch = self.table.leases.get((resource, key), ("", 0))
        if (owner, epoch) != (held.owner, held.epoch):
            return Held(owner, epoch)
        return self._write(resource, key)

    async def release(self, lease: KeyLease) -> bool:
        self._request()
        if self.table.leases.get((lease.resource, lease.key)) != (self.owner, lease.epoch):
            return False
        del self.table.leases[(lease.resource, lease.key)]
        return True

    async def beat(self, until: float) -> None:
        self._request()
        self.table.beats[self.owner] = until

    async def retire(self) -> None:
        self._request()
        self.table.beats.pop(self.owner, None)

    async def alive_until(self, owner: str) -> float:
        self._request()
        return self.table.beats.get(owner, 0.0)


def owners(table: TableOfLeases, name: str, clock: FakeClock, busy: bool = False) -> KeyOwners:
    return KeyOwners(FakeStore(table, name), busy=lambda r, k: busy, ttl_s=15.0, clock=clock)


async def test_a_free_key_is_taken_once_however_many_messages_ask_at_once() -> None:
    """Given no owner for key k, when 10 messages of k arrive at once, then one lease write
    (after the first heartbeat, so no other dispatcher reads the lease as stale) is all
    they cost, and every one may run here."""
    table, clock = TableOfLeases(), FakeClock()
    one = owners(table, "d1", clock)
    answers = await asyncio.gather(*(one.hide_s("crm", "k") for _ in range(10)))
    assert answers == [None] * 10
    assert table.requests == 2  # the lease, the heartbeat
    assert one.owns("crm", "k") and table.leases[("crm", "k")] == ("d1", 1)
    await one.aclose()


async def test_a_live_owners_key_is_left_alone_and_a_dead_ones_taken_past_the_margin() -> None:
    """Given d1 owns k and then stops beating, when d2 gets k's messages, then they are
    hidden (no new request per message while the answer is fresh) until d1's heartbeat
    lapsed by more than the margin; then d2 takes k over, at a new epoch."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = owners(table, "d1", clock), owners(table, "d2", clock)
    assert await one.hide_s("crm", "k") is None
    lapse = table.beats["d1"]
    assert await two.hide_s("crm", "k") == ELSEWHERE_HIDE_S
    asked = table.requests
    assert await two.hide_s("crm", "k") == ELSEWHERE_HIDE_S
    assert table.requests == asked  # remembered: no request per message

    clock.now = lapse + TAKEOVER_MARGIN_S - 0.1
    assert await two.hide_s("crm", "k") == ELSEWHERE_HIDE_S
    assert not one.owns("crm", "k")  # d1 stopped starting k before its lease lapsed
    clock.now = lapse + TAKEOVER_MARGIN_S + 0.1
    assert await two.hide_s("crm", "k") is None
    assert table.leases[("crm", "k")] == ("d2", 2)
    await two.aclose()


async def test_a_key_fails_closed_when_the_table_refuses() -> None:
    """Given the table throttles every request, when a message of a new key arrives, then
    it is hidden as throttled (not run, not failed); once the table answers, it runs."""
    table, clock = TableOfLeases(), FakeClock()
    one = owners(table, "d1", clock)
    table.down = True
    assert await one.hide_s("crm", "k") == FAIL_CLOSED_HIDE_S
    table.down = False
    assert await one.hide_s("crm", "k") is None
    await one.aclose()


async def test_idle_keys_are_given_back_and_a_stop_gives_back_every_lease() -> None:
    """Given d1 owns keys a and b, when a goes unused for HOLD_S, then the idle sweep gives
    a back (not b, used since); when d1 stops, b goes back and its heartbeat is deleted."""
    table, clock = TableOfLeases(), FakeClock()
    one = owners(table, "d1", clock)
    assert await one.hide_s("crm", "a") is None
    clock.now += HOLD_S / 2
    assert await one.hide_s("crm", "b") is None
    clock.now += HOLD_S / 2 + 0.1
    await one._release_idle()
    assert set(table.leases) == {("crm", "b")}
    await one.aclose()
    assert table.leases == {} and table.beats == {}
