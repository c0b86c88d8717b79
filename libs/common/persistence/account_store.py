"""The prepaid accounts' store: accounts, their ledger and fundings.

Every SQL statement that touches `accounts`, `ledger` or `fundings` lives here.
"""

from __future__ import annotations

import asyncpg

from libs.common.persistence.db import Executor, Q
from libs.common.persistence.ports import AlreadyRecorded, Funding


class PgAccounts:
    """The accounts, ledger and fundings tables, bound to one database handle."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def move(self, account_id: int, delta_sats: int, kind: str, ref: str) -> int | None:
        """Record one balance movement; the new balance, or None if it would overdraw.

        Raises asyncpg.UniqueViolationError when (kind, ref) was already recorded, which the
        caller treats as "done before". Run it inside a transaction with what it pays for.
        """
        balance: int | None = await self._db.fetchval(
            Q.account_move, account_id, delta_sats, kind, ref
        )
        return balance

    async def already_recorded(self, kind: str, ref: str) -> bool:
        """Tell whether this movement is in the ledger."""
        return await self._db.fetchval(Q.ledger_has, kind, ref) is not None

    # --- gateway: account methods ---

    # --- payments: account methods ---

    async def move_once(self, account_id: int, delta_sats: int, kind: str, ref: str) -> int | None:
        """Record one balance movement; the new balance, or None if it would overdraw.

        Raises AlreadyRecorded when (kind, ref) is in the ledger; in a transaction, that
        aborts it, so the caller rolls back whatever the movement paid for.
        """
        try:
            return await self.move(account_id, delta_sats, kind, ref)
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyRecorded(kind, ref) from exc

    async def fundings_pending(self, limit: int) -> list[Funding]:
        """Top-ups neither credited nor expired, oldest first."""
        return [
            Funding(
                id=r["id"],
                account_id=r["account_id"],
                amount_sats=r["amount_sats"],
                payment_hash=bytes(r["payment_hash"]),
                preimage=bytes(r["preimage"]),
            )
            for r in await self._db.fetch(Q.fundings_pending, limit)
        ]

    async def mark_funding(self, funding_id: str, status: str) -> bool:
        """Move a pending top-up to credited or expired; False if it was not pending."""
        return await self._db.fetchval(Q.funding_mark, funding_id, status) is not None


# Deprecated module-level access, kept until every caller uses PgAccounts.


async def move(
    conn: asyncpg.Connection, account_id: int, delta_sats: int, kind: str, ref: str
) -> int | None:
    """Record one balance movement; the new balance, or None if it would overdraw.

    Raises asyncpg.UniqueViolationError when (kind, ref) was already recorded, which the
    caller treats as "done before".
    """
    balance: int | None = await conn.fetchval(Q.account_move, account_id, delta_sats, kind, ref)
    return balance


async def already_recorded(conn: asyncpg.Connection | asyncpg.Pool, kind: str, ref: str) -> bool:
    """Tell whether this movement is in the ledger."""
    return await conn.fetchval(Q.ledger_has, kind, ref) is not None
