"""Corrections to moto's SQS backend (and the entry point for DynamoDB's), pinned to moto 5.2.5.

:func:`apply` replaces a few methods of ``moto.sqs.models.Queue`` and
``SQSBackend`` in the current process (the emulator process calls it before it
serves). It refuses any other moto version: most patches are edited copies of
whole moto methods, and a silent mismatch with another release would be worse
than no patch.

What moto 5.2.5 gets wrong, and what is done about it:

1. **Races.** ``Queue.delete_message`` rebuilds ``Queue._messages`` and
   ``SQSBackend.receive_message`` scans it, neither holding the queue's lock
   (``Queue._messages_lock``, a ``threading.Condition`` over an ``RLock``);
   change-visibility and purge also mutate it unlocked. Under concurrent
   requests a deleted message comes back, a concurrent send is lost, and two
   receivers can both take one message. Here every path that reads or mutates a
   queue's messages, its pending (in-flight) set or its indexes holds that
   queue's lock, and no path holds two queue locks at once (a message moved to
   the dead-letter queue is taken out under the source queue's lock and stored
   under the DLQ's lock after the first is released, so no lock order exists
   that could deadlock, even for queues that dead-letter into each other).
   Long polling waits on the condition, which releases the RLock completely
   while it sleeps; sends and visibility changes notify it.

2. **Cost at depth.** Every send read ``queue.attributes`` (which counts the
   ApproximateNumberOf* values by scanning every message, three times) to learn
   ``ContentBasedDeduplication``; every received message checked its retention
   through ``get_queue_attributes`` (the same scans); receive built the list of
   all visible messages to return ten; delete and change-visibility scanned every
   message's list of receipt handles; FIFO deduplication scanned the queue.
   Here a queue's messages live in a :class:`MessageTable`: send order, a
   receipt-handle index, a heap of messages that can be received (by send order)
   and a heap of messages that will become receivable (by time). Send, receive,
   delete and change-visibility cost O(log n) in the queue's depth, whether the
   messages are visible, delayed or in flight (a FIFO receive also steps over
   the messages of groups it must skip). Only GetQueueAttributes still counts
   in one pass over the queue, under the lock, so its three counters are one
   consistent snapshot.

DynamoDB's corrections (the cost of UpdateItem's expression parsing and
validation, and requests that were not atomic) live in
:mod:`dispatch.local.moto_dynamodb_patches`; :func:`apply` applies them too.

Smaller corrections ride along. Two things grow without bound in a long
``dispatch dev`` session: moto keeps every ``Message`` ever created (and each
copy made for a receive) in ``Message.instances_tracked`` until a reset, and
``Queue.deleted_messages`` keeps every receipt handle ever deleted; the first
is no longer tracked and the second keeps the most recent 200,000. And a
receipt handle is drawn with one ``random.choices`` call instead of 185
``random.choice`` calls (a third of a millisecond per message received). And
moto's server, to find the backend of every request of every service, listed
its own package directory (``moto.backends.list_of_moto_modules``: an
``os.listdir`` and an ``isdir`` per entry, a third of a millisecond); the
listing of an installed package does not change while it runs, so it is taken once.

Observable SQS behaviour is moto's (and AWS's): receive order is send order
(on a standard queue, send order within the fair-queue rule below),
receive counts and receipt handles (old handles still delete), visibility and
delays, redrive to the DLQ once ``ApproximateReceiveCount`` reaches
``maxReceiveCount``, FIFO message groups (a group with a message in flight is
skipped; one receive may return several messages of a free group, in order) and
deduplication. Three deliberate differences, each what AWS does:

* a message past the retention period is dropped when a receive reaches it
  (moto marked it received and ended the receive);
* FIFO deduplication remembers an id for five minutes after its first send even
  if that message was deleted or purged (moto compared only with messages still
  queued);
* which FIFO groups are blocked is decided once per receive, from the messages
  in flight when it starts (moto re-derived it mid-scan whenever it met a
  message whose visibility had expired, which could skip a group's earlier
  messages and deliver later ones first, out of FIFO order);
* a standard queue is a fair queue, as on AWS (moto delivers in send order): a
  tenant (``MessageGroupId``) with more than ``NOISY_SHARE`` of the messages in
  flight and at least ``NOISY_MIN_IN_FLIGHT`` of them is noisy, decided at the
  start of each receive; the receive takes every other tenant's receivable
  messages first, in send order, then the noisy tenants', fewest in flight first.
  Receivable messages are kept in one heap per group (a *lane*) merged by each
  lane's earliest message, so a receive passes over a noisy or blocked group's
  whole lane in one step. AWS's second rule (a tenant's share of processing
  time) and its keeping a tenant noisy until its backlog drains are not
  emulated. ``DISPATCH_LOCAL_FAIR_QUEUES=0`` turns the reordering off.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import os
import string
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Final

MOTO_VERSION: Final = "5.2.5"

# Receipt handles of deleted messages are remembered so that deleting twice
# succeeds, as on AWS; beyond this many the oldest are forgotten.
DELETED_HANDLES_KEPT: Final = 200_000
# FIFO deduplication interval (AWS and moto: five minutes).
DEDUPLICATION_WINDOW_MS: Final = 300_000
# Fair queues (standard queues, tenants by MessageGroupId): a tenant with more
# than this share of the queue's messages in flight, and at least this many of
# its own, is a noisy neighbour (AWS's concurrency-share rule).
NOISY_SHARE: Final = 0.1
NOISY_MIN_IN_FLIGHT: Final = 30
# DISPATCH_LOCAL_FAIR_QUEUES=0 in the emulator's environment turns the
# reordering off (deliveries in send order, as moto), to compare with it.
FAIR_QUEUES_ENV: Final = "DISPATCH_LOCAL_FAIR_QUEUES"
RECEIPT_HANDLE_LENGTH: Final = 185  # as moto.sqs.utils.generate_receipt_handle
MAX_VISIBILITY_MS: Final = 43_200_000  # visibility may not extend beyond 12 h after the send
# A long poll wakes this long after the moment a message becomes receivable
# (moto compares times strictly, so waking exactly on time would find nothing).
_WAKE_SLACK_S: Final = 0.002

_apply_lock = threading.Lock()
_applied = False
_fair_queues = True
# moto.sqs.models, bound by apply() after the version check (so that importing
# this module never fails on another moto version: apply() explains instead).
_models: Any = None
# One counter for every table: a heap entry is current only while the message
# still carries the stamp the entry was made with.
_stamps = itertools.count(1)


def apply() -> None:
    """Patch moto's SQS and DynamoDB backends in this process (idempotent).

    Raises RuntimeError naming both versions if moto is not 5.2.5, or if moto
    is not installed.
    """
    global _applied, _models, _fair_queues  # noqa: PLW0603 - patching a library is process-global by nature
    try:
        import moto
    except ImportError as exc:
        raise RuntimeError(
            f"dispatch.local.moto_patches needs moto {MOTO_VERSION} (install dispatch-aws[local])"
        ) from exc
    installed = getattr(moto, "__version__", "unknown")
    if installed != MOTO_VERSION:
        raise RuntimeError(
            f"dispatch.local.moto_patches is written for moto {MOTO_VERSION} but moto "
            f"{installed} is installed; install moto=={MOTO_VERSION} (the version "
            "dispatch-aws[local] pins) or port the patches to the new version"
        )
    with _apply_lock:
        if _applied:
            return
        from moto.sqs import models

        from dispatch.local import moto_dynamodb_patches

        # First: it is idempotent by itself, so a failure here leaves nothing
        # patched twice when apply() is called again.
        moto_dynamodb_patches.apply()
        _models = models
        _fair_queues = os.environ.get(FAIR_QUEUES_ENV, "1").strip() != "0"
        _install(models)
        _install_server()
        _applied = True


def is_applied() -> bool:
    """True once :func:`apply` has patched this process."""
    return _applied


class MessageTable:
    """One queue's messages, indexed so that no hot path scans the queue.

    * ``_live``: every message in the queue, in send order, with its sequence number;
    * ``_by_handle``: every receipt handle a live message has had -> the message
      (moto lets an old handle delete the message, and so do we);
    * ``_lanes``: per group (``None``: no group), a heap of ``(seq, stamp, message)``
      that were receivable when filed; ``_heads``: a heap of ``(seq, group)`` of
      each lane's first entry, so receive pops them in send order across lanes
      and can pass over whole lanes (FIFO groups in flight, noisy tenants);
    * ``_waiting``: heap of ``(receivable_at_ms, seq, stamp, message)`` for messages
      delayed or in flight;
    * ``pending``: messages received and not yet visible again (moto's
      ``Queue._pending_messages``, the same set object), with a count per group.

    A message has exactly one current heap entry (or none while a receive holds
    it); older entries are skipped lazily and compacted away when they pile up.
    It also behaves as the list moto kept in ``Queue._messages`` (iteration,
    ``len``, ``append``, ``remove``) for any moto code that still touches it.
    Every method expects the caller to hold the queue's ``_messages_lock``.
    """

    def __init__(self, messages: Iterable[Any] = (), *, now_ms: float = 0.0) -> None:
        """Create a table, filing ``messages`` (a queue's former list) in their order."""
        self._live: dict[Any, int] = {}
        self._by_handle: dict[str, Any] = {}
        # Receivable messages, one heap per group (``None``: messages without
        # one), and a heap of each lane's earliest sequence number: merged,
        # they give send order; a receive can pass over a whole lane at once.
        self._lanes: dict[str | None, list[tuple[int, int, Any]]] = {}
        self._heads: list[tuple[int, str | None]] = []
        self._filed = 0  # entries in the lanes, superseded ones included
        self._waiting: list[tuple[float, int, int, Any]] = []
        self._seqs = itertools.count()
        self.pending: set[Any] = set()
        self._pending_groups: Counter[str] = Counter()
        self._crowded: set[str] = set()  # groups with NOISY_MIN_IN_FLIGHT or more in flight
        self._dedup_first_sent: OrderedDict[str, float] = OrderedDict()
        for message in messages:
            self.add(message, now_ms)

    # --- the list moto used to keep -------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._live))

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, message: object) -> bool:
        return message in self._live

    def append(self, message: Any) -> None:
        """List compatibility: add a message now."""
        self.add(message, _now_ms())

    def remove(self, message: Any) -> None:
        """List compatibility: remove a message (ValueError if absent, like a list)."""
        if not self.discard(message):
            raise ValueError("message not in queue")

    # --- membership -------------------------------------------------------------
    def add(self, message: Any, now_ms: float) -> bool:
        """Put a message at the back of the queue; True if it is receivable now."""
        self._live[message] = next(self._seqs)
        for handle in message.all_receipt_handles:
            if handle is not None:
                self._by_handle[handle] = message
        return self.file(message, now_ms)

    def discard(self, message: Any) -> bool:
        """Take a message out of the queue (and its handles out of the index)."""
        if self._live.pop(message, None) is None:
            return False
        self.unmark_pending(message)
        for handle in message.all_receipt_handles:
            if handle is not None and self._by_handle.get(handle) is message:
                del self._by_handle[handle]
        return True

    def clear(self) -> None:
        """Empty the queue (purge); deduplication ids are kept, as on AWS."""
        self._live.clear()
        self._by_handle.clear()
        self._lanes.clear()
        self._heads.clear()
        self._filed = 0
        self._waiting.clear()
        self.pending.clear()  # in place: it is also Queue._pending_messages
        self._pending_groups.clear()
        self._crowded.clear()

    def find(self, receipt_handle: str) -> Any | None:
        """The live message that has (or had) this receipt handle."""
        return self._by_handle.get(receipt_handle)

    def index_handle(self, message: Any) -> None:
        """Record a message's new receipt handle (after ``mark_received``)."""
        self._by_handle[message.receipt_handle] = message

    # --- in flight ----------------------------------------------------------------
    def mark_pending(self, message: Any) -> None:
        """The message was received: it is in flight until visible again."""
        if message not in self.pending:
            self.pending.add(message)
            group = message.group_id
            if group is not None:
                self._pending_groups[group] += 1
                if self._pending_groups[group] >= NOISY_MIN_IN_FLIGHT:
                    self._crowded.add(group)

    def unmark_pending(self, message: Any) -> None:
        """The message is no longer in flight (deleted, or visible again)."""
        if message in self.pending:
            self.pending.discard(message)
            group = message.group_id
            if group is not None:
                self._pending_groups[group] -= 1
                if self._pending_groups[group] < NOISY_MIN_IN_FLIGHT:
                    self._crowded.discard(group)
                if self._pending_groups[group] <= 0:
                    del self._pending_groups[group]

    def blocked_groups(self) -> frozenset[str]:
        """FIFO groups with a message in flight (nothing else of theirs may be received)."""
        return frozenset(self._pending_groups)

    def noisy_groups(self) -> frozenset[str]:
        """Groups (tenants, on a standard queue) that a fair queue serves last.

        AWS's concurrency-share rule: more than ``NOISY_SHARE`` of the messages
        in flight, and at least ``NOISY_MIN_IN_FLIGHT`` of them.
        """
        total = len(self.pending)
        return frozenset(g for g in self._crowded if self._pending_groups[g] > NOISY_SHARE * total)

    def in_flight(self, group: str) -> int:
        """How many messages of a group are in flight."""
        return self._pending_groups.get(group, 0)

    # --- readiness ------------------------------------------------------------------
    def file(self, message: Any, now_ms: float) -> bool:
        """(Re)schedule a message from its visible_at/delayed_until.

        Returns True when a receive waiting on the queue should look again: the
        message is receivable now, or it is now the next to become receivable.
        """
        stamp = next(_stamps)
        message._dispatch_stamp = stamp
        seq = self._live[message]
        if _receivable(message, now_ms):
            # Visible again means no longer in flight (moto cleared this lazily
            # when a scan met the message; the result is the same).
            self.unmark_pending(message)
            self._push_ready((seq, stamp, message))
            self._maybe_compact()
            return True
        due = max(message.visible_at, message.delayed_until)
        heapq.heappush(self._waiting, (due, seq, stamp, message))
        self._maybe_compact()
        return self._waiting[0][2] == stamp

    def promote_due(self, now_ms: float) -> None:
        """Move messages whose visibility timeout or delay has passed to the ready heap."""
        while self._waiting and self._waiting[0][0] <= now_ms:
            entry = heapq.heappop(self._waiting)
            _, seq, stamp, message = entry
            if not self._current(seq, stamp, message):
                continue
            if not _receivable(message, now_ms):  # due == now: moto's comparison is strict
                heapq.heappush(self._waiting, entry)
                return
            self.unmark_pending(message)  # its consumer let the visibility timeout pass
            self._push_ready((seq, stamp, message))

    def pop_ready(self, skip: frozenset[str] = frozenset()) -> tuple[int, int, Any] | None:
        """The earliest-sent receivable message's entry outside the groups in
        ``skip``, taken off its lane (None: no such message)."""
        passed: list[tuple[int, str | None]] = []
        try:
            while (head := self._top()) is not None:
                if head[1] is not None and head[1] in skip:
                    passed.append(heapq.heappop(self._heads))  # the whole lane waits
                    continue
                heapq.heappop(self._heads)
                return self._pop_lane(head[1])
            return None
        finally:
            for head in passed:
                heapq.heappush(self._heads, head)

    def pop_group(self, group: str) -> tuple[int, int, Any] | None:
        """The earliest-sent receivable message of one group, taken off its lane."""
        if not self._clean_lane(group):
            return None
        # The lane's entry in the heads heap no longer matches its head: it is
        # dropped when it comes to the top, and the new head gets its own.
        return self._pop_lane(group)

    def seconds_until_next_due(self, now_ms: float) -> float | None:
        """How long until a waiting message becomes receivable (None: nothing waits)."""
        while self._waiting and not self._current(*self._waiting[0][1:]):
            heapq.heappop(self._waiting)
        if not self._waiting:
            return None
        return max(0.0, (self._waiting[0][0] - now_ms) / 1000.0)

    def has_receivable(self, now_ms: float) -> bool:
        """True if a receive now would find a message (ignoring FIFO group blocks)."""
        self.promote_due(now_ms)
        return self._top() is not None

    # --- GetQueueAttributes -------------------------------------------------------------
    def counts(self, now_ms: float) -> tuple[int, int, int]:
        """(visible, not visible, delayed) at one instant, with moto's exact predicates."""
        visible = not_visible = delayed = 0
        for message in self._live:
            is_visible = now_ms > message.visible_at
            is_delayed = now_ms < message.delayed_until
            if is_visible and not is_delayed:
                visible += 1
            if not is_visible:
                not_visible += 1
            if is_delayed:
                delayed += 1
        return visible, not_visible, delayed

    def receivable(self, now_ms: float) -> list[Any]:
        """Every visible, undelayed message in send order (moto's ``Queue.messages``)."""
        return [m for m in self._live if _receivable(m, now_ms)]

    # --- FIFO deduplication --------------------------------------------------------------
    def is_duplicate(self, deduplication_id: str | None, sent_ms: float) -> bool:
        """True if this id was accepted less than five minutes before ``sent_ms``.

        Otherwise the id is remembered from ``sent_ms`` on.
        """
        key = str(deduplication_id)
        while self._dedup_first_sent:  # forget ids whose interval has passed
            oldest, first_sent = next(iter(self._dedup_first_sent.items()))
            if sent_ms - first_sent < DEDUPLICATION_WINDOW_MS:
                break
            del self._dedup_first_sent[oldest]
        accepted_at = self._dedup_first_sent.get(key)
        if accepted_at is not None and sent_ms - accepted_at < DEDUPLICATION_WINDOW_MS:
            return True
        self._dedup_first_sent.pop(key, None)
        self._dedup_first_sent[key] = sent_ms
        return False

    # --- internals ---------------------------------------------------------------------
    def _current(self, seq: int, stamp: int, message: Any) -> bool:
        return self._live.get(message) == seq and message._dispatch_stamp == stamp

    def _push_ready(self, entry: tuple[int, int, Any]) -> None:
        group: str | None = entry[2].group_id
        lane = self._lanes.setdefault(group, [])
        heapq.heappush(lane, entry)
        self._filed += 1
        if lane[0] is entry:  # a new head for its lane
            heapq.heappush(self._heads, (entry[0], group))

    def _top(self) -> tuple[int, str | None] | None:
        """The (sequence, group) of the earliest receivable lane head, left on the heap.

        Invariant: every non-empty lane has an entry in ``_heads`` for the
        sequence number at its top; entries that no longer match are dropped here.
        """
        while self._heads:
            seq, group = self._heads[0]
            lane = self._lanes.get(group)
            if not lane or lane[0][0] != seq:
                heapq.heappop(self._heads)  # superseded: the lane's head has its own entry
                continue
            if self._current(*lane[0]):
                return seq, group
            heapq.heappop(self._heads)
            if self._clean_lane(group):
                heapq.heappush(self._heads, (self._lanes[group][0][0], group))
        return None

    def _clean_lane(self, group: str | None) -> bool:
        """Drop superseded entries off a lane's top; False if nothing receivable is left."""
        lane = self._lanes.get(group)
        while lane and not self._current(*lane[0]):
            heapq.heappop(lane)
            self._filed -= 1
        if not lane:
            self._lanes.pop(group, None)
            return False
        return True

    def _pop_lane(self, group: str | None) -> tuple[int, int, Any]:
        lane = self._lanes[group]
        entry = heapq.heappop(lane)
        self._filed -= 1
        if lane:
            heapq.heappush(self._heads, (lane[0][0], group))
        else:
            del self._lanes[group]
        return entry

    def _maybe_compact(self) -> None:
        # Superseded entries (deleted messages, extended visibility) stay in the
        # heaps until popped; rebuild once they outnumber the live ones.
        limit = 2 * len(self._live) + 1024
        if len(self._waiting) > limit:
            self._waiting = [e for e in self._waiting if self._current(*e[1:])]
            heapq.heapify(self._waiting)
        if len(self._heads) > limit or self._filed > limit:
            self._filed = 0
            for group, lane in list(self._lanes.items()):
                kept = [e for e in lane if self._current(*e)]
                heapq.heapify(kept)
                self._filed += len(kept)
                if kept:
                    self._lanes[group] = kept
                else:
                    del self._lanes[group]
            self._heads = [(lane[0][0], group) for group, lane in self._lanes.items()]
            heapq.heapify(self._heads)


