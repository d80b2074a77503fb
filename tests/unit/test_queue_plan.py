"""The enqueue orchestration (``enqueue_plan``), driven step by step against a fake AWS.

``enqueue_plan`` yields :class:`Call` and :class:`Pause` steps. The test driver
answers each Call from :class:`FakeAws` (an in-memory table and queue that answer
like DynamoDB and SQS, raising botocore's ClientError where they would) and records
every step, so a test can check order, batch sizes, pauses and what ends up where.
Pauses are recorded, never slept.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.envelope import Message, MessageOptions
from dispatch.core.errors import AWSError, EnqueueError, PartialEnqueueError
from dispatch.producer.enqueue import Call, Pause, enqueue_plan
from dispatch.tasks.registry import Registry, TaskSpec, task

NOW = 1_767_225_600.0
TABLE = "dispatch-state"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/dispatch-tasks"
SETTINGS = Settings(
    queue_url=QUEUE_URL,
    dlq_url="https://sqs.us-east-1.amazonaws.com/123456789012/dispatch-dlq",
    table=TABLE,
)
FIFO_SETTINGS = Settings(
    queue_url=QUEUE_URL + ".fifo",
    dlq_url="https://sqs.us-east-1.amazonaws.com/123456789012/dispatch-dlq.fifo",
    table=TABLE,
)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def charge_spec() -> TaskSpec:
    """``charge(order_id, note="")`` declared in a fresh registry."""

    def charge(order_id: str, note: str = "") -> None:
        """Charge an order."""

    return task(registry=Registry())(charge).spec


def message(
    order_id: str,
    *,
    key: str | None = None,
    note: str = "",
    delay_s: float | None = None,
    spec: TaskSpec | None = None,
) -> Message:
    """A message for ``charge(order_id, note)``, built at NOW."""
    return Message.build(
        spec or charge_spec(),
        [order_id],
        {"note": note},
        MessageOptions(idempotency_key=key, delay_s=delay_s),
        now=NOW,
    )


def condition_failed(old_item: dict[str, Any] | None, operation: str) -> ClientError:
    """The ClientError DynamoDB raises when a condition fails (with ALL_OLD, the item)."""
    response: dict[str, Any] = {
        "Error": {
            "Code": "ConditionalCheckFailedException",
            "Message": "The conditional request failed",
        }
    }
    if old_item is not None:
        response["Item"] = old_item
    return ClientError(response, operation)  # type: ignore[arg-type]


class FakeAws:
    """An in-memory DynamoDB table and SQS queue that answer a plan's calls.

    Knobs:
    * ``unprocessed_rounds``: BatchWriteItem leaves its last ``unprocessed_count`` requests
      unprocessed this many times (then writes everything).
    * ``unprocessed_forever_from``: BatchWriteItem calls from this 1-based number on write
      nothing at all.
    * ``refuse``: task id -> SQS code, refused with SenderFault true (for good).
    * ``transient``: task id -> how many times SQS refuses it with SenderFault false.
    * ``send_call_error``: the n-th SendMessageBatch call (1-based) fails as a whole.
    """

    def __init__(
        self,
        *,
        unprocessed_rounds: int = 0,
        unprocessed_count: int = 1,
        unprocessed_forever_from: int | None = None,
        refuse: dict[str, str] | None = None,
        transient: dict[str, int] | None = None,
        send_call_error: int | None = None,
    ) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.queue: list[dict[str, Any]] = []
        self.steps: list[Call | Pause] = []
        self.unprocessed_rounds = unprocessed_rounds
        self.unprocessed_count = unprocessed_count
        self.unprocessed_forever_from = unprocessed_forever_from
        self.refuse = refuse or {}
        self.transient = Counter(transient or {})
        self.send_call_error = send_call_error
        self.unrecorded_sends: list[str] = []

    # --- the driver ---------------------------------------------------------------------

    def run(self, plan: Any) -> list[str]:
        """Drive the plan to its end as dispatch.producer.enqueue.run_sync does, never sleeping."""
        try:
            step = next(plan)
            while True:
                self.steps.append(step)
                if isinstance(step, Pause):
                    step = plan.send(None)
                    continue
                try:
                    answer = getattr(self, step.operation)(**step.params)
                except ClientError as exc:
                    step = plan.throw(exc)
                    continue
                step = plan.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # --- DynamoDB -----------------------------------------------------------------------

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        (requests,) = RequestItems.values()
        assert list(RequestItems) == [TABLE]
        assert 1 <= len(requests) <= c.DDB_MAX_BATCH_WRITE, "BatchWriteItem takes 1 to 25"
        number = len(self.calls("batch_write_item"))
        if self.unprocessed_forever_from is not None and number >= self.unprocessed_forever_from:
            return {"UnprocessedItems": {TABLE: requests}}
        left: list[dict[str, Any]] = []
        if self.unprocessed_rounds > 0:
            self.unprocessed_rounds -= 1
            left = requests[-self.unprocessed_count :]
            requests = requests[: -self.unprocessed_count]
        for request in requests:
            new = request["PutRequest"]["Item"]
            self.items[new["pk"]["S"]] = dict(new)
        return {"UnprocessedItems": {TABLE: left} if left else {}}

    def put_item(self, **params: Any) -> dict[str, Any]:
        assert params["TableName"] == TABLE
        assert params["ConditionExpression"] == "attribute_not_exists(pk)"
        key = params["Item"]["pk"]["S"]
        if key in self.items:
            raise condition_failed(self.items[key], "PutItem")
        self.items[key] = dict(params["Item"])
        return {}

    def delete_item(self, **params: Any) -> dict[str, Any]:
        assert params["ConditionExpression"] == "#s = :queued"
        key = params["Key"]["pk"]["S"]
        existing = self.items.get(key)
        if existing is None or existing["status"] != params["ExpressionAttributeValues"][":queued"]:
            raise condition_failed(None, "DeleteItem")
        del self.items[key]
        return {}

    def update_item(self, **params: Any) -> dict[str, Any]:
        assert params["UpdateExpression"] == "REMOVE pending_send"
        assert params["ConditionExpression"] == "attribute_exists(pk)"
        key = params["Key"]["pk"]["S"]
        if key not in self.items:
            raise condition_failed(None, "UpdateItem")
        self.items[key].pop("pending_send", None)
        return {}

    # --- SQS ----------------------------------------------------------------------------------

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert QueueUrl in (SETTINGS.queue_url, FIFO_SETTINGS.queue_url)
        assert 1 <= len(Entries) <= c.SQS_MAX_BATCH_ENTRIES, "SendMessageBatch takes 1 to 10"
        assert sum(len(e["MessageBody"].encode()) for e in Entries) <= c.SQS_MAX_BATCH_BYTES
        assert len({e["Id"] for e in Entries}) == len(Entries), "Ids must be unique"
        if self.send_call_error == len(self.calls("send_message_batch")):
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "try later"}}, "SendMessageBatch"
            )
        successful, failed = [], []
        for entry in Entries:
            task_id = json.loads(entry["MessageBody"])["id"]
            if f"{c.TASK_KEY_PREFIX}{task_id}" not in self.items:
                self.unrecorded_sends.append(task_id)
            if task_id in self.refuse:
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": True,
                        "Code": self.refuse[task_id],
                        "Message": "refused",
                    }
                )
            elif self.transient[task_id] > 0:
                self.transient[task_id] -= 1
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": False,
                        "Code": "InternalError",
                        "Message": "try again",
                    }
                )
            else:
                self.queue.append(entry)
                successful.append({"Id": entry["Id"], "MessageId": f"m-{len(self.queue)}"})
        return {"Successful": successful, "Failed": failed}

    # --- what happened --------------------------------------------------------------------------

    def calls(self, operation: str) -> list[Call]:
        """The calls made for one operation, in order."""
        return [s for s in self.steps if isinstance(s, Call) and s.operation == operation]

    @property
    def operations(self) -> list[str]:
        """Every step in order: the operation name, or "pause"."""
        return [s.operation if isinstance(s, Call) else "pause" for s in self.steps]

    @property
    def queued_ids(self) -> list[str]:
        """The task ids of the messages on the queue, in sending order."""
        return [json.loads(e["MessageBody"])["id"] for e in self.queue]

    def record(self, task_id: str) -> dict[str, Any] | None:
        """A task record as Python values, or None."""
        stored = self.items.get(f"{c.TASK_KEY_PREFIX}{task_id}")
        if stored is None:
            return None
        return {key: _deserializer.deserialize(value) for key, value in stored.items()}

    def seed(self, task_id: str, **attributes: Any) -> None:
        """Put an existing record in the table."""
        attributes = {"pk": f"{c.TASK_KEY_PREFIX}{task_id}", "task_id": task_id, **attributes}
        self.items[attributes["pk"]] = {
            key: _serializer.serialize(Decimal(repr(value)) if isinstance(value, float) else value)
            for key, value in attributes.items()
        }


def enqueue(aws: FakeAws, messages: list[Message], settings: Settings = SETTINGS) -> list[str]:
    """Run enqueue_plan for ``messages`` on ``aws``."""
    return aws.run(enqueue_plan(settings, messages, NOW))


# --- the happy path -------------------------------------------------------------------------


def test_records_are_written_before_messages_are_sent() -> None:
    """Given plain and idempotent messages, when enqueued, then every record is written
    (BatchWriteItem / PutItem) before the first SendMessageBatch, and each message found
    its record when it reached the queue."""
    aws = FakeAws()
    messages = [message("1"), message("2", key="k2"), message("3")]

    ids = enqueue(aws, messages)

    operations = aws.operations
    first_send = operations.index("send_message_batch")
    assert set(operations[:first_send]) == {"batch_write_item", "put_item"}
    assert aws.unrecorded_sends == []
    assert sorted(aws.queued_ids) == sorted(ids)
    for task_id in ids:
        record = aws.record(task_id)
        assert record is not None
        assert record["status"] == "queued"


def test_the_returned_ids_are_the_message_ids_in_input_order() -> None:
    """Given plain and idempotent messages interleaved, when enqueued, then the ids come
    back in input order and the messages went out in input order."""
    aws = FakeAws()
    messages = [message("1", key="a"), message("2"), message("3", key="b"), message("4")]

    ids = enqueue(aws, messages)

    assert ids == [m.task_id for m in messages]
    assert aws.queued_ids == ids


def test_plain_records_are_written_25_per_batch() -> None:
    """Given 30 plain messages, when enqueued, then records go out in BatchWriteItems of 25
    and 5 and all 30 messages are sent."""
    aws = FakeAws()

    ids = enqueue(aws, [message(str(i)) for i in range(30)])

    writes = aws.calls("batch_write_item")
    assert [len(call.params["RequestItems"][TABLE]) for call in writes] == [25, 5]
    assert len(aws.queue) == 30
    assert len(set(ids)) == 30


def test_messages_go_out_ten_per_send_message_batch() -> None:
    """Given 23 messages, when enqueued, then SendMessageBatch carries 10, 10 and 3."""
    aws = FakeAws()

    enqueue(aws, [message(str(i)) for i in range(23)])

    sends = aws.calls("send_message_batch")
    assert [len(call.params["Entries"]) for call in sends] == [10, 10, 3]


def test_messages_go_out_at_most_one_mebibyte_per_send_message_batch() -> None:
    """Given five ~400 kB messages, when enqueued, then no SendMessageBatch carries more than
    1 MiB: they go out 2, 2 and 1."""
    aws = FakeAws()
    spec = charge_spec()
    messages = [message(str(i), note="n" * 400_000, spec=spec) for i in range(5)]

    enqueue(aws, messages)

    sends = aws.calls("send_message_batch")
    assert [len(call.params["Entries"]) for call in sends] == [2, 2, 1]
    for call in sends:
        size = sum(len(e["MessageBody"].encode()) for e in call.params["Entries"])
        assert size <= c.SQS_MAX_BATCH_BYTES
    assert len(aws.queue) == 5


def test_entries_carry_the_body_and_the_capped_delay() -> None:
    """Given a message delayed an hour, when enqueued, then its entry has the exact body and
    DelaySeconds 900 (the envelope's eta covers the rest)."""
    aws = FakeAws()
    delayed = message("1", delay_s=3_600)

    enqueue(aws, [delayed])

    (entry,) = aws.queue
    assert entry["MessageBody"] == delayed.body
    assert entry["DelaySeconds"] == c.SQS_MAX_DELAY_S
    assert json.loads(entry["MessageBody"])["eta"] == NOW + 3_600


def test_fifo_entries_carry_group_and_deduplication_ids() -> None:
    """Given a FIFO queue, when enqueued, then each entry has a MessageGroupId (the group,
    or "default") and the task id as MessageDeduplicationId, and no DelaySeconds."""
    aws = FakeAws()
    spec = charge_spec()
    grouped = Message.build(spec, ["1"], {}, MessageOptions(group="customer-7"), now=NOW)
    plain = message("2", spec=spec)

    enqueue(aws, [grouped, plain], FIFO_SETTINGS)

    first, second = aws.queue
    assert first["MessageGroupId"] == "customer-7"
    assert second["MessageGroupId"] == "default"
    assert first["MessageDeduplicationId"] == grouped.task_id
    assert "DelaySeconds" not in first


def test_a_delay_on_a_fifo_queue_is_not_dropped_silently() -> None:
    """Given a FIFO queue (no per-message DelaySeconds) and a message delayed 60 s, when
    enqueued, then the delay survives in the body's eta, or the enqueue is refused with an
    EnqueueError; the task is never simply run a minute early."""
    aws = FakeAws()
    delayed = message("1", delay_s=60)

    try:
        enqueue(aws, [delayed], FIFO_SETTINGS)
    except EnqueueError:
        return
    (entry,) = aws.queue
    body = json.loads(entry["MessageBody"])
    assert entry.get("DelaySeconds", 0) >= 60 or body.get("eta", 0) >= NOW + 60


# --- retries and failures ---------------------------------------------------------------------


def test_unprocessed_records_are_written_again_after_a_pause() -> None:
    """Given BatchWriteItem leaving two records unprocessed twice, when enqueued, then only
    those are written again, after a pause each time, before anything is sent."""
    aws = FakeAws(unprocessed_rounds=2, unprocessed_count=2)
    messages = [message(str(i)) for i in range(5)]

    ids = enqueue(aws, messages)

    writes = aws.calls("batch_write_item")
    assert [len(call.params["RequestItems"][TABLE]) for call in writes] == [5, 2, 2]
    assert aws.operations[:6] == [
        "batch_write_item",
        "pause",
        "batch_write_item",
        "pause",
        "batch_write_item",
        "send_message_batch",
    ]
    assert all(aws.record(task_id) is not None for task_id in ids)
    assert aws.unrecorded_sends == []


def test_transient_refusals_are_retried_after_pauses_and_then_succeed() -> None:
    """Given SQS refusing one entry twice with SenderFault false, when enqueued, then that
    entry alone is sent again after a pause each time, and everything ends on the queue."""
    messages = [message(str(i)) for i in range(3)]
    flaky = messages[1].task_id
    aws = FakeAws(transient={flaky: 2})

    ids = enqueue(aws, messages)

    sends = aws.calls("send_message_batch")
    assert [len(call.params["Entries"]) for call in sends] == [3, 1, 1]
    assert json.loads(sends[1].params["Entries"][0]["MessageBody"])["id"] == flaky
    send_steps = aws.steps[aws.operations.index("send_message_batch") :]
    assert [type(s).__name__ for s in send_steps] == ["Call", "Pause", "Call", "Pause", "Call"]
    pauses = [s.seconds for s in aws.steps if isinstance(s, Pause)]
    assert all(0 <= seconds <= 2.0 for seconds in pauses)
    assert ids == [m.task_id for m in messages]
    assert sorted(aws.queued_ids) == sorted(ids)


def test_an_entry_refused_transiently_every_time_ends_in_partial_enqueue_error() -> None:
    """Given SQS refusing one entry with SenderFault false on every attempt, when enqueued,
    then after 6 attempts it is reported refused and its record removed."""
    messages = [message("0"), message("1")]
    stuck = messages[1].task_id
    aws = FakeAws(transient={stuck: 100})

    with pytest.raises(PartialEnqueueError) as caught:
        enqueue(aws, messages)

    assert len(aws.calls("send_message_batch")) == 6
    assert caught.value.task_ids == [messages[0].task_id, None]
    assert "InternalError" in caught.value.failures[1]
    assert aws.record(stuck) is None


def test_sender_fault_refusals_end_in_partial_enqueue_error_with_none_at_their_indexes() -> None:
    """Given SQS refusing entries 1 and 3 of 5 for good (SenderFault true), when enqueued,
    then PartialEnqueueError has None exactly at 1 and 3, the SQS codes per index, the
    refused records are deleted, and the others are queued and kept."""
    messages = [message(str(i)) for i in range(5)]
    aws = FakeAws(
        refuse={
            messages[1].task_id: "InvalidMessageContents",
            messages[3].task_id: "InvalidParameterValue",
        }
    )

    with pytest.raises(PartialEnqueueError) as caught:
        enqueue(aws, messages)

    error = caught.value
    expected = [m.task_id for m in messages]
    expected[1] = expected[3] = None
    assert error.task_ids == expected
    assert set(error.failures) == {1, 3}
    assert error.failures[1].startswith("InvalidMessageContents")
    assert error.failures[3].startswith("InvalidParameterValue")
    assert len(aws.calls("send_message_batch")) == 1, "refused for good: not sent again"
    deleted = [call.params["Key"]["pk"]["S"] for call in aws.calls("delete_item")]
    assert deleted == [f"task#{messages[1].task_id}", f"task#{messages[3].task_id}"]
    for i, task_id in enumerate(m.task_id for m in messages):
        assert (aws.record(task_id) is None) is (i in (1, 3))
    assert sorted(aws.queued_ids) == sorted(t for t in expected if t is not None)
    assert "2 of 5 messages were refused" in str(error)


def test_a_refused_idempotent_message_loses_its_record_and_is_not_marked_sent() -> None:
    """Given an idempotent message SQS refuses for good, when enqueued, then its record is
    deleted (so a later enqueue with the key can try again) and no sent-update is made."""
    refused = message("1", key="order-1")
    aws = FakeAws(refuse={refused.task_id: "InvalidMessageContents"})

    with pytest.raises(PartialEnqueueError) as caught:
        enqueue(aws, [refused])

    assert caught.value.task_ids == [None]
    assert aws.record(refused.task_id) is None
    assert aws.calls("update_item") == []


def test_a_failed_send_call_reports_that_batch_and_every_later_one() -> None:
    """Given the second SendMessageBatch call failing as a whole (ClientError), when 25
    messages are enqueued, then the first 10 are kept and the other 15 reported refused
    with their records removed; the third batch is not attempted."""
    messages = [message(str(i)) for i in range(25)]
    aws = FakeAws(send_call_error=2)

    with pytest.raises(PartialEnqueueError) as caught:
        enqueue(aws, messages)

    error = caught.value
    assert error.task_ids[:10] == [m.task_id for m in messages[:10]]
    assert error.task_ids[10:] == [None] * 15
    assert set(error.failures) == set(range(10, 25))
    assert "InternalError" in error.failures[10]
    assert len(aws.calls("send_message_batch")) == 2
    assert len(aws.calls("delete_item")) == 15
    assert all(aws.record(m.task_id) is None for m in messages[10:])


def test_records_dynamodb_never_writes_are_reported_for_every_message() -> None:
    """Given BatchWriteItem never processing anything, when 3 messages are enqueued, then
    PartialEnqueueError reports every message (a None id and a failure for each index) and
    nothing is sent."""
    aws = FakeAws(unprocessed_forever_from=1)
    messages = [message(str(i)) for i in range(3)]

    with pytest.raises(PartialEnqueueError) as caught:
        enqueue(aws, messages)

    assert aws.calls("send_message_batch") == []
    assert caught.value.task_ids == [None, None, None]
    assert set(caught.value.failures) == {0, 1, 2}


def test_a_record_write_failure_in_a_later_chunk_reports_ids_for_the_whole_input() -> None:
    """Given 30 messages and DynamoDB never writing the second chunk of 5 records, when
    enqueued, then the 25 recorded messages are sent, and PartialEnqueueError.task_ids has
    one entry per input message: the 25 ids, then None for the 5 whose record failed."""
    aws = FakeAws(unprocessed_forever_from=2)
    messages = [message(str(i)) for i in range(30)]

    with pytest.raises(PartialEnqueueError) as caught:
        enqueue(aws, messages)

    sent = [
        entry["MessageBody"]
        for call in aws.calls("send_message_batch")
        for entry in call.params["Entries"]
    ]
    assert sent == [m.body for m in messages[:25]]
    assert caught.value.task_ids == [m.task_id for m in messages[:25]] + [None] * 5
    assert sorted(caught.value.failures) == list(range(25, 30))


def test_a_record_write_failure_leaves_no_queued_record_without_a_message() -> None:
    """Given 30 messages and DynamoDB never writing the second chunk, when enqueued, then
    a record exists exactly for each message that was sent: no task says "queued" while
    no message for it exists."""
    aws = FakeAws(unprocessed_forever_from=2)
    messages = [message(str(i)) for i in range(30)]

    with pytest.raises(PartialEnqueueError):
        enqueue(aws, messages)

    sent = {
        json.loads(entry["MessageBody"])["id"]
        for call in aws.calls("send_message_batch")
        for entry in call.params["Entries"]
    }
    recorded = {m.task_id for m in messages if aws.record(m.task_id) is not None}
    assert recorded == sent
    assert len(sent) == 25


# --- idempotency ---------------------------------------------------------------------------------


def test_a_fresh_idempotent_message_is_written_sent_and_marked_sent() -> None:
    """Given an idempotent message never seen, when enqueued, then PutItem creates its
    record marked pending_send, the message is sent, then pending_send is removed."""
    aws = FakeAws()
    keyed = message("1", key="order-1")

    (task_id,) = enqueue(aws, [keyed])

    assert aws.operations == ["put_item", "send_message_batch", "update_item"]
    assert aws.calls("put_item")[0].params["Item"]["pending_send"] == {"BOOL": True}
    record = aws.record(task_id)
    assert record is not None
    assert "pending_send" not in record
    assert aws.queued_ids == [task_id]


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param({"status": "queued", "created_at": NOW - 3_600}, id="queued-and-sent"),
        pytest.param(
            {"status": "queued", "pending_send": True, "created_at": NOW - 5},
            id="queued-pending-just-now",
        ),
        pytest.param(
            {"status": "running", "pending_send": True, "created_at": NOW - 3_600},
            id="running",
        ),
        pytest.param({"status": "succeeded", "created_at": NOW - 3_600}, id="succeeded"),
        pytest.param({"status": "dead", "created_at": NOW - 3_600}, id="dead"),
    ],
)
def test_an_idempotent_message_whose_record_exists_is_not_sent_again(
    existing: dict[str, Any],
) -> None:
    """Given a record for the same task and key that is not an orphan, when enqueued again,
    then no message is sent, the record is untouched and the same id is returned."""
    aws = FakeAws()
    keyed = message("1", key="order-1")
    aws.seed(keyed.task_id, task="charge", **existing)
    before = aws.record(keyed.task_id)

    ids = enqueue(aws, [keyed])

    assert ids == [keyed.task_id]
    assert aws.calls("send_message_batch") == []
    assert aws.calls("update_item") == []
    assert aws.record(keyed.task_id) == before


