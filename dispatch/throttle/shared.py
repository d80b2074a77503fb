"""The throttle shared by every dispatcher: token buckets and concurrency caps in DynamoDB.

N dispatchers (overlapping Lambda invocations, several processes) must stay under
one global rate and one global cap together. Each resource has two items in the
state table, written with conditional updates:

``bucket#<resource>`` — the token bucket
    ``tokens`` at ``updated_at`` (epoch s), refilling at ``rate`` up to
    ``capacity``. A dispatcher *leases* a chunk of tokens in one UpdateItem: it
    computes the bucket's level now, subtracts the chunk, and writes the new level
    on condition that nobody wrote since it read (``updated_at`` unchanged). The
    chunk may exceed the tokens present: the level goes negative, and the chunk's
    tokens become valid one by one at the times the bucket would have refilled
    them. So every token ever granted is a token the one global bucket had, and
    the chunk is sized to the dispatcher's own consumption over a short horizon:
    one request per chunk, not per task.

``slots#<resource>`` — the concurrency cap
    ``held`` slots in total, and ``holders``: a map of dispatcher id to
    ``{n, until}``. A dispatcher takes ``k`` more slots with ``held <= cap - k``
    as the condition, keeps them while it has work (no request per task), renews
    its ``until`` every ``slot_ttl_s / 3`` and gives back slots idle for a second.
    A crashed dispatcher's entry expires; the next dispatcher refused at the cap
    removes it (conditional on the ``until`` it saw) and takes its slots back.

Exactness of the rate. Tasks never start before their token is valid; a token
not used within ``late_s`` of its valid time is dropped, and the bucket's
capacity is ``burst - rate * (late_s + START_JITTER_S)``, so over any window of
``w`` seconds at most ``rate * w + burst`` tasks start, across all dispatchers,
with room for the jitter between a permit and the call reaching the resource. ``late_s`` is
``LATE_FLOOR_S`` (the event loop's jitter), or one token's interval when that is
shorter and the burst leaves no more; the capacity is not rounded down, so a small
burst is kept nearly whole (10/s, burst 2: 1.6 tokens at once, the rest 40 ms later).

A lease is stamped at the time its answer is expected back, not the time it
was sent: the item's ``updated_at`` is ``now + round trip`` (and never earlier
than the item's own), so the tokens it grants become valid as they arrive
instead of arriving already late.

Adaptive rate. The writer of a lease also writes its effective rate and its
id (``by``); a dispatcher that sees a lower rate written by *another*
dispatcher adopts it (see :meth:`dispatch.throttle.limits.ResourceThrottle.adopt_rate`),
so one dispatcher's backpressure slows them all down, while its own earlier
rate never holds back its own recovery.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import structlog
import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.store.aws import error_code, translate_error
from dispatch.store.aws_retry import Backoff
from dispatch.store.codec import number, read_number
from dispatch.store.conditional import is_condition_failure, old_item
from dispatch.throttle.limits import START_JITTER_S, Resource, ResourceThrottle, Throttle
from dispatch.throttle.slices import MIN_SLICED_BURST, RateSlices, lower_rate_by_another

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

__all__ = ["Coordinator", "SharedSlots", "SharedTokenSource", "dispatcher_id"]

log = structlog.get_logger("dispatch.throttle.shared")

RETRY_HINT_S: Final = 0.02
"""Seconds a task waits before asking again while a lease is on its way."""
LATE_FLOOR_S: Final = 0.02
"""A leased token stays usable at least this long after its valid time (burst allowing)."""
_MIN_STEP_S: Final = 0.001
"""Each lease moves the bucket's ``updated_at`` (its version) on by at least this."""
_RTT_START_S: Final = 0.01
_MIN_LEASE_GAP_S: Final = 0.1
"""A dispatcher leases at most this often from one bucket."""
"""The lease round trip assumed before one has been measured."""
OTHERS_ACTIVE_S: Final = 2.0
"""A dispatcher that saw another's lease this recently hands unused tokens back when idle."""
KEYED_SHARED_HORIZON_S: Final = 0.4
"""How far ahead a lease of a keyed resource reserves while other dispatchers lease it
and most of its own tokens lately came due with no key ready to use them."""
WASTED_SHORT_LEASES: Final = 0.5
"""The share of tokens dropped unused above which a keyed resource's leases shorten."""
WASTE_WEIGHT: Final = 0.05
"""Each token taken or dropped moves the wasted share this far (about the last 20)."""
IDLE_GIVE_BACK_S: Final = 0.5
"""An idle dispatcher holding this many seconds of tokens gives them back even when it
has not seen another dispatcher lately (it only sees them when their writes conflict
with its own): the end of its share of a backlog, not a lull between two tasks."""
SLOT_TTL_S: Final = 30.0
"""A dispatcher's slot holding expires this long after its last renewal."""
SLOT_IDLE_RELEASE_S: Final = 1.0
"""Slots unused for this long go back to the shared pool."""
SLOT_RETRY_MAX_S: Final = 0.25
"""A dispatcher refused at the cap asks again after at most this long."""
_SLOT_BACKOFF: Final = Backoff(
    tenacity.wait_exponential(multiplier=0.05, max=SLOT_RETRY_MAX_S), full_jitter=False
)
"""After its n-th refusal in a row at the cap, a dispatcher asks again 0.05 s x 2^(n-1) later."""
ITEM_TTL_S: Final = 24 * 3600
_CONFLICT_RETRIES: Final = 6
_PLACES: Final = 6
"""The bucket's numbers are written to the microsecond (its ``updated_at`` is its version)."""
# Several of these attribute names are DynamoDB reserved words ("capacity"): always alias.
_BUCKET_NAMES: Final = {
    "#tokens": "tokens",
    "#updated": "updated_at",
    "#rate": "rate",
    "#capacity": "capacity",
    "#by": "by",
}


