"""The prepaid accounts' store: accounts, their ledger and fundings.

Every SQL statement that touches `accounts`, `ledger` or `fundings` lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from libs.common.persistence.db import Executor, Q
from libs.common.persistence.ports import AlreadyRecorded, Funding


@dataclass(frozen=True, slots=True)
class Account:
    """A prepaid account with an active API key."""

    id: int
    balance_sats: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One movement of an account's balance."""

    amount_sats: int
    kind: str
    ref: str
    balance_after: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewFunding:
    """A top-up awaiting payment: a hold invoice that credits the balance once when paid."""

    id: str
    account_id: int
    amount_sats: int
    payment_hash: bytes
    preimage: bytes
    payment_request: str
    expires_at: datetime


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

    async def create(self, key_hash: bytes, label: str) -> int:
        """Create an account for the hash of its API key; returns its id."""
        account_id: int = await self._db.fetchval(Q.account_create, key_hash, label)
        return account_id

    async def revoke(self, account_id: int) -> bool:
        """Revoke an account's key; False if there was no active key."""
        return await self._db.fetchval(Q.account_revoke, account_id) is not None

    async def by_key(self, key_hash: bytes) -> Account | None:
        """The account whose active API key hashes to key_hash."""
        row = await self._db.fetchrow(Q.account_by_key, key_hash)
        return None if row is None else Account(int(row["id"]), row["balance_sats"])

    async def insert_funding(self, funding: NewFunding) -> None:
        """Record a top-up invoice awaiting payment."""
        await self._db.execute(
            Q.funding_insert,
            funding.id,
            funding.account_id,
            funding.amount_sats,
            funding.payment_hash,
            funding.preimage,
            funding.payment_request,
            funding.expires_at,
        )

    async def history(self, account_id: int, limit: int) -> list[LedgerEntry]:
        """The account's latest balance movements, newest first."""
        rows = await self._db.fetch(Q.ledger_history, account_id, limit)
        return [
            LedgerEntry(r["amount_sats"], r["kind"], r["ref"], r["balance_after"], r["created_at"])
            for r in rows
        ]

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
