"""Handler code is hostile input: whatever it returns or raises, its attempt ends in outcomes.

dispatch_workers/runtime.py must answer one Outcome per attempt (one per item of a
batch) of the right kind, made of plain strings and plain JSON that survive the
dispatcher's JSON round trip (a result the task record cannot keep fails its attempt
for good, permanent, with ``ResultNotSerializableError`` or ``ResultTooLargeError``),
however the
handler's values and exceptions behave: dunder methods that raise (``SystemExit``,
``KeyboardInterrupt``, ``CancelledError``, ``RecursionError``...), ``__str__``
returning a non-string, cyclic or hostile exception chains, self-referencing or
deeply nested results, ``BatchFailures`` with hostile contents. Property tests draw
*recipes* (plain data Hypothesis can print) and build the hostile values inside the
test; example tests pin down what each case becomes.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.core import constants as c
from dispatch.core.context import BatchContext, TaskContext
from dispatch.core.errors import Backpressure, BatchFailures, PermanentError, ResultError
from dispatch.core.outcome import ErrorInfo, Outcome, OutcomeKind
from dispatch.core.retry import Retry
from dispatch.tasks.registry import Registry, TaskSpec, task
from dispatch_workers.runtime import error_info, run_attempt, run_batch_attempt
from dispatch_workers.threads import HandlerThreads

CONTEXT = TaskContext(
    task_id="5f0c6a2e8b7d4c1f9e3a2b1c0d9e8f7a",
    task="hostile",
    attempt=1,
    max_attempts=3,
    enqueued_at=1_767_225_600.0,
)
BATCH_SIZE = 3
BATCH = BatchContext.of(
    tuple(
        TaskContext(task_id=f"item-{i}", task="hostile", attempt=1, max_attempts=3, enqueued_at=0.0)
        for i in range(BATCH_SIZE)
    )
)
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,  # one attempt hops to a thread and back: timing is not the property
    suppress_health_check=[HealthCheck.too_slow],
)

# What a hostile dunder raises: everything a handler's code could throw at us.
RAISED: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    RecursionError,
    MemoryError,
    StopIteration,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
    asyncio.CancelledError,
    BaseException,
)


@pytest.fixture(scope="module")
def threads() -> Iterator[HandlerThreads]:
    """The threads sync handlers run on (the handlers here all return at once)."""
    pool = HandlerThreads(4, name_prefix="test-hostile")
    yield pool
    pool.shutdown(wait=True)


# --- building hostile values from recipes ------------------------------------------------


def raising(raised: type[BaseException], what: str) -> Callable[..., Any]:
    """A method that raises ``raised``."""

    def method(*_args: Any, **_kwargs: Any) -> Any:
        raise raised(f"hostile {what}")

    return method


class HostileName(type):
    """A metaclass whose classes cannot say their name."""

    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise SystemExit("hostile __name__")


class HostileText(str):
    """A string whose every method a caller might use raises."""

    __slots__ = ()

    def __len__(self) -> int:
        raise SystemExit("hostile __len__")

    def __hash__(self) -> int:
        raise KeyboardInterrupt("hostile __hash__")

    def __eq__(self, other: object) -> bool:
        raise RecursionError("hostile __eq__")

    def __add__(self, other: str) -> str:
        raise GeneratorExit("hostile __add__")

    def __radd__(self, other: str) -> str:
        raise GeneratorExit("hostile __radd__")

    def __iter__(self) -> Iterator[str]:
        raise asyncio.CancelledError("hostile __iter__")

    def encode(self, *_args: Any, **_kwargs: Any) -> bytes:  # type: ignore[override]
        raise ValueError("hostile encode")

    def split(self, *_args: Any, **_kwargs: Any) -> list[str]:  # type: ignore[override]
        raise ValueError("hostile split")


# (base type, dunder overridden to raise, a sample instance's constructor argument)
HOSTILE_VALUE_SHAPES: list[tuple[type, str]] = [
    (base, dunder)
    for base, dunders in {
        object: ("__repr__", "__str__", "__getattribute__", "__class__", "__eq__", "__hash__"),
        list: ("__len__", "__iter__", "__eq__", "__repr__", "__getitem__", "__class__"),
        tuple: ("__len__", "__iter__", "__eq__", "__repr__", "__getitem__"),
        dict: ("items", "keys", "__iter__", "__len__", "__getitem__", "__repr__", "__eq__"),
        str: ("__str__", "__repr__", "__len__", "__hash__", "__eq__", "encode", "__iter__"),
        int: ("__repr__", "__str__", "__index__", "__int__", "__float__", "__eq__"),
        float: ("__repr__", "__float__", "__eq__", "__hash__"),
    }.items()
    for dunder in dunders
]
SAMPLE_ARGUMENT: dict[type, Any] = {
    list: ([1, "a", None],),
    tuple: ((1, 2, 3),),
    dict: ({"a": 1, "b": [2]},),
    str: ("text",),
    int: (7,),
    float: (1.5,),
    object: (),
}


def hostile_value(base: type, dunder: str, raised: type[BaseException]) -> Any:
    """An instance of a ``base`` subclass whose ``dunder`` raises ``raised``."""
    method = raising(raised, dunder)
    namespace: dict[str, Any] = {"__class__": property(method)} if dunder == "__class__" else {}
    namespace.setdefault(dunder, method)
    cls = type(f"Hostile{base.__name__.title()}", (base,), namespace)
    return cls(*SAMPLE_ARGUMENT[base])


def odd_value(name: str) -> Any:
    """Values JSON cannot carry, or that break json.dumps/repr on their own."""
    if name == "cycle-list":
        cycle: list[Any] = [1]
        cycle.append(cycle)
        return cycle
    if name == "cycle-dict":
        loop: dict[str, Any] = {}
        loop["self"] = loop
        return loop
    if name == "deep":
        deep: list[Any] = []
        for _ in range(100_000):
            deep = [deep]
        return deep
    return {
        "set": {1, 2},
        "bytes": b"\x00\xff",
        "complex": 1 + 2j,
        "nan": float("nan"),
        "inf": [float("-inf")],
        "huge-int": 10**5000,
        "tuple-key": {(1, 2): "x"},
        "surrogate": "lone \ud800 surrogate",
        "surrogate-key": {"\udfff": 1},
        "hostile-text": HostileText("sneaky"),
        "hostile-text-value": {"k": HostileText("v")},
        "function": len,
        "type": HostileName("Anonymous", (), {}),
        "exception": ValueError("returned, not raised"),
        "none": None,
    }[name]


ODD_VALUES = [
    "cycle-list",
    "cycle-dict",
    "deep",
    "set",
    "bytes",
    "complex",
    "nan",
    "inf",
    "huge-int",
    "tuple-key",
    "surrogate",
    "surrogate-key",
    "hostile-text",
    "hostile-text-value",
    "function",
    "type",
    "exception",
    "none",
]

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
LEAF_RECIPES = (
    st.tuples(st.just("json"), JSON_LEAVES)
    | st.tuples(st.just("odd"), st.sampled_from(ODD_VALUES))
    | st.tuples(st.just("hostile"), st.sampled_from(HOSTILE_VALUE_SHAPES), st.sampled_from(RAISED))
)
VALUE_RECIPES = st.recursive(
    LEAF_RECIPES,
    lambda children: (
        st.tuples(st.just("list"), st.lists(children, max_size=4))
        | st.tuples(st.just("tuple"), st.lists(children, max_size=4))
        | st.tuples(st.just("dict"), st.dictionaries(st.text(max_size=5), children, max_size=4))
    ),
    max_leaves=8,
)


def build_value(recipe: Any) -> Any:
    """The (possibly hostile) value a recipe describes."""
    kind = recipe[0]
    if kind == "json":
        return recipe[1]
    if kind == "odd":
        return odd_value(recipe[1])
    if kind == "hostile":
        (base, dunder), raised = recipe[1], recipe[2]
        return hostile_value(base, dunder, raised)
    if kind == "list":
        return [build_value(child) for child in recipe[1]]
    if kind == "tuple":
        return tuple(build_value(child) for child in recipe[1])
    return {key: build_value(child) for key, child in recipe[1].items()}


# Odd values a task record can keep all the same (a lone surrogate becomes "?").
KEPT_ODD_VALUES = frozenset({"none", "surrogate", "surrogate-key"})
UNKEPT = "ResultNotSerializableError"


def keepable(recipe: Any) -> bool:
    """True when the recipe builds plain JSON only: its attempt must succeed."""
    kind = recipe[0]
    if kind == "json":
        return True
    if kind == "odd":
        return recipe[1] in KEPT_ODD_VALUES
    if kind == "hostile":
        return False
    children = recipe[1].values() if kind == "dict" else recipe[1]
    return all(keepable(child) for child in children)


def assert_kept_or_refused(outcome: Outcome, *, must_keep: bool) -> None:
    """The attempt succeeded (always, when ``must_keep``), or failed for good (permanent:
    the handler's work is done, a retry would do it again) because its result cannot be
    kept: never any other way."""
    if must_keep or outcome.kind is OutcomeKind.SUCCEEDED:
        assert outcome.kind is OutcomeKind.SUCCEEDED
        return
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error is not None and outcome.error.type == UNKEPT


# --- building hostile exceptions from recipes --------------------------------------------

EXCEPTION_BASES: tuple[type[BaseException], ...] = (
    Exception,
    ValueError,
    TimeoutError,
    StopIteration,
    PermanentError,
    Backpressure,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
    asyncio.CancelledError,
    BaseException,
)
EXCEPTION_TRAITS = (
    "str-raises",
    "str-not-a-string",
    "str-hostile-text",
    "str-surrogate",
    "str-huge",
    "repr-raises",
    "class-raises",
    "getattribute-raises",
    "name-raises",
    "notes-not-a-list",
    "notes-hostile",
    "retry-after-hostile",
    "retry-after-nan",
)
CHAINS = ("none", "cyclic", "self", "hostile-cause", "hostile-context", "long")
EXCEPTION_RECIPES = st.tuples(
    st.sampled_from(EXCEPTION_BASES),
    st.frozensets(st.sampled_from(EXCEPTION_TRAITS), max_size=4),
    st.sampled_from(RAISED),
    st.sampled_from(CHAINS),
)


def _traits_namespace(traits: frozenset[str], raised: type[BaseException]) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    if "str-raises" in traits:
        namespace["__str__"] = raising(raised, "__str__")
    elif "str-not-a-string" in traits:
        namespace["__str__"] = lambda self: 42
    elif "str-hostile-text" in traits:
        namespace["__str__"] = lambda self: HostileText("hostile message")
    elif "str-surrogate" in traits:
        namespace["__str__"] = lambda self: "bad \udc80 bytes"
    elif "str-huge" in traits:
        namespace["__str__"] = lambda self: "x" * 200_000
    if "repr-raises" in traits:
        namespace["__repr__"] = raising(raised, "__repr__")
    if "class-raises" in traits:
        namespace["__class__"] = property(raising(raised, "__class__"))
    if "getattribute-raises" in traits:
        namespace["__getattribute__"] = raising(raised, "__getattribute__")
    if "notes-hostile" in traits:
        namespace["__notes__"] = property(raising(raised, "__notes__"))
    if "retry-after-hostile" in traits:
        namespace["retry_after_s"] = property(raising(raised, "retry_after_s"))
    return namespace


def build_exception(recipe: Any) -> BaseException:
    """The (possibly hostile) exception a recipe describes, its chain attached."""
    base, traits, raised, chain = recipe
    namespace = _traits_namespace(traits, raised)
    if "retry-after-hostile" in traits and issubclass(base, Backpressure):
        namespace["__init__"] = Exception.__init__  # no retry_after_s to set: it raises
    meta = HostileName if "name-raises" in traits else type
    cls = meta("HandlerError", (base,), namespace)
    exc: BaseException = cls("handler failed")
    if "notes-not-a-list" in traits and "notes-hostile" not in traits:
        BaseException.__setattr__(exc, "__notes__", 5)
    if "retry-after-nan" in traits and "retry-after-hostile" not in traits:
        BaseException.__setattr__(exc, "retry_after_s", float("nan"))
    _chain(exc, chain, raised)
    return exc


def _chain(exc: BaseException, chain: str, raised: type[BaseException]) -> None:
    set_cause = BaseException.__dict__["__cause__"].__set__
    set_context = BaseException.__dict__["__context__"].__set__
    if chain == "cyclic":
        other = ValueError("the other half of a cycle")
        set_cause(exc, other)
        set_cause(other, exc)
    elif chain == "self":
        set_context(exc, exc)
    elif chain in ("hostile-cause", "hostile-context"):
        hostile = type(
            "ChainedError",
            (Exception,),
            {
                "__str__": raising(raised, "__str__"),
                "__notes__": property(raising(raised, "__notes__")),
            },
        )()
        (set_cause if chain == "hostile-cause" else set_context)(exc, hostile)
    elif chain == "long":
        link: BaseException = exc
        for i in range(3_000):
            older = RuntimeError(f"link {i}")
            set_context(link, older)
            link = older


# --- running attempts and checking outcomes ----------------------------------------------


def declare(fn: Callable[..., Any], *, batch: bool = False, retry: Retry | None = None) -> TaskSpec:
    """``fn`` as a task named "hostile" in a fresh registry."""
    if batch:
        return task(name="hostile", batch_size=BATCH_SIZE, registry=Registry(), retry=retry)(
            fn
        ).spec
    return task(name="hostile", registry=Registry(), retry=retry)(fn).spec


def handler(make: Callable[[], Any], *, raises: bool, is_async: bool) -> Callable[..., Any]:
    """A sync or async handler returning (or raising) what ``make`` builds."""

    def sync_handler(items: Any = None) -> Any:
        if raises:
            raise make()
        return make()

    async def async_handler(items: Any = None) -> Any:
        return sync_handler(items)

    return async_handler if is_async else sync_handler


def settle(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an attempt on a fresh event loop; anything escaping it fails the test (named by
    its type only, outside the except block: the escaped exception itself is hostile)."""
    try:
        return asyncio.run(coroutine)
    except BaseException as escaped:  # noqa: BLE001 - the property: nothing escapes an attempt
        name = type.__dict__["__name__"].__get__(type(escaped))
    pytest.fail(f"{name} escaped the attempt")


def caught(recipe: Any) -> BaseException:
    """The recipe's exception, raised and caught (so it carries a traceback); the test
    describes it outside any except block, so a failure report never formats it."""
    try:
        raise build_exception(recipe)
    except BaseException as exc:  # noqa: BLE001 - any of them, on purpose
        return exc


def describe(exc: BaseException) -> ErrorInfo:
    """``error_info(exc)``; anything escaping it fails the test (named by its type only)."""
    try:
        return error_info(exc)
    except BaseException as escaped:  # noqa: BLE001 - the property: nothing escapes
        name = type.__dict__["__name__"].__get__(type(escaped))
    pytest.fail(f"{name} escaped error_info")


def plain_json(value: Any) -> bool:
    """True when ``value`` is made of exact JSON types only (no subclass, no NaN)."""
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is list:
        return all(plain_json(item) for item in value)
    if type(value) is dict:
        return all(type(k) is str and plain_json(v) for k, v in value.items())
    return False


def assert_travels(outcome: Any) -> None:
    """``outcome`` is an Outcome of plain fields that comes back equal from the JSON
    round trip (UTF-8, NaN refused) the dispatcher and the worker Lambda do."""
    assert type(outcome) is Outcome
    assert outcome.kind in OutcomeKind
    assert type(outcome.duration_s) is float
    assert plain_json(outcome.result)
    if outcome.error is not None:
        assert all(
            type(text) is str
            for text in (outcome.error.type, outcome.error.message, outcome.error.traceback)
        )
    assert outcome.retry_after_s is None or type(outcome.retry_after_s) is float
    text = json.dumps(outcome.to_dict(), allow_nan=False, ensure_ascii=False)
    again = Outcome.from_dict(json.loads(text.encode("utf-8")))
    assert again == outcome


# --- properties ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(recipe=VALUE_RECIPES, is_async=st.booleans())
def test_whatever_a_handler_returns_its_attempt_keeps_plain_json_or_fails_cleanly(
    threads: HandlerThreads, recipe: Any, is_async: bool
) -> None:
    """Given a handler returning any value (JSON, not JSON, cyclic, deep, or with dunder
    methods that raise anything), when its attempt runs, then its outcome survives the
    JSON round trip: succeeded (always, for plain JSON), or failed as not serialisable."""
    spec = declare(handler(lambda: build_value(recipe), raises=False, is_async=is_async))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert_travels(outcome)
    assert_kept_or_refused(outcome, must_keep=keepable(recipe))


@PROPERTY_SETTINGS
@given(recipe=EXCEPTION_RECIPES, is_async=st.booleans())
def test_whatever_a_handler_raises_its_attempt_fails_with_a_plain_error(
    threads: HandlerThreads, recipe: Any, is_async: bool
) -> None:
    """Given a handler raising any exception (any BaseException, hostile __str__, __class__,
    __notes__, name or chain), when its attempt runs, then it fails (never succeeds, never
    escapes) with an error of plain strings, and the outcome survives the round trip."""
    spec = declare(handler(lambda: build_exception(recipe), raises=True, is_async=is_async))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert_travels(outcome)
    assert outcome.kind is not OutcomeKind.SUCCEEDED
    assert outcome.error is not None
    base = recipe[0]
    if issubclass(base, PermanentError):
        assert outcome.kind is OutcomeKind.PERMANENT
    if issubclass(base, Backpressure):
        assert outcome.kind is OutcomeKind.BACKPRESSURE


BATCH_FAILURE_KEYS = st.sampled_from(
    [0, 1, 2, 7, -1, "item-0", "item-2", "nobody", "hostile-text", True, 1.5, None]
)


def build_batch_failures(recipe: Any) -> BatchFailures:
    """A BatchFailures whose contents were swapped for what the recipe says."""
    keys, failure_recipes, results_recipe, results_mode = recipe
    failures = BatchFailures({0: ValueError("placeholder")})
    mapping: dict[Any, Any] = {}
    for key, failure in zip(keys, failure_recipes, strict=False):
        named = HostileTextKey("item-1") if key == "hostile-text" else key
        mapping[named] = failure if failure is None else build_exception(failure)
    failures.failures = mapping
    results = build_value(results_recipe)
    if results_mode == "spread":
        results = [results] * BATCH_SIZE
    elif results_mode == "hostile-list":
        results = hostile_value(list, "__iter__", SystemExit)
    failures.results = results
    return failures


BATCH_FAILURES_RECIPES = st.tuples(
    st.lists(BATCH_FAILURE_KEYS, min_size=0, max_size=4),
    st.lists(st.none() | EXCEPTION_RECIPES, min_size=4, max_size=4),
    VALUE_RECIPES,
    st.sampled_from(["none", "spread", "as-is", "hostile-list"]),
)


@PROPERTY_SETTINGS
@given(
    ending=st.tuples(st.just("return"), VALUE_RECIPES)
    | st.tuples(st.just("return-each"), st.lists(VALUE_RECIPES, min_size=3, max_size=3))
    | st.tuples(st.just("raise"), EXCEPTION_RECIPES)
    | st.tuples(st.just("batch-failures"), BATCH_FAILURES_RECIPES),
    is_async=st.booleans(),
)
def test_whatever_a_batch_handler_does_each_item_gets_one_plain_outcome(
    threads: HandlerThreads, ending: Any, is_async: bool
) -> None:
    """Given a batch handler returning any value or list of values, raising any exception,
    or raising a BatchFailures with hostile keys, exceptions and results, when its attempt
    runs, then there is exactly one outcome per item, each surviving the round trip:
    after a return each succeeded (always, for plain JSON) or failed as not serialisable;
    none succeeded after another exception."""
    how, recipe = ending

    def make() -> Any:
        if how == "return":
            return build_value(recipe)
        if how == "return-each":
            return [build_value(item) for item in recipe]
        if how == "raise":
            return build_exception(recipe)
        return build_batch_failures(recipe)

    raises = how in ("raise", "batch-failures")
    spec = declare(handler(make, raises=raises, is_async=is_async), batch=True)

    outcomes = settle(run_batch_attempt(spec, ["a", "b", "c"], context=BATCH, executor=threads))

    assert type(outcomes) is list and len(outcomes) == BATCH_SIZE
    for outcome in outcomes:
        assert_travels(outcome)
    if how.startswith("return"):
        plain = keepable(recipe) if how == "return" else all(keepable(r) for r in recipe)
        for outcome in outcomes:
            assert_kept_or_refused(outcome, must_keep=plain)
    if how == "raise":
        assert all(o.kind is not OutcomeKind.SUCCEEDED for o in outcomes)


# --- what each case becomes ----------------------------------------------------------------


def test_a_result_json_cannot_carry_fails_its_attempt_naming_its_type(
    threads: HandlerThreads,
) -> None:
    """Given a handler returning an object neither JSON nor repr() can render, when run,
    then the attempt failed for good (permanent) with ResultNotSerializableError naming
    the task, the type and the way out."""
    spec = declare(handler(lambda: hostile_value(object, "__repr__", ValueError), raises=False,
                           is_async=False))  # fmt: skip

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.result is None
    assert outcome.error is not None and outcome.error.type == UNKEPT
    assert "task 'hostile' returned a HostileObject that JSON cannot carry" in (
        outcome.error.message
    )
    assert "store_result=False" in outcome.error.message


@pytest.mark.parametrize("name", ["cycle-list", "deep", "huge-int", "set", "nan", "bytes"])
def test_a_cyclic_deep_huge_or_non_json_result_fails_its_attempt(
    threads: HandlerThreads, name: str
) -> None:
    """Given a self-referencing, 100,000-deep, 5,000-digit, set, NaN or bytes result, when
    run, then the attempt failed for good (permanent) with ResultNotSerializableError (no
    repr stands in for the value: a waiter would get a string instead of the handler's
    type)."""
    spec = declare(handler(lambda: odd_value(name), raises=False, is_async=True))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error is not None and outcome.error.type == UNKEPT


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_result_over_the_limit_fails_its_attempt_naming_limit_and_size(
    threads: HandlerThreads, is_async: bool
) -> None:
    """Given a handler returning a string one byte over MAX_RESULT_BYTES as JSON, when
    run, then the attempt failed for good (permanent) with ResultTooLargeError naming the
    size and the limit; one exactly at the limit succeeded with its value."""
    at_limit = "x" * (c.MAX_RESULT_BYTES - 2)  # the two quotes make it MAX_RESULT_BYTES
    over = at_limit + "y"
    too_big = declare(handler(lambda: over, raises=False, is_async=is_async))
    fits = declare(handler(lambda: at_limit, raises=False, is_async=is_async))

    refused = settle(run_attempt(too_big, (), {}, context=CONTEXT, executor=threads))
    kept = settle(run_attempt(fits, (), {}, context=CONTEXT, executor=threads))

    assert refused.kind is OutcomeKind.PERMANENT and refused.result is None
    assert refused.error is not None and refused.error.type == "ResultTooLargeError"
    assert (
        f"a result of {c.MAX_RESULT_BYTES + 1} bytes as JSON, over the limit of "
        f"{c.MAX_RESULT_BYTES} bytes"
    ) in refused.error.message
    assert (kept.kind, kept.result) == (OutcomeKind.SUCCEEDED, at_limit)


@pytest.mark.parametrize(
    "retry_on",
    [(ConnectionError,), (Exception,), (ResultError,), (BaseException,)],
    ids=["ConnectionError", "Exception", "ResultError", "BaseException"],
)
@pytest.mark.parametrize(
    ("value", "error_type"),
    [({1, 2}, UNKEPT), ("x" * c.MAX_RESULT_BYTES, "ResultTooLargeError")],
    ids=["set", "too-large"],
)
def test_a_result_that_cannot_be_kept_is_permanent_whatever_retry_on_says(
    threads: HandlerThreads, retry_on: tuple[type[BaseException], ...], value: Any, error_type: str
) -> None:
    """Given a task whose retry_on names ConnectionError, Exception, ResultError itself or
    BaseException, when its handler returns a set or a result over the limit, then the
    attempt failed for good (permanent, dead-lettered at once): the handler's work is
    done and a retry would do it again, so retry_on does not get a say."""
    spec = declare(
        handler(lambda: value, raises=False, is_async=False), retry=Retry(retry_on=retry_on)
    )

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.result is None
    assert outcome.error is not None and outcome.error.type == error_type


@pytest.mark.parametrize("batch", [False, True], ids=["task", "batch"])
def test_store_result_false_succeeds_with_no_result_whatever_is_returned(
    threads: HandlerThreads, batch: bool
) -> None:
    """Given tasks declared store_result=False returning a set and an oversized string,
    when run, then every attempt (every item) succeeded with no result."""
    for value in ({1, 2}, "x" * (c.MAX_RESULT_BYTES * 2)):
        fn = handler(lambda value=value: value, raises=False, is_async=False)
        if batch:
            spec = task(name="unkept", batch_size=BATCH_SIZE, store_result=False,
                        registry=Registry())(fn).spec  # fmt: skip
            outcomes = settle(run_batch_attempt(spec, ["a", "b", "c"], context=BATCH,
                                                executor=threads))  # fmt: skip
        else:
            spec = task(name="unkept", store_result=False, registry=Registry())(fn).spec
            outcomes = [settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))]

        assert [(o.kind, o.result) for o in outcomes] == [(OutcomeKind.SUCCEEDED, None)] * len(
            outcomes
        )


