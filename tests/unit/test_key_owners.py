"""Key owners without AWS: a lone member asks nothing, only a key's preferred member asks
for its lease, a live owner's key is left alone and a stale one taken over past its
margin, a joiner waits until the others have seen it, keys fail closed, idle keys go
back."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from dispatch.core.errors import AWSError
from dispatch.loop.key_owners import (
    ELSEWHERE_HIDE_S,
    ELSEWHERE_PACE,
    FAIL_CLOSED_HIDE_S,
    FORGET_AFTER_S,
    HELD_RECHECK_S,
    HOLD_S,
    TAKEOVER_MARGIN_S,
    KeyOwners,
)
from dispatch.store.key_leases import Held, KeyLease, Member


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
        self.leasing: dict[str, bool] = {}
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

    async def beat(
        self, until: float, forget: Collection[str] = (), *, leasing: bool = True
    ) -> dict[str, Member]:
        self._request()
        await asyncio.sleep(0)  # a round trip: another beat may start meanwhile
        self.table.beats[self.owner] = until
        self.table.leasing[self.owner] = leasing
        for owner in forget:
            self.table.beats.pop(owner, None)
        return {
            o: Member(until=u, at=u - 15.0, leasing=self.table.leasing.get(o, True))
            for o, u in self.table.beats.items()
        }

    async def retire(self) -> None:
        self._request()
        self.table.beats.pop(self.owner, None)


def owners(
    table: TableOfLeases,
    name: str,
    clock: FakeClock,
    busy: bool = False,
    active: tuple[tuple[str, str], ...] = (),
) -> KeyOwners:
    return KeyOwners(
        FakeStore(table, name),
        busy=lambda r, k: busy,
        active=lambda: active,
        ttl_s=TTL_S,
        clock=clock,
    )


TTL_S = 15.0


async def members(table: TableOfLeases, clock: FakeClock, *names: str) -> list[KeyOwners]:
    """Members ``names`` of one queue, each seen by all, every one leasing (the first,
    alone at first, has seen the others and said it leases)."""
    them = [owners(table, name, clock) for name in names]
    for one in [*them, *them]:
        await one._beat()
    for one in them:
        if one._claiming is not None:
            await one._claiming
    for one in them:
        await one._beat()
    assert all(not one._alone for one in them) and all(table.leasing.values())
    return them


async def live_for(seconds: float, clock: FakeClock, *them: KeyOwners) -> None:
    """``seconds`` pass, every member beating each third of the TTL meanwhile."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + TTL_S / 3)
        for one in them:
            await one._beat()


def key_preferring(owners_: list[KeyOwners], who: str, resource: str = "crm") -> str:
    """A key every one of ``owners_`` sees as preferring ``who``."""
    for i in range(1000):
        key = f"tenant-{i}"
        if all(o.preferred(resource, key) == who for o in owners_):
            return key
    raise AssertionError(f"no key prefers {who}")


async def test_a_lone_member_runs_every_key_without_a_request_per_key() -> None:
    """Given one dispatcher alone on its queue, when messages of 5 keys arrive (10 of
    one at once), then every one may run, and its first heartbeat (written twice: to
    read the members, then to say it runs keys unleased) is all it asked: a single
    dispatcher pays nothing per key."""
    table, clock = TableOfLeases(), FakeClock()
    one = owners(table, "d1", clock)
    answers = await asyncio.gather(*(one.hide_s("crm", "k") for _ in range(10)))
    answers += [await one.hide_s("crm", f"k{i}") for i in range(4)]
    assert answers == [None] * 14
    assert table.requests == 2 and table.leases == {}
    assert table.leasing == {"d1": False}
    assert one.owns("crm", "k") and one.owns("crm", "k3")
    await one.aclose()


