"""The key owners' members item over HTTP to the emulator: one write sets a heartbeat and
answers with every member's, forgets the long gone (present or already removed), and a
stopping member leaves."""

from __future__ import annotations

import time

from dispatch.core.config import Settings
from dispatch.store.aws import async_clients
from dispatch.store.key_leases import KeyLeaseStore, Member


async def test_a_beat_answers_every_member_and_forgets_the_gone(aws_env: Settings) -> None:
    """Given members d1 and d2 of queue q (d2 running keys unleased; d3 of another
    queue), when d1 beats forgetting d2 and a member nobody has, then the answer is d1
    alone (d3 is another queue's), with the until d1 wrote; when d1 retires, d2's beat
    answers d2 alone, leasing, written at the time it beat."""
    async with async_clients(aws_env) as aio:
        d1, d2 = (
            KeyLeaseStore(aio.dynamodb, table=aws_env.table, owner=o, queue="q")
            for o in ("d1", "d2")
        )
        d3 = KeyLeaseStore(aio.dynamodb, table=aws_env.table, owner="d3", queue="other")
        assert until(await d1.beat(100.5)) == {"d1": (100.5, True)}
        assert until(await d2.beat(101.0, leasing=False)) == {
            "d1": (100.5, True),
            "d2": (101.0, False),
        }
        assert until(await d3.beat(99.0)) == {"d3": (99.0, True)}
        assert until(await d1.beat(110.25, forget=["d2", "never-there"])) == {"d1": (110.25, True)}
        before = time.time()
        await d2.beat(120.0)
        await d1.retire()
        members = await d2.beat(121.0)
        assert until(members) == {"d2": (121.0, True)}
        assert before <= members["d2"].at <= time.time()


def until(members: dict[str, Member]) -> dict[str, tuple[float, bool]]:
    return {owner: (m.until, m.leasing) for owner, m in members.items()}
