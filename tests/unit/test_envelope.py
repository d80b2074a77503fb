"""The message envelope: building a message, the wire format, decoding and resolving it.

Every message is built with an explicit ``now`` so ids, times and ``eta`` are
deterministic where they can be; no clock, no network.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core import constants as c
from dispatch.core.envelope import Envelope, Message, MessageOptions, decode
from dispatch.core.errors import (
    EnqueueError,
    EnvelopeError,
    InvalidArgumentsError,
    PayloadTooLargeError,
)
from dispatch.store import state
from dispatch.tasks.registry import Registry, TaskSpec, resolve, task

NOW = 1_767_225_600.125
ID = "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa"  # the id of body()
PROPERTY = settings(max_examples=200, deadline=None)

NO_OPTIONS = MessageOptions()
MISSING: Any = object()  # body(field=MISSING) leaves the field out


def charge_spec() -> TaskSpec:
    """A task ``charge(order_id: str, amount_cents: int = 0)`` in a fresh registry."""

    def charge(order_id: str, amount_cents: int = 0) -> None:
        """Charge an order."""

    return task(registry=Registry())(charge).spec


def refund_spec() -> TaskSpec:
    """A task ``refund(order_id: str)`` in a fresh registry."""

    def refund(order_id: str) -> None:
        """Refund an order."""

    return task(registry=Registry())(refund).spec


def registry_of(*specs: TaskSpec) -> Registry:
    """A fresh registry holding exactly ``specs``."""
    registry = Registry()
    for spec in specs:
        registry.register(spec)
    return registry


def anything_spec() -> TaskSpec:
    """A task that accepts any arguments: ``anything(*args, **kwargs)``."""

    def anything(*args: Any, **kwargs: Any) -> None:
        """Accept whatever is passed."""

    return task(registry=Registry())(anything).spec


def build(
    spec: TaskSpec,
    *args: Any,
    options: MessageOptions = NO_OPTIONS,
    **kwargs: Any,
) -> Message:
    """Message.build at the fixed test time."""
    return Message.build(spec, args, kwargs, options, now=NOW)


def body(**fields: Any) -> str:
    """A hand-written message body: a valid envelope with ``fields`` replaced."""
    data: dict[str, Any] = {
        "v": 1,
        "id": "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa",
        "task": "charge",
        "args": [],
        "kwargs": {"order_id": "42"},
        "enqueued_at": NOW,
    }
    data.update(fields)
    return json.dumps({key: value for key, value in data.items() if value is not MISSING})


# --- Message.build: arguments ------------------------------------------------------


def test_build_binds_arguments_and_writes_the_documented_body() -> None:
    """Given arguments that fit the handler, when a message is built, then its body is the
    compact version-1 envelope carrying those arguments and the enqueue time."""
    message = build(charge_spec(), "42", amount_cents=500)

    data = json.loads(message.body)
    assert data == {
        "v": 1,
        "id": message.task_id,
        "task": "charge",
        "args": ["42"],
        "kwargs": {"amount_cents": 500},
        "enqueued_at": NOW,
    }
    assert " " not in message.body, "the body is compact JSON"
    assert message.size_bytes == len(message.body.encode("utf-8"))
    assert message.delay_s == 0.0


def test_build_refuses_a_missing_argument_naming_it() -> None:
    """Given a call without a required parameter, when a message is built, then
    InvalidArgumentsError names the missing parameter and the task."""
    with pytest.raises(InvalidArgumentsError) as caught:
        build(charge_spec(), amount_cents=5)

    assert "order_id" in str(caught.value)
    assert "missing" in str(caught.value)
    assert caught.value.task == "charge"


def test_build_refuses_an_unexpected_keyword_naming_it() -> None:
    """Given a keyword the handler does not take, when a message is built, then
    InvalidArgumentsError names that keyword and shows the signature."""
    with pytest.raises(InvalidArgumentsError) as caught:
        build(charge_spec(), "42", colour="red")

    message = str(caught.value)
    assert "colour" in message
    assert "charge(order_id" in message, "the message shows the handler's signature"


def test_build_refuses_too_many_positional_arguments() -> None:
    """Given three positional arguments for a two-parameter handler, when a message is
    built, then InvalidArgumentsError says there are too many."""
    with pytest.raises(InvalidArgumentsError, match="too many positional arguments"):
        build(charge_spec(), "42", 500, "extra")


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (("42",), {"amount_cents": dt.date(2026, 1, 1)}, "argument 'amount_cents'"),
        (("42", {1, 2}), {}, "positional argument 1"),
        ((object(),), {}, "positional argument 0"),
        (("42",), {"amount_cents": math.nan}, "argument 'amount_cents'"),
        (("42",), {"amount_cents": math.inf}, "argument 'amount_cents'"),
        ((b"42",), {}, "positional argument 0"),
    ],
    ids=["date", "set", "object", "nan", "inf", "bytes"],
)
def test_build_refuses_non_json_values_naming_the_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    """Given an argument value JSON cannot carry, when a message is built, then
    InvalidArgumentsError names that argument (by position or by keyword)."""
    with pytest.raises(InvalidArgumentsError) as caught:
        build(charge_spec(), *args, **kwargs)

    assert named in str(caught.value)
    assert "JSON" in str(caught.value)


def test_build_refuses_a_lone_surrogate_string_naming_the_argument() -> None:
    """Given a string holding a lone UTF-16 surrogate (valid for json.dumps, not
    encodable as UTF-8 and so not sendable to SQS), when a message is built, then it is
    refused with InvalidArgumentsError naming the argument, not a raw UnicodeEncodeError."""
    with pytest.raises(InvalidArgumentsError) as caught:
        build(charge_spec(), "\ud800")

    assert "positional argument 0" in str(caught.value)


# --- Message.build: size ----------------------------------------------------------------


def test_build_accepts_a_body_of_exactly_the_limit_and_refuses_one_byte_more() -> None:
    """Given a body padded to exactly MAX_ENVELOPE_BYTES, when built, then it is accepted;
    one byte more and PayloadTooLargeError reports the size and the limit."""
    spec = anything_spec()
    overhead = build(spec, "").size_bytes
    fits = build(spec, "x" * (c.MAX_ENVELOPE_BYTES - overhead))
    assert fits.size_bytes == c.MAX_ENVELOPE_BYTES

    with pytest.raises(PayloadTooLargeError) as caught:
        build(spec, "x" * (c.MAX_ENVELOPE_BYTES - overhead + 1))

    error = caught.value
    assert error.size_bytes == c.MAX_ENVELOPE_BYTES + 1
    assert error.limit_bytes == c.MAX_ENVELOPE_BYTES
    assert str(c.MAX_ENVELOPE_BYTES + 1) in str(error)
    assert str(c.MAX_ENVELOPE_BYTES) in str(error)
    assert error.task == "anything"


def test_build_counts_size_in_utf8_bytes_not_characters() -> None:
    """Given a body of two-byte characters under the limit in characters but over it in
    bytes, when built, then PayloadTooLargeError is raised (SQS counts bytes)."""
    spec = anything_spec()
    overhead = build(spec, "").size_bytes
    characters = c.MAX_ENVELOPE_BYTES - overhead  # fits if counted in characters

    with pytest.raises(PayloadTooLargeError) as caught:
        build(spec, "é" * characters)

    assert caught.value.size_bytes == overhead + 2 * characters


# --- Message.build: ids -----------------------------------------------------------------


def test_idempotency_key_gives_the_same_id_for_the_same_task_and_key() -> None:
    """Given two messages for one task with one idempotency key, when built (even with
    other arguments and at other times), then both get the same uuid5 task id."""
    spec = charge_spec()
    key = MessageOptions(idempotency_key="order-42")
    first = Message.build(spec, ["42"], {}, key, now=NOW)
    second = Message.build(spec, ["43"], {"amount_cents": 1}, key, now=NOW + 60)

    assert first.task_id == second.task_id
    assert uuid.UUID(hex=first.task_id).version == 5
    assert json.loads(first.body)["idempotency_key"] == "order-42"


def test_idempotency_key_ids_differ_by_key_and_by_task() -> None:
    """Given a different key, or the same key on another task, when built, then the
    task ids differ."""
    charge, refund = charge_spec(), refund_spec()
    key_a, key_b = MessageOptions(idempotency_key="a"), MessageOptions(idempotency_key="b")

    ids = {
        build(charge, "1", options=key_a).task_id,
        build(charge, "1", options=key_b).task_id,
        build(refund, "1", options=key_a).task_id,
    }
    assert len(ids) == 3


def test_without_idempotency_key_every_message_gets_a_new_random_id() -> None:
    """Given no idempotency key, when the same call is built twice, then the ids differ
    and are 32-hex-digit random (version 4) UUIDs."""
    spec = charge_spec()
    first, second = build(spec, "42"), build(spec, "42")

    assert first.task_id != second.task_id
    assert uuid.UUID(hex=first.task_id).version == 4
    assert len(first.task_id) == 32


# --- Message.build: delays ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_s", "eta", "sqs_delay"),
    [
        (None, None, 0),
        (0, None, 0),
        (0.2, None, 1),
        (60, None, 60),
        (900, None, 900),
        (900.5, round(NOW + 900.5, 3), 900),
        (3_600, round(NOW + 3_600, 3), 900),
    ],
)
def test_delay_over_900_s_sets_eta_and_sqs_delay_caps_at_900(
    delay_s: float | None, eta: float | None, sqs_delay: int
) -> None:
    """Given a delay, when built, then ``eta`` appears only for delays over 900 s (as
    enqueue time + delay) and DelaySeconds is the delay rounded up, capped at 900."""
    message = build(charge_spec(), "42", options=MessageOptions(delay_s=delay_s))

    assert message.envelope.eta == eta
    assert ("eta" in json.loads(message.body)) is (eta is not None)
    assert message.sqs_delay_seconds() == sqs_delay


def test_group_is_carried_in_the_body() -> None:
    """Given a FIFO group option, when built, then the body carries ``group``."""
    message = build(charge_spec(), "42", options=MessageOptions(group="customer-7"))

    assert json.loads(message.body)["group"] == "customer-7"
    assert message.envelope.group == "customer-7"


# --- MessageOptions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"delay_s": -1},
        {"delay_s": math.inf},
        {"delay_s": math.nan},
        {"delay_s": True},
        {"delay_s": "60"},
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 257},
        {"idempotency_key": 42},
        {"group": ""},
        {"group": "g" * 129},
        {"group": 7},
        {"group": "customer 7"},
        {"idempotency_key": "order-\ud800"},
        {"group": "\udfff"},
    ],
    ids=repr,
)
def test_message_options_refuse_bad_values_naming_the_option(options: dict[str, Any]) -> None:
    """Given an out-of-range or wrongly typed option, or a key or group that could not be
    stored or sent (a lone surrogate, a space SQS refuses in a MessageGroupId), when
    MessageOptions is made, then EnqueueError names the option."""
    (name,) = options
    with pytest.raises(EnqueueError, match=name):
        MessageOptions(**options)


def test_message_options_accept_the_boundaries() -> None:
    """Given the largest keys and a zero delay, when MessageOptions is made, then it is
    accepted unchanged."""
    options = MessageOptions(delay_s=0, idempotency_key="k" * 256, group="g" * 128)

    assert options.delay_s == 0
    assert len(options.idempotency_key or "") == 256
    assert len(options.group or "") == 128


def test_message_options_from_kwargs_ignores_other_keywords() -> None:
    """Given a mapping with options and unrelated keys, when from_kwargs reads it, then
    only the three options are taken."""
    options = MessageOptions.from_kwargs({"delay_s": 5, "group": "g", "order_id": "42"})

    assert options == MessageOptions(delay_s=5, group="g")


# --- to_json / decode ------------------------------------------------------------------------


def test_to_json_then_decode_gives_back_the_envelope() -> None:
    """Given an envelope with every optional field set, when encoded and decoded, then
    the same envelope comes back."""
    envelope = Envelope(
        id="abc",
        task="charge",
        args=("42", [1, 2]),
        kwargs={"amount_cents": 500, "note": "ünïcode ✓"},
        enqueued_at=NOW,
        eta=NOW + 3_600,
        idempotency_key="order-42",
        group="customer-7",
    )

    assert decode(envelope.to_json()) == envelope


def test_decode_fills_the_documented_defaults() -> None:
    """Given a minimal body (only v, id and task), when decoded, then args/kwargs are
    empty, enqueued_at is 0 and the optional fields are None."""
    envelope = decode('{"v":1,"id":"abc","task":"ping"}')

    assert envelope == Envelope(id="abc", task="ping", args=(), kwargs={}, enqueued_at=0.0)


ANYTHING = anything_spec()

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@PROPERTY
@given(
    args=st.lists(json_values, max_size=5),
    kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
def test_any_json_arguments_survive_to_json_and_decode(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Given any JSON-able args and kwargs, when an envelope is encoded and decoded, then
    the arguments come back equal and of the same types (1.0 stays a float, True a bool)."""
    envelope = Envelope(id="abc", task="t", args=tuple(args), kwargs=kwargs, enqueued_at=NOW)

    decoded = decode(envelope.to_json())

    assert decoded == envelope
    assert repr(decoded.args) == repr(tuple(args))
    assert repr(decoded.kwargs) == repr(kwargs)


