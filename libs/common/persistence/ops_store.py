"""The operator's tables and read-only reports: alarms, the provider request budget, metric
gauges and invariant checks.

Every SQL statement that touches `provider_alarms` or `provider_budget`, and every read-only
query behind the metrics and the invariant checker, lives here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.common.adapters.sms.errors import Banned, ProviderError, RateLimited
from libs.common.adapters.sms.limiter import (
    BUDGET_UNAVAILABLE,
    LATE_AFTER,
    SlotBudget,
    Take,
    budget_account,
    pause_reason,
)
from libs.common.core.config import Settings
from libs.common.core.metrics import PROVIDER_BUDGET_PAUSES
from libs.common.domain.alarms import Alarm
from libs.common.persistence.db import Executor, Q


class PgAlarms:
    """The provider_alarms table: a row means the alarm is raised."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def raise_(self, alarm: Alarm, detail: str) -> datetime | None:
        """Raise the alarm; returns when it was first raised, None when it already was."""
        since: datetime | None = await self._db.fetchval(Q.alarm_raise, alarm.value, detail)
        return since

    async def clear(self, alarm: Alarm) -> bool:
        """Clear the alarm; True when it was raised."""
        return await self._db.fetchval(Q.alarm_clear, alarm.value) is not None

    async def active(self, alarm: Alarm) -> tuple[str, datetime] | None:
        """(detail, since) of a raised alarm, or None."""
        row = await self._db.fetchrow(Q.alarm_active, alarm.value)
        return None if row is None else (row["detail"], row["since"])


# --- the provider request budget (every service that calls the provider) ---


class PgRequestBudget(SlotBudget):
    """The request budget of one provider account, in PostgreSQL: shared by every replica.

    One row per account (`provider_budget`); each call reserves its slot in one round trip
    (`provider_budget_take`, a GCRA step under the row lock, by the database clock) and sleeps
    until it. A pause (429, BANNED) is written to the row and holds every replica. When the
    database cannot be asked, the call is refused (transient RateLimited BUDGET_UNAVAILABLE)
    rather than sent unmetered.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        account: str,
        *,
        rate: float,
        burst: float = 1.0,
        max_wait: float = 30.0,
        late_after: float = LATE_AFTER,
    ) -> None:
        """Bind to the pool and the account key (see `budget_account`).

        Never to one transaction's connection: the row lock of a take would be held until that
        transaction ends, stopping every replica's calls meanwhile.
        """
        super().__init__(
            interval=1.0 / rate if rate > 0 else 0.0,
            max_wait=max_wait,
            clock=time.monotonic,
            sleep=asyncio.sleep,
            late_after=late_after,
        )
        self._db = pool
        self.account = account
        self.rate = rate
        self.burst = burst

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, settings: Settings) -> PgRequestBudget:
        """The budget of the configured provider account."""
        return cls(
            pool,
            budget_account(settings.provider_url, settings.provider_api_key),
            rate=settings.provider_rate_per_second,
            burst=settings.provider_budget_burst,
            max_wait=settings.provider_budget_max_wait_seconds,
            late_after=settings.provider_budget_late_seconds,
        )

    async def _take(self, ahead: float) -> Take:
        """Reserve the next slot in the shared row (one round trip)."""
        args = (self.account, self.interval, self.burst, ahead)
        try:
            # Waiting for a free connection is local queueing, not lateness: the clock is read
            # once the connection is ours, just before the question leaves.
            async with self._db.acquire() as conn:
                asked = self._clock()
                row = await conn.fetchrow(Q.budget_take, *args)
        except _DB_ERRORS as exc:
            raise _no_budget(exc) from exc
        paused_for: float = row["paused_for"]
        error = None
        if paused_for > 0:
            error = _pause_error(row["pause_banned"], row["pause_code"], row["pause_until_text"])
        return Take(asked, row["wait"], row["granted"], paused_for, error)

    async def _paused_meanwhile(self) -> bool:
        """Whether another replica paused the account while this one slept on its slot."""
        return await self.paused_for() > 0

    async def paused_for(self) -> float:
        """Seconds left in the account's pause (0 when none)."""
        row = await self._ask(Q.budget_paused_for, self.account)
        left: float = row[0]
        return left

    async def pause(self, seconds: float, error: Callable[[float], ProviderError]) -> None:
        """Hold every replica for `seconds` (unless a longer pause is already on)."""
        sample = error(seconds)
        until = sample.until if isinstance(sample, Banned) else None
        await self._ask(
            Q.budget_pause,
            self.account,
            max(seconds, 0.0),
            isinstance(sample, Banned),
            sample.code,
            until,
            fetch=False,
        )
        PROVIDER_BUDGET_PAUSES.labels(pause_reason(error)).inc()

    async def _ask(self, query: str, *args: object, fetch: bool = True) -> Any:
        """Run one budget query; a database failure refuses the call (transient)."""
        try:
            if not fetch:
                return await self._db.execute(query, *args)
            row = await self._db.fetchrow(query, *args)
        except _DB_ERRORS as exc:
            raise _no_budget(exc) from exc
        return (0.0,) if row is None else row


# What "the database cannot be asked" looks like: server errors, a closed pool, no connection.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _no_budget(exc: BaseException) -> RateLimited:
    """The transient error of a call whose budget cannot be asked (it is not sent unmetered)."""
    return RateLimited(BUDGET_UNAVAILABLE, retry_after=1.0, detail=type(exc).__name__)


def _pause_error(
    banned: bool, code: str | None, until: str | None
) -> Callable[[float], ProviderError]:
    """Rebuild, from the row, the error another replica's pause makes a too-long wait raise."""
    if banned:
        ban_code = code or "BANNED"
        return lambda left: Banned(ban_code, until=until, retry_after=left, transient=True)
    rl_code = code or "RATE_LIMITED"
    return lambda left: RateLimited(rl_code, retry_after=left)