def test_an_orphaned_idempotent_record_gets_its_message_sent() -> None:
    """Given a record left queued with pending_send by a producer that died long ago, when
    the same key is enqueued again, then the message is sent and pending_send removed."""
    aws = FakeAws()
    keyed = message("1", key="order-1")
    aws.seed(keyed.task_id, task="charge", status="queued", pending_send=True, created_at=NOW - 120)

    ids = enqueue(aws, [keyed])

    assert ids == [keyed.task_id]
    assert aws.queued_ids == [keyed.task_id]
    assert aws.operations == ["put_item", "send_message_batch", "update_item"]
    record = aws.record(keyed.task_id)
    assert record is not None
    assert "pending_send" not in record


def test_the_same_key_twice_in_one_call_is_sent_once() -> None:
    """Given two messages with the same task and key in one call, when enqueued, then one
    message is sent and both positions return the same id."""
    aws = FakeAws()
    spec = charge_spec()
    first = message("1", key="order-1", spec=spec)
    second = message("1", key="order-1", spec=spec)

    ids = enqueue(aws, [first, second])

    assert ids == [first.task_id, first.task_id]
    assert aws.queued_ids == [first.task_id]


def test_a_put_item_error_other_than_the_condition_propagates() -> None:
    """Given PutItem failing with a throttling error, when enqueued, then the error reaches
    the caller as an AWSError carrying the AWS code, and nothing is sent."""

    class ThrottledAws(FakeAws):
        """DynamoDB throttles every PutItem."""

        def put_item(self, **params: Any) -> dict[str, Any]:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
                "PutItem",
            )

    aws = ThrottledAws()

    with pytest.raises(AWSError, match="ProvisionedThroughputExceededException") as caught:
        enqueue(aws, [message("1", key="order-1")])

    assert caught.value.code == "ProvisionedThroughputExceededException"

    assert aws.calls("send_message_batch") == []