def test_a_batch_item_whose_result_is_too_large_fails_alone(threads: HandlerThreads) -> None:
    """Given a batch handler returning one result per item, the second over the limit,
    when run, then that item failed for good (permanent) with ResultTooLargeError and the
    others succeeded with their results."""
    big = "x" * c.MAX_RESULT_BYTES
    spec = declare(handler(lambda: ["a", big, "c"], raises=False, is_async=False), batch=True)

    outcomes = settle(run_batch_attempt(spec, ["a", "b", "c"], context=BATCH, executor=threads))

    assert [o.kind for o in outcomes] == [
        OutcomeKind.SUCCEEDED,
        OutcomeKind.PERMANENT,
        OutcomeKind.SUCCEEDED,
    ]
    assert (outcomes[0].result, outcomes[2].result) == ("a", "c")
    assert outcomes[1].error is not None and outcomes[1].error.type == "ResultTooLargeError"


def test_a_tuple_result_is_kept_as_its_json_form(threads: HandlerThreads) -> None:
    """Given a handler returning a tuple, int keys and a lone surrogate, when run, then
    the result is what the JSON round trip gives back: a list, string keys, and "?"."""
    spec = declare(handler(lambda: ((1, 2), {3: "a\ud800b"}), raises=False, is_async=False))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.result == [[1, 2], {"3": "a?b"}]