async def test_a_free_key_is_taken_once_however_many_messages_ask_at_once() -> None:
    """Given two members, when 10 messages of key k arrive at once at the member k
    prefers, then one lease write is all they cost, and every one may run there."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = await members(table, clock, "d1", "d2")
    k = key_preferring([one, two], "d1")
    asked = table.requests
    answers = await asyncio.gather(*(one.hide_s("crm", k) for _ in range(10)))
    assert answers == [None] * 10
    assert table.requests == asked + 1
    assert one.owns("crm", k) and table.leases[("crm", k)] == ("d1", 1)
    await one.aclose()
    await two.aclose()


async def test_a_live_owners_key_is_left_alone_and_a_dead_ones_taken_past_the_margin() -> None:
    """Given d1 owns k and then stops beating, when d2 gets k's messages, then they are
    hidden (no new request per message while d1's heartbeat is fresh) until d1's
    heartbeat lapsed by more than the margin; then d2 takes k over, at a new epoch."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = await members(table, clock, "d1", "d2")
    k = key_preferring([one, two], "d1")
    assert await one.hide_s("crm", k) is None
    lapse = table.beats["d1"]
    assert await two.hide_s("crm", k) == ELSEWHERE_HIDE_S
    asked = table.requests
    assert await two.hide_s("crm", k) == ELSEWHERE_HIDE_S
    assert table.requests == asked  # preferred elsewhere: no request per message

    clock.now = lapse + TAKEOVER_MARGIN_S - 0.1
    await two._beat()
    assert await two.hide_s("crm", k) == ELSEWHERE_HIDE_S
    assert not one.owns("crm", k)  # d1 stopped starting k before its lease lapsed
    clock.now = lapse + TAKEOVER_MARGIN_S + 0.1
    assert await two.hide_s("crm", k) is None
    assert table.leases[("crm", k)] == ("d2", 2)
    await two.aclose()


async def test_a_key_fails_closed_when_the_table_refuses() -> None:
    """Given the table throttles every request, when a message of a new key arrives, then
    it is hidden as throttled (not run, not failed); once the table answers, it runs."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = await members(table, clock, "d1", "d2")
    k = key_preferring([one, two], "d1")
    table.down = True
    assert await one.hide_s("crm", k) == FAIL_CLOSED_HIDE_S
    table.down = False
    assert await one.hide_s("crm", k) is None
    await one.aclose()
    await two.aclose()


async def test_idle_keys_are_given_back_and_a_stop_gives_back_every_lease() -> None:
    """Given d1 owns keys a and b, when a goes unused for HOLD_S, then the idle sweep gives
    a back (not b, used since); when d1 stops, b goes back and its heartbeat is deleted."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = await members(table, clock, "d1", "d2")
    a = key_preferring([one, two], "d1")
    b = key_preferring([one, two], "d1", resource="erp")
    assert await one.hide_s("crm", a) is None
    await live_for(HOLD_S / 2, clock, one, two)
    assert await one.hide_s("erp", b) is None
    await live_for(HOLD_S / 2 + 0.1, clock, one, two)
    await one._release_idle()
    assert set(table.leases) == {("erp", b)}
    await one.aclose()
    assert table.leases == {} and set(table.beats) == {"d2"}


async def test_only_the_preferred_member_asks_for_a_key() -> None:
    """Given two live members, when each receives messages of a key the other is preferred
    for, then it hides them without a single request, and the preferred one takes the
    lease with one write: a key costs one request, not one per member."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = await members(table, clock, "d1", "d2")
    k1, k2 = key_preferring([one, two], "d1"), key_preferring([one, two], "d2")
    asked = table.requests
    for _ in range(5):
        assert await two.hide_s("crm", k1) == ELSEWHERE_HIDE_S
        assert await one.hide_s("crm", k2) == ELSEWHERE_HIDE_S
    assert table.requests == asked  # no request for a key preferred elsewhere
    assert await one.hide_s("crm", k1) is None
    assert await two.hide_s("crm", k2) is None
    assert table.requests == asked + 2
    assert table.leases == {("crm", k1): ("d1", 1), ("crm", k2): ("d2", 1)}
    await one.aclose()
    await two.aclose()


async def test_a_joiner_waits_until_the_lone_member_leased_what_it_runs() -> None:
    """Given d1 alone runs key k unleased (a task of k still running there), when d2
    joins and k prefers d2, then d2 asks for nothing while d1's heartbeat says it runs
    keys unleased; d1's next heartbeat sees d2, leases k (still busy there) and says it
    leases, so d2 finds k held and hides it: one owner, never two. Once nothing of k is
    left at d1, d1 gives it back at its next heartbeat and d2's next ask takes it."""
    table, clock = TableOfLeases(), FakeClock()
    busy = {"now": True}
    one = KeyOwners(
        FakeStore(table, "d1"),
        busy=lambda r, k: busy["now"],
        active=lambda: [("crm", k)] if busy["now"] else [],
        ttl_s=TTL_S,
        clock=clock,
    )
    two = owners(table, "d2", clock)
    table.beats["d2"] = clock.now + TTL_S  # only so that k can be chosen preferring d2
    await one._beat()
    k = key_preferring([one, two], "d2")
    del table.beats["d2"]
    await one._beat()  # alone again
    assert await one.hide_s("crm", k) is None and table.leases == {}  # unleased, alone

    assert await two.hide_s("crm", k) == ELSEWHERE_HIDE_S  # d2 joins: it waits
    assert table.leases == {} and not table.leasing["d1"]
    clock.now += TTL_S / 3
    await one._beat()  # d1 sees d2
    assert one._claiming is not None
    await one._claiming
    assert table.leases[("crm", k)] == ("d1", 1)
    clock.now += TTL_S * 2 / 3
    await two._beat()
    assert await two.hide_s("crm", k) == ELSEWHERE_HIDE_S  # held by live d1
    assert one.owns("crm", k) and not two.owns("crm", k)

    busy["now"] = False
    await one._beat()
    await one._release_idle()
    assert ("crm", k) not in table.leases and not one.owns("crm", k)
    clock.now += HELD_RECHECK_S
    await two._beat()
    assert await two.hide_s("crm", k) is None
    assert table.leases[("crm", k)] == ("d2", 1)
    await one.aclose()
    await two.aclose()


async def test_long_gone_members_are_forgotten() -> None:
    """Given d2 died (its heartbeat lapsed more than FORGET_AFTER_S ago), when d1 beats,
    then d2's entry is removed from the members item, which does not grow with every
    dispatcher that ever ran."""
    table, clock = TableOfLeases(), FakeClock()
    one, _two = await members(table, clock, "d1", "d2")
    assert set(table.beats) == {"d1", "d2"}
    clock.now += TTL_S + FORGET_AFTER_S + 1
    await one._beat()
    assert one.live() == 1
    await one._beat()
    assert set(table.beats) == {"d1"}


async def test_an_owner_missing_from_an_older_read_is_not_taken_for_dead() -> None:
    """Given d2's last read of the members predates d3's heartbeat, when d3 takes key k
    and d2 (seeing no d3, so preferred itself) asks for k, then d2 reads the members
    again before judging d3 and hides k's message: one owner, never two."""
    table, clock = TableOfLeases(), FakeClock()
    one, two = await members(table, clock, "d1", "d2")
    three = owners(table, "d3", clock)
    await three._beat()
    three._lease_after = clock.now  # as if its wait were over
    await one._beat()
    k = next(
        f"t{i}"
        for i in range(1000)
        if three.preferred("crm", f"t{i}") == "d3" and two.preferred("crm", f"t{i}") == "d2"
    )
    assert await three.hide_s("crm", k) is None
    assert await two.hide_s("crm", k) == ELSEWHERE_HIDE_S
    assert table.leases[("crm", k)] == ("d3", 1)
    assert three.owns("crm", k) and not two.owns("crm", k)
    for o in (one, two, three):
        await o.aclose()


async def test_heartbeats_asked_for_at_once_are_written_once() -> None:
    """Given a lone dispatcher's heartbeat under way, when another part of it asks for a
    heartbeat at the same moment, then it waits for the one under way: the member goes
    alone once (two writes: the beat, then `leasing: false`), not twice."""
    table, clock = TableOfLeases(), FakeClock()
    one = owners(table, "d1", clock)
    await asyncio.gather(one._beat(), one._beat(), one._beat())
    assert table.requests == 2 and table.leasing == {"d1": False}
    assert one.owns("crm", "any")


async def test_hidden_messages_come_back_faster_the_more_members_share_the_queue() -> None:
    """Given one, two and four live members, then a key's hidden messages come back at
    its rate alone (nothing is elsewhere), then at 2 x 2 and 2 x 4 times it: each
    reaches the key's owner with one chance in the members, so the owner still gets
    about twice what it can start (at 2x alone, 2 dispatchers ran keys at 1/s 4 %
    under their rate)."""
    table, clock = TableOfLeases(), FakeClock()
    alone = owners(table, "solo", clock)
    await alone._beat()
    assert alone.pace() == 1.0
    await alone.aclose()
    for n in (2, 4):
        table, clock = TableOfLeases(), FakeClock()
        them = await members(table, clock, *(f"d{i}" for i in range(n)))
        assert [one.pace() for one in them] == [ELSEWHERE_PACE * n] * n
        for one in them:
            await one.aclose()
