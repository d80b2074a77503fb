"""Task declarations: the @task decorator, TaskSpec, Task, BoundTask and Registry.

Every test declares its tasks in a fresh ``Registry()``. The default registry is
swapped for a throwaway one during each test, so nothing can leak into it.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from dispatch.core import constants as c
from dispatch.core.errors import (
    ConfigurationError,
    EnqueueError,
    InvalidArgumentsError,
    TaskDefinitionError,
    UnknownTaskError,
)
from dispatch.core.resource import Resource
from dispatch.core.retry import Retry
from dispatch.tasks import registry as registry_module
from dispatch.tasks.registry import DEFAULT_TIMEOUT_S, Registry, Task, TaskSpec, task


@pytest.fixture(autouse=True)
def throwaway_default_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A throwaway default registry, put back after the test."""
    throwaway = Registry()
    monkeypatch.setattr(registry_module, "default_registry", throwaway)
    return throwaway


def charge(order_id: str, amount_cents: int = 0) -> str:
    """Charge an order (a module-level handler: one qualified name across tests)."""
    return f"charged {order_id} {amount_cents}"


def refund(order_id: str) -> str:
    """Refund an order."""
    return f"refunded {order_id}"


def spec_of(fn: Any, name: str | None = None) -> TaskSpec:
    """A spec for ``fn`` made by the decorator in a fresh registry."""
    return task(name=name, registry=Registry())(fn).spec


# --- the decorator -----------------------------------------------------------------------


def test_bare_decorator_declares_a_task_named_after_the_function() -> None:
    """Given a plain function, when decorated with bare ``@task``, then it becomes a Task
    named after the function with the default retry and timeout."""
    declared = task(charge)

    assert isinstance(declared, Task)
    assert declared.name == "charge"
    assert declared.spec.fn is charge
    assert declared.spec.retry == Retry()
    assert declared.spec.timeout_s == DEFAULT_TIMEOUT_S
    assert declared.spec.resource is None
    assert declared.__doc__ == charge.__doc__
    assert repr(declared) == "<Task 'charge'>"


def test_bare_decorator_registers_in_the_default_registry(
    throwaway_default_registry: Registry,
) -> None:
    """Given bare ``@task``, when a function is declared, then the default registry has it."""
    declared = task(charge)

    assert throwaway_default_registry.get("charge") is declared.spec


def test_decorator_with_options_sets_them() -> None:
    """Given ``@task(name=..., resource=..., retry=..., timeout_s=...)``, when a function is
    declared, then the spec carries each option."""
    registry = Registry()
    db = Resource("orders-db", rate_per_s=5)
    policy = Retry(max_attempts=5)

    declared = task(
        name="billing.charge", resource=db, retry=policy, timeout_s=30, registry=registry
    )(charge)

    assert declared.name == "billing.charge"
    assert declared.spec.resource is db
    assert declared.spec.retry is policy
    assert declared.spec.timeout_s == 30.0
    assert isinstance(declared.spec.timeout_s, float)


def test_decorator_registers_in_the_registry_it_is_given_even_when_that_is_empty(
    throwaway_default_registry: Registry,
) -> None:
    """Given a fresh, empty Registry passed as ``registry=``, when a task is declared, then
    that registry holds it and the default registry does not (an empty registry is still
    the one asked for)."""
    registry = Registry()

    declared = task(registry=registry)(charge)

    assert "charge" in registry
    assert registry.get("charge") is declared.spec
    assert "charge" not in throwaway_default_registry


def test_decorator_registers_in_a_non_empty_registry_it_is_given(
    throwaway_default_registry: Registry,
) -> None:
    """Given a Registry that already holds a task, when another is declared with it, then
    that registry holds both and the default registry holds neither of its tasks."""
    registry = Registry()
    registry.register(spec_of(refund))

    task(registry=registry)(charge)

    assert [spec.name for spec in registry.specs()] == ["charge", "refund"]
    assert "charge" not in throwaway_default_registry