@pytest.mark.parametrize(
    "raised",
    [SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError],
    ids=lambda t: t.__name__,
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_base_exception_from_a_handler_fails_its_attempt_not_the_process(
    threads: HandlerThreads, raised: type[BaseException], is_async: bool
) -> None:
    """Given a handler raising SystemExit, KeyboardInterrupt, GeneratorExit or a
    CancelledError of its own, when run, then the attempt fails not_retryable (they are
    outside the default retry_on) naming the exception, and nothing escapes."""

    def make() -> BaseException:
        return raised("handler gave up")

    spec = declare(handler(make, raises=True, is_async=is_async))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.NOT_RETRYABLE
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.message) == (raised.__name__, "handler gave up")


def test_retry_on_covers_base_exceptions_when_asked(threads: HandlerThreads) -> None:
    """Given retry_on=(SystemExit,), when a handler calls sys.exit, then it is retryable."""
    spec = declare(
        handler(lambda: SystemExit(3), raises=True, is_async=False),
        retry=Retry(retry_on=(SystemExit,)),
    )

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.RETRYABLE


def test_a_sync_handler_raising_stop_iteration_fails_cleanly(threads: HandlerThreads) -> None:
    """Given a sync handler raising StopIteration (which an asyncio future refuses to
    carry), when run, then the attempt fails retryable with StopIteration at once."""
    spec = declare(handler(lambda: StopIteration("exhausted"), raises=True, is_async=False))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None and outcome.error.type == "StopIteration"


