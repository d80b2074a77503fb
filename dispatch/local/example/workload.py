"""The demo's workload: a few hundred realistic tasks plus a foreign producer's mistakes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dispatch import Message
from dispatch.local.example import app


@dataclass(frozen=True, slots=True)
class Expected:
    """What a correct run of the workload ends with."""

    succeeded: int
    dead: int
    retried: int
    rejected: int


def messages(orders: int = 240) -> list[Message]:
    """Receipts and charges for every order, inventory updates, one bad refund."""
    out: list[Message] = []
    for n in range(1, orders + 1):
        order = str(n)
        out.append(app.charge.message(order_id=order, amount_cents=100 * n))
        out.append(app.send_receipt.message(order_id=order, email=f"buyer{n}@example.com"))
        out.append(app.reserve_stock.message(order_id=order, sku=f"SKU-{n % 20}"))
    for n in range(20):
        sku = f"SKU-{n}" + ("-X" if n % 10 == 3 else "")
        out.append(app.sync_inventory.message(sku=sku, delta=n))
    out.append(app.refund.message(order_id="13"))
    out.append(app.refund.message(order_id="14"))
    return out


# Messages a foreign producer put on the queue by hand (the AWS CLI, another service).
FOREIGN_BODIES: tuple[str, ...] = (
    "charge order 77 please",  # not JSON
    json.dumps({"order_id": "77"}),  # JSON, but not an envelope
    json.dumps({"v": 9, "id": "f-1", "task": "charge", "args": [], "kwargs": {}}),  # version
    json.dumps({"v": 1, "id": "f-2", "task": "chrage", "args": [], "kwargs": {}}),  # typo
    json.dumps({"v": 1, "id": "f-3", "task": "charge", "args": [], "kwargs": {"order": 1}}),
)


def expected(orders: int = 240) -> Expected:
    """The figures :func:`messages` and :data:`FOREIGN_BODIES` must produce."""
    broken_skus = sum(1 for n in range(20) if n % 10 == 3)
    flaky = orders // 10
    return Expected(
        succeeded=3 * orders + (20 - broken_skus) + 1,
        dead=broken_skus + 1 + len(FOREIGN_BODIES),
        retried=flaky + broken_skus * (app.QUICK_RETRY.max_attempts - 1),
        rejected=len(FOREIGN_BODIES),
    )