def test_sync_and_async_handlers_are_told_apart() -> None:
    """Given a def and an async def, when declared, then only the coroutine function's spec
    is marked async."""

    async def fetch(url: str) -> str:
        """Fetch a page."""
        return url

    assert spec_of(fetch).is_async is True
    assert spec_of(charge).is_async is False


def test_a_task_can_still_be_called_directly() -> None:
    """Given a declared sync task, when called like the function, then it runs here and
    returns the function's result."""
    declared = task(registry=Registry())(charge)

    assert declared("42", amount_cents=5) == "charged 42 5"


async def test_an_async_task_called_directly_returns_its_coroutine() -> None:
    """Given a declared async task, when called and awaited, then the handler's result."""

    async def double(n: int) -> int:
        """Double n."""
        return 2 * n

    declared = task(registry=Registry())(double)

    assert await declared(21) == 42


@pytest.mark.parametrize(
    "name",
    ["has space", "semi;colon", "x" * 129, "ünïcode", "slash/name", "new\nline"],
    ids=repr,
)
def test_invalid_task_names_are_refused(name: str) -> None:
    """Given a name with characters outside ``A-Z a-z 0-9 _ . : -`` or over 128 long, when
    declared, then TaskDefinitionError explains the allowed names."""
    with pytest.raises(TaskDefinitionError, match="1 to 128 letters"):
        spec_of(charge, name=name)


def test_a_lambda_needs_a_name() -> None:
    """Given a lambda (named ``<lambda>``), when declared without a name, then refused;
    with a valid name it is accepted."""
    with pytest.raises(TaskDefinitionError, match="<lambda>"):
        spec_of(lambda: None)

    assert spec_of(lambda: None, name="noop").name == "noop"


@pytest.mark.parametrize("name", ["a", "billing.charge:v2-x_Y9", "n" * 128])
def test_valid_task_names_are_accepted(name: str) -> None:
    """Given names made of the allowed characters, 1 to 128 long, when declared, then the
    task is registered under exactly that name."""
    assert spec_of(charge, name=name).name == name


def test_a_non_callable_is_refused() -> None:
    """Given something that is not a function, when declared, then TaskDefinitionError."""
    with pytest.raises(TaskDefinitionError, match="needs a function"):
        task(registry=Registry())(42)  # type: ignore[call-overload]


def test_a_different_function_under_a_taken_name_is_refused() -> None:
    """Given a registry where ``charge`` is taken, when another function is declared under
    that name, then TaskDefinitionError names both functions."""
    registry = Registry()
    registry.register(spec_of(charge))

    with pytest.raises(TaskDefinitionError) as caught:
        task(name="charge", registry=registry)(refund)

    message = str(caught.value)
    assert f"{__name__}.charge" in message
    assert f"{__name__}.refund" in message
    assert registry.get("charge").fn is charge


def test_the_same_function_can_be_registered_again() -> None:
    """Given a registry holding ``charge``, when the same function is declared again (a
    module imported twice), then it is accepted and still one task."""
    registry = Registry()
    registry.register(spec_of(charge))

    again = task(registry=registry)(charge)

    assert len(registry) == 1
    assert registry.get("charge") is again.spec


def takes_delay(order_id: str, delay_s: float = 0) -> None:
    """A handler with a parameter named like the ``delay_s`` option."""


def takes_key(order_id: str, *, idempotency_key: str = "") -> None:
    """A handler with a keyword-only parameter named like ``idempotency_key``."""


def takes_group(order_id: str, **group: Any) -> None:
    """A handler whose ``**kwargs`` is named like the ``group`` option."""


@pytest.mark.parametrize(
    ("handler", "reserved"),
    [(takes_delay, "delay_s"), (takes_key, "idempotency_key"), (takes_group, "group")],
)
def test_reserved_parameter_names_are_refused_at_declaration(handler: Any, reserved: str) -> None:
    """Given a handler with a parameter named like an enqueue option, when declared, then
    TaskDefinitionError names the parameter and says it is reserved."""
    with pytest.raises(TaskDefinitionError, match="reserved") as caught:
        spec_of(handler)

    assert f"parameter name(s) {reserved} are reserved" in str(caught.value)