def test_an_exception_whose_str_raises_is_reported_with_a_placeholder_message() -> None:
    """Given an exception whose __str__ raises SystemExit, when described, then the message
    says str() failed, the type is its own, and the traceback still has its frames."""
    recipe = (ValueError, frozenset({"str-raises"}), SystemExit, "none")
    info = describe(caught(recipe))

    assert info.type == "HandlerError"
    assert info.message == "<str() failed: SystemExit>"
    assert "in caught" in info.traceback


def test_a_cyclic_chain_keeps_its_traceback() -> None:
    """Given an exception whose cause is an exception caused by it, when described, then
    the traceback is formatted (each exception once)."""
    recipe = (ValueError, frozenset(), ValueError, "cyclic")
    info = describe(caught(recipe))

    assert "the other half of a cycle" in info.traceback
    assert info.message == "handler failed"


def test_a_chain_that_cannot_be_formatted_falls_back_to_the_exceptions_own_traceback() -> None:
    """Given an exception caused by one whose __str__ and __notes__ raise SystemExit
    (traceback formats a failing __str__, not failing __notes__), when described, then the
    traceback is the exception's own, without the chain."""
    recipe = (ValueError, frozenset(), SystemExit, "hostile-cause")
    info = describe(caught(recipe))

    assert "ChainedError" not in info.traceback
    assert "in caught" in info.traceback
    assert info.traceback.rstrip().endswith("HandlerError: handler failed")