class _RecentHandles:
    """A set of the most recently added receipt handles, bounded in size."""

    def __init__(self, handles: Iterable[str | None] = (), *, maxlen: int) -> None:
        self._handles: OrderedDict[str | None, None] = OrderedDict()
        self._maxlen = maxlen
        self.update(handles)

    def __contains__(self, handle: object) -> bool:
        return handle in self._handles

    def __len__(self) -> int:
        return len(self._handles)

    def __iter__(self) -> Iterator[str | None]:
        return iter(list(self._handles))

    def add(self, handle: str | None) -> None:
        """Remember one handle, forgetting the oldest beyond the bound."""
        self._handles[handle] = None
        self._handles.move_to_end(handle)
        while len(self._handles) > self._maxlen:
            self._handles.popitem(last=False)

    def update(self, handles: Iterable[str | None]) -> None:
        """Remember several handles."""
        for handle in handles:
            self.add(handle)


# --- helpers -----------------------------------------------------------------------------
def _now_ms() -> float:
    # moto's clock (wall time in ms): visible_at and delayed_until are on it.
    return float(_models.unix_time_millis())


def _receivable(message: Any, now_ms: float) -> bool:
    # moto's Message.visible and not Message.delayed, with one clock reading.
    return bool(now_ms > message.visible_at and now_ms >= message.delayed_until)


