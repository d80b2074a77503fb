"""Admission of foreign messages whose fields could never be stored.

``admit`` only decides, so these run without AWS: a message no claim could write
(a lone surrogate in its id or task name, an id too long for the rule) is a
``Reject`` with reason ``malformed``, and it carries an id and a task name only
when the dispatcher can write them into the rejection record.
"""

from __future__ import annotations

import pytest

from dispatch.core.deadletter import Reason
from dispatch.core.delivery import Delivery
from dispatch.loop.admission import Admitted, Reject, admit
from dispatch.tasks.registry import Registry, task


def registry_with_charge() -> Registry:
    """A fresh registry holding ``charge(order_id)``."""
    registry = Registry()

    @task(registry=registry)
    def charge(order_id: str) -> None: ...

    return registry


def admit_body(body: str) -> object:
    """What admission answers for one delivery of ``body``."""
    delivery = Delivery(receipt="r-1", message_id="m-1", body=body)
    return admit(delivery, registry=registry_with_charge(), signing_keys=(), now=0.0)


@pytest.mark.parametrize(
    ("body", "task_id", "task_name", "words"),
    [
        ('{"v":1,"id":"\\ud800","task":"charge","args":["1"]}', None, "charge", "'id'"),
        ('{"v":1,"id":"t-1","task":"\\udfff","args":["1"]}', "t-1", None, "'task'"),
        ('{"v":1,"id":"t-2","task":"charge","args":["\\ud83d"]}', "t-2", "charge", "argument 0"),
        ('{"v":1,"id":"t-3","task":"charge","args":[1e999]}', "t-3", "charge", "is inf"),
        ('{"v":1,"id":"' + "x" * 200 + '","task":"charge"}', None, "charge", "1 to 128"),
    ],
    ids=["surrogate-id", "surrogate-task", "surrogate-argument", "infinite-argument", "long-id"],
)
def test_a_message_no_claim_could_write_is_rejected_as_malformed(
    body: str, task_id: str | None, task_name: str | None, words: str
) -> None:
    """Given a foreign message with a field that could not be stored or an argument that
    would not read back, when admitted, then it is rejected as malformed naming the field,
    with only the id and task name that could be written to the rejection record."""
    admission = admit_body(body)

    assert isinstance(admission, Reject)
    assert admission.reason is Reason.MALFORMED
    assert words in admission.error.reason
    assert (admission.task_id, admission.task) == (task_id, task_name)


def test_a_message_with_unicode_beyond_ascii_is_admitted() -> None:
    """Given a foreign message whose id and argument hold valid non-ASCII text (accents, an
    emoji as a proper surrogate pair escape), when admitted, then it runs."""
    admission = admit_body('{"v":1,"id":"ordre-é-\\ud83d\\ude00","task":"charge","args":["ü"]}')

    assert isinstance(admission, Admitted)
    assert admission.envelope.id == "ordre-é-\U0001f600"