@pytest.mark.parametrize(
    "timeout_s",
    [0, -1, math.inf, math.nan, "30", None, c.SQS_MAX_VISIBILITY_S + 1],
    ids=repr,
)
def test_bad_timeouts_are_refused(timeout_s: Any) -> None:
    """Given a timeout that is not a positive finite number of seconds within 12 hours,
    when declared, then TaskDefinitionError names timeout_s."""
    with pytest.raises(TaskDefinitionError, match="timeout_s"):
        task(timeout_s=timeout_s, registry=Registry())(charge)


def test_a_twelve_hour_timeout_is_accepted() -> None:
    """Given timeout_s of exactly SQS's 12-hour visibility limit, when declared, then OK."""
    declared = task(timeout_s=c.SQS_MAX_VISIBILITY_S, registry=Registry())(charge)

    assert declared.spec.timeout_s == c.SQS_MAX_VISIBILITY_S


def test_resource_must_be_a_resource() -> None:
    """Given ``resource="orders-db"`` (a name, not a Resource), when declared, then
    TaskDefinitionError says resource= takes a dispatch.Resource."""
    with pytest.raises(TaskDefinitionError, match=r"resource= takes a dispatch\.Resource"):
        task(resource="orders-db", registry=Registry())(charge)  # type: ignore[call-overload]


def test_retry_must_be_a_retry() -> None:
    """Given ``retry=3``, when declared, then TaskDefinitionError says retry= takes a Retry."""
    with pytest.raises(TaskDefinitionError, match=r"retry= takes a dispatch\.Retry"):
        task(retry=3, registry=Registry())(charge)  # type: ignore[call-overload]


@pytest.mark.parametrize("value", ["no", 0, None])
def test_track_state_must_be_a_bool(value: Any) -> None:
    """Given ``track_state`` that is not True or False, when declared, then
    TaskDefinitionError names the option and its two meanings."""
    with pytest.raises(TaskDefinitionError, match=r"track_state=.* must be True .* or False"):
        task(track_state=value, registry=Registry())(charge)


def test_tasks_track_state_unless_declared_lean() -> None:
    """Given a default task and one declared track_state=False, then only the lean one's
    spec says so, and only its messages carry a lean task id (what tells the dispatcher,
    `dispatch status` and `dispatch cancel` that no record is kept)."""
    tracked = task(registry=Registry())(charge)
    lean = task(registry=Registry(), track_state=False)(refund)

    assert tracked.spec.track_state is True
    assert lean.spec.track_state is False
    assert not tracked.message("1").task_id.startswith(c.LEAN_TASK_ID_PREFIX)
    assert lean.message("1").task_id.startswith(c.LEAN_TASK_ID_PREFIX)
    keyed = lean.message("1", idempotency_key="k")
    assert keyed.task_id == lean.message("1", idempotency_key="k").task_id


# --- messages ------------------------------------------------------------------------------


def test_message_takes_the_reserved_keywords_as_options() -> None:
    """Given ``delay_s``, ``idempotency_key`` and ``group`` among the call's keywords, when
    a message is built, then they become options and only the rest reach the handler."""
    declared = task(registry=Registry())(charge)

    message = declared.message(
        "42", amount_cents=5, delay_s=1_200, idempotency_key="order-42", group="g1"
    )

    body = json.loads(message.body)
    assert body["args"] == ["42"]
    assert body["kwargs"] == {"amount_cents": 5}
    assert body["idempotency_key"] == "order-42"
    assert body["group"] == "g1"
    assert message.delay_s == 1_200
    assert message.envelope.eta == pytest.approx(message.envelope.enqueued_at + 1_200)
    assert message.sqs_delay_seconds() == c.SQS_MAX_DELAY_S


def test_message_without_options_has_no_delay() -> None:
    """Given a plain call, when a message is built, then no delay, eta, key or group."""
    message = task(registry=Registry())(charge).message("42")

    assert message.delay_s == 0.0
    assert set(json.loads(message.body)) == {"v", "id", "task", "args", "kwargs", "enqueued_at"}