# --- lean tasks (track_state=False) ---------------------------------------------------------


def lean_spec() -> TaskSpec:
    """``ping(n)`` declared lean (no task record) in a fresh registry."""

    def ping(n: int) -> None:
        """Ping."""

    return task(registry=Registry(), track_state=False)(ping).spec


def lean_message(n: int, *, key: str | None = None) -> Message:
    """A message for the lean ``ping(n)``."""
    return Message.build(lean_spec(), [n], {}, MessageOptions(idempotency_key=key), now=NOW)


def test_lean_messages_are_only_sent() -> None:
    """Given 25 lean messages, when enqueued, then the only calls are three
    SendMessageBatch (10, 10, 5): no record is written, and the ids say lean."""
    aws = FakeAws()

    ids = enqueue(aws, [lean_message(n) for n in range(25)])

    assert aws.operations == ["send_message_batch"] * 3
    assert aws.items == {}
    assert aws.queued_ids == ids
    assert all(i.startswith(c.LEAN_TASK_ID_PREFIX) for i in ids)


def test_lean_and_tracked_messages_mix_in_one_call() -> None:
    """Given a tracked and a lean message in one call, when enqueued, then only the
    tracked one has a record and both are on the queue, in input order."""
    aws = FakeAws()
    tracked, lean = message("1"), lean_message(2)

    ids = enqueue(aws, [tracked, lean])

    assert aws.queued_ids == ids
    assert aws.record(tracked.task_id) is not None
    assert aws.record(lean.task_id) is None
    assert len(aws.items) == 1


