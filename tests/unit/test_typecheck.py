"""Arguments are checked against the handler's annotations, for the types JSON carries."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from dispatch import task
from dispatch.core.envelope import Envelope
from dispatch.core.errors import EnvelopeError, InvalidArgumentsError
from dispatch.tasks.registry import Registry, resolve


class Card:
    """A class JSON cannot produce: left to the handler."""


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_wrong_json_types_are_refused_at_enqueue_naming_the_argument(registry: Registry) -> None:
    """Given annotated parameters, when enqueued with a value of another JSON type, then
    InvalidArgumentsError names the argument, the expected and the given type."""

    @task(registry=registry)
    def charge(
        order_id: str,
        amount: int,
        *,
        rate: float = 1.0,
        tags: list[str] | None = None,
        meta: dict[str, int] | None = None,
        mode: Literal["card", "bank"] = "card",
    ) -> None: ...

    cases: list[tuple[dict[str, Any], str]] = [
        ({"order_id": 42, "amount": 5}, "'order_id' must be str, got int"),
        ({"order_id": "42", "amount": "5"}, "'amount' must be int, got str"),
        ({"order_id": "42", "amount": True}, "'amount' must be int, got bool"),
        ({"order_id": "42", "amount": 5, "tags": ["a", 2]}, "'tags' must be list[str] | None"),
        ({"order_id": "42", "amount": 5, "meta": {"a": "b"}}, "'meta' must be dict[str, int]"),
        ({"order_id": "42", "amount": 5, "mode": "cash"}, "'mode' must be Literal"),
    ]
    for kwargs, words in cases:
        with pytest.raises(
            InvalidArgumentsError, match=words.replace("[", r"\[").replace("|", r"\|")
        ):
            charge.message(**kwargs)


def test_matching_and_unchecked_values_pass(registry: Registry) -> None:
    """Given ints for floats, None for optionals and annotations JSON cannot express,
    when enqueued, then nothing is refused."""

    @task(registry=registry)
    def pay(rate: float, note: str | None, card: Card | None = None, extra: Any = None) -> None: ...

    plain = pay.message(rate=3, note=None)
    loose = pay.message(rate=2.5, note="x", extra={"anything": [1, "2"]})

    assert plain.envelope.kwargs == {"rate": 3, "note": None}
    assert loose.envelope.kwargs == {"rate": 2.5, "note": "x", "extra": {"anything": [1, "2"]}}
    # an annotation JSON cannot express (Card) is left to the handler: a foreign message
    # carrying a dict there is not refused on arrival either
    foreign = Envelope(id="x", task="pay", kwargs={"rate": 1, "note": None, "card": {"n": 1}})
    assert resolve(foreign, registry).name == "pay"


def test_a_foreign_message_with_a_wrong_type_is_refused_on_arrival(registry: Registry) -> None:
    """Given a message from another producer with a string where the handler wants an int,
    when the dispatcher resolves it, then EnvelopeError names the argument (the message
    is dead-lettered as bad_arguments)."""

    @task(registry=registry)
    def charge(amount: int) -> None: ...

    envelope = Envelope(id="x1", task="charge", kwargs={"amount": "5"})

    with pytest.raises(EnvelopeError, match="'amount' must be int, got str"):
        resolve(envelope, registry)
