"""The argument rules at enqueue: a task gets back exactly what it was enqueued with.

Arguments travel as JSON and may be read by a handler, a dead-letter tool or a
producer in another language, so ``Message.build`` refuses, naming the argument
and the place inside it, whatever would not come back equal: values that are not
JSON, NaN and infinity, integers beyond 64 bits, dict keys that are not strings,
strings with lone surrogates, nesting beyond ``ARGUMENT_MAX_DEPTH``. Every
producer entry point (``message``, ``with_options(...)``, a batch item) goes
through the same check; nothing here touches AWS.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core.envelope import ARGUMENT_MAX_DEPTH, Message, MessageOptions, decode
from dispatch.core.errors import DispatchError, EnqueueError, InvalidArgumentsError
from dispatch.tasks.registry import Registry, TaskSpec, task

NOW = 1_767_225_600.125
PROPERTY = settings(max_examples=200, deadline=None)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def anything_spec() -> TaskSpec:
    """A task that accepts any arguments: ``anything(*args, **kwargs)``."""

    def anything(*args: Any, **kwargs: Any) -> None:
        """Accept whatever is passed."""

    return task(registry=Registry())(anything).spec


ANYTHING = anything_spec()


def build(*args: Any, **kwargs: Any) -> Message:
    """Message.build for the take-anything task at the fixed test time."""
    return Message.build(ANYTHING, args, kwargs, MessageOptions(), now=NOW)


def nested(depth: int, *, leaf: Any = None, as_dict: bool = False) -> Any:
    """``depth`` lists (or dicts under key "k") inside one another, ``leaf`` innermost."""
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


def refusal(*args: Any, **kwargs: Any) -> str:
    """The InvalidArgumentsError message building these arguments gives."""
    with pytest.raises(InvalidArgumentsError) as caught:
        build(*args, **kwargs)
    assert caught.value.task == "anything"
    return str(caught.value)


# --- one rule at a time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named", "rule"),
    [
        ({"n": 2**63}, "argument 'n'", "outside the signed 64-bit range"),
        ({"n": INT64_MIN - 1}, "argument 'n'", "outside the signed 64-bit range"),
        ({"n": [1, {"big": 10**30}]}, "argument 'n' at [1]['big']", "64-bit"),
        ({"d": {1: "a"}}, "argument 'd'", "has the key 1, not a string"),
        ({"d": {"x": {None: 1}}}, "argument 'd' at ['x']", "has the key None"),
        ({"d": {True: 1}}, "argument 'd'", "use string keys"),
        ({"d": {(1, 2): 1}}, "argument 'd'", "has the key (1, 2)"),
        ({"s": "ok\ud800"}, "argument 's'", "lone surrogate, U+D800 at position 2"),
        ({"s": ["a", "\udfff"]}, "argument 's' at [1]", "not valid Unicode"),
        ({"d": {"\udbff": 1}}, "argument 'd'", "has a key that is not valid Unicode"),
        ({"f": math.nan}, "argument 'f'", "nan: JSON has no NaN or infinity"),
        ({"f": [0.5, -math.inf]}, "argument 'f' at [1]", "-inf"),
        ({"o": {"when": {1, 2}}}, "argument 'o' at ['when']", "not JSON-serialisable (a set)"),
        ({"o": b"bytes"}, "argument 'o'", "not JSON-serialisable (a bytes)"),
    ],
    ids=[
        "2**63",
        "-2**63-1",
        "big-int-inside",
        "int-key",
        "none-key-inside",
        "bool-key",
        "tuple-key",
        "surrogate",
        "surrogate-inside",
        "surrogate-key",
        "nan",
        "-inf-inside",
        "set-inside",
        "bytes",
    ],
)
def test_a_value_that_would_not_come_back_equal_is_refused_naming_where(
    kwargs: dict[str, Any], named: str, rule: str
) -> None:
    """Given an argument holding something JSON would drop, change or fail on (an integer
    other languages cannot hold, a key JSON would turn into a string, a lone surrogate,
    NaN, a set), when a message is built, then InvalidArgumentsError names the argument,
    the place inside it and the rule."""
    message = refusal(**kwargs)

    assert f"{named} " in message
    assert rule in message


def test_a_positional_argument_is_named_by_its_position() -> None:
    """Given a bad value in the third positional argument, when built, then the error
    names positional argument 2 and the index inside it."""
    message = refusal("a", 1, [None, 2**64])

    assert "positional argument 2 at [1] is an integer outside" in message


def test_the_int64_bounds_and_booleans_are_accepted() -> None:
    """Given the smallest and largest 64-bit integers and booleans (a bool is no integer
    here), when built, then the message carries them unchanged."""
    message = build(INT64_MIN, INT64_MAX, flag=True)

    assert decode(message.body).args == (INT64_MIN, INT64_MAX)
    assert decode(message.body).kwargs == {"flag": True}


@pytest.mark.parametrize("as_dict", [False, True], ids=["lists", "dicts"])
def test_nesting_up_to_the_limit_is_accepted_and_one_level_more_is_refused(as_dict: bool) -> None:
    """Given lists (or dicts) nested exactly ARGUMENT_MAX_DEPTH deep, when built, then the
    message is made and decodes to the same value; one level more is refused."""
    deepest = nested(ARGUMENT_MAX_DEPTH, leaf=1, as_dict=as_dict)

    assert decode(build(deepest).body).args == (deepest,)
    message = refusal(nested(ARGUMENT_MAX_DEPTH + 1, leaf=1, as_dict=as_dict))
    assert f"nested more than {ARGUMENT_MAX_DEPTH} lists or dicts deep" in message


def test_arguments_nested_ten_thousand_deep_are_refused_not_a_recursion_error() -> None:
    """Given an argument nested 10,000 lists deep (json.dumps would raise RecursionError),
    when built, then it is an InvalidArgumentsError naming the argument, its path shortened
    to stay readable."""
    message = refusal(deep=nested(10_000))

    assert message.startswith("task 'anything': argument 'deep' at [0][0][0][0]...(")
    assert len(message) < 400


def test_a_list_that_contains_itself_is_refused() -> None:
    """Given a list that contains itself, when built, then it is refused as too deep (or
    containing itself) instead of looping."""
    loop: list[Any] = []
    loop.append(loop)

    assert "(or contains itself)" in refusal(loop)


def test_a_keyword_name_with_a_lone_surrogate_is_refused() -> None:
    """Given keyword arguments from parsed JSON (the CLI) whose name holds a lone surrogate,
    when built for a handler taking **kwargs, then the name is refused."""
    with pytest.raises(InvalidArgumentsError, match="keyword argument name"):
        Message.build(ANYTHING, (), {"\ud800": 1}, MessageOptions(), now=NOW)


def test_subclasses_and_tuples_travel_as_their_json_kind() -> None:
    """Given a str enum, an int enum and a tuple (JSON has a kind for each), when built, then
    they are accepted and the handler gets a plain str, int and list, as documented."""

    class Colour(enum.StrEnum):
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    message = build(Colour.RED, Size.BIG, (1, 2))

    assert decode(message.body).args == ("red", 3, [1, 2])


# --- every producer entry point ----------------------------------------------------------


def test_every_way_of_building_a_message_applies_the_rules() -> None:
    """Given a task and a batch task, when a message is built with task.message(...),
    with_options(...).message(...) or a batch item, then each refuses a bad value with
    InvalidArgumentsError and a bad idempotency key or group with EnqueueError naming the
    option: a DispatchError, never a raw RecursionError or UnicodeEncodeError."""
    registry = Registry()

    @task(registry=registry)
    def ship(order: dict[str, Any]) -> None: ...

    @task(registry=registry, batch_size=10)
    def index(items: list[Any]) -> None: ...

    with pytest.raises(InvalidArgumentsError, match=r"argument 'order' at \['n'\]"):
        ship.message(order={"n": 2**64})
    with pytest.raises(InvalidArgumentsError, match="nested more than"):
        ship.with_options(delay_s=5).message(order=nested(10_000, as_dict=True))
    with pytest.raises(InvalidArgumentsError, match="positional argument 0 has the key 7"):
        index.message({7: "x"})
    with pytest.raises(EnqueueError, match=r"idempotency_key=.*not valid Unicode"):
        ship.message(order={}, idempotency_key="\ud800")  # type: ignore[call-arg]
    with pytest.raises(EnqueueError, match="idempotency_key="):
        ship.with_options(idempotency_key="\ud800")
    with pytest.raises(EnqueueError, match=r"group=.*letters, digits and punctuation"):
        index.message({}, group="customer 7")
    assert issubclass(EnqueueError, DispatchError)


# --- properties --------------------------------------------------------------------------

# Any text but lone surrogates: noncharacters, controls and astral characters included.
unicode_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
valid_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | unicode_text
)
valid_values = st.recursive(
    valid_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4)
    ),
    max_leaves=16,
)


def only_sqs_characters(text: str) -> bool:
    """True when every character is one SQS accepts in a message body (its documented
    ranges: tab, newline, carriage return, U+0020-U+D7FF, U+E000-U+FFFD, astral)."""
    return all(
        ch in "\t\n\r"
        or "\x20" <= ch <= "\ud7ff"
        or "\ue000" <= ch <= "\ufffd"
        or ch >= "\U00010000"
        for ch in text
    )


@PROPERTY
@given(
    args=st.lists(valid_values, max_size=4),
    kwargs=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), valid_values, max_size=4),
)
def test_any_value_within_the_rules_is_accepted_and_comes_back_equal(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Given any arguments within the rules (any text without lone surrogates, 64-bit
    integers, finite floats, string keys), when a message is built, then it is accepted,
    its body holds only characters SQS accepts, and the handler would get back exactly the
    values passed, of the same types."""
    message = build(*args, **kwargs)

    assert only_sqs_characters(message.body)
    decoded = decode(message.body)
    assert repr(decoded.args) == repr(tuple(args))
    assert repr(decoded.kwargs) == repr(kwargs)