def dispatcher_id() -> str:
    """A unique id for this dispatcher process: host, pid and a random suffix."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _Background:
    """Runs the coroutines a source starts from synchronous calls; logs their failures."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shared_throttle_call_failed", exc_info=task.exception())

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SharedTokenSource:
    """A :class:`~dispatch.throttle.limits.TokenSource` of tokens leased from ``bucket#<name>``."""

    def __init__(
        self,
        resource: Resource,
        *,
        client: DynamoDBClient,
        table: str,
        background: _Background,
        owner: str,
        clock: Callable[[], float] = time.time,
        on_remote_rate: Callable[[float], None] | None = None,
        max_horizon_s: float = 10.0,
    ) -> None:
        if resource.rate_per_s is None or resource.burst is None:
            raise ValueError(f"Resource {resource.name!r} has no rate to share")
        self.resource = resource
        self._owner = owner
        self._rtt_s = _RTT_START_S
        self._client = client
        self._table = table
        self._background = background
        self._clock = clock
        self._on_remote_rate = on_remote_rate
        self._max_horizon_s = max_horizon_s
        self._key = {c.TABLE_HASH_KEY: {"S": f"{c.BUCKET_KEY_PREFIX}{resource.name}"}}
        self._rate = resource.rate_per_s
        self.capacity = self._capacity_for(self._rate)
        self._valid: deque[float] = deque()  # valid-at times of the leased tokens, ascending
        self._leasing = False
        self._next_lease_at = 0.0
        self._seen: dict[str, Any] | None = None  # the bucket item as last read or written
        self._takes: deque[float] = deque()  # times of recent takes (demand estimate)
        self._misses = 0
        self._waiting = 1  # tasks waiting for a token here, as the last take said
        self._others_seen_at = -math.inf  # when another dispatcher's lease was last seen
        self._wasted = 0.0  # the share of tokens lately dropped unused (a moving average)
        self._giving_back = False
        # This dispatcher's last lease: the version it wrote and its first token's valid
        # time. Its tokens are the bucket's last ones while the item keeps that version.
        self._last_lease: tuple[dict[str, Any], float] | None = None
        self.requests = 0
        self.dropped = 0

    # -- TokenSource -----------------------------------------------------------------

    @property
    def tokens(self) -> float:
        """Leased tokens valid now (the local view)."""
        now = self._clock()
        return float(sum(1 for t in self._valid if t <= now))

    @property
    def others_seen(self) -> bool:
        """Another dispatcher has leased from this bucket since this one started."""
        return self._others_seen_at > -math.inf

    def try_take(self, n: float = 1.0, *, waiting: int = 1) -> float:
        """Take one leased token if one is valid now, else say how long to wait."""
        if n != 1.0:
            raise ValueError("the shared bucket hands out one token per task")
        self._waiting = waiting
        now = self._clock()
        self._drop_late(now)
        if self._valid and self._valid[0] <= now:
            self._valid.popleft()
            self._takes.append(now)
            self._wasted -= WASTE_WEIGHT * self._wasted
            self._maybe_lease(now)
            return 0.0
        self._misses += 1
        self._maybe_lease(now)
        if self._valid:
            wait_s = self._valid[0] - now
            if self._waiting > len(self._valid) and not self._leasing:
                # More tasks wait than tokens are in hand: come back when the next lease
                # may be made, not only at the next token (it may be seconds away).
                wait_s = min(wait_s, self._next_lease_at - now)
            return max(0.001, wait_s)
        return max(RETRY_HINT_S, self._next_lease_at - now)

    def idle(self) -> None:
        """No task waits here: the tokens leased and not used go back to the bucket at
        once, so a dispatcher whose work ran out does not sit on tokens that expire
        while others wait (the tail of a backlog shared by several dispatchers): when
        it has seen another dispatcher lease lately, or holds half a second of tokens
        or more. A token or two it keeps: giving them back and leasing again would
        cost a request per lull between tasks. Only the tokens of its last lease can
        go back, while no other lease followed it (see :meth:`give_back`)."""
        if not self._valid or self._giving_back or self._last_lease is None:
            return
        many = len(self._valid) >= max(2.0, self._rate * IDLE_GIVE_BACK_S)
        if not many and not self._others_active():
            return
        self._giving_back = True
        self._background.start(self._give_back_unused())

    async def _give_back_unused(self) -> None:
        try:
            await self.give_back()
        finally:
            self._giving_back = False

    def set_rate(self, rate_per_s: float) -> None:
        """Lease at ``rate_per_s`` from now on; a decrease drops tokens not yet valid.

        The bucket's size follows the rate: an overloaded resource is protected from
        bursts as well as from the average (half the rate, half the burst).
        """
        if rate_per_s < self._rate:
            now = self._clock()
            kept = deque(t for t in self._valid if t <= now)
            self.dropped += len(self._valid) - len(kept)
            self._valid = kept
        self._rate = rate_per_s
        self.capacity = self._capacity_for(rate_per_s)

    def _scaled_burst(self, rate_per_s: float) -> float:
        """The burst, scaled down with the adaptive rate."""
        configured = self.resource.rate_per_s or rate_per_s
        return (self.resource.burst or 1) * min(1.0, rate_per_s / configured)

    def _capacity_for(self, rate_per_s: float) -> float:
        """``burst - rate * late_s`` (see the module docstring)."""
        burst = self._scaled_burst(rate_per_s)
        if burst < 2:
            return 1.0
        margin_s = self._late_for(rate_per_s) + START_JITTER_S
        # Not rounded down: at 10/s a burst of 2 keeps 1.6 tokens (the second start
        # 40 ms after the first), where a whole number would keep one.
        return max(1.0, burst - rate_per_s * margin_s)

    def _late_for(self, rate_per_s: float) -> float:
        burst = self._scaled_burst(rate_per_s)
        if burst >= 2:
            # LATE_FLOOR_S, or less when a shorter interval leaves no token of burst for
            # it; never one whole interval at a low rate (at 10/s, 100 ms of margin
            # would eat a burst of 2).
            return min(LATE_FLOOR_S, max(1.0 / rate_per_s, (burst - 1) / rate_per_s))
        return min(0.25 / rate_per_s, 0.05)

    # -- leasing ---------------------------------------------------------------------

    @property
    def late_s(self) -> float:
        """How late a leased token may still be used (see the module docstring)."""
        return self._late_for(self._rate)

    @property
    def horizon_s(self) -> float:
        """How far ahead one lease may reserve: 1.5 s, or 20 tokens' worth when that is
        longer, at most ``max_horizon_s`` (half the dispatcher's wait horizon, so
        another dispatcher never waits longer for its share than it is willing to).
        A dispatcher leases again when half of it is left: with N dispatchers that
        is about ``N / (rate x 1 s)`` requests per task.

        A keyed resource leased by others too, most of whose tokens here came due
        with no key ready (dropped), reserves :data:`KEYED_SHARED_HORIZON_S` at most:
        its keys come due sparsely, and one that does while another dispatcher holds
        a long span waits it out, a delay a key with a burst of 1 never makes up."""
        horizon_s = max(0.5, min(self._max_horizon_s, max(1.5, 20.0 / self._rate)))
        if (
            self.resource.per_key is not None
            and self._others_active()
            and self._wasted > WASTED_SHORT_LEASES
        ):
            return min(horizon_s, KEYED_SHARED_HORIZON_S)
        return horizon_s

    def _others_active(self) -> bool:
        return self._clock() - self._others_seen_at <= OTHERS_ACTIVE_S

    def _drop_late(self, now: float) -> None:
        while self._valid and self._valid[0] < now - self.late_s:
            self._valid.popleft()
            self.dropped += 1
            self._wasted += WASTE_WEIGHT * (1.0 - self._wasted)

    def _want(self, now: float) -> int:
        while self._takes and self._takes[0] < now - 1.0:
            self._takes.popleft()
        per_s = len(self._takes)
        most = max(1, math.floor(self._rate * self.horizon_s))
        # Sized to what this dispatcher used over the last second, or to the tasks
        # waiting here now (a backlog's first lease takes the burst for them, not
        # one token). Misses (polls that found no token) add at most a burst: they
        # count polls, not tasks, and a dispatcher that leases more than it can
        # start (its slots full) starves the others of tokens it then drops.
        asked = min(max(self._misses, self._waiting), max(1, math.floor(self.capacity) + 1))
        waiting = self._waiting - len(self._valid)
        return max(1, min(most, max(asked, waiting, math.ceil(per_s * self.horizon_s))))

    def _maybe_lease(self, now: float) -> None:
        if self._leasing or now < self._next_lease_at:
            return
        while self._takes and self._takes[0] < now - 1.0:
            self._takes.popleft()
        # Lease again when what is left would last less than half a second, or when
        # tasks wait here for tokens spread thin (the bucket was shared with another
        # dispatcher, which may have stopped leasing or given its tokens back).
        running_low = len(self._valid) <= max(0, math.ceil(len(self._takes) * 0.5))
        spread_thin = (
            self._misses > 0
            and self._waiting > len(self._valid)
            and bool(self._valid)
            and self._valid[0] - now > 1.5 / self._rate
        )
        if not (running_low and (self._misses or not self._valid)) and not spread_thin:
            return
        self._leasing = True
        self._background.start(self._lease(self._want(now)))

    async def _lease(self, want: int) -> None:
        try:
            for _ in range(_CONFLICT_RETRIES):
                done = await self._try_lease(want)
                if done:
                    return
        finally:
            self._leasing = False

    async def _try_lease(self, want: int) -> bool:
        """One conditional write; True when finished (leased, or nothing to lease yet)."""
        sent = self._clock()
        # Stamp the lease when its answer is due back: its tokens are valid on arrival.
        now, level, condition, seen_values = self._level_at(sent + self._rtt_s)
        take = min(want, math.floor(level + self._rate * self.horizon_s))
        if take < 1:
            self._wait_for_refill(now, level)
            return True
        values = self._lease_values(now, tokens=level - take)
        try:
            await self._write_lease(condition, values | seen_values)
        except (ClientError, BotoCoreError) as exc:
            if is_condition_failure(exc):
                self._seen = old_item(exc)  # someone else wrote: start from their state
                return False
            log.warning(
                "bucket_lease_failed",
                resource=self.resource.name,
                error=str(translate_error(exc, "UpdateItem")),
            )
            self._next_lease_at = sent + 0.5
            return True
        self._keep_lease(values, sent=sent, now=now, level=level, want=want, take=take)
        return True

    def _level_at(self, now: float) -> tuple[float, float, str, dict[str, Any]]:
        """The bucket as a lease stamped ``now`` would find it, from the item last seen:
        the lease's time (moved past the item's own), the level, and the write's condition
        (nobody wrote since) with its values. Adopts a lower rate another dispatcher wrote."""
        seen = self._seen
        if seen is None:
            return now, self.capacity, "attribute_not_exists(pk)", {}
        rate = read_number(seen.get("rate"), self._rate)
        last = read_number(seen.get("updated_at"), now)
        # Never refill the same interval twice, and always move `updated_at` on:
        # it is the version the condition checks, so a write that left it
        # unchanged would let a writer holding the previous state lease again.
        now = max(now, last + _MIN_STEP_S)
        level = min(self.capacity, read_number(seen.get("tokens")) + (now - last) * rate)
        if seen.get("by", {}).get("S") != self._owner:
            self._others_seen_at = self._clock()
        lower = lower_rate_by_another(seen, self._owner, self._rate)
        if lower is not None and self._on_remote_rate:
            self._on_remote_rate(lower)  # another dispatcher slowed the resource down
        return now, level, "#updated = :seen", {":seen": seen["updated_at"]}

    def _wait_for_refill(self, now: float, level: float) -> None:
        """Nothing to lease yet: come back when the bucket has refilled a token."""
        # Everyone refused now would come back at the same instant and collide:
        # spread the returns over the next half of the wait.
        wait_s = (1.0 - level) / self._rate
        self._next_lease_at = now - self._rtt_s + wait_s * random.uniform(1.0, 1.5)  # noqa: S311

    def _lease_values(self, now: float, *, tokens: float) -> dict[str, Any]:
        """The bucket item a lease writes: its level after the lease, stamped ``now``."""
        return {
            ":tokens": number(tokens, places=_PLACES),
            ":now": number(now, places=_PLACES),
            ":rate": number(self._rate, places=_PLACES),
            ":capacity": number(self.capacity, places=_PLACES),
            ":by": {"S": self._owner},
            ":ttl": number(int(now) + ITEM_TTL_S),
        }

    async def _write_lease(self, condition: str, values: dict[str, Any]) -> None:
        self.requests += 1
        await self._client.update_item(
            TableName=self._table,
            Key=self._key,
            UpdateExpression=(
                "SET #tokens = :tokens, #updated = :now, #rate = :rate, "
                "#capacity = :capacity, #by = :by, expires_at = :ttl"
            ),
            ConditionExpression=condition,
            ExpressionAttributeNames=_BUCKET_NAMES,
            ExpressionAttributeValues=values,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )

    def _keep_lease(
        self,
        values: dict[str, Any],
        *,
        sent: float,
        now: float,
        level: float,
        want: int,
        take: int,
    ) -> None:
        """Keep what a written lease granted: its ``take`` tokens, the item as written (the
        next lease's starting point), the round trip, and when to lease next."""
        self._rtt_s = 0.8 * self._rtt_s + 0.2 * max(0.0, self._clock() - sent)
        self._seen = {
            "tokens": values[":tokens"],
            "updated_at": values[":now"],
            "rate": values[":rate"],
            "by": values[":by"],
        }
        self._misses = 0
        # Lease no sooner than useful: when the bucket (not the demand) limited this
        # lease, the tokens still wanted come back at the rate, not at once.
        short = want - take
        pause_s = _MIN_LEASE_GAP_S if short <= 0 else short / self._rate
        pause_s = min(self.horizon_s / 2, max(_MIN_LEASE_GAP_S, pause_s))
        pause_s *= random.uniform(1.0, 1.5)  # noqa: S311 - jitter
        ready = max(0, math.floor(level))
        # Tokens the bucket holds at `now` are valid then; the rest as it refills them.
        leased = [now if j < ready else now + (j + 1 - level) / self._rate for j in range(take)]
        self._valid = deque(sorted([*self._valid, *leased]))
        self._last_lease = (values[":now"], leased[0])
        if self._valid:
            # Never pause past the last token in hand: a small lease (others hold the
            # bucket) is followed by another before it runs out, not a second later.
            last_s = self._valid[-1] - self._rtt_s
            pause_s = min(pause_s, max(_MIN_LEASE_GAP_S, last_s - sent))
        self._next_lease_at = sent + pause_s
        log.debug(
            "bucket_leased",
            resource=self.resource.name,
            want=want,
            take=take,
            level=round(level, 3),
            valid_from=round(self._valid[0] - now, 3) if self._valid else None,
            valid_to=round(self._valid[-1] - now, 3) if self._valid else None,
            next_lease_in_s=round(self._next_lease_at - now, 3),
        )

    async def give_back(self) -> None:
        """Return leased tokens not used yet to the bucket (when idle, and on shutdown).

        Only the tokens of this dispatcher's last lease go back, and only while that
        lease is still the bucket's last write (the write's condition: the item's
        ``updated_at`` is the one that lease wrote). Those are the last tokens the
        bucket handed out, so adding them to its level stands it as if they had never
        been leased: the next lease is granted the same times again. Once another
        dispatcher has leased after it, the bucket's times up to that lease are all
        handed out; tokens added back would be granted again *after* them, on top of
        the times that dispatcher already holds (its tokens and the new lease's in the
        same window), and tokens whose time has passed would come back as new ones.
        Those tokens stay here instead (used if work comes, else dropped when late).

        The write also moves the item's version (``updated_at``) on by a millisecond: a
        lease based on the item as it was fails its condition and reads the tokens given
        back, instead of overwriting them with a level computed without them.
        """
        last = self._last_lease
        if last is None or self._seen is None:
            return
        version, first = last
        returning = [t for t in self._valid if t >= first]
        if not returning:
            return
        self._valid = deque(t for t in self._valid if t < first)
        self._last_lease = None
        log.debug("bucket_given_back", resource=self.resource.name, unused=len(returning))
        try:
            self.requests += 1
            await self._client.update_item(
                TableName=self._table,
                Key=self._key,
                UpdateExpression="SET #tokens = #tokens + :unused, #updated = #updated + :step",
                ConditionExpression="#updated = :version",
                ExpressionAttributeNames={"#tokens": "tokens", "#updated": "updated_at"},
                ExpressionAttributeValues={
                    ":unused": number(float(len(returning)), places=_PLACES),
                    ":step": number(_MIN_STEP_S, places=_PLACES),
                    ":version": version,
                },
            )
        except (ClientError, BotoCoreError) as exc:
            if is_condition_failure(exc):
                # Another lease came after this one's: not given back, still ours.
                self._valid = deque(sorted([*self._valid, *returning]))
            else:
                # Perhaps written, perhaps not: never use them here too.
                log.warning("bucket_give_back_failed", resource=self.resource.name, error=str(exc))


