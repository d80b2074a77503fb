"""The SQS batcher: groups of 10, the flush window, per-entry answers, retries of failed calls.

SQS is a small fake that records each batch call and answers like SQS does. The
backoff between failed calls is made zero by replacing the module's random source,
so retries cost no wall-clock time; the flush window is a few milliseconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.store import batcher as batcher_module
from dispatch.store.batcher import Batcher, EntryResult

FLUSH_S = 0.01


class FakeBatchAction:
    """An SQS batch action (e.g. DeleteMessageBatch) that records every call.

    ``refuse`` maps a receipt handle to the error code SQS answers for that entry.
    The first ``raise_first`` calls fail as a whole with a ClientError ``code``;
    ``crash_with`` makes every call raise that exception instead.
    """

    def __init__(
        self,
        *,
        refuse: dict[str, str] | None = None,
        raise_first: int = 0,
        code: str = "ThrottlingException",
        crash_with: Exception | None = None,
    ) -> None:
        self.refuse = refuse or {}
        self.raise_first = raise_first
        self.code = code
        self.crash_with = crash_with
        self.calls: list[list[dict[str, Any]]] = []
        self.call_times: list[float] = []

    async def __call__(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(entries)
        self.call_times.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0)  # answer on a later turn of the loop, as a request would
        if self.crash_with is not None:
            raise self.crash_with
        if len(self.calls) <= self.raise_first:
            raise ClientError(
                {"Error": {"Code": self.code, "Message": "Rate exceeded"}}, "DeleteMessageBatch"
            )
        ids = [entry["Id"] for entry in entries]
        assert len(set(ids)) == len(ids), "SQS refuses a batch with repeated Ids"
        successful, failed = [], []
        for entry in entries:
            code = self.refuse.get(entry.get("ReceiptHandle", ""))
            if code is None:
                successful.append({"Id": entry["Id"]})
            else:
                failed.append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": code, "Message": "no good"}
                )
        return {"Successful": successful, "Failed": failed}

    @property
    def handles(self) -> list[list[str]]:
        """The receipt handles of each call, in order."""
        return [[entry["ReceiptHandle"] for entry in call] for call in self.calls]


class NoJitter:
    """Stands in for the ``random`` module: every jittered pause is its lower bound."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        assert low <= high
        return low


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries of a failed call pause 0 s instead of a random fraction of a second."""
    monkeypatch.setattr(batcher_module, "random", NoJitter())


def entry(handle: str, **fields: Any) -> dict[str, Any]:
    """A DeleteMessageBatch-style entry."""
    return {"ReceiptHandle": handle, **fields}


async def submit_all(batcher: Batcher, entries: list[dict[str, Any]]) -> list[EntryResult]:
    """Submit entries concurrently, in order; all answers."""
    return list(await asyncio.gather(*(batcher.submit(e) for e in entries)))


async def outlive_the_timer(flush_s: float) -> None:
    """Let an idle flush timer run out so no task of this test outlives it."""
    await asyncio.sleep(flush_s)


async def test_entries_are_sent_ten_per_call() -> None:
    """Given 25 entries submitted at once, when answered, then SQS got calls of 10, 10 and
    5 entries, each entry exactly once, with Ids unique within each call."""
    sqs = FakeBatchAction()
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=FLUSH_S)
    handles = [f"h{i}" for i in range(25)]

    results = await submit_all(batcher, [entry(h) for h in handles])

    assert [len(call) for call in sqs.calls] == [10, 10, 5]
    assert sorted(h for call in sqs.handles for h in call) == sorted(handles)
    assert all(result == EntryResult(ok=True) for result in results)
    assert batcher.calls == 3


async def test_a_full_batch_goes_out_without_waiting_for_the_window() -> None:
    """Given a long flush window, when 20 entries are submitted, then both full batches
    are sent and answered before the window ends."""
    flush_s = 0.3
    sqs = FakeBatchAction()
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=flush_s)
    loop = asyncio.get_running_loop()
    started = loop.time()

    results = await submit_all(batcher, [entry(f"h{i}") for i in range(20)])

    assert loop.time() - started < flush_s / 2
    assert [len(call) for call in sqs.calls] == [10, 10]
    assert all(result.ok for result in results)
    await outlive_the_timer(flush_s)


async def test_fewer_than_ten_entries_are_sent_after_the_window() -> None:
    """Given 3 entries, when submitted, then they go out together in one call once the
    flush window has passed, not before."""
    flush_s = 0.05
    sqs = FakeBatchAction()
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=flush_s)
    started = asyncio.get_running_loop().time()

    results = await submit_all(batcher, [entry("a"), entry("b"), entry("c")])

    assert sqs.handles == [["a", "b", "c"]]
    assert sqs.call_times[0] - started >= flush_s * 0.9
    assert [result.ok for result in results] == [True, True, True]


async def test_submit_returns_each_entrys_own_answer() -> None:
    """Given SQS refusing one receipt handle of a batch, when submitted, then that entry's
    result carries the code and message and the others are ok."""
    sqs = FakeBatchAction(refuse={"h1": "ReceiptHandleIsInvalid"})
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=FLUSH_S)

    results = await submit_all(batcher, [entry("h0"), entry("h1"), entry("h2")])

    assert results == [
        EntryResult(ok=True),
        EntryResult(ok=False, code="ReceiptHandleIsInvalid", message="no good"),
        EntryResult(ok=True),
    ]


async def test_a_later_entry_for_the_same_receipt_handle_supersedes_the_waiting_one() -> None:
    """Given two visibility changes for one receipt handle waiting in the same window, when
    sent, then only the later one reaches SQS and the earlier caller hears Superseded."""
    sqs = FakeBatchAction()
    batcher = Batcher("ChangeMessageVisibilityBatch", sqs, flush_s=FLUSH_S)

    results = await submit_all(
        batcher,
        [
            entry("h", VisibilityTimeout=10),
            entry("other", VisibilityTimeout=5),
            entry("h", VisibilityTimeout=30),
        ],
    )

    assert results == [
        EntryResult(ok=True, code="Superseded"),
        EntryResult(ok=True),
        EntryResult(ok=True),
    ]
    assert len(sqs.calls) == 1
    sent = {e["ReceiptHandle"]: e["VisibilityTimeout"] for e in sqs.calls[0]}
    assert sent == {"other": 5, "h": 30}


async def test_entries_without_receipt_handles_are_never_merged() -> None:
    """Given SendMessageBatch entries (no ReceiptHandle) with equal bodies, when sent, then
    every one reaches SQS."""
    sqs = FakeBatchAction()
    batcher = Batcher("SendMessageBatch", sqs, flush_s=FLUSH_S)

    results = await submit_all(batcher, [{"MessageBody": "same"} for _ in range(3)])

    assert len(sqs.calls[0]) == 3
    assert all(result.ok for result in results)


async def test_size_of_splits_batches_over_one_mebibyte() -> None:
    """Given five 400 kB entries and a size function, when sent, then no call carries more
    than 1 MiB: the entries go out 2, 2 and 1."""
    sqs = FakeBatchAction()
    batcher = Batcher(
        "SendMessageBatch",
        sqs,
        flush_s=FLUSH_S,
        size_of=lambda e: len(e["MessageBody"].encode()),
    )
    entries = [entry(f"h{i}", MessageBody=str(i) * 400_000) for i in range(5)]

    results = await submit_all(batcher, entries)

    assert [len(call) for call in sqs.calls] == [2, 2, 1]
    for call in sqs.calls:
        assert sum(len(e["MessageBody"]) for e in call) <= c.SQS_MAX_BATCH_BYTES
    assert all(result.ok for result in results)


async def test_size_of_still_sends_a_single_oversized_entry_on_its_own() -> None:
    """Given one entry larger than 1 MiB between small ones, when sent, then it goes alone
    (SQS answers for it) and nothing is stuck."""
    sqs = FakeBatchAction()
    batcher = Batcher("SendMessageBatch", sqs, flush_s=FLUSH_S, size_of=lambda e: e["size"])
    sizes = [10, c.SQS_MAX_BATCH_BYTES + 1, 10]

    results = await submit_all(batcher, [entry(f"h{i}", size=s) for i, s in enumerate(sizes)])

    assert sqs.handles == [["h0"], ["h1"], ["h2"]]
    assert len(results) == 3


async def test_a_failed_call_is_retried_and_then_succeeds() -> None:
    """Given SQS failing the first two calls with a throttling ClientError, when entries
    are submitted, then the same batch is sent again and every entry ends ok."""
    sqs = FakeBatchAction(raise_first=2)
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=FLUSH_S)

    results = await submit_all(batcher, [entry("a"), entry("b")])

    assert sqs.handles == [["a", "b"]] * 3
    assert [result.ok for result in results] == [True, True]
    assert batcher.calls == 3


async def test_a_call_that_keeps_failing_is_reported_per_entry_not_raised() -> None:
    """Given SQS failing every call with a ClientError, when entries are submitted, then
    after 5 attempts each entry's result is a failure with the AWS code; nothing raises."""
    sqs = FakeBatchAction(raise_first=100, code="ServiceUnavailable")
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=FLUSH_S)

    results = await submit_all(batcher, [entry("a"), entry("b")])

    assert len(sqs.calls) == 5
    for result in results:
        assert result.ok is False
        assert result.code == "ServiceUnavailable"
        assert "Rate exceeded" in result.message


