"""The shared bucket's give-back against concurrent leases, on an in-memory bucket item.

Several dispatchers lease from one ``bucket#<name>`` item; every token they are
granted has a valid time, and together those times must never put more than
``capacity + rate x w`` tokens in any window of ``w`` seconds. These tests drive
:class:`SharedTokenSource` with a manual clock against a fake DynamoDB that applies
the bucket's UpdateItem expressions (and their conditions) exactly, one at a time.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from dispatch.throttle.limits import Resource
from dispatch.throttle.shared import SharedTokenSource, _Background

RATE = 200.0
BURST = 20


class ManualClock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeBucketTable:
    """One DynamoDB item, updated by ``SET a = operand [+ operand], ...`` expressions
    under ``attribute_not_exists(pk)`` or ``<path> = <operand>`` conditions."""

    def __init__(self) -> None:
        self.item: dict[str, Any] | None = None
        self.writes: list[str] = []

    async def update_item(self, **request: Any) -> dict[str, Any]:
        names: dict[str, str] = request.get("ExpressionAttributeNames", {})
        values: dict[str, Any] = request.get("ExpressionAttributeValues", {})

        def path(token: str) -> str:
            return names.get(token, token)

        def operand(token: str) -> Decimal | str | None:
            if token.startswith(":"):
                value = values[token]
            else:
                value = (self.item or {}).get(path(token))
                if value is None:
                    return None
            return Decimal(value["N"]) if "N" in value else value["S"]

        condition = request.get("ConditionExpression")
        if condition is not None and not self._holds(condition, path, operand):
            error: dict[str, Any] = {
                "Error": {"Code": "ConditionalCheckFailedException", "Message": "failed"}
            }
            if request.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and self.item:
                error["Item"] = copy.deepcopy(self.item)
            raise ClientError(error, "UpdateItem")  # type: ignore[arg-type]
        expression = request["UpdateExpression"]
        assert expression.startswith("SET "), expression
        new = copy.deepcopy(self.item) if self.item else dict(request["Key"])
        for clause in expression[4:].split(", "):
            target, value = (part.strip() for part in clause.split(" = "))
            terms = [operand(t.strip()) for t in value.split(" + ")]
            if len(terms) == 1 and isinstance(terms[0], str):
                new[path(target)] = {"S": terms[0]}
            else:
                total = sum((t for t in terms if isinstance(t, Decimal)), Decimal(0))
                new[path(target)] = {"N": str(total)}
        self.item = new
        self.writes.append(expression)
        return {}

    def _holds(self, condition: str, path: Any, operand: Any) -> bool:
        if condition == "attribute_not_exists(pk)":
            return self.item is None
        match = re.fullmatch(r"(\S+) = (\S+)", condition)
        assert match is not None, condition
        left = operand(match.group(1))
        return left is not None and left == operand(match.group(2))


def _source(owner: str, table: FakeBucketTable, clock: ManualClock) -> SharedTokenSource:
    return SharedTokenSource(
        Resource("api", rate_per_s=RATE, burst=BURST),
        client=table,  # type: ignore[arg-type]
        table="t",
        background=_Background(),
        owner=owner,
        clock=clock,
        max_horizon_s=2.5,
    )


async def _lease(source: SharedTokenSource, want: int) -> list[float]:
    """Lease ``want`` tokens (conflicts retried, as in the background); the new ones."""
    before = list(source._valid)
    await source._lease(want)
    after = list(source._valid)
    for t in before:
        after.remove(t)
    return after


def _start_valid(source: SharedTokenSource, now: float) -> list[float]:
    """Start every task the source holds a token valid by ``now`` for (a dispatcher
    busy until then); their tokens' times."""
    started = []
    while source._valid and source._valid[0] <= now:
        started.append(source._valid.popleft())
    return started


def _worst_excess(times: list[float]) -> float:
    """The largest ``count - rate x window`` over every window of the valid times."""
    ordered = sorted(times)
    return max(
        (j - i + 1) - RATE * (ordered[j] - ordered[i])
        for i in range(len(ordered))
        for j in range(i, len(ordered))
    )


async def test_tokens_given_back_after_another_lease_are_never_granted_twice() -> None:
    """Given A holding 60 tokens (0.3 s at 200/s) and B leasing 60 after it (B's
    tokens valid after A's), when A, having started the tasks of the tokens valid so
    far, goes idle and gives the rest back and C then
    leases 60, then no window holds more than the bucket's capacity above the rate:
    A's tokens were not the bucket's last ones, so giving them back would hand C the
    times B already holds (120 tokens in 0.3 s), not A's own."""
    table, clock = FakeBucketTable(), ManualClock(1000.0)
    a, b, c = (_source(owner, table, clock) for owner in "abc")
    assert len(await _lease(a, 60)) == 60
    clock.now = 1000.05
    b_tokens = await _lease(b, 60)
    clock.now = 1000.1
    a_started = _start_valid(a, clock.now)
    await a.give_back()
    a_kept = list(a._valid)  # any A did not give back are still its own to start
    clock.now = 1000.11
    c_tokens = await _lease(c, 60)

    granted = [*a_started, *a_kept, *b_tokens, *c_tokens]
    assert len(c_tokens) == 60
    assert _worst_excess(granted) <= a.capacity + 1


async def test_tokens_whose_time_passed_are_not_granted_again() -> None:
    """Given A's lease of 40 tokens, then B's of 40, and A idle until all its tokens
    are valid and dropped late, when A gives them back and C leases, then C's tokens
    come after B's: the times of A's tokens are gone, returning them would add 40
    tokens on top of B's."""
    table, clock = FakeBucketTable(), ManualClock(2000.0)
    a, b, c = (_source(owner, table, clock) for owner in "abc")
    a_tokens = await _lease(a, 40)
    clock.now = 2000.02
    b_tokens = await _lease(b, 60)
    clock.now = 2000.3  # every token of A is past its valid time (and its late margin)
    await a.give_back()
    clock.now = 2000.31
    c_tokens = await _lease(c, 60)

    assert min(c_tokens) > max(b_tokens) - 1 / RATE
    assert _worst_excess([*a_tokens, *b_tokens, *c_tokens]) <= a.capacity + 1


async def test_the_last_lease_still_goes_back_and_reaches_the_next_lease() -> None:
    """Given A's lease the bucket's last write (nobody leased after it), when A goes
    idle and gives back the tokens it did not use, then they reach the next lease at
    once (B's tokens take A's times, not the times after them), and the item's version
    moves on (a lease conditional on the version before it fails)."""
    table, clock = FakeBucketTable(), ManualClock(3000.0)
    a, b = _source("a", table, clock), _source("b", table, clock)
    assert len(await _lease(a, 100)) == 100  # 0.5 s of tokens
    version = table.item["updated_at"]  # type: ignore[index]
    clock.now = 3000.1
    a_used = _start_valid(a, clock.now)
    await a.give_back()
    assert a._valid == type(a._valid)()
    assert table.item["updated_at"] != version  # type: ignore[index]
    clock.now = 3000.11
    b_tokens = await _lease(b, 60)

    # Without the give-back B's first token would be valid 0.5 s after A's lease.
    assert min(b_tokens) < 3000.2
    assert _worst_excess([*a_used, *b_tokens]) <= a.capacity + 1
