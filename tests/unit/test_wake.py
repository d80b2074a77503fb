"""The responsive mode's producer side: when a producer looks at the awake promise and wakes."""

from __future__ import annotations

import json

from dispatch.core.config import Settings
from dispatch.producer.wake import PROMISE_MARGIN_S, WAKE_QUIET_S, Waker
from dispatch.store import awake

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
SETTINGS = Settings(queue_url=QUEUE, dlq_url=QUEUE + "-dlq", table="dispatch-state")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def promise(until: float) -> dict[str, object]:
    return awake.promise_params("t", QUEUE, until=until, holder="req")["Item"]


def test_no_promise_wakes_once_then_keeps_quiet() -> None:
    clock = Clock()
    waker = Waker(SETTINGS, "dispatcher:live", clock=clock)

    assert waker.due() and waker.decide(None)
    assert not waker.due()
    clock.now += WAKE_QUIET_S
    assert waker.due()


def test_a_promise_is_trusted_until_its_margin_and_spares_the_wake() -> None:
    clock = Clock()
    waker = Waker(SETTINGS, "dispatcher:live", clock=clock)

    assert not waker.decide(promise(clock.now + 10))
    clock.now += 10 - PROMISE_MARGIN_S - 0.01
    assert not waker.due()
    clock.now += 0.02
    assert waker.due()


def test_a_promise_about_to_end_or_past_does_not_spare_the_wake() -> None:
    clock = Clock()
    waker = Waker(SETTINGS, "dispatcher:live", clock=clock)

    assert waker.decide(promise(clock.now + PROMISE_MARGIN_S / 2))
    clock.now += WAKE_QUIET_S
    assert waker.decide(promise(clock.now - 30))


def test_the_wake_event_names_the_queue_and_is_told_from_a_scale_out() -> None:
    from dispatch.aws_lambda.handler import _is_scale_out, _is_wake

    event = json.loads(Waker(SETTINGS, "dispatcher:live").payload())

    assert event == {"dispatch": {"wake": {"queue": "orders"}}}
    assert _is_wake(event) and not _is_scale_out(event)
    assert _is_scale_out({"dispatch": {"scale_out": "req-1"}})
    assert not _is_wake({"dispatch": {"scale_out": "req-1"}})


def test_the_promise_only_ever_extends_and_expires_by_itself() -> None:
    params = awake.promise_params("t", QUEUE, until=1_800_000_030.5, holder="req")

    assert params["Item"]["pk"] == {"S": "awake#orders"}
    assert params["ConditionExpression"] == "attribute_not_exists(#pk) OR #until < :until"
    assert int(params["Item"]["expires_at"]["N"]) > 1_800_000_030
    assert awake.promised_until(params["Item"]) == 1_800_000_030.5
    assert awake.promised_until(None) == 0.0
