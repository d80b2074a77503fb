"""A delivery: one SQS message as the dispatcher received it, typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.core.signing import ATTR_SIGNATURE

__all__ = ["Delivery"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """The parts of a received message the loop reads; nothing past the receive
    looks into SQS's raw dictionary."""

    receipt: str
    message_id: str
    body: str
    receive_count: int | None = None
    sent_at_s: float | None = None
    attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    group: str | None = None  # the MessageGroupId (FIFO queues; fair standard queues)

    @classmethod
    def from_sqs(cls, message: Mapping[str, Any]) -> Delivery:
        """A delivery from one entry of ReceiveMessage's ``Messages``."""
        system = message.get("Attributes", {})
        count = system.get("ApproximateReceiveCount")
        sent = system.get("SentTimestamp")
        return cls(
            receipt=str(message["ReceiptHandle"]),
            message_id=str(message["MessageId"]),
            body=str(message.get("Body", "")),
            receive_count=int(count) if count is not None else None,
            sent_at_s=int(sent) / 1000 if sent is not None else None,
            attributes=message.get("MessageAttributes", {}),
            group=system.get("MessageGroupId"),
        )

    @property
    def size_bytes(self) -> int:
        """Bytes of the body, as SQS and Lambda payload limits count them."""
        return len(self.body.encode("utf-8"))

    def carried(self) -> dict[str, dict[str, str]]:
        """The attributes a copy of this message must keep (its signature)."""
        signature = self.attributes.get(ATTR_SIGNATURE)
        if not signature:
            return {}
        return {ATTR_SIGNATURE: {"DataType": "String", "StringValue": signature["StringValue"]}}

    def copy_entry(self, *, delay_s: int) -> dict[str, Any]:
        """A SendMessageBatch entry that puts this message on the queue again (with its
        message group: a keyed task's key stays its fair-queue tenant)."""
        entry: dict[str, Any] = {"Id": "0", "MessageBody": self.body, "DelaySeconds": delay_s}
        carried = self.carried()
        if carried:
            entry["MessageAttributes"] = carried
        if self.group is not None:
            entry["MessageGroupId"] = self.group
        return entry