def test_a_hostile_class_check_fails_the_attempt_retryable_saying_why(
    threads: HandlerThreads,
) -> None:
    """Given retry_on naming a class whose __instancecheck__ raises, when a handler raises
    another exception, then the attempt fails retryable and the message says the
    exception could not be classified."""

    class Meta(type):
        def __instancecheck__(cls, instance: object) -> bool:
            raise SystemExit("hostile __instancecheck__")

    class Flaky(Exception, metaclass=Meta):
        pass

    spec = declare(
        handler(lambda: ValueError("bad"), raises=True, is_async=True),
        retry=Retry(retry_on=(Flaky,)),
    )

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error is not None
    assert outcome.error.type == "ValueError"
    assert "not classified" in outcome.error.message


def test_a_backpressure_with_a_hostile_hint_is_still_backpressure(
    threads: HandlerThreads,
) -> None:
    """Given a Backpressure whose retry_after_s property raises, when run, then the outcome
    is backpressure without a hint."""
    recipe = (Backpressure, frozenset({"retry-after-hostile"}), SystemExit, "none")
    spec = declare(handler(lambda: build_exception(recipe), raises=True, is_async=False))

    outcome = settle(run_attempt(spec, (), {}, context=CONTEXT, executor=threads))

    assert outcome.kind is OutcomeKind.BACKPRESSURE
    assert outcome.retry_after_s is None


