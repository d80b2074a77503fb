"""What the requests a client sends would cost on AWS: billed requests and capacity units.

:class:`dispatch.store.aws.RequestCounter` counts HTTP requests. AWS does not bill all of
them alike, so :class:`BillingMeter`, attached to the same clients, looks at each
call's parameters and answer (botocore's ``provide-client-params`` and ``after-call``
events) and applies the billing rules:

* SQS: one request per call, and one more for each further 64 KiB chunk of the
  payload (the bodies and attributes sent, or received by ReceiveMessage);
* DynamoDB on-demand: a write costs one write unit per started 1 KB of the larger
  of the item before and after it (a delete: the item deleted; a write whose
  condition failed: the existing item, at least one unit); BatchWriteItem bills
  each item it wrote; a BatchExecuteStatement bills each statement as the single
  write it is (an applied UPDATE: the larger of the item before and after; one
  refused for its condition: the item it returned, at least one unit); a
  transactional write or read costs twice. A strongly
  consistent read costs one read unit per started 4 KB of what it returned (at
  least one), an eventually consistent read half of that. Control-plane calls
  (DescribeTable...) are free.

Item sizes follow DynamoDB's rules (attribute names count, numbers cost about one
byte per two significant digits plus one). An UpdateItem that does not return the
new item is sized from the last size this meter saw for that key, or else from the
key and the values it sets: exact for every write Dispatch's dispatcher makes with
the bench's workload (the claim returns the item, settlements write whole items).
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from bench import prices

__all__ = ["BillingMeter", "Usage", "item_size", "merge"]

_PARAMS_KEY: Final = "bench_billing_params"
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"
_READ_ACTIONS: Final = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
_WRITE_ACTIONS: Final = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)
_SQS_PAYLOAD_ACTIONS: Final = frozenset({"SendMessage", "SendMessageBatch", "ReceiveMessage"})


# --- item sizes ------------------------------------------------------------------------
def item_size(item: Mapping[str, Any]) -> int:
    """The size DynamoDB bills for an item in attribute-value form, in bytes."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: Mapping[str, Any]) -> int:  # noqa: PLR0911 - one return per type
    (kind, data), *_ = value.items()
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return _number_size(str(data))
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in data)
    if kind == "NS":
        return sum(_number_size(str(n)) for n in data)
    if kind == "BS":
        return sum(len(b) for b in data)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in data.items())
    return len(json.dumps(data, default=str))


def _number_size(text: str) -> int:
    try:
        digits = len(Decimal(text).normalize().as_tuple().digits)
    except InvalidOperation:
        digits = len(text)
    return (digits + 1) // 2 + 1


def _write_units(size: int) -> int:
    return max(1, math.ceil(size / prices.DYNAMODB_WRITE_UNIT_BYTES))


