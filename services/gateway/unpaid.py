"""The cap on unpaid orders per client address, counted in PostgreSQL across gateway replicas.

Two calls per create path: `refuse` before the invoice is made (the usual refusal: nothing is
created), and `claim` first thing in the order's insert transaction. `claim` takes a
per-client advisory lock until commit and counts again, so concurrent creates, on any
replica, can never leave more than the cap of unpaid orders; the loser of such a race gets
the same 429 and its just-made invoice is cancelled. It also tags the transaction with the
address, which the new row's `client_addr` default reads (migration 0006).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from libs.common.adapters.lightning import LndError
from libs.common.persistence.db import Q
from services.gateway.errors import ApiError, rate_limited
from services.gateway.keys import LND, SETTINGS
from services.gateway.limits import client_address

log = logging.getLogger(__name__)

REASON = "too many unpaid orders from your address; pay one or wait until one expires"


def _address(request: web.Request) -> str:
    """The address the cap is counted against (the rate limiter's)."""
    return client_address(request, request.app[SETTINGS])


def _refusal(row: Any) -> ApiError:
    """The 429 with Retry-After = seconds until the client's oldest unpaid order expires (the
    error middleware answers it in the body of the route's API)."""
    first_expiry: datetime | None = row["first_expiry"]
    wait = 1.0 if first_expiry is None else (first_expiry - datetime.now(UTC)).total_seconds()
    return rate_limited(wait, REASON)


async def _over_cap(conn: asyncpg.Connection | asyncpg.Pool, address: str, cap: int) -> Any:
    """The count row when the client already has `cap` unpaid orders, else None."""
    row = await conn.fetchrow(Q.unpaid_count_for_client, address)
    return row if row is not None and row["unpaid"] >= cap else None


async def refuse(request: web.Request, pool: asyncpg.Pool) -> None:
    """Before any invoice: raise the 429 if this client is at the cap."""
    cap = request.app[SETTINGS].max_unpaid_per_client
    if cap <= 0:
        return
    row = await _over_cap(pool, _address(request), cap)
    if row is not None:
        raise _refusal(row)


async def claim(conn: asyncpg.Connection, request: web.Request, payment_hash: bytes) -> None:
    """In the insert transaction, before the insert: recount under the client's lock.

    Returns to go on (the new row records the address). Raises the 429 to insert nothing;
    the invoice just made for the order is cancelled first so nothing is left behind.
    """
    address = _address(request)
    await conn.execute(Q.unpaid_tag_transaction, address)
    cap = request.app[SETTINGS].max_unpaid_per_client
    if cap <= 0:
        return
    await conn.execute(Q.unpaid_lock_client, address)
    row = await _over_cap(conn, address, cap)
    if row is None:
        return
    try:
        await request.app[LND].cancel_invoice(payment_hash, money=False)
    except (LndError, OSError, TimeoutError) as exc:
        # Unpaid and unlisted anywhere: the node cancels it at its expiry all the same.
        log.warning("could not cancel the invoice of a refused order: %s", exc)
    raise _refusal(row)