def test_message_checks_the_arguments_against_the_handler() -> None:
    """Given arguments the handler does not take, when a message is built, then
    InvalidArgumentsError (nothing is built)."""
    declared = task(registry=Registry())(charge)

    with pytest.raises(InvalidArgumentsError, match="colour"):
        declared.message("42", colour="red")


def test_message_refuses_bad_option_values() -> None:
    """Given a negative delay among the keywords, when a message is built, then
    EnqueueError names delay_s."""
    with pytest.raises(EnqueueError, match="delay_s"):
        task(registry=Registry())(charge).message("42", delay_s=-5)


def test_with_options_builds_messages_with_those_options() -> None:
    """Given ``with_options(delay_s=30, idempotency_key=..., group=...)``, when a message is
    built, then it carries those options and the handler's arguments."""
    declared = task(registry=Registry())(charge)

    message = declared.with_options(delay_s=30, idempotency_key="k", group="g").message(
        "42", amount_cents=7
    )

    assert message.delay_s == 30
    assert message.envelope.eta is None
    assert message.envelope.idempotency_key == "k"
    assert message.envelope.group == "g"
    assert message.envelope.kwargs == {"amount_cents": 7}
    assert message.task_id == declared.message("9", idempotency_key="k").task_id


def test_with_options_validates_the_options_at_once() -> None:
    """Given an empty idempotency key, when with_options is called, then EnqueueError."""
    with pytest.raises(EnqueueError, match="idempotency_key"):
        task(registry=Registry())(charge).with_options(idempotency_key="")


# --- the registry ----------------------------------------------------------------------------


def test_get_returns_the_spec_and_unknown_names_list_the_known_ones() -> None:
    """Given a registry with refund and charge, when an unknown name is asked, then
    UnknownTaskError carries the name and lists the registered ones, sorted."""
    registry = Registry()
    registry.register(spec_of(refund))
    registry.register(spec_of(charge))

    assert registry.get("refund").fn is refund
    with pytest.raises(UnknownTaskError) as caught:
        registry.get("ship")

    assert caught.value.name == "ship"
    assert "registered tasks: charge, refund" in str(caught.value)


def test_get_on_an_empty_registry_names_the_task() -> None:
    """Given an empty registry, when a name is asked, then UnknownTaskError names it."""
    with pytest.raises(UnknownTaskError, match="'ship'"):
        Registry().get("ship")


def test_specs_are_sorted_and_reset_forgets_them() -> None:
    """Given two registered specs, when listed, then sorted by name; after reset, none."""
    registry = Registry()
    registry.register(spec_of(refund))
    registry.register(spec_of(charge))

    assert [spec.name for spec in registry.specs()] == ["charge", "refund"]
    assert len(registry) == 2
    assert "charge" in registry

    registry.reset()

    assert len(registry) == 0
    assert "charge" not in registry


def test_import_modules_imports_existing_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given importable module names (one never imported before), when imported, then
    each is in sys.modules and the new one's code ran."""
    name = f"tasks_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("IMPORTED = True\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert name not in sys.modules

    Registry().import_modules(["json", name])

    assert sys.modules[name].IMPORTED is True
    assert "json" in sys.modules
    monkeypatch.delitem(sys.modules, name)


def test_import_modules_names_a_missing_module() -> None:
    """Given a module name that does not exist, when imported, then ConfigurationError
    names the module and the DISPATCH_TASKS setting."""
    with pytest.raises(ConfigurationError) as caught:
        Registry().import_modules(["json", "no_such_pkg_for_dispatch.tasks"])

    assert "'no_such_pkg_for_dispatch.tasks'" in str(caught.value)
    assert caught.value.setting == c.ENV_TASKS


def test_spec_bind_raises_type_error_when_arguments_do_not_fit() -> None:
    """Given a spec, when arguments are bound, then fitting ones bind and others raise
    TypeError (which Message.build and resolve turn into their own errors)."""
    spec = spec_of(charge)

    assert spec.bind(["42"], {"amount_cents": 1}).arguments == {
        "order_id": "42",
        "amount_cents": 1,
    }
    with pytest.raises(TypeError):
        spec.bind([], {})