@PROPERTY
@given(
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), json_values, max_size=4),
)
def test_any_json_arguments_survive_message_build_and_decode(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Given any JSON-able arguments for a handler that takes anything, when a message is
    built and its body decoded, then the decoded envelope is the message's envelope."""
    message = Message.build(ANYTHING, args, kwargs, NO_OPTIONS, now=NOW)

    assert decode(message.body) == message.envelope


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json at all", "not JSON"),
        ("[" * 100_000, "not JSON"),
        ("[1, 2]", "not an object (got list)"),
        ('"text"', "not an object (got str)"),
        (body(v=MISSING), "missing 'v'"),
        (body(v=2), "version 2 is not supported"),
        (body(v="1"), "version '1' is not supported"),
        (body(id=MISSING), "'id' must be a string of 1 to 128 characters"),
        (body(id=""), "'id' must be a string of 1 to 128 characters"),
        (body(id=42), "'id' must be a string of 1 to 128 characters"),
        (body(id="x" * 129), "'id' must be a string of 1 to 128 characters"),
        (body(task=MISSING), "'task' must be a string of 1 to 128 characters"),
        (body(task=["charge"]), "'task' must be a string of 1 to 128 characters"),
        (body(task="t" * 129), "'task' must be a string of 1 to 128 characters"),
        (body(args={"order_id": "42"}), "'args' must be a list"),
        (body(kwargs=["42"]), "'kwargs' must be an object"),
        (body(enqueued_at="yesterday"), "'enqueued_at' must be a number"),
        (body(enqueued_at=True), "'enqueued_at' must be a number"),
        (body(eta="later"), "'eta' must be a number"),
        (body(idempotency_key=42), "'idempotency_key' must be a string of 1 to 256"),
        (body(idempotency_key="k" * 257), "'idempotency_key' must be a string of 1 to 256"),
        (body(group=["g"]), "'group' must be a string of 1 to 128"),
        (body(group="customer 7"), "'group' may hold only ASCII letters, digits and punct"),
        (body(group="kundé"), "'group' may hold only ASCII letters, digits and punct"),
        (body(enqueued_at=10**400), "'enqueued_at' must be a number"),
        (body(eta=-(10**400)), "'eta' must be a number"),
        (body(colour="red"), "unknown field(s) 'colour'"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_decode_refuses_a_malformed_body_naming_the_problem(raw: str, reason: str) -> None:
    """Given a body that is not a valid version-1 envelope, when decoded, then
    EnvelopeError's reason names what is wrong."""
    with pytest.raises(EnvelopeError) as caught:
        decode(raw)

    assert reason in caught.value.reason
    assert caught.value.reason == str(caught.value)


def test_decode_refuses_a_boolean_version() -> None:
    """Given ``"v": true`` (a JSON boolean, not the number 1 the format requires), when
    decoded, then it is refused as an unsupported version."""
    with pytest.raises(EnvelopeError, match="version"):
        decode(body(v=True))


def test_decode_lists_every_problem_and_keeps_the_readable_id_and_task() -> None:
    """Given a body with several problems but a readable id and task, when decoded, then
    one EnvelopeError lists all problems and carries the id and task name."""
    with pytest.raises(EnvelopeError) as caught:
        decode(body(args="x", kwargs=1, eta="soon", typo=1))

    error = caught.value
    for problem in ("'args'", "'kwargs'", "'eta'", "'typo'"):
        assert problem in error.reason
    assert error.task_id == "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa"
    assert error.task == "charge"


def test_decode_of_a_wrong_version_still_reports_the_id() -> None:
    """Given a version-2 body, when decoded, then the error carries its id and task, so
    the dispatcher can mark the record."""
    with pytest.raises(EnvelopeError) as caught:
        decode(body(v=2))

    assert caught.value.task_id == "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa"
    assert caught.value.task == "charge"


# --- decode: strings that become keys and attributes, and arguments ---------------------------


@pytest.mark.parametrize(
    ("fields", "problem", "carried_id", "carried_task"),
    [
        (
            {"id": "\ud800-lone"},
            "'id' is not valid Unicode (a lone surrogate, U+D800 at position 0)",
            None,
            "charge",
        ),
        ({"task": "char\udfffge"}, "'task' is not valid Unicode", ID, None),
        ({"idempotency_key": "k\udbff"}, "'idempotency_key' is not valid Unicode", ID, "charge"),
        ({"group": "\ud83d"}, "'group' is not valid Unicode", ID, "charge"),
        ({"id": "x" * 129, "task": "t" * 129}, "'id' must be a string of 1 to 128", None, None),
        ({"v": 2, "id": "\udc00", "task": "charge"}, "version 2 is not supported", None, "charge"),
    ],
    ids=["id", "task", "idempotency_key", "group", "too-long", "wrong-version"],
)
def test_decode_refuses_strings_that_could_not_be_stored_and_carries_only_storable_ones(
    fields: dict[str, Any], problem: str, carried_id: str | None, carried_task: str | None
) -> None:
    """Given a foreign body whose id, task name, idempotency key or group holds a lone
    surrogate (a valid JSON escape, but no DynamoDB key or attribute and no SQS field can
    hold it) or is too long, when decoded, then EnvelopeError names the field, and it
    carries the id and task name only where they could be stored: the dispatcher writes
    the rejection under that id, so an unstorable one must not reach it."""
    with pytest.raises(EnvelopeError) as caught:
        decode(body(**fields))

    assert problem in caught.value.reason
    assert caught.value.task_id == carried_id
    assert caught.value.task == carried_task


def test_the_longest_id_of_the_widest_characters_is_a_valid_dynamodb_key() -> None:
    """Given an id of 128 four-byte characters (the most the id rule allows), when decoded
    and made into its record and marker keys, then each is within DynamoDB's 2,048-byte
    limit for a partition key."""
    widest = "\U0010fffd" * 128

    envelope = decode(body(id=widest))

    for key in (state.task_key(envelope.id), state.marker_key(envelope.id)):
        assert len(key[c.TABLE_HASH_KEY]["S"].encode("utf-8")) <= 2048


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (
            '{"v":1,"id":"a","task":"t","args":["ok","\\ud800"]}',
            "positional argument 1 is not valid Unicode",
        ),
        ('{"v":1,"id":"a","task":"t","kwargs":{"\\udfff":1}}', "keyword argument name '\\udfff'"),
        (
            '{"v":1,"id":"a","task":"t","kwargs":{"n":{"a":["\\udbff"]}}}',
            "argument 'n' at ['a'][0] is not valid Unicode",
        ),
        ('{"v":1,"id":"a","task":"t","args":[NaN]}', "positional argument 0 is nan"),
        ('{"v":1,"id":"a","task":"t","kwargs":{"n":[1,-Infinity]}}', "argument 'n' at [1] is -inf"),
        (
            '{"v":1,"id":"a","task":"t","args":[18446744073709551616]}',
            "outside the signed 64-bit range",
        ),
        (
            '{"v":1,"id":"a","task":"t","args":[' + "[" * 101 + "]" * 101 + "]}",
            "nested more than 100",
        ),
    ],
    ids=["surrogate", "surrogate-keyword", "surrogate-inside", "nan", "-inf", "uint64", "depth"],
)
def test_decode_refuses_arguments_the_producer_would_refuse(raw: str, named: str) -> None:
    """Given a foreign body whose arguments break a rule enqueue enforces (a lone
    surrogate, NaN or infinity, an integer beyond 64 bits, nesting over 100 levels), when
    decoded, then EnvelopeError names the argument and where inside it: one rule on both
    sides of the queue, and the message is dead-lettered as malformed."""
    with pytest.raises(EnvelopeError) as caught:
        decode(raw)

    assert named in caught.value.reason
    assert caught.value.task_id == "a"