def _table(queue: Any) -> MessageTable:
    """The queue's MessageTable (converting the list of a queue made before apply())."""
    table = queue._messages
    if not isinstance(table, MessageTable):
        with queue._messages_lock:
            table = queue._messages
            if not isinstance(table, MessageTable):
                table = MessageTable(table, now_ms=_now_ms())
                for message in queue._pending_messages:
                    if message in table and not _receivable(message, _now_ms()):
                        table.mark_pending(message)
                queue._messages = table
                queue._pending_messages = table.pending
                queue.deleted_messages = _RecentHandles(
                    queue.deleted_messages, maxlen=DELETED_HANDLES_KEPT
                )
    return table


# --- Queue ----------------------------------------------------------------------------------
def _install(models: Any) -> None:
    queue_cls = models.Queue
    backend_cls = models.SQSBackend
    original_init = queue_cls.__init__
    original_set_attributes = queue_cls._set_attributes

    def queue_init(self: Any, name: str, region: str, account_id: str, **kwargs: Any) -> None:
        original_init(self, name, region, account_id, **kwargs)
        table = MessageTable()
        self._messages = table
        self._pending_messages = table.pending
        self.deleted_messages = _RecentHandles(maxlen=DELETED_HANDLES_KEPT)

    def set_attributes(self: Any, attributes: dict[str, Any], now: float | None = None) -> None:
        # SetQueueAttributes may change the redrive policy a receive is reading.
        with self._messages_lock:
            original_set_attributes(self, attributes, now)

    queue_cls.__init__ = queue_init
    queue_cls._set_attributes = set_attributes
    queue_cls.messages = property(_queue_messages)
    queue_cls.approximate_number_of_messages = property(lambda q: _queue_counts(q)[0])
    queue_cls.approximate_number_of_messages_not_visible = property(lambda q: _queue_counts(q)[1])
    queue_cls.approximate_number_of_messages_delayed = property(lambda q: _queue_counts(q)[2])
    queue_cls.attributes = property(_queue_attributes)
    queue_cls.add_message = _queue_add_message
    queue_cls.delete_message = _queue_delete_message
    queue_cls.wait_for_messages = _queue_wait_for_messages

    backend_cls._validate_message = _backend_validate_message
    backend_cls.send_message = _backend_send_message
    backend_cls.receive_message = _backend_receive_message
    backend_cls.change_message_visibility = _backend_change_message_visibility
    backend_cls.purge_queue = _backend_purge_queue
    backend_cls.get_queue_attributes = _backend_get_queue_attributes
    backend_cls.is_message_valid_based_on_retention_period = _backend_is_within_retention

    # moto draws a receipt handle as 185 separate random.choice() calls, a third
    # of a millisecond per message received; one choices() call draws the same
    # kind of handle (185 lowercase letters) from the same seedable generator.
    models.generate_receipt_handle = _generate_receipt_handle

    # BaseModel.__new__ appends every instance to a class-wide list that only a
    # reset clears; for messages (and the copy made per receive) that is a leak.
    models.Message.__new__ = staticmethod(_new_untracked)


