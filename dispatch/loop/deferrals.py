"""Deferrals: the messages a dispatcher hid until their turn, and bringing them back early.

A message the throttle cannot start soon is hidden on SQS (a visibility change,
no write, no attempt spent) until about its turn in this dispatcher's schedule.
The dispatcher keeps its receipt here, ordered by the time it is due back. When
the resource's waiting room has space before then (the schedule was pessimistic,
another dispatcher stopped taking its share, the resource went idle) the
earliest are *recalled*: made visible again at once, in batches of up to ten, so
a resource is never left idle while its work sits hidden. A dispatcher that stops
recalls everything it hid, for the dispatchers that go on.

A receipt is only used while its message is surely still hidden by this
dispatcher: an entry within :data:`RECALL_MARGIN_S` of its due time is left to
come back by itself (after it, another receive may hold the message, and a stale
receipt must never make their copy visible).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dispatch.core import constants as c
from dispatch.loop.sqs import SqsActions

__all__ = ["RECALL_MARGIN_S", "RECALL_TRANSIT_S", "Deferrals"]

RECALL_MARGIN_S: Final = 0.5
"""An entry this close to its due time is not recalled: it comes back by itself."""
RECALL_TRANSIT_S: Final = 2.0
"""A recalled message counts as on its way back for this long (until a receive brings it)."""


@dataclass(order=True, slots=True)
class _Hidden:
    due_at: float
    message_id: str = field(compare=False)
    receipt: str = field(compare=False)


class Deferrals:
    """Per resource: the messages this dispatcher hid, by due time, and those recalled."""

    def __init__(self, sqs: SqsActions, *, clock: Callable[[], float]) -> None:
        self._sqs = sqs
        self._clock = clock
        self._hidden: dict[str, list[_Hidden]] = {}
        self._recalled: dict[str, dict[str, float]] = {}  # resource -> message id -> when
        self.recalls = 0
        """Messages made visible early so far."""

    def add(self, name: str, *, message_id: str, receipt: str, due_at: float) -> None:
        """Note a message of resource ``name`` hidden until ``due_at``."""
        bisect.insort(self._hidden.setdefault(name, []), _Hidden(due_at, message_id, receipt))

    def pending(self, name: str) -> int:
        """Messages of resource ``name`` hidden here and not due yet, plus those recalled
        and not back yet: the work this dispatcher has lined up beyond its waiting room."""
        return self.hidden(name) + len(self._in_transit(name, self._clock()))

    def hidden(self, name: str) -> int:
        """Messages of resource ``name`` hidden here and not due yet (not visible on SQS)."""
        now = self._clock()
        hidden = self._hidden.get(name, [])
        due = bisect.bisect_right(hidden, _Hidden(now, "", ""))
        del hidden[:due]  # visible again by now: anyone's receive may take them
        return len(hidden)

    def in_transit(self, name: str) -> int:
        """Recalled messages of resource ``name`` not back yet."""
        return len(self._in_transit(name, self._clock()))

    def arrived(self, name: str, message_id: str) -> None:
        """A message of resource ``name`` was received: no longer on its way back."""
        self._recalled.get(name, {}).pop(message_id, None)

    def recallable(self, name: str) -> int:
        """Entries of ``name`` that may still be recalled (not within the margin of due)."""
        limit = self._clock() + RECALL_MARGIN_S
        return sum(1 for entry in self._hidden.get(name, []) if entry.due_at > limit)

    async def recall(self, name: str, count: int) -> int:
        """Make up to ``count`` of the earliest hidden messages of ``name`` visible now;
        how many were."""
        now = self._clock()
        hidden = self._hidden.get(name, [])
        limit = now + RECALL_MARGIN_S
        chosen = [entry for entry in hidden if entry.due_at > limit][: max(0, count)]
        if not chosen:
            return 0
        for entry in chosen:
            hidden.remove(entry)
            self._recalled.setdefault(name, {})[entry.message_id] = now
        self.recalls += len(chosen)
        await asyncio.gather(*(self._sqs.hide(entry.receipt, 0) for entry in chosen))
        return len(chosen)

    async def recall_all(self) -> dict[str, int]:
        """Make every message hidden here visible now (the dispatcher stops); how many,
        by resource."""
        counts = {
            name: await self.recall(name, len(self._hidden[name])) for name in list(self._hidden)
        }
        return {name: n for name, n in counts.items() if n}

    def _in_transit(self, name: str, now: float) -> dict[str, float]:
        recalled = self._recalled.get(name, {})
        for message_id in [m for m, at in recalled.items() if now - at > RECALL_TRANSIT_S]:
            del recalled[message_id]
        return recalled


def hide_for_s(delay_s: float) -> int:
    """Whole seconds to hide a message due back in ``delay_s``: never later than due
    (SQS counts whole seconds), at least one, at most SQS's limit."""
    return max(1, min(c.SQS_MAX_VISIBILITY_S, int(delay_s)))