async def test_an_unexpected_exception_from_send_does_not_leave_callers_waiting() -> None:
    """Given a send function that raises something other than a botocore error, when an
    entry is submitted, then ``submit`` ends (raising, or answering a failure) instead of
    waiting forever for an answer that never comes."""
    sqs = FakeBatchAction(crash_with=RuntimeError("connection pool closed"))
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=FLUSH_S)
    submitted = asyncio.ensure_future(batcher.submit(entry("a")))

    done, _ = await asyncio.wait({submitted}, timeout=0.5)

    if not done:
        submitted.cancel()
    assert submitted in done, "submit() never returned after the send function raised"
    if submitted.exception() is None:
        assert submitted.result().ok is False


async def test_flush_sends_everything_waiting_at_once() -> None:
    """Given entries waiting in a long window, when flush() is awaited, then they are sent
    and answered right away, before the window ends."""
    flush_s = 0.3
    sqs = FakeBatchAction()
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=flush_s)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = [asyncio.ensure_future(batcher.submit(entry(f"h{i}"))) for i in range(13)]
    await asyncio.sleep(0)  # let every submit queue its entry

    await batcher.flush()
    results = await asyncio.gather(*waiting)

    assert loop.time() - started < flush_s / 2
    assert [len(call) for call in sqs.calls] == [10, 3]
    assert all(result.ok for result in results)
    await outlive_the_timer(flush_s)


async def test_flush_with_nothing_waiting_sends_nothing() -> None:
    """Given an idle batcher, when flushed, then no call is made."""
    sqs = FakeBatchAction()
    batcher = Batcher("DeleteMessageBatch", sqs, flush_s=FLUSH_S)

    await batcher.flush()

    assert sqs.calls == []
