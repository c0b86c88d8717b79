"""The cap on unpaid orders per client address, counted in PostgreSQL across gateway replicas.

Two calls per create path: `refuse` before the invoice is made (the usual refusal: nothing is
created), and `claim` first thing in the order's insert transaction. `claim` takes a
per-client lock until commit and counts again, so concurrent creates, on any replica, can
never leave more than the cap of unpaid orders; the loser of such a race gets the same 429
(and the use case cancels its just-made invoice). It also tags the transaction with the
address, which the new order records as its client address.
"""

from __future__ import annotations

from datetime import datetime

from libs.common.persistence.ports import Orders, UnpaidOrders
from services.gateway.errors import ApiError, rate_limited

REASON = "too many unpaid orders from your address; pay one or wait until one expires"


def _refusal(unpaid: UnpaidOrders, now: datetime) -> ApiError:
    """The 429 with Retry-After = seconds until the client's oldest unpaid order expires (the
    error middleware answers it in the body of the route's API)."""
    first = unpaid.first_expiry
    wait = 1.0 if first is None else (first - now).total_seconds()
    return rate_limited(wait, REASON)


async def refuse(orders: Orders, cap: int, address: str, now: datetime) -> None:
    """Before any invoice: raise the 429 if this client is at the cap (cap <= 0: no cap)."""
    if cap <= 0:
        return
    unpaid = await orders.unpaid_of_client(address)
    if unpaid.count >= cap:
        raise _refusal(unpaid, now)


async def claim(orders: Orders, cap: int, address: str, now: datetime) -> None:
    """In the insert transaction, before the insert: recount under the client's lock.

    Returns to go on (the new row records the address). Raises the 429 to insert nothing.
    """
    await orders.tag_client(address)
    if cap <= 0:
        return
    await orders.lock_client(address)
    unpaid = await orders.unpaid_of_client(address)
    if unpaid.count >= cap:
        raise _refusal(unpaid, now)
