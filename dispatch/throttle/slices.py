"""Rate slices: a keyed resource's global rate, divided between the dispatchers running it.

The shared bucket (:mod:`dispatch.throttle.shared`) hands out its tokens as one
sequence of times, each lease a contiguous run of them. That suits a backlog:
whoever leases uses the run. A keyed resource's demand is different: its keys,
spread over the dispatchers by their leases, each come due one token at a time,
and a key due while another dispatcher holds the run waits until after it (a
burst of 1 never makes that delay up). So a keyed resource's global rate is
divided instead: each dispatcher holds a *slice*, a rate and a burst of its own,
and serves its keys from a local bucket at that rate, with no request per task.

``slices#<resource>`` holds every slice: ``s`` is a map of dispatcher id to
``{r, b, w, u}`` (rate, burst, the rate it wants, and until when the slice is
held, epoch seconds), ``v`` the item's version (every write is conditional on
it), and ``rate``/``by`` the adaptive rate as on the bucket item. A dispatcher
writes its own slice (and its answer is every slice) when a third of its hold is
left, when what it wants moved by half, and, while it is short of tokens, every
second while its fair part is bigger than its slice or every 2 s while it wants
more than it holds: a few writes a minute in a steady state, not one per second.

Exactness. At every instant the slices held add up to at most the global rate
and burst: a dispatcher grows its slice only into what the others' unexpired
slices leave (read at the version its write is conditional on), and shrinks its
local bucket *before* it publishes the smaller slice. A slice not renewed stays
counted until :data:`MARGIN_S` past its ``until`` (clock skew), then the next
writer drops it. A local bucket never gains tokens when its burst grows, so the
tokens held across all dispatchers never exceed the global burst: over any window
of ``w`` seconds at most ``rate * w + burst`` tasks start.

Division. The rate is shared max-min fairly by the rates wanted (the fewest
first get all they want; the rest share what is left equally); when the wants
add up to less than the rate, the spare is spread in proportion to them, so
every dispatcher has room to grow before its next refresh. Each slice holds a
whole token of the burst and the rest of the burst in proportion to the rates.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.store.aws import translate_error
from dispatch.store.codec import number, read_number
from dispatch.store.conditional import is_condition_failure, old_item
from dispatch.throttle.limits import START_JITTER_S, Resource

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

__all__ = [
    "MARGIN_S",
    "MIN_SLICED_BURST",
    "PROBE_S",
    "SLICE_TTL_S",
    "RateSlices",
    "divide",
    "lower_rate_by_another",
]

log = structlog.get_logger("dispatch.throttle.slices")

SLICE_TTL_S: Final = 6.0
"""A slice is held this long after its write; it is renewed when a third is left."""
MIN_GAP_S: Final = 0.5
"""A dispatcher writes its slice at most this often."""
WANT_CHANGE: Final = 0.5
"""A dispatcher writes before its renewal when what it wants moved by this share."""
PROBE_S: Final = 1.0
"""Short of tokens, a dispatcher whose fair part (by the item it last saw) is bigger
than its slice writes this often; one that only wants more than it holds, every
``2 * PROBE_S`` (the others may have shrunk since it last saw them)."""
WAITING_HOLDS_S: Final = 1.0
"""What a take said of the tasks waiting counts this long."""
MARGIN_S: Final = 1.0
"""A lapsed slice still counts this long past its ``until`` (clock skew between hosts)."""
GROW_BY: Final = 1.2
"""A dispatcher writes before its time when its fair part is this many times its slice."""
IDLE_AFTER_S: Final = 2.0
"""A dispatcher that took no token for this long wants nothing (its slice shrinks)."""
MIN_SLICED_BURST: Final = 4.0
"""Below this global burst a keyed resource keeps the shared bucket: too small to slice."""
RETRY_HINT_S: Final = 0.05
_CONFLICT_RETRIES: Final = 6
_TOKEN_SLACK: Final = 1e-9  # float rounding is not a wait
_PLACES: Final = 6
_ITEM_TTL_S: Final = 24 * 3600


class _Background(Protocol):
    def start(self, coroutine: Any) -> None: ...


def divide(rate: float, wants: Mapping[str, float]) -> dict[str, float]:
    """Share ``rate`` between ``wants``: max-min fair when they add up to more,
    else each gets what it wants plus the spare in proportion to its want (all
    wants zero: equal parts)."""
    if not wants:
        return {}
    total = sum(wants.values())
    if total <= 0:
        return dict.fromkeys(wants, rate / len(wants))
    if total <= rate:
        return {name: want * rate / total for name, want in wants.items()}
    shares: dict[str, float] = {}
    left, pending = rate, sorted(wants.items(), key=lambda item: item[1])
    while pending:
        equal = left / len(pending)
        name, want = pending[0]
        if want > equal:
            shares.update((n, equal) for n, _ in pending)
            break
        shares[name] = want
        left -= want
        pending.pop(0)
    return shares


def lower_rate_by_another(seen: Mapping[str, Any], owner: str, own_rate: float) -> float | None:
    """The rate a shared item (``bucket#`` or ``slices#``) says another dispatcher
    runs the resource at, when lower than ``own_rate``: to adopt (its own earlier
    rate never holds back this dispatcher's recovery). None otherwise."""
    rate = read_number(seen.get("rate"), own_rate)
    by = seen.get("by", {}).get("S")
    return rate if by != owner and rate < own_rate * 0.999 else None


class RateSlices:
    """A :class:`~dispatch.throttle.limits.TokenSource`: this dispatcher's slice of
    a keyed resource's global rate, served from a local bucket (module docstring)."""

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
    ) -> None:
        if resource.rate_per_s is None or resource.burst is None:
            raise ValueError(f"Resource {resource.name!r} has no rate to share")
        self.resource = resource
        self._client = client
        self._table = table
        self._background = background
        self._owner = owner
        self._clock = clock
        self._on_remote_rate = on_remote_rate
        self._key = {c.TABLE_HASH_KEY: {"S": f"{c.SLICES_KEY_PREFIX}{resource.name}"}}
        self._rate = resource.rate_per_s  # the global rate (lower while adapting)
        self._slice = (0.0, 0.0)  # this dispatcher's (rate, burst)
        self._until = -math.inf
        self._level = 0.0
        self._level_at = clock()
        self._seen: dict[str, Any] | None = None
        self._refreshing = False
        self._closed = False
        self._written_at = -math.inf
        self._renew_at = -math.inf
        self._published_want = 0.0
        self._takes: deque[float] = deque()
        self._waiting = 0  # tasks waiting here, as a take said lately (at _waiting_at)
        self._waiting_at = -math.inf
        self._others_seen_at = -math.inf
        self.requests = 0

    # -- TokenSource -----------------------------------------------------------------

    @property
    def tokens(self) -> float:
        """Tokens in the local bucket now."""
        self._refill(self._clock())
        return self._level

    @property
    def others_seen(self) -> bool:
        """Another dispatcher has held a slice of this resource since this one started."""
        return self._others_seen_at > -math.inf

    @property
    def slice(self) -> tuple[float, float]:
        """This dispatcher's slice: (rate per second, burst)."""
        return self._slice

    def try_take(self, n: float = 1.0, *, waiting: int = 1) -> float:
        """Take a token from the local bucket if it has one, else say how long to wait."""
        if n != 1.0:
            raise ValueError("a rate slice hands out one token per task")
        now = self._clock()
        if now - self._waiting_at > WAITING_HOLDS_S or waiting >= self._waiting:
            self._waiting, self._waiting_at = waiting, now
        self._refill(now)
        if now < self._until and self._level >= 1.0 - _TOKEN_SLACK:
            self._level -= 1.0
            self._takes.append(now)
            self._maybe_refresh(now)
            return 0.0
        self._maybe_refresh(now, short=True)
        rate = self._slice[0]
        if now >= self._until or rate <= 0:
            return RETRY_HINT_S
        return max(0.001, (1.0 - self._level) / rate)

    def idle(self) -> None:
        """No task waits here: the next refresh asks for what was used, no more."""
        self._maybe_refresh(self._clock())

    def set_rate(self, rate_per_s: float) -> None:
        """The global rate is now ``rate_per_s``: the slice shrinks with it at once
        (and grows back only through the item, at the next refresh)."""
        if rate_per_s < self._rate:
            scale = rate_per_s / self._rate
            self._refill(self._clock())
            self._slice = (self._slice[0] * scale, self._slice[1] * scale)
            self._level = min(self._level, self._capacity())
        self._rate = rate_per_s

    # -- the local bucket --------------------------------------------------------------

    def _capacity(self) -> float:
        rate, burst = self._slice
        if burst <= 0:
            return 0.0
        # As the shared bucket's: the start margin comes off the burst, never below a token.
        return max(1.0, burst - rate * START_JITTER_S)

    def _refill(self, now: float) -> None:
        until = min(now, self._until)
        if until > self._level_at:
            self._level = min(
                self._capacity(), self._level + (until - self._level_at) * self._slice[0]
            )
        self._level_at = max(self._level_at, now)

    def _apply(self, rate: float, burst: float, until: float) -> None:
        """Serve from a new slice: the level carries over, never above the new burst."""
        self._refill(self._clock())
        self._slice = (rate, burst)
        self._until = until
        self._level = min(self._level, self._capacity())

    # -- the shared item ---------------------------------------------------------------

    def _want(self, now: float) -> float:
        while self._takes and self._takes[0] < now - IDLE_AFTER_S:
            self._takes.popleft()
        used = len(self._takes) / IDLE_AFTER_S
        # Tasks waiting for a token now (a keyed line counts those its keys may start
        # within a second): a rate, over that second.
        recent = now - self._waiting_at <= WAITING_HOLDS_S
        return max(used, float(self._waiting) if recent else 0.0)

    def _maybe_refresh(self, now: float, *, short: bool = False) -> None:
        """Write the slice when it is time: its renewal (a third of its hold left), a
        move in what this dispatcher wants, or, while it is short of tokens, a fair
        part bigger than its slice (every second) or a want bigger than it (every 2 s)."""
        if self._refreshing or self._closed:
            return
        since = now - self._written_at
        due = now >= self._renew_at
        if not due and since >= MIN_GAP_S:
            want, rate = self._want(now), self._slice[0]
            published = self._published_want
            due = abs(want - published) > WANT_CHANGE * max(published, 1.0)
            if short and not due:
                fair = self._fair(self._wants(self._others(now), now, want))
                due = (since >= PROBE_S and fair > rate * GROW_BY) or (
                    since >= 2 * PROBE_S and want > rate * GROW_BY
                )
        if not due:
            return
        self._refreshing = True
        self._background.start(self._refresh())

    async def _refresh(self) -> None:
        try:
            for _ in range(_CONFLICT_RETRIES):
                if await self._try_refresh():
                    return
        finally:
            self._refreshing = False

    def maintain(self) -> None:
        """Renew on time though no task asks (the coordinator calls this every
        second): a held slice whose tasks ran out then goes back to the others."""
        if self._slice[0] > 0 and not self._closed:
            self._maybe_refresh(self._clock())

    def _others(self, now: float) -> dict[str, Mapping[str, Any]]:
        """The other dispatchers' slices that still count (held, or lapsed less than
        :data:`MARGIN_S` ago), from the item last seen."""
        seen = self._seen or {}
        slices = seen.get("s", {}).get("M", {})
        others: dict[str, Mapping[str, Any]] = {}
        for owner, value in slices.items():
            fields = value.get("M", {})
            if owner != self._owner and read_number(fields.get("u"), 0.0) + MARGIN_S > now:
                others[owner] = fields
        if others:
            self._others_seen_at = now
        return others

    def _wants(
        self, others: Mapping[str, Mapping[str, Any]], now: float, want: float
    ) -> dict[str, float]:
        """What every dispatcher holding a slice now wants, this one's ``want`` included."""
        wants = {
            o: read_number(f.get("w"), 0.0)
            for o, f in others.items()
            if read_number(f.get("u"), 0.0) > now
        }
        wants[self._owner] = want
        return wants

    def _fair(self, wants: Mapping[str, float]) -> float:
        """This dispatcher's fair part of the rate, given every holder's want."""
        return divide(self._rate, wants)[self._owner] if wants[self._owner] > 0 else 0.0

    def _divide(self, now: float, want: float) -> tuple[float, float]:
        """The slice to hold next: this dispatcher's fair part, within what the
        others' slices leave free now."""
        others = self._others(now)
        wants = self._wants(others, now, want)
        fair = self._fair(wants)
        held_rate = sum(read_number(f.get("r"), 0.0) for f in others.values())
        held_burst = sum(read_number(f.get("b"), 0.0) for f in others.values())
        rate = max(0.0, min(fair, self._rate - held_rate))
        if rate <= 0:
            return 0.0, 0.0
        total_burst = float(self.resource.burst or 1) * min(
            1.0, self._rate / (self.resource.rate_per_s or self._rate)
        )
        wanting = sum(1 for w in wants.values() if w > 0)
        if wanting > total_burst:
            # More dispatchers want the resource than its burst has tokens: each
            # holds one token of burst (documented: the burst is exceeded by the excess).
            return rate, 1.0
        # A whole token each, the rest of the burst in proportion to the rates; a
        # dispatcher that would get less than its token waits for the others to shrink.
        burst = min(1.0 + (total_burst - wanting) * rate / self._rate, total_burst - held_burst)
        if burst < 1.0:
            return 0.0, 0.0
        return rate, burst

    async def _try_refresh(self) -> bool:
        """One conditional write of this dispatcher's slice; True when finished."""
        sent = self._clock()
        if self._seen is not None:
            self._adopt_remote_rate()
        want = self._want(sent)
        rate, burst = self._divide(sent, want)
        if rate < self._slice[0] or burst < self._slice[1]:
            # Shrink here before the smaller slice is published: others grow into it.
            self._apply(min(rate, self._slice[0]), min(burst, self._slice[1]), self._until)
        until = sent + SLICE_TTL_S
        try:
            item = await self._write(sent, rate=rate, burst=burst, want=want, until=until)
        except (ClientError, BotoCoreError) as exc:
            if is_condition_failure(exc):
                self._seen = old_item(exc)
                return False
            log.warning(
                "rate_slice_failed",
                resource=self.resource.name,
                error=str(translate_error(exc, "UpdateItem")),
            )
            self._written_at = sent  # tried: again after MIN_GAP_S at the earliest
            return True
        self._seen = item
        self._apply(rate, burst, until)
        self._written_at = sent
        self._published_want = want
        # Renewed with a third of the hold left, give or take: dispatchers that
        # started together do not collide at every renewal.
        self._renew_at = sent + SLICE_TTL_S * 2 / 3 * random.uniform(0.85, 1.0)  # noqa: S311
        log.debug(
            "rate_slice_held",
            resource=self.resource.name,
            rate=round(rate, 3),
            burst=round(burst, 3),
            want=round(want, 3),
            others=len(self._others(sent)),
        )
        return True

    def _adopt_remote_rate(self) -> None:
        lower = lower_rate_by_another(self._seen or {}, self._owner, self._rate)
        if lower is not None and self._on_remote_rate:
            self._on_remote_rate(lower)  # another dispatcher slowed the resource down

    async def _write(
        self, now: float, *, rate: float, burst: float, want: float, until: float
    ) -> dict[str, Any]:
        """Write this slice into the item (dropping slices lapsed past the margin);
        returns the item as written."""
        seen = self._seen
        kept = {owner: {"M": dict(fields)} for owner, fields in self._others(now).items()}
        kept[self._owner] = {
            "M": {
                "r": number(rate, places=_PLACES),
                "b": number(burst, places=_PLACES),
                "w": number(want, places=_PLACES),
                "u": number(until, places=_PLACES),
            }
        }
        version = int(read_number(seen.get("v"), 0.0)) if seen else 0
        values: dict[str, Any] = {
            ":s": {"M": kept},
            ":v": number(version + 1),
            ":rate": number(self._rate, places=_PLACES),
            ":by": {"S": self._owner},
            ":ttl": number(int(now) + _ITEM_TTL_S),
        }
        if seen is None or "v" not in seen:
            condition = "attribute_not_exists(pk)"
        else:
            condition = "#v = :seen"
            values[":seen"] = seen["v"]
        self.requests += 1
        await self._client.update_item(
            TableName=self._table,
            Key=self._key,
            UpdateExpression="SET #s = :s, #v = :v, #rate = :rate, #by = :by, expires_at = :ttl",
            ConditionExpression=condition,
            ExpressionAttributeNames={"#s": "s", "#v": "v", "#rate": "rate", "#by": "by"},
            ExpressionAttributeValues=values,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        return {"s": values[":s"], "v": values[":v"], "rate": values[":rate"], "by": values[":by"]}

    async def give_back(self) -> None:
        """Drop this dispatcher's slice from the item (on shutdown), so the others
        may grow into it at their next refresh instead of after it lapses."""
        self._closed = True
        self._apply(0.0, 0.0, -math.inf)
        for _ in range(_CONFLICT_RETRIES):
            if self._seen is None:
                return
            try:
                await self._write(self._clock(), rate=0.0, burst=0.0, want=0.0, until=0.0)
                return
            except (ClientError, BotoCoreError) as exc:
                if not is_condition_failure(exc):
                    log.warning(
                        "rate_slice_give_back_failed", resource=self.resource.name, error=str(exc)
                    )
                    return
                self._seen = old_item(exc)
