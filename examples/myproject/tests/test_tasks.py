"""myapp's tasks, tested as docs/testing.md shows: one handler alone, then end to end.

Run from examples/myproject (or your project's folder): ``pytest``. The end-to-end
test uses the ``dispatch_env`` fixture of Dispatch's pytest plugin (installed with
``dispatch-aws``; the embedded local AWS needs the ``[local]`` extra).
"""

from __future__ import annotations

import pytest
from myapp import tasks

import dispatch
from dispatch import PermanentError
from dispatch.testing import drain, run_task


def test_charge_returns_what_was_charged() -> None:
    """A positive amount is charged on the first attempt."""
    assert run_task(tasks.charge, "42", amount_cents=500) == {
        "order_id": "42",
        "charged": 500,
        "attempt": 1,
    }


def test_nothing_to_charge_is_refused_for_good() -> None:
    """A zero amount raises PermanentError: dead-lettered at once, no retry spent."""
    with pytest.raises(PermanentError, match="cannot charge 0 cents"):
        run_task(tasks.charge, "42", amount_cents=0)


def test_orders_run_end_to_end(dispatch_env: dispatch.Settings) -> None:
    """Enqueued for real on the embedded local AWS, drained by one dispatcher: the
    charge and the receipt succeed, the zero charge is dead-lettered with its reason."""
    good = tasks.charge.enqueue(order_id="1", amount_cents=500)
    receipt = tasks.send_receipt.enqueue(order_id="1", email="ada@example.com")
    refused = tasks.charge.enqueue(order_id="2", amount_cents=0)

    stats = drain()

    assert (stats.succeeded, stats.dead) == (2, 1)
    assert dispatch.status(good).status == "succeeded"
    assert dispatch.status(receipt).result == "receipt for order 1 sent to ada@example.com"
    assert dispatch.status(refused).status == "dead"