def test_a_batch_list_whose_iteration_raises_fails_every_item(
    threads: HandlerThreads,
) -> None:
    """Given a batch handler returning a list subclass whose __iter__ raises SystemExit,
    when run, then the list is every item's result, which JSON cannot carry: every item
    failed for good (permanent) with ResultNotSerializableError (none escaped)."""
    spec = declare(
        handler(lambda: hostile_value(list, "__iter__", SystemExit), raises=False,
                is_async=False),
        batch=True,
    )  # fmt: skip

    outcomes = settle(run_batch_attempt(spec, ["a", "b", "c"], context=BATCH, executor=threads))

    assert [o.kind for o in outcomes] == [OutcomeKind.PERMANENT] * BATCH_SIZE
    assert all(o.error is not None and o.error.type == UNKEPT for o in outcomes)


def test_a_batch_failures_that_cannot_be_read_fails_every_item_saying_why(
    threads: HandlerThreads,
) -> None:
    """Given a BatchFailures whose failures attribute raises when read, when run, then
    every item fails retryable with a message saying it cannot be read."""

    class Unreadable(BatchFailures):
        @property  # type: ignore[override]
        def failures(self) -> dict[int | str, BaseException]:
            raise KeyboardInterrupt("hostile failures")

        @failures.setter
        def failures(self, _value: Any) -> None:
            pass

    spec = declare(
        handler(lambda: Unreadable({0: ValueError("x")}), raises=True, is_async=True), batch=True
    )

    outcomes = settle(run_batch_attempt(spec, ["a", "b", "c"], context=BATCH, executor=threads))

    assert [o.kind for o in outcomes] == [OutcomeKind.RETRYABLE] * BATCH_SIZE
    assert outcomes[0].error is not None
    assert "cannot be read (KeyboardInterrupt)" in outcomes[0].error.message


