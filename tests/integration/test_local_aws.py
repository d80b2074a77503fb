"""The embedded local AWS over real HTTP: correct under concurrency, SQS semantics intact.

These tests talk to the emulator process with plain boto3 clients, as any user
code does. The first one fails against moto 5.2.5 as released (run
``DISPATCH_LOCAL_AWS_STOCK_MOTO=1 pytest tests/integration/test_local_aws.py -k hammer``
to see it): that is what dispatch.local.moto_patches fixes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cfnlint.api import lint_file

from dispatch.core.config import Settings
from dispatch.core.errors import ConfigurationError, DispatchError
from dispatch.local import emulator, moto_patches
from dispatch.local.emulator import LocalAWS
from dispatch.local.provision import load_template, provision
from dispatch.local.server import READY_PREFIX

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


def _client(service: str, settings: Settings, **config: Any) -> Any:
    # No retries: a retried send that had in fact succeeded would be a duplicate
    # of our making, and an emulator error must fail the test, not be hidden.
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


@pytest.fixture
def sqs(aws_env: Settings) -> Any:
    """A boto3 SQS client on the test's emulator, with room for many threads."""
    return _client("sqs", aws_env, max_pool_connections=32)


@pytest.fixture
def dynamodb(aws_env: Settings) -> Any:
    """A boto3 DynamoDB client on the test's emulator."""
    return _client("dynamodb", aws_env)


def counts(sqs: Any, url: str) -> tuple[int, int, int]:
    """(ApproximateNumberOfMessages, ...NotVisible, ...Delayed) of a queue."""
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        int(attributes["ApproximateNumberOfMessagesDelayed"]),
    )


def receive(sqs: Any, url: str, **options: Any) -> list[dict[str, Any]]:
    """One ReceiveMessage call (no wait unless asked) with the receive count attribute."""
    options.setdefault("WaitTimeSeconds", 0)
    answer = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=options.pop("MaxNumberOfMessages", 10),
        MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
        **options,
    )
    return list(answer.get("Messages", []))


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive (and leave in flight) every message visible now, in at most 1,000 calls."""
    found: list[dict[str, Any]] = []
    for _ in range(1_000):
        batch = receive(sqs, url, VisibilityTimeout=60)
        if not batch:
            break
        found.extend(batch)
    return found


# --- (a) concurrency ----------------------------------------------------------
@dataclass
class _Ledger:
    """What every thread of the hammer saw, with monotonic times."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: set[str] = field(default_factory=set)
    receives: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    deleted_at: dict[str, float] = field(default_factory=dict)
    delete_failures: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)


