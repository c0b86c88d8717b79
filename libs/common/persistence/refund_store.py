"""The refund store: the intent to pay a customer back, claimed and resolved exactly once.

Every SQL statement that touches `refunds` lives here.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import asyncpg

from libs.common.domain.refunds import Refund, RefundStatus
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

    # --- provider: refund methods ---