bad_leaves = st.sampled_from(
    [
        2**63,
        INT64_MIN - 1,
        10**40,
        math.nan,
        math.inf,
        "\ud800",
        "text\udfff",
        {1: "int key"},
        {None: "none key"},
        {"\udc80": "surrogate key"},
        {1, 2},
        b"bytes",
        object(),
    ]
)
steps = st.lists(st.one_of(st.integers(0, 3), st.from_regex(r"[a-z]{1,5}", fullmatch=True)))


@PROPERTY
@given(leaf=bad_leaves, path=steps.filter(lambda p: len(p) <= 8), siblings=valid_scalars)
def test_a_bad_value_anywhere_is_refused_naming_its_path(
    leaf: Any, path: list[int | str], siblings: Any
) -> None:
    """Given one bad value planted at any path inside an otherwise valid argument (the
    other places filled with valid values), when built, then InvalidArgumentsError names
    the argument and that exact path."""
    value = leaf
    for step in reversed(path):
        if isinstance(step, int):
            value = [siblings] * step + [value] + [siblings]
        else:
            value = {"_other": siblings, step: value}

    message = refusal(payload=value)

    where = "".join(f"[{step!r}]" for step in path)
    expected = f"argument 'payload' at {where} " if path else "argument 'payload' "
    assert expected in message


def test_a_wide_argument_is_accepted_whole() -> None:
    """Given a list of 100,000 small integers (a wide argument, well under the size limit),
    when built, then it is accepted and carried whole."""
    numbers = list(range(100_000))

    message = build(numbers)

    assert json.loads(message.body)["args"] == [numbers]
