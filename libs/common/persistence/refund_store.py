"""The refund store: the intent to pay a customer back, claimed and resolved exactly once.

Every SQL statement that touches `refunds` lives here.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Final

import asyncpg

from libs.common.domain.refunds import Refund, RefundClaim, RefundStatus
from libs.common.persistence.db import Executor, Q

_REFUND_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Refund))


def refund_from_row(row: asyncpg.Record) -> Refund:
    """Build the typed refund from a row holding every column of `refunds`."""
    values = {name: row[name] for name in _REFUND_FIELDS}
    values["status"] = RefundStatus(values["status"])
    return Refund(**values)


class PgRefunds:
    """The refunds table, bound to one database handle."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def insert(self, order_id: str, amount_sats: int | None = None) -> None:
        """Write the intent to refund a standard order (the whole price unless amount_sats).

        In the transaction that moves the order to refund_pending. One per order and per
        refund invoice, ever: a second insert does nothing; hold and balance orders get none.
        """
        if amount_sats is None:
            await self._db.execute(Q.refund_insert, order_id)
        else:
            await self._db.execute(Q.refund_insert_amount, order_id, amount_sats)

    async def get(self, order_id: str) -> Refund | None:
        """The order's refund, if one was ever owed."""
        row = await self._db.fetchrow(Q.refund_get, order_id)
        return None if row is None else refund_from_row(row)

    # --- payments: refund methods ---

    async def claim(
        self, order_id: str, lease_seconds: float, claim_id: uuid.UUID
    ) -> RefundClaim | None:
        """Claim a due refund (or one whose lease ran out) for one attempt; None if not due.

        Every later write names the claim, so a slow former claimer cannot overwrite it.
        """
        row = await self._db.fetchrow(Q.refund_claim, order_id, float(lease_seconds), claim_id)
        if row is None:
            return None
        return RefundClaim(refund_from_row(row), new_attempt=bool(row["new_attempt"]))

    async def due(self, limit: int) -> list[str]:
        """Order ids of refunds due for an attempt or whose claim's lease ran out."""
        return [r["order_id"] for r in await self._db.fetch(Q.refunds_due, limit)]

    async def succeeded(self, order_id: str, fee_sat: int) -> bool:
        """Record an in-flight refund as paid, whoever holds the claim; False if it was not."""
        return await self._db.fetchval(Q.refund_succeeded, order_id, fee_sat) is not None

    async def retry_later(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay_seconds: float
    ) -> None:
        """Put a claimed refund back to pending, due after delay_seconds."""
        await self._db.execute(
            Q.refund_retry_later, order_id, claim_id, reason, float(delay_seconds)
        )

    async def retry_uncounted(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay_seconds: float
    ) -> None:
        """As retry_later, giving back the attempt the claim counted (nothing reached the node)."""
        await self._db.execute(
            Q.refund_retry_uncounted, order_id, claim_id, reason, float(delay_seconds)
        )

    async def given_up(self, order_id: str, claim_id: uuid.UUID, reason: str) -> bool:
        """Mark a claimed refund failed for good; False if the claim was no longer held."""
        return await self._db.fetchval(Q.refund_given_up, order_id, claim_id, reason) is not None

    async def failed(self) -> list[Refund]:
        """Every refund that failed for good (to be paid by hand), oldest first."""
        return [refund_from_row(r) for r in await self._db.fetch(Q.refunds_failed)]

    # --- provider: refund methods ---