def test_hammer_concurrent_send_receive_delete_is_exactly_once(sqs: Any, aws_env: Settings) -> None:
    """Given 2 threads sending 5,000 messages (single and batch) while 6 threads
    receive 10 at a time and delete in batches, when everything is drained, then
    every message was received exactly once and deleted, none was lost, none came
    back after its delete, and the queue is empty.

    Receives use a 10 s visibility timeout: far longer than any receive-to-delete
    here, so a second delivery can only be a bug (two receivers taking one
    message, or a deleted message resurrected), and short enough to be seen as
    in flight when the run ends. On stock moto 5.2.5 two receives take the same
    message about once per 1,000 to 2,000 messages, so over 5,000 this test fails
    on nearly every run.
    """
    url = aws_env.queue_url
    batch_bodies = [f"batch-{i}" for i in range(4_800)]
    single_bodies = [f"single-{i}" for i in range(200)]
    total = len(batch_bodies) + len(single_bodies)
    ledger = _Ledger()
    deadline = time.monotonic() + 40.0
    stop = threading.Event()
    # Consumers start once a backlog has built up: moto's unlocked paths loop
    # over the whole queue, so a little depth widens the windows they race in.
    backlog = threading.Event()

    def worker(work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - re-raised below, in the test's thread
                with ledger.lock:
                    ledger.errors.append(exc)
                stop.set()

        return threading.Thread(target=run)

    def running() -> bool:
        return not stop.is_set() and time.monotonic() < deadline

    def send_batches() -> None:
        for start in range(0, len(batch_bodies), 10):
            if not running():
                return
            bodies = batch_bodies[start : start + 10]
            answer = sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies)],
            )
            assert not answer.get("Failed"), answer["Failed"]
            with ledger.lock:
                ledger.sent.update(bodies)
            if start >= 300:
                backlog.set()

    def send_singles() -> None:
        for body in single_bodies:
            if not running():
                return
            sqs.send_message(QueueUrl=url, MessageBody=body)
            with ledger.lock:
                ledger.sent.add(body)

    def consume() -> None:
        backlog.wait(timeout=10.0)
        while running():
            started = time.monotonic()
            messages = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=10, WaitTimeSeconds=1
            ).get("Messages", [])
            if not messages:
                continue
            with ledger.lock:
                for m in messages:
                    ledger.receives[m["Body"]].append(started)
            answer = sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)
                ],
            )
            acknowledged = time.monotonic()
            with ledger.lock:
                for ok in answer.get("Successful", []):
                    ledger.deleted_at.setdefault(messages[int(ok["Id"])]["Body"], acknowledged)
                ledger.delete_failures.extend(answer.get("Failed", []))
                if len(ledger.deleted_at) >= total:
                    stop.set()

    threads = [worker(send_batches), worker(send_singles)] + [worker(consume) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60.0)
    assert not any(t.is_alive() for t in threads), "a hammer thread is stuck"
    if ledger.errors:
        raise ledger.errors[0]

    left = counts(sqs, url)
    still_queued = {m["Body"] for m in drain(sqs, url)}  # not lost: the deadline came first
    lost = sorted(ledger.sent - set(ledger.receives) - still_queued)
    resurrected = sorted(
        body
        for body, starts in ledger.receives.items()
        if body in ledger.deleted_at and max(starts) > ledger.deleted_at[body]
    )
    duplicated = sorted(
        body
        for body, starts in ledger.receives.items()
        if len(starts) > 1 and body not in resurrected
    )
    problems = [
        f"{len(found)} {what}, e.g. {found[:3]}"
        for found, what in [
            (lost, "sent messages were never received (lost sends)"),
            (duplicated, "messages were delivered twice while in flight"),
            (resurrected, "messages were delivered again after their delete"),
            (ledger.delete_failures, "deletes failed"),
            (sorted(ledger.sent - set(ledger.deleted_at)), "sent messages were never deleted"),
        ]
        if found
    ]
    if len(ledger.sent) < total:
        problems.append(f"only {len(ledger.sent)} of {total} messages were sent in 40 s")
    if left != (0, 0, 0):
        problems.append(f"the queue is not empty at the end (visible, in flight, delayed): {left}")
    assert not problems, "; ".join(problems)


def _poll_in_background(sqs: Any, url: str, wait_s: int) -> tuple[threading.Thread, list[Any]]:
    """Start a long-polling receive on another thread; return it and where it puts its answer."""
    got: list[list[dict[str, Any]]] = []
    polling = threading.Event()

    def poll() -> None:
        polling.set()
        got.append(receive(sqs, url, WaitTimeSeconds=wait_s, VisibilityTimeout=60))

    poller = threading.Thread(target=poll)
    poller.start()
    assert polling.wait(timeout=5.0)
    return poller, got