def _install_server() -> None:
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    # Called once per request, as ``host in list_of_moto_modules()``: a tuple
    # answers ``in`` (and iterates) as the generator did.
    backends.list_of_moto_modules = lambda: modules


def _generate_receipt_handle() -> str:
    return "".join(_models.random.choices(string.ascii_lowercase, k=RECEIPT_HANDLE_LENGTH))


def _new_untracked(cls: type, *args: Any, **kwargs: Any) -> Any:
    return object.__new__(cls)


def _queue_messages(self: Any) -> list[Any]:
    with self._messages_lock:
        return _table(self).receivable(_now_ms())


def _queue_counts(self: Any) -> tuple[int, int, int]:
    with self._messages_lock:
        return _table(self).counts(_now_ms())


def _queue_attributes(self: Any) -> dict[str, Any]:
    # moto's Queue.attributes, with the three counters taken in one pass under
    # the lock (one snapshot) instead of three unlocked scans.
    visible, not_visible, delayed = _queue_counts(self)
    counters = {
        "ApproximateNumberOfMessages": visible,
        "ApproximateNumberOfMessagesNotVisible": not_visible,
        "ApproximateNumberOfMessagesDelayed": delayed,
    }
    result: dict[str, Any] = {}
    for attribute in self.BASE_ATTRIBUTES:
        if attribute in counters:
            result[attribute] = counters[attribute]
        else:
            result[attribute] = getattr(self, _models.camelcase_to_underscores(attribute))
    if self.fifo_queue:
        for attribute in self.FIFO_ATTRIBUTES:
            result[attribute] = getattr(self, _models.camelcase_to_underscores(attribute))
    if self.kms_master_key_id:
        for attribute in self.KMS_ATTRIBUTES:
            result[attribute] = getattr(self, _models.camelcase_to_underscores(attribute))
    if self.policy:
        result["Policy"] = self.policy
    if self.redrive_policy:
        result["RedrivePolicy"] = _models.json.dumps(self.redrive_policy)
    for key, value in result.items():
        if isinstance(value, bool):
            result[key] = str(value).lower()
    return result


