"""The example application: an online shop's background work.

It is what `dispatch demo` runs, and what the SAM template packages. Each task
shows one behaviour a user cares about:

- ``send_receipt`` (sync) always succeeds;
- ``charge`` (async) fails transiently for some orders and succeeds on retry;
- ``sync_inventory`` fails every time for broken SKUs and is dead-lettered
  after its last attempt;
- ``refund`` raises PermanentError for an order that cannot be refunded, and
  is dead-lettered at once;
- ``reserve_stock`` calls the warehouse API (dispatch/local/example/backend.py: 4 requests at
  a time, 503 beyond) through the ``warehouse-api`` resource, so the throttle
  keeps it from ever being overloaded.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp

from dispatch import Backpressure, PermanentError, Resource, Retry, current_task, task

# Short delays keep the demo quick; production values are seconds to minutes.
QUICK_RETRY = Retry(max_attempts=3, base_delay_s=1.0, max_delay_s=2.0)


@task(retry=QUICK_RETRY, timeout_s=10)
def send_receipt(order_id: str, email: str) -> dict[str, str]:
    """Render and "send" a receipt (sync handlers run in worker threads)."""
    return {"order_id": order_id, "to": email}


@task(retry=QUICK_RETRY, timeout_s=10)
async def charge(order_id: str, amount_cents: int) -> dict[str, object]:
    """Charge a card; every tenth order meets a flaky processor on its first attempt."""
    await asyncio.sleep(0.01)  # the card processor's round trip
    if int(order_id) % 10 == 0 and current_task().attempt == 1:
        raise ConnectionError(f"card processor timed out charging order {order_id}")
    return {"order_id": order_id, "charged": amount_cents}


@task(retry=QUICK_RETRY, timeout_s=10)
async def sync_inventory(sku: str, delta: int) -> int:
    """Push a stock change to the warehouse; SKUs ending in -X are unknown there."""
    if sku.endswith("-X"):
        raise LookupError(f"warehouse does not know SKU {sku}")
    return delta


@task(retry=QUICK_RETRY, timeout_s=10)
def refund(order_id: str) -> str:
    """Refund an order; order 13 was refunded already, which no retry can change."""
    if order_id == "13":
        raise PermanentError(f"order {order_id} was already refunded")
    return order_id


# The warehouse API serves 4 requests at once, about 50 ms each: at most ~80/s.
WAREHOUSE = Resource("warehouse-api", rate_per_s=40, burst=5, max_concurrency=4)
BACKEND_URL_ENV = "EXAMPLE_BACKEND_URL"


@task(resource=WAREHOUSE, retry=QUICK_RETRY, timeout_s=10)
async def reserve_stock(order_id: str, sku: str) -> str:
    """Reserve stock at the warehouse; a 503 means it is overloaded (Backpressure)."""
    base = os.environ.get(BACKEND_URL_ENV)
    if not base:
        raise PermanentError(
            f"{BACKEND_URL_ENV} is not set: the warehouse API this task calls is started by "
            "`dispatch demo` and `dispatch dev`; elsewhere, run one and export its URL"
        )
    url = f"{base}/work?ms=50"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if response.status == 503:
            retry_after = float(response.headers.get("Retry-After", "1"))
            raise Backpressure("warehouse API overloaded (503)", retry_after_s=retry_after)
        response.raise_for_status()
    return f"{sku} reserved for order {order_id}"