def test_long_poll_wakes_on_send_and_release_without_blocking_the_queue(
    sqs: Any, aws_env: Settings
) -> None:
    """Given a receive long-polling an empty queue for 10 s, when another client
    sends, then the send and a GetQueueAttributes answer at once (the poll does
    not hold the queue while it waits) and the poll returns the message at once;
    and when a held message is released (visibility 0) during a long poll, the
    poll returns it at once too."""
    url = aws_env.queue_url
    started = time.monotonic()
    poller, got = _poll_in_background(sqs, url, wait_s=10)
    assert counts(sqs, url) == (0, 0, 0)  # answered while the poll waits
    sqs.send_message(QueueUrl=url, MessageBody="wake up")
    sent = time.monotonic()
    poller.join(timeout=15.0)
    assert sent - started < 2.0, "the send waited for the long poll"
    assert [m["Body"] for m in got[0]] == ["wake up"]
    assert time.monotonic() - started < 5.0, "the poll slept through the send"

    held = got[0][0]
    started = time.monotonic()
    poller, got = _poll_in_background(sqs, url, wait_s=10)
    assert counts(sqs, url) == (0, 1, 0)  # the message is held while the poll waits
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=held["ReceiptHandle"], VisibilityTimeout=0
    )
    poller.join(timeout=15.0)
    assert [m["MessageId"] for m in got[0]] == [held["MessageId"]]
    assert time.monotonic() - started < 5.0, "the poll slept through the release"


# --- (b) counters -------------------------------------------------------------
def test_queue_attribute_counters_are_exact(sqs: Any, aws_env: Settings) -> None:
    """Given messages sent, delayed, received, released and deleted, then
    ApproximateNumberOfMessages / NotVisible / Delayed are exact at every step."""
    url = aws_env.queue_url
    assert counts(sqs, url) == (0, 0, 0)
    for n in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"now-{n}")
    for n in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=f"later-{n}", DelaySeconds=60)
    assert counts(sqs, url) == (3, 0, 2)

    taken = receive(sqs, url, MaxNumberOfMessages=2, VisibilityTimeout=60)
    assert len(taken) == 2
    assert counts(sqs, url) == (1, 2, 2)

    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=taken[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    assert counts(sqs, url) == (2, 1, 2)

    sqs.delete_message(QueueUrl=url, ReceiptHandle=taken[1]["ReceiptHandle"])
    assert counts(sqs, url) == (2, 0, 2)

    sqs.purge_queue(QueueUrl=url)
    assert counts(sqs, url) == (0, 0, 0)


def test_delayed_message_arrives_when_its_delay_ends(sqs: Any, aws_env: Settings) -> None:
    """Given a message sent with a 1 s delay, then an immediate receive finds
    nothing, and a long poll returns it once the delay has passed (not before,
    and without waiting out the whole poll)."""
    url = aws_env.queue_url
    sent = time.monotonic()
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    assert receive(sqs, url) == []

    messages = receive(sqs, url, WaitTimeSeconds=5)
    elapsed = time.monotonic() - sent

    assert [m["Body"] for m in messages] == ["later"]
    assert 0.9 <= elapsed < 3.0


# --- (c) redrive --------------------------------------------------------------
def test_redrive_moves_message_to_dlq_after_max_receive_count(sqs: Any, aws_env: Settings) -> None:
    """Given a queue whose redrive policy allows 2 receives, when a message is
    received twice and never deleted, then the next receive moves it to the DLQ
    (body intact, counters updated) instead of delivering it a third time."""
    dlq_url = sqs.create_queue(QueueName="redrive-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName="redrive-main",
        Attributes={"RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":2}}'},
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="poison")

    first = receive(sqs, url, VisibilityTimeout=0)
    second = receive(sqs, url, VisibilityTimeout=0)
    third = receive(sqs, url, VisibilityTimeout=0)

    assert [m["Attributes"]["ApproximateReceiveCount"] for m in first + second] == ["1", "2"]
    assert third == []
    assert counts(sqs, url) == (0, 0, 0)
    assert counts(sqs, dlq_url) == (1, 0, 0)
    dead = receive(sqs, dlq_url, VisibilityTimeout=30)
    assert [m["Body"] for m in dead] == ["poison"]
    sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=dead[0]["ReceiptHandle"])
    assert counts(sqs, dlq_url) == (0, 0, 0)