def _queue_add_message(self: Any, message: Any) -> None:
    # FIFO deduplication applies to sends; it does not apply to dead-lettering.
    _store(self, message, deduplicate=True)
    _feed_event_source_mappings(self)


def _store(queue: Any, message: Any, *, deduplicate: bool) -> None:
    with queue._messages_lock:
        table = _table(queue)
        if (
            deduplicate
            and queue.fifo_queue
            and (queue.content_based_deduplication or message.deduplication_id)
            and table.is_duplicate(message.deduplication_id, message.sent_timestamp)
        ):
            return  # a duplicate within the interval is accepted but not delivered
        if table.add(message, _now_ms()):
            queue._messages_lock.notify_all()


def _feed_event_source_mappings(queue: Any) -> None:
    # moto's Queue.add_message tail, unchanged: Lambda event source mappings
    # (which need Docker to invoke anything) poll the queue through the backend.
    for arn, esm in queue.lambda_event_source_mappings.items():
        if not esm.enabled:
            continue
        backend = _models.sqs_backends[queue.account_id][queue.region]
        messages = backend.receive_message(
            queue.name,
            esm.batch_size,
            queue.receive_message_wait_time_seconds,
            queue.visibility_timeout,
        )
        from moto.awslambda.utils import get_backend

        result = get_backend(queue.account_id, queue.region).send_sqs_batch(
            arn, messages, queue.queue_arn
        )
        for m in messages:
            if result:
                backend.delete_message(queue.name, m.receipt_handle)
            else:
                backend.change_message_visibility(
                    queue.name, m.receipt_handle, visibility_timeout=0
                )