class SharedSlots:
    """A :class:`~dispatch.throttle.limits.SlotSource` of slots leased from ``slots#<name>``."""

    def __init__(
        self,
        resource: Resource,
        *,
        client: DynamoDBClient,
        table: str,
        owner: str,
        background: _Background,
        clock: Callable[[], float] = time.time,
        ttl_s: float = SLOT_TTL_S,
    ) -> None:
        if resource.max_concurrency is None:
            raise ValueError(f"Resource {resource.name!r} has no concurrency cap to share")
        self.resource = resource
        self._cap = resource.max_concurrency
        self._client = client
        self._table = table
        self._owner = owner
        self._background = background
        self._clock = clock
        self._ttl_s = ttl_s
        self._key = {c.TABLE_HASH_KEY: {"S": f"{c.SLOTS_KEY_PREFIX}{resource.name}"}}
        self._granted = 0
        self._in_flight = 0
        self._wanted = 0
        self._busy = False
        self._next_try_at = 0.0
        self._refusals = 0  # refusals at the cap in a row: the backoff grows with them
        self._idle_since: float | None = None
        self._fair_share: int | None = None  # set when other dispatchers wait for slots
        self._others_want = False  # another dispatcher was refused at the cap lately
        self.others_seen = False  # another dispatcher held or wanted slots here
        self._shed = 0  # slots given up above the fair share, not yet written back
        self._shedding = False
        self._last_waiter_note = 0.0
        self.requests = 0

    @property
    def limit(self) -> int | None:
        """The global cap."""
        return self._cap

    @property
    def in_flight(self) -> int:
        """Slots in use by this dispatcher."""
        return self._in_flight

    @property
    def granted(self) -> int:
        """Slots this dispatcher holds (in use or idle)."""
        return self._granted

    def try_acquire(self) -> bool:
        """Use a held slot, or ask for more in the background and say no for now."""
        if self._in_flight < self._granted:
            self._in_flight += 1
            self._idle_since = None
            return True
        self._wanted = min(self._cap, self._wanted + 1)
        now = self._clock()
        if not self._busy and now >= self._next_try_at:
            self._busy = True
            self._background.start(self._acquire(self._wanted))
        return False

    def release(self) -> None:
        """A task using a slot ended (or could not start): the slot stays held here for
        the next task. Surplus slots go back to the pool in :meth:`maintain`."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching try_acquire()")
        self._in_flight -= 1
        if self._fair_share is not None and self._granted > self._fair_share:
            # Others wait for slots: this one goes back instead of staying here.
            self._granted -= 1
            self._shed += 1
            if not self._shedding:
                self._shedding = True
                self._background.start(self._shed_slots())
            return
        if self._in_flight < self._granted and self._idle_since is None:
            self._idle_since = self._clock()

    def idle(self) -> None:
        """No task waits here: while other dispatchers want slots (refused at the cap,
        holding some or none), the idle ones go back now (at the end of a backlog, a
        second of idle slots is a second lost)."""
        idle = self._granted - self._in_flight
        if not self._others_want or idle <= 0:
            return
        self._granted -= idle
        self._shed += idle
        self._idle_since = None
        if not self._shedding:
            self._shedding = True
            self._background.start(self._shed_slots())

    async def _shed_slots(self) -> None:
        try:
            while self._shed:
                k, self._shed = self._shed, 0
                await self._write_entry(k, self._clock(), granted=self._granted + k)
        finally:
            self._shedding = False

    def _holder_name(self) -> dict[str, str]:
        return {"#h": "holders", "#me": self._owner}

    async def _acquire(self, want: int) -> None:
        """Take up to ``want`` more slots under the cap (started by :meth:`try_acquire`).

        A write that lost a race is tried again at once, a few times; a refusal at the
        cap makes this dispatcher ask again after a backoff that grows while it lasts.
        """
        try:
            for _ in range(_CONFLICT_RETRIES):
                limit = self._cap if self._fair_share is None else self._fair_share
                k = max(1, min(want, limit - self._granted))
                if self._granted >= limit:
                    return
                now = self._clock()
                try:
                    await self._take_slots(k, now)
                except ClientError as exc:
                    if error_code(exc) != "ValidationException" and not is_condition_failure(exc):
                        raise
                    asked = await self._after_refusal(exc, k=k, want=want, now=now)
                    if asked is None:
                        return
                    want = asked
                    continue
                self._granted += k
                self._wanted = max(0, self._wanted - k)
                self._refusals = 0
                log.debug("slots_taken", resource=self.resource.name, k=k, granted=self._granted)
                return
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "slot_lease_failed",
                resource=self.resource.name,
                error=str(translate_error(exc, "UpdateItem")),
            )
            self._next_try_at = self._clock() + 0.5
        finally:
            self._busy = False

    async def _take_slots(self, k: int, now: float) -> None:
        """Add ``k`` slots to this dispatcher's entry, if the total stays under the cap."""
        self.requests += 1
        await self._client.update_item(
            TableName=self._table,
            Key=self._key,
            UpdateExpression=(
                "SET held = if_not_exists(held, :zero) + :k, #h.#me = :entry, expires_at = :ttl"
            ),
            ConditionExpression="(attribute_not_exists(held) AND :k <= :cap) OR held <= :room",
            ExpressionAttributeNames=self._holder_name(),
            ExpressionAttributeValues={
                ":zero": number(0),
                ":k": number(k),
                ":cap": number(self._cap),
                ":room": number(self._cap - k),
                ":entry": {"M": self._entry(self._granted + k, until=now + self._ttl_s)},
                ":ttl": number(int(now) + ITEM_TTL_S),
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )

    async def _after_refusal(
        self, exc: ClientError, *, k: int, want: int, now: float
    ) -> int | None:
        """How many slots to ask for next after the write of ``k`` was refused; None: stop.

        A missing item is created and expired holders' slots are taken back (then ask
        again for as many); with fewer slots free than ``k``, ask for those; at the cap,
        tell the holders this dispatcher waits and back off.
        """
        if error_code(exc) == "ValidationException":
            # The map does not exist yet: create the item, then try again.
            await self._create()
            return want
        old = old_item(exc) or {}
        if await self._reclaim_expired(old, now):
            return want
        free = self._cap - int(read_number(old.get("held")))
        if free >= 1 and k > 1:
            return free
        await self._note_waiting(now)
        self._refusals += 1
        self._next_try_at = now + _SLOT_BACKOFF.pause_s(self._refusals)
        return None

    def _entry(self, n: int, *, until: float) -> dict[str, Any]:
        """This dispatcher's holder entry: ``n`` slots, held until ``until``."""
        return {"n": number(n), "until": number(until, places=_PLACES)}

    async def _note_waiting(self, now: float) -> None:
        """Tell the holders this dispatcher waits, so they shrink to a fair share."""
        if now - self._last_waiter_note < SLOT_IDLE_RELEASE_S:
            return
        self._last_waiter_note = now
        try:
            self.requests += 1
            await self._client.update_item(
                TableName=self._table,
                Key=self._key,
                UpdateExpression="SET #w.#me = :until",
                ExpressionAttributeNames={"#w": "waiters", "#me": self._owner},
                ExpressionAttributeValues={
                    ":until": number(now + 3 * SLOT_IDLE_RELEASE_S, places=_PLACES)
                },
            )
        except ClientError as exc:
            if error_code(exc) != "ValidationException":
                raise
            await self._create()

    def _update_fair_share(self, item: dict[str, Any], now: float) -> None:
        """From the item: how many dispatchers hold or want slots; our share of the cap."""
        holders = item.get("holders", {}).get("M", {})
        waiters = item.get("waiters", {}).get("M", {})
        active = {o for o, e in holders.items() if read_number(e.get("M", {}).get("until")) >= now}
        active |= {o for o, e in waiters.items() if read_number(e) >= now}
        active.add(self._owner)
        self.others_seen = self.others_seen or len(active) > 1
        others_wait = any(o != self._owner for o in waiters if o in active and o not in holders)
        self._fair_share = max(1, self._cap // len(active)) if others_wait else None
        # A holder refused at the cap wants more too: not enough to shrink to a fair
        # share (a holder with more slots sustains its leased tokens' rate better), but
        # enough to hand idle slots over at once (see idle()).
        self._others_want = any(o != self._owner for o in waiters if o in active)

    async def _create(self) -> None:
        try:
            self.requests += 1
            await self._client.update_item(
                TableName=self._table,
                Key=self._key,
                UpdateExpression="SET held = :zero, #h = :empty, #w = :empty",
                ConditionExpression="attribute_not_exists(held)",
                ExpressionAttributeNames={"#h": "holders", "#w": "waiters"},
                ExpressionAttributeValues={":zero": number(0), ":empty": {"M": {}}},
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise

    async def _reclaim_expired(self, item: dict[str, Any], now: float) -> bool:
        """Take back the slots of holders whose lease expired; True if any were."""
        holders = item.get("holders", {}).get("M", {})
        reclaimed = False
        for owner, entry in holders.items():
            fields = entry.get("M", {})
            until = read_number(fields.get("until"))
            if owner == self._owner or until >= now:
                continue
            n = read_number(fields.get("n"))
            try:
                self.requests += 1
                await self._client.update_item(
                    TableName=self._table,
                    Key=self._key,
                    UpdateExpression="SET held = held - :n REMOVE #h.#other",
                    ConditionExpression="#h.#other.#u = :until",
                    ExpressionAttributeNames={"#h": "holders", "#other": owner, "#u": "until"},
                    ExpressionAttributeValues={":n": number(n), ":until": fields["until"]},
                )
                log.info("slots_reclaimed", resource=self.resource.name, owner=owner, slots=int(n))
                reclaimed = True
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise
        return reclaimed

    async def maintain(self) -> None:
        """Renew this dispatcher's holding; give back slots idle for a while, and the
        idle ones above its fair share when other dispatchers wait for slots."""
        now = self._clock()
        idle = self._granted - self._in_flight
        surplus = 0 if self._fair_share is None else self._granted - self._fair_share
        if (
            idle > 0
            and self._idle_since is not None
            and now - self._idle_since >= SLOT_IDLE_RELEASE_S
        ):
            await self._give_back(idle, now)
        elif idle > 0 and surplus > 0:
            await self._give_back(min(idle, surplus), now)
        elif self._granted > 0:
            await self._write_entry(0, now)

    async def _give_back(self, k: int, now: float) -> None:
        self._granted -= k
        self._idle_since = None
        await self._write_entry(k, now, granted=self._granted + k)

    async def _write_entry(self, give_back: int, now: float, *, granted: int | None = None) -> None:
        """Renew this holder's entry, giving back ``give_back`` of its ``granted`` slots."""
        if give_back:
            log.debug("slots_given_back", resource=self.resource.name, k=give_back)
        held_before = self._granted if granted is None else granted
        remaining = held_before - give_back
        try:
            self.requests += 1
            if remaining > 0:
                answer = await self._client.update_item(
                    TableName=self._table,
                    Key=self._key,
                    UpdateExpression="SET held = held - :k, #h.#me = :entry",
                    ExpressionAttributeNames=self._holder_name(),
                    ExpressionAttributeValues={
                        ":k": number(give_back),
                        ":entry": {"M": self._entry(remaining, until=now + self._ttl_s)},
                    },
                    ReturnValues="ALL_NEW",
                )
                self._update_fair_share(dict(answer.get("Attributes", {})), now)
            else:
                await self._client.update_item(
                    TableName=self._table,
                    Key=self._key,
                    UpdateExpression="SET held = held - :k REMOVE #h.#me",
                    ConditionExpression="attribute_exists(#h.#me)",
                    ExpressionAttributeNames=self._holder_name(),
                    ExpressionAttributeValues={":k": number(give_back)},
                )
                self._fair_share, self._others_want = None, False
        except (ClientError, BotoCoreError) as exc:
            if not is_condition_failure(exc):
                log.warning("slot_renew_failed", resource=self.resource.name, error=str(exc))

    async def give_back_all(self) -> None:
        """Return every held slot (on shutdown)."""
        if self._granted > 0:
            await self._give_back(self._granted, self._clock())


class Coordinator:
    """One dispatcher's share of the global throttle: builds a :class:`Throttle`
    whose buckets and caps live in DynamoDB, and keeps its slot leases alive."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        slot_ttl_s: float = SLOT_TTL_S,
        lease_horizon_s: float = 2.5,
    ) -> None:
        self._client = client
        self._lease_horizon_s = lease_horizon_s
        self._table = table
        self.owner = owner or dispatcher_id()
        self._clock = clock
        self._slot_ttl_s = slot_ttl_s
        self._background = _Background()
        self.buckets: dict[str, SharedTokenSource | RateSlices] = {}
        self.slots: dict[str, SharedSlots] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self.throttle = Throttle(
            token_source_factory=self._bucket_for, slot_source_factory=self._slots_for
        )

    def _bucket_for(self, resource: Resource) -> SharedTokenSource | RateSlices:
        def adopt(rate: float) -> None:
            self.throttle.for_resource(resource).adopt_rate(rate)

        # A keyed resource's keys come due one token at a time on every dispatcher:
        # a slice of the rate each, not runs of one sequence of tokens (slices.py).
        sliced = resource.per_key is not None and (resource.burst or 0) >= MIN_SLICED_BURST
        make: Callable[..., SharedTokenSource | RateSlices] = (
            RateSlices
            if sliced
            else functools.partial(SharedTokenSource, max_horizon_s=self._lease_horizon_s)
        )
        source = make(
            resource,
            client=self._client,
            table=self._table,
            owner=self.owner,
            background=self._background,
            clock=self._clock,
            on_remote_rate=adopt,
        )
        self.buckets[resource.name] = source
        return source

    def _slots_for(self, resource: Resource) -> SharedSlots:
        source = SharedSlots(
            resource,
            client=self._client,
            table=self._table,
            owner=self.owner,
            background=self._background,
            clock=self._clock,
            ttl_s=self._slot_ttl_s,
        )
        self.slots[resource.name] = source
        return source

    def for_resource(self, resource: Resource) -> ResourceThrottle:
        """The shared throttle of ``resource``."""
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        return self.throttle.for_resource(resource)

    def shared_with_others(self, name: str) -> bool:
        """Whether another dispatcher has used resource ``name``'s bucket or cap (seen
        when their writes meet this one's)."""
        bucket, slots = self.buckets.get(name), self.slots.get(name)
        return (bucket is not None and bucket.others_seen) or (
            slots is not None and slots.others_seen
        )

    @property
    def requests(self) -> int:
        """DynamoDB requests made for coordination so far."""
        return sum(b.requests for b in self.buckets.values()) + sum(
            s.requests for s in self.slots.values()
        )

    async def _maintain(self) -> None:
        period = min(self._slot_ttl_s / 3, SLOT_IDLE_RELEASE_S)
        renew_every = self._slot_ttl_s / 3
        last_renew = self._clock()
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            for bucket in list(self.buckets.values()):
                if isinstance(bucket, RateSlices):
                    bucket.maintain()
            for slots in list(self.slots.values()):
                idle = slots.granted - slots.in_flight
                # Holding slots busy, others may be waiting: renew every period and
                # learn our fair share from the answer.
                if idle > 0 or slots.granted > 1 or now - last_renew >= renew_every:
                    await slots.maintain()
            if now - last_renew >= renew_every:
                last_renew = now

    async def aclose(self) -> None:
        """Stop renewing; return unused tokens and every held slot."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self._background.aclose()
        for bucket in self.buckets.values():
            await bucket.give_back()
        for slots in self.slots.values():
            await slots.give_back_all()