# --- (d) visibility and receive counts ----------------------------------------
def test_visibility_change_and_receive_counts(sqs: Any, aws_env: Settings) -> None:
    """Given a received message, then it stays hidden for its visibility timeout,
    comes back with a new receipt handle and a higher receive count when released
    (visibility 0), can be deleted with either handle, and deleting again succeeds
    while an unknown handle is refused."""
    url = aws_env.queue_url
    sqs.send_message(QueueUrl=url, MessageBody="job")

    (first,) = receive(sqs, url, VisibilityTimeout=60)
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    assert receive(sqs, url) == []

    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    (second,) = receive(sqs, url, VisibilityTimeout=60)
    assert second["MessageId"] == first["MessageId"]
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"

    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    assert counts(sqs, url) == (0, 0, 0)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])  # again: fine
    with pytest.raises(ClientError) as refused:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-receipt-handle")
    assert refused.value.response["Error"]["Code"] == "ReceiptHandleIsInvalid"


def test_visibility_timeout_expiry_redelivers(sqs: Any, aws_env: Settings) -> None:
    """Given a message received with a 1 s visibility timeout and not deleted,
    then a long poll gets it again once the timeout passes, with receive count 2."""
    url = aws_env.queue_url
    sqs.send_message(QueueUrl=url, MessageBody="slow")
    received = time.monotonic()
    (first,) = receive(sqs, url, VisibilityTimeout=1)

    (again,) = receive(sqs, url, WaitTimeSeconds=5, VisibilityTimeout=30)

    assert again["MessageId"] == first["MessageId"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert 0.9 <= time.monotonic() - received < 3.0


def test_fifo_groups_and_deduplication(sqs: Any, aws_env: Settings) -> None:
    """Given a FIFO queue, then a duplicate deduplication id is accepted but not
    delivered, a group with a message in flight yields nothing more until that
    message is deleted or its visibility timeout passes, and other groups are
    not held up meanwhile."""
    url = sqs.create_queue(QueueName="orders.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    for body, group, dedup in [
        ("a1", "a", "1"),
        ("a2", "a", "2"),
        ("b1", "b", "3"),
        ("a1", "a", "1"),
    ]:
        sqs.send_message(
            QueueUrl=url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=dedup
        )
    assert counts(sqs, url) == (3, 0, 0)

    (head_a,) = receive(sqs, url, MaxNumberOfMessages=1, VisibilityTimeout=60)
    (head_b,) = receive(sqs, url, MaxNumberOfMessages=1, VisibilityTimeout=60)
    assert (head_a["Body"], head_b["Body"]) == ("a1", "b1")
    assert receive(sqs, url) == []  # a2 waits behind a1, in flight

    sqs.delete_message(QueueUrl=url, ReceiptHandle=head_a["ReceiptHandle"])
    (next_a,) = receive(sqs, url, VisibilityTimeout=1)
    assert next_a["Body"] == "a2"

    # Nobody deletes a2: once its 1 s visibility passes, group a is free again.
    (again,) = receive(sqs, url, WaitTimeSeconds=5, VisibilityTimeout=60)
    assert (again["Body"], again["Attributes"]["ApproximateReceiveCount"]) == ("a2", "2")


def _send_group(sqs: Any, url: str, group: str | None, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(n), "MessageBody": body, **({"MessageGroupId": group} if group else {})}
            for n, body in enumerate(bodies[start : start + 10])
        ]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)


def _hold(sqs: Any, url: str, receives: int) -> list[str]:
    bodies: list[str] = []
    for _ in range(receives):
        bodies += [m["Body"] for m in receive(sqs, url, VisibilityTimeout=600)]
    return bodies


def _fair_queue_scenario(sqs: Any, url: str) -> list[list[str]]:
    """Tenant a sends 100 and 40 are taken (a noisy neighbour: every message in
    flight, 40 >= 30); then b sends 3 and 2 come without a group. Returns what
    the receives got: 10 next, then 40 after c sent 50, then 4."""
    _send_group(sqs, url, "a", [f"a{n:03d}" for n in range(100)])
    assert _hold(sqs, url, 4) == [f"a{n:03d}" for n in range(40)]
    _send_group(sqs, url, "b", ["b0", "b1"])
    _send_group(sqs, url, None, ["x0"])
    _send_group(sqs, url, "b", ["b2"])
    _send_group(sqs, url, None, ["x1"])
    first = [m["Body"] for m in receive(sqs, url, VisibilityTimeout=600)]
    # Now a has 45 in flight. c sends 50: quiet, every receive takes c's (it
    # is noisy from 30 in flight on, and then the noisy tenant with fewer).
    _send_group(sqs, url, "c", [f"c{n:03d}" for n in range(50)])
    held = _hold(sqs, url, 4)
    second = [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=4, VisibilityTimeout=600)]
    return [first, held, second]