def _queue_delete_message(self: Any, receipt_handle: str) -> None:
    with self._messages_lock:
        if receipt_handle in self.deleted_messages:
            return  # already deleted: deleting again succeeds, as on AWS
        table = _table(self)
        message = table.find(receipt_handle)
        if message is None:
            raise _models.ReceiptHandleIsInvalid()
        was_blocking = message in table.pending and message.group_id is not None
        table.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)
        if was_blocking and self.fifo_queue:
            self._messages_lock.notify_all()  # its group may be received now


def _queue_wait_for_messages(self: Any, timeout: int) -> None:
    with self._messages_lock:
        table = _table(self)
        self._messages_lock.wait_for(lambda: table.has_receivable(_now_ms()), timeout=timeout)


# --- SQSBackend -------------------------------------------------------------------------------
def _backend_validate_message(  # noqa: PLR0917 - moto's positional signature
    self: Any,
    queue: Any,
    message_body: str,
    delay_seconds: int,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    validate_group_id: bool = True,
) -> None:
    # moto's, reading ContentBasedDeduplication directly instead of through
    # queue.attributes (which counts every message in the queue).
    if queue.fifo_queue:
        if not queue.content_based_deduplication and not group_id:
            raise _models.MissingParameter("MessageGroupId")
        if not queue.content_based_deduplication and group_id and not deduplication_id:
            raise _models.InvalidParameterValue(
                "The queue should either have ContentBasedDeduplication enabled or "
                "MessageDeduplicationId provided explicitly"
            )
        if delay_seconds > 0:
            raise _models.InvalidParameterValue(
                f"Value {delay_seconds} for parameter DelaySeconds is invalid. Reason: "
                "The request include parameter that is not valid for this queue type."
            )
    if len(message_body) > queue.maximum_message_size:
        raise _models.InvalidParameterValue(
            "One or more parameters are invalid. Reason: Message must be shorter than "
            f"{queue.maximum_message_size} bytes."
        )
    if group_id is None and queue.fifo_queue:
        raise _models.MissingParameter("MessageGroupId")