def test_batch_failures_naming_an_item_by_a_str_subclass_still_finds_it(
    threads: HandlerThreads,
) -> None:
    """Given a BatchFailures naming item 1 by its task id as a str subclass whose hash and
    equality raise, when run, then item 1 failed and the others succeeded."""

    def fail_second() -> BatchFailures:
        failures = BatchFailures({0: ValueError("placeholder")})
        failures.failures = {HostileTextKey("item-1"): PermanentError("gone")}
        return failures

    spec = declare(handler(fail_second, raises=True, is_async=False), batch=True)

    outcomes = settle(run_batch_attempt(spec, ["a", "b", "c"], context=BATCH, executor=threads))

    assert [o.kind for o in outcomes] == [
        OutcomeKind.SUCCEEDED,
        OutcomeKind.PERMANENT,
        OutcomeKind.SUCCEEDED,
    ]


class HostileTextKey(str):
    """A str subclass usable as a dict key once, whose equality then raises."""

    __slots__ = ()

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        raise SystemExit("hostile __eq__")


async def test_the_dispatchers_cancellation_of_an_attempt_still_propagates() -> None:
    """Given an async handler running, when the dispatcher cancels the attempt (releasing
    it), then the cancellation propagates: the attempt's task ends cancelled."""
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    attempt = asyncio.create_task(run_attempt(declare(hang), (), {}, context=CONTEXT))
    await started.wait()
    attempt.cancel()

    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert attempt.cancelled()