def test_fair_queue_delivers_quiet_tenants_before_a_noisy_one(sqs: Any, aws_env: Settings) -> None:
    """Given a standard queue where tenant a (MessageGroupId) holds 40 of the
    40 messages in flight, when tenant b and group-less messages arrive behind
    a's backlog, then the next receive returns them first, in send order, and
    only then a's next ones; with two noisy tenants, the one with fewer in
    flight comes first (AWS fair queues' concurrency-share rule)."""
    url = sqs.create_queue(QueueName="fair")["QueueUrl"]
    first, held, second = _fair_queue_scenario(sqs, url)
    assert first == ["b0", "b1", "x0", "b2", "x1", "a040", "a041", "a042", "a043", "a044"]
    assert held == [f"c{n:03d}" for n in range(40)]
    assert second == ["c040", "c041", "c042", "c043"]  # c: 40-43 in flight, a: 45


def test_fair_queue_reordering_can_be_turned_off() -> None:
    """Given an emulator started with DISPATCH_LOCAL_FAIR_QUEUES=0, then the
    same receives come in send order, as from moto."""
    with emulator.environment({moto_patches.FAIR_QUEUES_ENV: "0"}):
        aws = LocalAWS.start()
    try:
        client = boto3.client(
            "sqs",
            endpoint_url=aws.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106
        )
        url = client.create_queue(QueueName="fair-off")["QueueUrl"]
        first, held, second = _fair_queue_scenario(client, url)
    finally:
        aws.stop()
    assert first == [f"a{n:03d}" for n in range(40, 50)]
    assert held == [f"a{n:03d}" for n in range(50, 90)]
    assert second == [f"a{n:03d}" for n in range(90, 94)]


@dataclass
class _ModelMessage:
    body: str
    group: str | None
    receives: int = 0
    in_flight: bool = False
    delayed: bool = False