# --- gateway: health ---


class PgHealth:
    """Whether the database answers (the gateway's health check)."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def ping(self) -> None:
        """Run the cheapest query; raises when the database cannot answer."""
        await self._db.fetchval(Q.db_ping)


# --- metrics (scheduler & libs) ---


@dataclass(frozen=True)
class OrderGauges:
    """What the order gauges show: counts by (type, status) and by invoice (kind, state)."""

    orders: dict[tuple[str, str], int]
    invoices: dict[tuple[str, str], int]
    paid_past_deadline: int


class PgMetrics:
    """Read-only counts behind the gauges of `libs.common.core.metrics`."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def order_gauges(self, *, stuck_grace: float) -> OrderGauges:
        """Orders by type and status, invoices by kind and state, and paid orders stuck for
        more than `stuck_grace` seconds past their deadline."""
        orders = await self._db.fetch(Q.metrics_orders_by_status)
        invoices = await self._db.fetch(Q.metrics_invoices_by_state)
        stuck = await self._db.fetchval(Q.metrics_paid_past_deadline, stuck_grace)
        return OrderGauges(
            orders={(r["type"], r["status"]): r["n"] for r in orders},
            invoices={(r["kind"], r["state"]): r["n"] for r in invoices},
            paid_past_deadline=stuck,
        )

    async def fx_rate_age(self) -> float | None:
        """Age in seconds of the cached BTC/USD rate by the database clock (None: none yet)."""
        age: float | None = await self._db.fetchval(Q.metrics_fx_rate_age)
        return age


# --- invariants (scheduler & libs) ---


@dataclass(frozen=True)
class PaidOrderCheck:
    """A paid order (with an invoice) as the node checks need it."""

    id: str
    payment_hash: bytes
    price_sats: int
    status: str
    payment_mode: str
    sms_received_at: datetime | None


@dataclass(frozen=True)
class BalanceOrderCheck:
    """A balance-paid order and how often the ledger debited and credited it."""

    id: str
    status: str
    debits: int
    credits: int


class PgInvariants:
    """The read-only queries behind the money invariant checker; each row is a suspect."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def stuck_paid(self, grace_seconds: float) -> list[tuple[str, str]]:
        """(order id, status) of paid orders short of an outcome `grace_seconds` past deadline."""
        rows = await self._db.fetch(Q.invariant_stuck_paid, grace_seconds)
        return [(r["id"], r["status"]) for r in rows]

    async def refund_state_mismatch(self) -> list[tuple[str, str, str | None]]:
        """(order id, order status, refund status) where the two disagree on the outcome."""
        rows = await self._db.fetch(Q.invariant_refund_state_mismatch)
        return [(r["id"], r["status"], r["refund_status"]) for r in rows]

    async def refund_after_code(self) -> list[tuple[str, str]]:
        """(order id, status) of orders refunded although their code was delivered."""
        rows = await self._db.fetch(Q.invariant_refund_after_code)
        return [(r["id"], r["status"]) for r in rows]

    async def refund_above_price(self) -> list[tuple[str, int, int]]:
        """(order id, refund amount, price) of refunds larger than the price."""
        rows = await self._db.fetch(Q.invariant_refund_above_price)
        return [(r["id"], r["amount_sats"], r["price_sats"]) for r in rows]

    async def completed_without_code(self) -> list[str]:
        """Ids of completed SMS orders with no SMS recorded."""
        return [r["id"] for r in await self._db.fetch(Q.invariant_completed_without_code)]

    async def terminal_entered_twice(self) -> list[tuple[str, int]]:
        """(order id, how many terminal entries) of orders that ended more than once."""
        rows = await self._db.fetch(Q.invariant_terminal_entered_twice)
        return [(r["order_id"], r["n"]) for r in rows]

    async def ledger_mismatch(self) -> list[tuple[int, int, int]]:
        """(account id, balance, ledger sum) of accounts whose balance is not their ledger's."""
        rows = await self._db.fetch(Q.invariant_ledger_mismatch)
        return [(r["id"], r["balance_sats"], r["ledger_sum"]) for r in rows]

    async def balance_orders(self) -> list[BalanceOrderCheck]:
        """Every balance-paid order with its ledger debits and credits."""
        rows = await self._db.fetch(Q.invariant_balance_orders)
        return [BalanceOrderCheck(r["id"], r["status"], r["debits"], r["credits"]) for r in rows]

    async def paid_orders(self, limit: int) -> list[PaidOrderCheck]:
        """The latest `limit` paid orders that have an invoice."""
        rows = await self._db.fetch(Q.invariant_paid_orders, limit)
        return [
            PaidOrderCheck(
                r["id"],
                bytes(r["payment_hash"]),
                r["price_sats"],
                r["status"],
                r["payment_mode"],
                r["sms_received_at"],
            )
            for r in rows
        ]

    async def unpaid_orders(self, limit: int) -> list[tuple[str, bytes, str]]:
        """(order id, payment hash, status) of the latest `limit` orders never paid."""
        rows = await self._db.fetch(Q.invariant_unpaid_orders, limit)
        return [(r["id"], bytes(r["payment_hash"]), r["status"]) for r in rows]

    async def refunds_paid(self, limit: int) -> list[tuple[str, bytes]]:
        """(order id, refund payment hash) of the latest `limit` refunds marked paid."""
        rows = await self._db.fetch(Q.invariant_refunds_paid, limit)
        return [(r["order_id"], bytes(r["payment_hash"])) for r in rows]