def _backend_send_message(  # noqa: PLR0917 - moto's positional signature
    self: Any,
    queue_name: str,
    message_body: str,
    message_attributes: dict[str, Any] | None = None,
    delay_seconds: int | None = None,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    system_attributes: dict[str, Any] | None = None,
    validate_group_id: bool = True,
) -> Any:
    # moto's, reading ContentBasedDeduplication directly (see above).
    queue = self.get_queue(queue_name)
    self._validate_message(
        queue,
        message_body=message_body,
        delay_seconds=int(delay_seconds or 0),
        deduplication_id=deduplication_id,
        group_id=group_id,
        validate_group_id=validate_group_id,
    )
    delay_s = int(delay_seconds) if delay_seconds is not None else int(queue.delay_seconds)
    message = _models.Message(str(_models.random.uuid4()), message_body, system_attributes)
    if queue.fifo_queue and queue.content_based_deduplication:
        message.deduplication_id = hashlib.sha256(message_body.encode("utf-8")).hexdigest()
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
        message.sequence_number = "".join(_models.random.choice(string.digits) for _ in range(20))
    if group_id is not None:
        message.group_id = group_id
    if message_attributes:
        message.message_attributes = message_attributes
    if delay_s > _models.MAXIMUM_MESSAGE_DELAY:
        raise _models.InvalidParameterValue(
            f"Value {delay_s} for parameter DelaySeconds is invalid. "
            "Reason: DelaySeconds must be >= 0 and <= 900."
        )
    message.mark_sent(delay_seconds=delay_s)
    queue.add_message(message)
    return message


def _backend_receive_message(  # noqa: PLR0917 - moto's positional signature
    self: Any,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Any]:
    queue = self.get_queue(queue_name)
    lock = queue._messages_lock
    names = message_attribute_names or []
    deadline = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        with lock:
            table = _table(queue)
            now_ms = _now_ms()
            result, dead = _take(
                queue,
                table,
                now_ms=now_ms,
                count=count,
                visibility_timeout=visibility_timeout,
                names=names,
            )
            if not result and not dead:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                next_due = table.seconds_until_next_due(now_ms)
                if next_due is not None:
                    remaining = min(remaining, next_due + _WAKE_SLACK_S)
                # Condition.wait releases the RLock entirely (every recursion
                # level) while it sleeps, so other requests on this queue run;
                # a send, a visibility change or a FIFO delete notifies.
                lock.wait(timeout=remaining)
                continue
        # The source queue's lock is released before the DLQ's is taken: no
        # request ever holds two queue locks, so none can deadlock.
        dlq = queue.dead_letter_queue
        for message in dead:
            _store(dlq, message, deduplicate=False)
        if dead and dlq is not None:
            _feed_event_source_mappings(dlq)
        if result or time.monotonic() >= deadline:
            return result