def _model_receive(
    live: list[_ModelMessage], dead: list[str], *, fifo: bool, limit: int, release: bool
) -> list[_ModelMessage]:
    """What one receive returns from the model (and its effect on it)."""
    flying = Counter(m.group for m in live if m.in_flight)
    total = sum(flying.values())
    if fifo:
        skip = set(flying)
    else:  # a fair queue's noisy tenants: > 10 % of the messages in flight, and >= 30
        skip = {g for g, n in flying.items() if g and n >= 30 and n > 0.1 * total}
    noisy = set() if fifo else skip
    expected: list[_ModelMessage] = []
    while len(expected) < limit:
        ready = [m for m in live if not m.in_flight and not m.delayed and m not in expected]
        quiet = [m for m in ready if m.group not in skip]
        later = sorted(
            (m for m in ready if m.group in noisy), key=lambda m: (flying[m.group], m.group)
        )
        pick = (quiet or later or [None])[0]
        if pick is None:
            break
        if pick.receives >= 3:
            live.remove(pick)
            dead.append(pick.body)
            continue
        pick.receives += 1
        flying[pick.group] += 1
        pick.in_flight = not release
        expected.append(pick)
    return expected


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_sqs_semantics_match_a_reference_model(sqs: Any, aws_env: Settings, fifo: bool) -> None:
    """Given 300 random sends, batch sends, receives (held or released), deletes,
    visibility releases and counter reads on a queue with a DLQ (maxReceiveCount
    3), then every answer matches a plain model of SQS: receives return messages
    in send order, skip in-flight and delayed ones and, on FIFO queues, every
    group with a message in flight; a message received 3 times goes to the DLQ
    on the next receive; a repeated deduplication id is not delivered; the
    counters are exact."""
    rnd = random.Random(20_240_611 + fifo)
    suffix, fifo_attribute = (".fifo", {"FifoQueue": "true"}) if fifo else ("", {})
    dlq_url = sqs.create_queue(QueueName=f"model-dlq{suffix}", Attributes=fifo_attribute)[
        "QueueUrl"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    url = sqs.create_queue(
        QueueName=f"model{suffix}", Attributes={**fifo_attribute, "RedrivePolicy": redrive}
    )["QueueUrl"]
    live: list[_ModelMessage] = []  # the queue, in send order
    dead: list[str] = []
    dedup_ids: set[str] = set()
    handles: dict[str, str] = {}

    def send(body: str) -> dict[str, Any]:
        options: dict[str, Any] = {}
        group, dedup, delayed = None, None, False
        if fifo:
            group = rnd.choice("abc")
            dedup = rnd.choice([body, f"dup-{rnd.randint(0, 15)}"])
            options = {"MessageGroupId": group, "MessageDeduplicationId": dedup}
        else:
            group = rnd.choice(["a", "a", "b", None])  # tenants of a fair queue
            options = {"MessageGroupId": group} if group else {}
            if rnd.random() < 0.2:
                delayed = True
                options["DelaySeconds"] = 900
        if dedup is None or dedup not in dedup_ids:
            live.append(_ModelMessage(body, group, delayed=delayed))
        if dedup is not None:
            dedup_ids.add(dedup)
        return options

    for step in range(300):
        action = rnd.choice(["send", "batch", "receive", "receive", "delete", "release", "count"])
        if action == "send":
            body = f"m{step}"
            sqs.send_message(QueueUrl=url, MessageBody=body, **send(body))
        elif action == "batch":
            bodies = [f"m{step}-{n}" for n in range(rnd.randint(1, 10))]
            entries = [{"Id": str(n), "MessageBody": b, **send(b)} for n, b in enumerate(bodies)]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
        elif action == "receive":
            limit, release = rnd.randint(1, 10), rnd.random() < 0.2
            expected = _model_receive(live, dead, fifo=fifo, limit=limit, release=release)
            got = receive(
                sqs, url, MaxNumberOfMessages=limit, VisibilityTimeout=0 if release else 600
            )
            assert [(g["Body"], int(g["Attributes"]["ApproximateReceiveCount"])) for g in got] == [
                (m.body, m.receives) for m in expected
            ], f"step {step}: receive"
            handles.update((g["Body"], g["ReceiptHandle"]) for g in got)
        elif action in ("delete", "release") and any(m.in_flight for m in live):
            m = rnd.choice([m for m in live if m.in_flight])
            if action == "delete":
                sqs.delete_message(QueueUrl=url, ReceiptHandle=handles[m.body])
                live.remove(m)
            else:
                sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=handles[m.body], VisibilityTimeout=0
                )
                m.in_flight = False
        elif action == "count":
            assert counts(sqs, url) == (
                sum(not m.in_flight and not m.delayed for m in live),
                sum(m.in_flight for m in live),
                sum(m.delayed for m in live),
            ), f"step {step}: counters"
            assert counts(sqs, dlq_url) == (len(dead), 0, 0), f"step {step}: DLQ counters"