def _read_units(size: int, *, consistent: bool) -> float:
    units = max(1, math.ceil(size / prices.DYNAMODB_READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


def _sqs_chunks(payload_bytes: int) -> int:
    return max(1, math.ceil(payload_bytes / prices.SQS_BILLING_CHUNK_BYTES))


def _message_bytes(message: Mapping[str, Any]) -> int:
    size = len(str(message.get("MessageBody", message.get("Body", ""))).encode())
    for name, attribute in (message.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(str(attribute.get("DataType", "")).encode())
        size += len(str(attribute.get("StringValue", "")).encode())
        size += len(attribute.get("BinaryValue", b""))
    return size


# --- the figures -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Usage:
    """Billable units by action (``"sqs.ReceiveMessage"``...), as AWS would count them."""

    calls: dict[str, int] = field(default_factory=dict)
    sqs_requests: dict[str, int] = field(default_factory=dict)
    write_units: dict[str, float] = field(default_factory=dict)
    read_units: dict[str, float] = field(default_factory=dict)
    max_item_bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=_add(self.calls, other.calls),
            sqs_requests=_add(self.sqs_requests, other.sqs_requests),
            write_units=_add(self.write_units, other.write_units),
            read_units=_add(self.read_units, other.read_units),
            max_item_bytes=max(self.max_item_bytes, other.max_item_bytes),
        )

    @property
    def sqs_billed_requests(self) -> int:
        """SQS requests as billed (64 KiB chunks counted)."""
        return sum(self.sqs_requests.values())

    @property
    def total_write_units(self) -> float:
        """DynamoDB write request units."""
        return sum(self.write_units.values())

    @property
    def total_read_units(self) -> float:
        """DynamoDB read request units."""
        return sum(self.read_units.values())

    def dollars(self) -> dict[str, float]:
        """What these units cost, by line (SQS, DynamoDB writes, DynamoDB reads)."""
        million = 1_000_000
        return {
            "sqs": self.sqs_billed_requests * prices.SQS_STANDARD_PER_MILLION_REQUESTS / million,
            "dynamodb_writes": self.total_write_units
            * prices.DYNAMODB_PER_MILLION_WRITE_UNITS
            / million,
            "dynamodb_reads": self.total_read_units
            * prices.DYNAMODB_PER_MILLION_READ_UNITS
            / million,
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "calls": dict(sorted(self.calls.items())),
            "sqs_billed_requests": dict(sorted(self.sqs_requests.items())),
            "dynamodb_write_units": dict(sorted(self.write_units.items())),
            "dynamodb_read_units": dict(sorted(self.read_units.items())),
            "max_item_bytes": self.max_item_bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        """The inverse of :meth:`to_json` (results written by another process)."""
        return cls(
            calls=dict(data.get("calls", {})),
            sqs_requests=dict(data.get("sqs_billed_requests", {})),
            write_units=dict(data.get("dynamodb_write_units", {})),
            read_units=dict(data.get("dynamodb_read_units", {})),
            max_item_bytes=int(data.get("max_item_bytes", 0)),
        )


def _add(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


# --- the meter ---------------------------------------------------------------------------
class BillingMeter:
    """Bills every call of the boto3 or aiobotocore clients it is attached to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._sqs: Counter[str] = Counter()
        self._writes: defaultdict[str, float] = defaultdict(float)
        self._reads: defaultdict[str, float] = defaultdict(float)
        self._max_item = 0
        self._sizes: dict[str, int] = {}  # last size seen per (table, key)

    def attach(self, client: Any) -> None:
        """Bill every call ``client`` makes from now on."""
        client.meta.events.register("provide-client-params", self._remember_params)
        client.meta.events.register("after-call", self._bill)

    def snapshot(self) -> Usage:
        """The units so far."""
        with self._lock:
            return Usage(
                calls=dict(self._calls),
                sqs_requests=dict(self._sqs),
                write_units=dict(self._writes),
                read_units=dict(self._reads),
                max_item_bytes=self._max_item,
            )

    def reset(self) -> None:
        """Start again from zero (item sizes already seen are kept)."""
        with self._lock:
            for counter in (self._calls, self._sqs, self._writes, self._reads):
                counter.clear()
            self._max_item = 0

    # botocore calls these with keyword arguments; they must return None.
    def _remember_params(
        self, params: Mapping[str, Any] | None = None, context: Any = None, **_: Any
    ) -> None:
        if isinstance(context, dict) and params is not None:
            context[_PARAMS_KEY] = dict(params)

    def _bill(
        self, event_name: str = "", parsed: Any = None, context: Any = None, **_: Any
    ) -> None:
        parts = event_name.split(".")
        if len(parts) < 3:
            return
        service, action = parts[1], parts[2]
        params: Mapping[str, Any] = (
            context.get(_PARAMS_KEY, {}) if isinstance(context, dict) else {}
        )
        answer: Mapping[str, Any] = parsed if isinstance(parsed, Mapping) else {}
        name = f"{service}.{action}"
        with self._lock:
            self._calls[name] += 1
            if service == "sqs":
                self._sqs[name] += self._sqs_units(action, params, answer)
            elif service == "dynamodb":
                self._bill_dynamodb(name, action, params, answer)

    # --- SQS ---
    @staticmethod
    def _sqs_units(action: str, params: Mapping[str, Any], answer: Mapping[str, Any]) -> int:
        if action not in _SQS_PAYLOAD_ACTIONS:
            return 1
        if action == "SendMessage":
            return _sqs_chunks(_message_bytes(params))
        if action == "SendMessageBatch":
            return _sqs_chunks(sum(_message_bytes(e) for e in params.get("Entries", [])))
        return _sqs_chunks(sum(_message_bytes(m) for m in answer.get("Messages", [])))

    # --- DynamoDB ---
    def _bill_dynamodb(
        self, name: str, action: str, params: Mapping[str, Any], answer: Mapping[str, Any]
    ) -> None:
        error = str(answer.get("Error", {}).get("Code", "")) if "Error" in answer else ""
        if action in _WRITE_ACTIONS:
            if error == _CONDITION_FAILED:
                old = answer.get("Item")
                size = item_size(old) if old else self._sizes.get(_key_of(params), 0)
                self._writes[name] += _write_units(size)
            elif not error:
                self._writes[name] += self._write(action, params, answer)
        elif action == "BatchExecuteStatement":
            self._writes[name] += self._statements(params, answer)
        elif action in _READ_ACTIONS and not error:
            self._reads[name] += self._read(action, params, answer)

    def _statements(self, params: Mapping[str, Any], answer: Mapping[str, Any]) -> float:
        """PartiQL UPDATEs, each billed as its own write (Dispatch sends no SELECT in a batch)."""
        units = 0.0
        for request, response in zip(
            params.get("Statements", []), answer.get("Responses", []), strict=False
        ):
            text, values = str(request.get("Statement", "")), list(request.get("Parameters", []))
            table = text.split('"')[1] if text.count('"') >= 2 else ""
            before_key = text.split('"pk"=?', 1)[0]
            if '"pk"=?' not in text or before_key.count("?") >= len(values):
                continue
            key = _key(table, {"pk": values[before_key.count("?")]})
            error = response.get("Error")
            if error:
                if error.get("Code") == "ConditionalCheckFailed":
                    old = error.get("Item")
                    units += _write_units(item_size(old) if old else self._sizes.get(key, 0))
                continue
            # An UPDATE replaces what it sets: the item after it is at most the item
            # before plus the values set under their names (an upper bound, so a cost
            # estimate never comes out low).
            names = [part.split('"')[1] for part in text.split("SET ")[1:]]
            grown = sum(
                len(n.encode()) + _value_size(v) for n, v in zip(names, values, strict=False)
            )
            old_size = self._sizes.get(key, 0)
            units += _write_units(old_size + grown)
        return units

    def _write(self, action: str, params: Mapping[str, Any], answer: Mapping[str, Any]) -> float:
        table = str(params.get("TableName", ""))
        if action == "PutItem":
            return self._put(table, params.get("Item", {}))
        if action == "UpdateItem":
            return self._update(params, answer)
        if action == "DeleteItem":
            return self._delete(table, params.get("Key", {}))
        if action == "BatchWriteItem":
            return self._batch_write(params, answer)
        units = 0.0  # TransactWriteItems: twice each item's units
        for entry in params.get("TransactItems", []):
            for kind, request in entry.items():
                table = str(request.get("TableName", ""))
                if kind == "Put":
                    units += 2 * self._put(table, request.get("Item", {}))
                elif kind == "Delete":
                    units += 2 * self._delete(table, request.get("Key", {}))
                else:  # Update, ConditionCheck: sized from what is known of the item
                    key = _key(table, request.get("Key", {}))
                    units += 2 * _write_units(self._sizes.get(key, item_size(request["Key"])))
        return units

    def _put(self, table: str, item: Mapping[str, Any]) -> int:
        key = _key(table, _hash_key(item))
        new = item_size(item)
        old = self._sizes.get(key, 0)
        self._sizes[key] = new
        self._max_item = max(self._max_item, new)
        return _write_units(max(old, new))

    def _delete(self, table: str, key_attributes: Mapping[str, Any]) -> int:
        old = self._sizes.pop(_key(table, key_attributes), 0)
        return _write_units(old)

    def _update(self, params: Mapping[str, Any], answer: Mapping[str, Any]) -> int:
        key = _key_of(params)
        old = self._sizes.get(key)
        returned = answer.get("Attributes")
        if returned and params.get("ReturnValues") == "ALL_NEW":
            new = item_size(returned)
        elif old is not None:
            new = old
        else:
            values = params.get("ExpressionAttributeValues", {})
            new = item_size(params.get("Key", {})) + sum(
                len(k.encode()) + _value_size(v) for k, v in values.items()
            )
        self._sizes[key] = new
        self._max_item = max(self._max_item, new)
        return _write_units(max(old or 0, new))

    def _batch_write(self, params: Mapping[str, Any], answer: Mapping[str, Any]) -> float:
        units = 0.0
        unprocessed = answer.get("UnprocessedItems", {})
        for table, requests in params.get("RequestItems", {}).items():
            skipped = {_canonical(r) for r in unprocessed.get(table, [])}
            for request in requests:
                if _canonical(request) in skipped:
                    continue
                if "PutRequest" in request:
                    units += self._put(table, request["PutRequest"]["Item"])
                elif "DeleteRequest" in request:
                    units += self._delete(table, request["DeleteRequest"]["Key"])
        return units

    def _read(self, action: str, params: Mapping[str, Any], answer: Mapping[str, Any]) -> float:
        consistent = bool(params.get("ConsistentRead", False))
        if action == "GetItem":
            return _read_units(item_size(answer.get("Item") or {}), consistent=consistent)
        if action == "BatchGetItem":
            units = 0.0
            for table, items in answer.get("Responses", {}).items():
                strong = bool(params.get("RequestItems", {}).get(table, {}).get("ConsistentRead"))
                units += sum(_read_units(item_size(i), consistent=strong) for i in items)
            return units
        if action == "TransactGetItems":
            items = [r.get("Item") or {} for r in answer.get("Responses", [])]
            return sum(2 * _read_units(item_size(i), consistent=True) for i in items)
        total = sum(item_size(i) for i in answer.get("Items", []))  # Query, Scan
        return _read_units(total, consistent=consistent)


def _hash_key(item: Mapping[str, Any]) -> dict[str, Any]:
    # Dispatch's table has one string hash key, "pk"; any other table is keyed by its whole item.
    return {"pk": item["pk"]} if "pk" in item else dict(item)


def _key(table: str, key_attributes: Mapping[str, Any]) -> str:
    return f"{table}\0{_canonical(key_attributes)}"


def _key_of(params: Mapping[str, Any]) -> str:
    return _key(str(params.get("TableName", "")), params.get("Key", {}))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def merge(usages: Iterable[Usage]) -> Usage:
    """The sum of several usages."""
    total = Usage()
    for usage in usages:
        total = total + usage
    return total