def _take(
    queue: Any,
    table: MessageTable,
    *,
    now_ms: float,
    count: int,
    visibility_timeout: int,
    names: list[str],
) -> tuple[list[Any], list[Any]]:
    """Receive up to ``count`` messages (caller holds the lock).

    Returns copies of the received messages (for the response) and the
    messages taken out of the queue to be dead-lettered.
    """
    table.promote_due(now_ms)
    if queue.fifo_queue:
        skip, noisy = table.blocked_groups(), frozenset[str]()
    else:
        skip = noisy = table.noisy_groups() if _fair_queues else frozenset()
    max_receives = None
    if queue.dead_letter_queue is not None and queue.redrive_policy:
        max_receives = int(queue.redrive_policy["maxReceiveCount"])
    retention_ms = int(queue.message_retention_period) * 1000
    result: list[Any] = []
    dead: list[Any] = []
    received: list[Any] = []
    while len(result) < count:
        # FIFO: the groups with a message in flight wait. Standard: a fair
        # queue's noisy tenants come after every quiet one.
        entry = table.pop_ready(skip) or _pop_noisy(table, noisy)
        if entry is None:
            break
        message = entry[2]
        if max_receives is not None and message.approximate_receive_count >= max_receives:
            table.discard(message)
            dead.append(message)
            continue
        if message.sent_timestamp + retention_ms <= now_ms:
            table.discard(message)  # past the retention period: SQS deletes it
            continue
        table.mark_pending(message)
        message.mark_received(visibility_timeout=visibility_timeout)
        table.index_handle(message)
        # A copy, as moto does: the response must not see later changes, and
        # filtering attributes must not change the stored message.
        reply = copy.deepcopy(message)
        _models._filter_message_attributes(reply, names)
        result.append(reply)
        received.append(message)
    # Filed after the loop so that a message received with visibility 0 is not
    # taken a second time by the same receive.
    wake = False
    for message in received:
        wake = table.file(message, now_ms) or wake
    if wake:
        queue._messages_lock.notify_all()
    return result, dead


def _pop_noisy(table: MessageTable, noisy: frozenset[str]) -> tuple[int, int, Any] | None:
    """The next message of a noisy tenant: the one with the fewest in flight first."""
    for group in sorted(noisy, key=lambda g: (table.in_flight(g), g)):  # ties: by name
        entry = table.pop_group(group)
        if entry is not None:
            return entry
    return None


def _backend_change_message_visibility(
    self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    queue = self.get_queue(queue_name)
    with queue._messages_lock:
        table = _table(queue)
        message = table.find(receipt_handle)
        if message is None:
            raise _models.ReceiptHandleIsInvalid()
        now_ms = _now_ms()
        if now_ms + int(visibility_timeout) * 1000 - message.sent_timestamp > MAX_VISIBILITY_MS:
            raise _models.InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. "
                "Reason: Total VisibilityTimeout for the message is beyond the limit "
                "[43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        # A fresh clock reading, as moto's check of message.visible: with
        # VisibilityTimeout=0 the message is no longer in flight from now on.
        if table.file(message, _now_ms()):
            queue._messages_lock.notify_all()  # a long poll may have less to wait now


def _backend_purge_queue(self: Any, queue_name: str) -> None:
    queue = self.get_queue(queue_name)
    with queue._messages_lock:
        now = _models.unix_time()
        if (
            _models.sqs_enforce_strict_queue_purge_behaviour()
            and queue.last_purged_at is not None
            and now - queue.last_purged_at < 60
        ):
            raise _models.PurgeQueueInProgress(queue.name)
        queue.last_purged_at = now
        _table(queue).clear()


def _backend_get_queue_attributes(
    self: Any, queue_name: str, attribute_names: list[str]
) -> dict[str, Any]:
    # moto's, computing queue.attributes once (it did so twice per name asked).
    queue = self.get_queue(queue_name)
    if not attribute_names:
        return {}
    valid_names = ["All", *queue.BASE_ATTRIBUTES, *queue.FIFO_ATTRIBUTES, *queue.KMS_ATTRIBUTES]
    invalid_name = next((name for name in attribute_names if name not in valid_names), None)
    if invalid_name or invalid_name == "":
        raise _models.InvalidAttributeName(invalid_name)
    attributes: dict[str, Any] = queue.attributes
    if "All" in attribute_names:
        return attributes
    return {name: attributes[name] for name in attribute_names if attributes.get(name) is not None}


def _backend_is_within_retention(self: Any, queue_name: str, message: Any) -> bool:
    # moto's, reading the one attribute instead of get_queue_attributes().
    queue = self.get_queue(queue_name)
    retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
    return bool(retain_until > _models.unix_time())