# --- (e) provisioning ---------------------------------------------------------
def test_provision_is_idempotent_and_follows_the_template(
    sqs: Any, dynamodb: Any, aws_env: Settings
) -> None:
    """Given resources provisioned once (by the aws_env fixture), when provisioning
    runs again with the same prefix, then it returns the same values, and the
    queue, DLQ and table carry the template's settings (redrive policy to the
    DLQ's ARN with its maxReceiveCount, on-demand table keyed on pk, TTL on)."""
    template = load_template()
    prefix = aws_env.table.removesuffix("-state")

    again = provision(sqs, dynamodb, prefix=prefix)

    assert again.as_env() == {
        "DISPATCH_QUEUE_URL": aws_env.queue_url,
        "DISPATCH_DLQ_URL": aws_env.dlq_url,
        "DISPATCH_TABLE": aws_env.table,
    }
    assert again.as_json() == {
        "queue_url": aws_env.queue_url,
        "dlq_url": aws_env.dlq_url,
        "table": aws_env.table,
    }
    queue_template = template["Resources"]["TaskQueue"]["Properties"]
    attributes = sqs.get_queue_attributes(QueueUrl=aws_env.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=aws_env.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": queue_template["RedrivePolicy"]["maxReceiveCount"],
    }
    for name in ("VisibilityTimeout", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds"):
        assert attributes[name] == str(queue_template[name])
    table = dynamodb.describe_table(TableName=aws_env.table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = dynamodb.describe_time_to_live(TableName=aws_env.table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_provision_refuses_a_table_with_another_key_schema(
    sqs: Any, dynamodb: Any, aws_env: Settings
) -> None:
    """Given a table named like ours but keyed on "id", when provisioning with
    that prefix, then it raises ConfigurationError naming the table and the key
    schema Dispatch needs."""
    dynamodb.create_table(
        TableName="clash-state",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    with pytest.raises(ConfigurationError, match=r"clash-state.*pk HASH \(S\)"):
        provision(sqs, dynamodb, prefix="clash")


# --- (f) the emulator process -------------------------------------------------
def _listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket in LISTEN state on ``port`` (Linux /proc)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    if len(address) == 8:
                        found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                    else:
                        found.add(f"ipv6:{address}")
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc/net/tcp")
def test_emulator_listens_on_loopback_only(local_aws: LocalAWS) -> None:
    """Given the running emulator, then its only listening socket is 127.0.0.1."""
    port = int(local_aws.endpoint_url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"127.0.0.1"}


def test_server_prints_ready_and_exits_cleanly_on_sigterm() -> None:
    """Given `python -m dispatch.local.server`, then it prints one READY line
    with a 127.0.0.1 URL, and SIGTERM makes it exit with status 0."""
    with subprocess.Popen(
        [sys.executable, "-m", "dispatch.local.server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as server:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        assert re.fullmatch(rf"{READY_PREFIX} http://127\.0\.0\.1:\d+\n", line), line
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.pidfd_open (Linux)")
def test_emulator_exits_when_its_parent_dies() -> None:
    """Given a process that started a LocalAWS, when that process is killed
    (SIGKILL: no cleanup runs), then the emulator notices its stdin closing and
    exits by itself."""
    parent_code = (
        "import sys\n"
        "from dispatch.local.emulator import LocalAWS\n"
        "aws = LocalAWS.start()\n"
        "print(aws.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(  # noqa: S603 - this interpreter running our own code
        [sys.executable, "-c", parent_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as parent:
        assert parent.stdout is not None
        emulator_pid = int(parent.stdout.readline())
        pidfd = os.pidfd_open(emulator_pid)
        try:
            parent.kill()
            parent.wait(timeout=10)
            # A pidfd becomes readable when its process exits.
            readable, _, _ = select.select([pidfd], [], [], 10.0)
        finally:
            os.close(pidfd)
    assert readable, f"the emulator (pid {emulator_pid}) outlived its parent"


def test_start_failure_reports_the_emulators_stderr() -> None:
    """Given a port that is already taken, when LocalAWS starts on it, then it
    raises DispatchError quoting why the emulator could not start."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DispatchError, match=r"(?s)exited with status.*Address already in use"):
            LocalAWS.start(port=port, startup_timeout_s=20)


def test_patches_refuse_another_moto_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a moto version other than the pinned one, then apply() refuses,
    naming both versions."""
    monkeypatch.setattr(moto, "__version__", "5.3.0")
    with pytest.raises(RuntimeError, match=r"5\.2\.5.*5\.3\.0"):
        moto_patches.apply()


# --- (g) the template ---------------------------------------------------------
def test_template_passes_cfn_lint() -> None:
    """deploy/template.yaml has no cfn-lint findings."""
    findings = lint_file(TEMPLATE)
    assert not findings, "\n".join(str(f) for f in findings)