def test_an_idempotency_key_on_a_lean_task_is_refused_on_a_standard_queue() -> None:
    """Given a lean task and an idempotency key on a standard queue, when enqueued, then
    EnqueueError says why (no record to recognise a repeat) and what to do, and
    nothing was sent or written."""
    aws = FakeAws()

    with pytest.raises(EnqueueError, match=r"track_state=False.*idempotency_key.*FIFO"):
        enqueue(aws, [message("1"), lean_message(1, key="order-1")])

    assert aws.operations == []


def test_an_idempotency_key_on_a_lean_task_uses_fifo_deduplication() -> None:
    """Given a lean task with an idempotency key on a FIFO queue, when enqueued twice,
    then no record is written and both sends carry the same deduplication id (the
    key's task id), so SQS keeps one."""
    aws = FakeAws()

    first = enqueue(aws, [lean_message(1, key="order-1")], FIFO_SETTINGS)
    second = enqueue(aws, [lean_message(1, key="order-1")], FIFO_SETTINGS)

    assert first == second
    assert aws.items == {}
    assert [e["MessageDeduplicationId"] for e in aws.queue] == first * 2


def test_a_scheduled_lean_message_is_guarded_by_a_marker_not_a_task_record() -> None:
    """Given a periodic lean task's message (keyed by its fire time), when the periodic
    enqueuer sends it twice, then it is sent once, and the only item is a ``sched#``
    marker: no ``task#`` record that `dispatch status` would show as queued forever."""
    aws = FakeAws()
    fire = lean_message(0, key="schedule:2026-01-01T00:00:00+00:00")

    for _ in range(2):
        aws.run(enqueue_plan(SETTINGS, [fire], NOW, scheduled=True))

    assert aws.queued_ids == [fire.task_id]
    assert list(aws.items) == [f"{c.SCHEDULE_KEY_PREFIX}{fire.task_id}"]
    assert "pending_send" not in aws.items[f"{c.SCHEDULE_KEY_PREFIX}{fire.task_id}"]
