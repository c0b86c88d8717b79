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
import math
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from libs.common.db import Q
from libs.common.lightning import LndError
from services.gateway.errors import error_response
from services.gateway.keys import LND, SETTINGS
from services.gateway.limits import client_address

log = logging.getLogger(__name__)

REASON = "too many unpaid orders from your address; pay one or wait until one expires"


def _address(request: web.Request) -> str:
    """The address the cap is counted against (the rate limiter's)."""
    return client_address(request, request.app[SETTINGS])


def retry_after(first_expiry: datetime | None, now: datetime) -> int:
    """Whole seconds until the client's oldest unpaid order expires and frees a slot (>= 1)."""
    if first_expiry is None:
        return 1
    return max(1, math.ceil((first_expiry - now).total_seconds()))


def _refusal(row: Any, *, classic: bool) -> web.Response:
    """The 429 in the API's own error style, with Retry-After."""
    if classic:
        resp = web.json_response({"status": "error", "reason": REASON}, status=429)
    else:
        resp = error_response(429, "RATE_LIMITED", REASON)
    resp.headers["Retry-After"] = str(retry_after(row["first_expiry"], datetime.now(UTC)))
    return resp


async def _over_cap(conn: asyncpg.Connection | asyncpg.Pool, address: str, cap: int) -> Any:
    """The count row when the client already has `cap` unpaid orders, else None."""
    row = await conn.fetchrow(Q.unpaid_count_for_client, address)
    return row if row is not None and row["unpaid"] >= cap else None


async def refuse(request: web.Request, pool: asyncpg.Pool, *, classic: bool) -> web.Response | None:
    """Before any invoice: the 429 to answer if this client is at the cap, else None."""
    cap = request.app[SETTINGS].max_unpaid_per_client
    if cap <= 0:
        return None
    row = await _over_cap(pool, _address(request), cap)
    return None if row is None else _refusal(row, classic=classic)


async def claim(
    conn: asyncpg.Connection, request: web.Request, payment_hash: bytes, *, classic: bool
) -> web.Response | None:
    """In the insert transaction, before the insert: recount under the client's lock.

    None: go on (the new row records the address). A response: answer it and insert nothing;
    the invoice just made for the order is cancelled so nothing is left behind.
    """
    address = _address(request)
    await conn.execute(Q.unpaid_tag_transaction, address)
    cap = request.app[SETTINGS].max_unpaid_per_client
    if cap <= 0:
        return None
    await conn.execute(Q.unpaid_lock_client, address)
    row = await _over_cap(conn, address, cap)
    if row is None:
        return None
    try:
        await request.app[LND].cancel_invoice(payment_hash, money=False)
    except (LndError, OSError, TimeoutError) as exc:
        # Unpaid and unlisted anywhere: the node cancels it at its expiry all the same.
        log.warning("could not cancel the invoice of a refused order: %s", exc)
    return _refusal(row, classic=classic)
