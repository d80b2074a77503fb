"""myproject's background work: two tasks, one behind a throttled resource.

This is the module ``DISPATCH_TASKS`` (``--tasks``, the template's ``TaskModules``)
names: ``dispatch dev --tasks myapp.tasks`` and ``dispatch run --tasks myapp.tasks``
import it from the folder they run in, the Lambda functions from their package.
Importing it declares the tasks and does nothing else: no client, no connection.
"""

from __future__ import annotations

from dispatch import PermanentError, Resource, Retry, current_task, task

# The payment provider allows 20 requests a second and 5 at once for this account:
# a share of that quota, not all of it (docs/getting-started.md, "Choosing rates").
PAYMENTS = Resource("payments-api", rate_per_s=10, burst=5, max_concurrency=4)


@task(resource=PAYMENTS, retry=Retry(max_attempts=5, base_delay_s=1.0, max_delay_s=60.0))
def charge(order_id: str, amount_cents: int) -> dict[str, object]:
    """Charge an order; a non-positive amount can never succeed, so no retry is spent."""
    if amount_cents <= 0:
        raise PermanentError(f"order {order_id}: cannot charge {amount_cents} cents")
    # Call the payment provider here. An exception is retried with backoff;
    # raise dispatch.Backpressure when it answers "slow down" (HTTP 429/503).
    return {"order_id": order_id, "charged": amount_cents, "attempt": current_task().attempt}


@task(retry=Retry(max_attempts=3, base_delay_s=2.0, max_delay_s=30.0), timeout_s=10)
async def send_receipt(order_id: str, email: str) -> str:
    """E-mail the receipt (async handlers run on the dispatcher's event loop)."""
    return f"receipt for order {order_id} sent to {email}"