def test_to_json_escapes_the_noncharacters_sqs_refuses_in_a_body() -> None:
    """Given arguments holding U+FFFE and U+FFFF (valid Unicode that JSON may carry raw,
    but that SQS refuses in a message body), when encoded, then the body carries them as
    \\u escapes, and decoding gives the same strings back."""
    envelope = Envelope(
        id="a", task="t", args=("a\ufffeb",), kwargs={"k\uffff": "\uffff"}, enqueued_at=NOW
    )

    text = envelope.to_json()

    assert "\ufffe" not in text and "\uffff" not in text
    assert "\\ufffe" in text and "\\uffff" in text
    assert decode(text) == envelope


# --- resolve ---------------------------------------------------------------------------------


def test_resolve_returns_the_spec_when_task_and_arguments_fit() -> None:
    """Given a registered task and arguments that bind, when resolved, then its spec is
    returned."""
    spec = charge_spec()

    assert resolve(decode(body()), registry_of(spec, refund_spec())) is spec


def test_resolve_names_the_known_tasks_for_an_unknown_one() -> None:
    """Given an envelope for a task nobody registered, when resolved, then EnvelopeError
    names the task, the known ones and the DISPATCH_TASKS setting."""
    registry = registry_of(refund_spec(), charge_spec())

    with pytest.raises(EnvelopeError) as caught:
        resolve(decode(body(task="ship")), registry)

    reason = caught.value.reason
    assert "'ship'" in reason
    assert "charge, refund" in reason
    assert c.ENV_TASKS in reason
    assert caught.value.task == "ship"


def test_resolve_with_an_empty_registry_says_none_are_known() -> None:
    """Given an empty registry, when resolved, then the reason says it knows none."""
    with pytest.raises(EnvelopeError, match="knows: none"):
        resolve(decode(body()), Registry())


def test_resolve_refuses_arguments_that_do_not_bind() -> None:
    """Given a known task with arguments its handler does not take, when resolved, then
    EnvelopeError says they do not bind and carries the task id."""
    with pytest.raises(EnvelopeError) as caught:
        resolve(decode(body(kwargs={"order": "42"})), registry_of(charge_spec()))

    assert "do not bind" in caught.value.reason
    assert "order" in caught.value.reason
    assert caught.value.task_id == "0b7c7c1f6f6a4b0f9a52d2c2e1f1c3aa"


def test_seconds_until_due() -> None:
    """Given an envelope with and without eta, when asked how long until due, then it is
    the remaining time, never negative, and 0 without eta."""
    delayed = Envelope(id="a", task="t", eta=NOW + 10)

    assert delayed.seconds_until_due(NOW) == pytest.approx(10)
    assert delayed.seconds_until_due(NOW + 20) == 0.0
    assert Envelope(id="a", task="t").seconds_until_due(NOW) == 0.0
