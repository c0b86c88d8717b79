"""The order aggregate's store: orders, their status log, timers, tokens and messages.

Every SQL statement that touches these tables lives here. A row becomes an `Order` in exactly
one place, `order_from_row`; nothing else reads an order column by name.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any, Final

import asyncpg

from libs.common.core import metrics
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message, extract_code, storable
from libs.common.domain.orders import (
    NewOrder,
    Order,
    OrderType,
    PaymentMode,
    Status,
    check_transition,
    is_terminal,
)
from libs.common.persistence.db import Executor, Q
from libs.common.persistence.outbox_store import PgOutbox, enqueue
from libs.common.persistence.ports import OrderInvoice


class _Now:
    """Marker for "the database's now()" so every writer uses the same clock."""

    def __repr__(self) -> str:
        return "NOW"


NOW: Final = _Now()

# Columns a transition may set besides the status; anything else is a programming error.
WRITABLE: Final = frozenset(
    {
        "paid_at",
        "deadline_at",
        "activation_id",
        "phone_number",
        "code",
        "sms_text",
        "sms_received_at",
        "next_poll_at",
        "amt_paid_msat",
        "htlc_expiry_height",
        "rent_ends_at",
    }
)


async def transition(
    conn: asyncpg.Connection,
    order_id: str,
    expected: Status,
    target: Status,
    **changes: Any,
) -> asyncpg.Record | None:
    """Move an order from expected to target, setting changes; None if it was not in expected.

    A None result means a stale or duplicate event: the caller logs, acks and moves on.
    Values may be NOW (the database clock) or a timedelta (now() + delta).
    """
    check_transition(expected, target)
    sets = ["status = $3", "updated_at = now()"]
    args: list[Any] = [order_id, expected.value, target.value]
    for column, value in changes.items():
        if column not in WRITABLE:
            raise ValueError(f"a transition cannot set {column!r}")
        if value is NOW:
            sets.append(f"{column} = now()")
        elif isinstance(value, timedelta):
            args.append(value)
            sets.append(f"{column} = now() + ${len(args)}::interval")
        else:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")
    if is_terminal(target):
        sets.append("finished_at = now()")
    sql = f"UPDATE orders SET {', '.join(sets)} WHERE id = $1 AND status = $2 RETURNING *"
    row = await conn.fetchrow(sql, *args)
    if row is not None:
        # Counted when the statement succeeds; a transaction rolled back afterwards still
        # counts, which only ever overstates the rate of a transition that is retried.
        metrics.TRANSITIONS.labels(expected.value, target.value).inc()
        await _observe_stage(conn, row, expected, target)
    return row


# Stages whose length is measured when an order leaves them: (from, to) -> (stage, started in).
_STAGE_ENDS: Final = {
    (Status.PENDING_PAYMENT, Status.PAID): ("payment", Status.PENDING_PAYMENT),
    (Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS): ("allocation", Status.PAID),
    (Status.WAITING_FOR_SMS, Status.CODE_RECEIVED): ("sms", Status.WAITING_FOR_SMS),
    (Status.REFUND_PENDING, Status.REFUNDED): ("refund", Status.REFUND_PENDING),
}


async def _observe_stage(
    conn: asyncpg.Connection, row: asyncpg.Record, expected: Status, target: Status
) -> None:
    """Record how long the order spent in the stage this transition ends, if it ends one."""
    stage = _STAGE_ENDS.get((expected, target))
    if stage is None:
        return
    name, started_in = stage
    seconds: float | None
    # updated_at is the transition's now(); the columns that mark a stage's start save a query.
    if name == "payment":
        seconds = (row["updated_at"] - row["created_at"]).total_seconds()
    elif name == "allocation" and row["paid_at"] is not None:
        seconds = (row["updated_at"] - row["paid_at"]).total_seconds()
    else:
        # No column holds when the stage began; the trigger's status log does.
        seconds = await conn.fetchval(Q.order_entered_status_seconds_ago, row["id"], started_in)
    if seconds is not None:
        metrics.STAGE_SECONDS.labels(name).observe(max(0.0, seconds))


async def get(conn: asyncpg.Connection | asyncpg.Pool, order_id: str) -> asyncpg.Record | None:
    """Load one order."""
    return await conn.fetchrow(Q.order_get, order_id)


async def set_timer(conn: asyncpg.Connection, order_id: str, kind: str, seconds: float) -> None:
    """Arm the order's timer of this kind, due in `seconds` by the database clock."""
    await conn.execute(Q.timer_set, order_id, kind, float(seconds))


async def cancel_timer(conn: asyncpg.Connection, order_id: str, kind: str) -> None:
    """Disarm the order's timer of this kind if it has not fired."""
    await conn.execute(Q.timer_cancel, order_id, kind)


async def mark_paid(
    conn: asyncpg.Connection, order_id: str, *, deadline: float, prefix: str, **changes: Any
) -> bool:
    """pending_payment -> paid: start the SMS deadline and tell the provider worker."""
    moved = await transition(
        conn,
        order_id,
        Status.PENDING_PAYMENT,
        Status.PAID,
        paid_at=NOW,
        deadline_at=timedelta(seconds=deadline),
        **changes,
    )
    if moved is None:
        return False
    await cancel_timer(conn, order_id, Timer.INVOICE_EXPIRED)
    await set_timer(conn, order_id, Timer.SMS_TIMEOUT, deadline)
    await enqueue(conn, Event(EventType.PAID, order_id), prefix=prefix)
    return True


async def complete(
    conn: asyncpg.Connection,
    order_id: str,
    *,
    code_retention: float,
    prefix: str,
    current: Status = Status.CODE_RECEIVED,
) -> bool:
    """code_received (or rent_active) -> completed, arming the code purge and the event."""
    if await transition(conn, order_id, current, Status.COMPLETED) is None:
        return False
    await set_timer(conn, order_id, Timer.PURGE_CODE, code_retention)
    await enqueue(conn, Event(EventType.COMPLETED, order_id), prefix=prefix)
    return True


_ORDER_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Order))
_ENUMS: Final = {"type": OrderType, "status": Status, "payment_mode": PaymentMode}


def order_from_row(row: asyncpg.Record) -> Order:
    """Build the typed order from a row holding every column of `orders` (and maybe more)."""
    values = {name: row[name] for name in _ORDER_FIELDS}
    for name, enum in _ENUMS.items():
        values[name] = enum(values[name])
    return Order(**values)


def _maybe_order(row: asyncpg.Record | None) -> Order | None:
    """order_from_row, passing None through."""
    return None if row is None else order_from_row(row)


class PgTimers:
    """Durable per-order timers in the `timers` table."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def set(self, order_id: str, kind: str, seconds: float) -> None:
        """Arm (or re-arm) the order's timer of this kind, due in `seconds`."""
        await self._db.execute(Q.timer_set, order_id, kind, float(seconds))

    async def cancel(self, order_id: str, kind: str) -> None:
        """Disarm the order's timer of this kind if it has not fired."""
        await self._db.execute(Q.timer_cancel, order_id, kind)


class PgOrders:
    """The orders table: typed reads and guarded transitions, bound to one database handle."""

    def __init__(self, db: Executor, *, timers: PgTimers, outbox: PgOutbox) -> None:
        self._db = db
        self._timers = timers
        self._outbox = outbox

    async def insert(self, new: NewOrder) -> Order:
        """Create a pending_payment order."""
        row = await self._db.fetchrow(
            Q.order_create,
            new.id,
            new.type.value,
            new.service,
            new.country_id,
            new.price_sats,
            new.provider_cost_usd,
            new.payment_hash,
            new.payment_request,
            new.invoice_expires_at,
            new.payment_mode.value,
            new.refund_invoice,
            new.refund_payment_hash,
            new.rent_hours,
            new.reactivates,
            new.preimage,
            new.account_id,
        )
        return order_from_row(row)

    async def get(self, order_id: str) -> Order | None:
        """Load one order."""
        return _maybe_order(await self._db.fetchrow(Q.order_get, order_id))

    async def transition(
        self, order_id: str, expected: Status, target: Status, **changes: Any
    ) -> Order | None:
        """Move an order from expected to target, setting changes; None if it was not in expected.

        A None result means a stale or duplicate event: the caller logs, acks and moves on.
        Values may be NOW (the database clock) or a timedelta (now() + delta). Run it inside
        a transaction when the stage metric needs the status log (it reads one more row).
        """
        return _maybe_order(await transition(self._db, order_id, expected, target, **changes))

    async def mark_paid(self, order_id: str, *, deadline: float, **changes: Any) -> bool:
        """pending_payment -> paid: start the SMS deadline and tell the provider worker."""
        moved = await self.transition(
            order_id,
            Status.PENDING_PAYMENT,
            Status.PAID,
            paid_at=NOW,
            deadline_at=timedelta(seconds=deadline),
            **changes,
        )
        if moved is None:
            return False
        await self._timers.cancel(order_id, Timer.INVOICE_EXPIRED)
        await self._timers.set(order_id, Timer.SMS_TIMEOUT, deadline)
        await self._outbox.enqueue(Event(EventType.PAID, order_id))
        return True

    async def complete(
        self, order_id: str, *, code_retention: float, current: Status = Status.CODE_RECEIVED
    ) -> bool:
        """code_received (or rent_active) -> completed, arming the code purge and the event."""
        if await self.transition(order_id, current, Status.COMPLETED) is None:
            return False
        await self._timers.set(order_id, Timer.PURGE_CODE, code_retention)
        await self._outbox.enqueue(Event(EventType.COMPLETED, order_id))
        return True

    # --- gateway: order methods ---

    # --- payments: order methods ---

    async def by_payment_hash(self, payment_hash: bytes) -> Order | None:
        """The order whose invoice has this payment hash."""
        return _maybe_order(await self._db.fetchrow(Q.order_by_payment_hash, payment_hash))

    async def pending_payment(self, limit: int) -> list[OrderInvoice]:
        """Orders still waiting for their payment, newest first."""
        return _order_invoices(await self._db.fetch(Q.orders_pending_payment, limit))

    async def awaiting_payment_by_hash(self, payment_hashes: list[bytes]) -> list[OrderInvoice]:
        """Which of these payment hashes belong to orders still waiting for their payment."""
        rows = await self._db.fetch(Q.orders_awaiting_payment_by_hash, payment_hashes)
        return _order_invoices(rows)

    async def hold_open(self, limit: int) -> list[OrderInvoice]:
        """Paid hold orders not yet settled or released, oldest first."""
        return _order_invoices(await self._db.fetch(Q.orders_hold_open, limit))

    async def hold_completed_unsettled(self, limit: int) -> list[OrderInvoice]:
        """Completed hold orders still holding a code but no recorded settle."""
        return _order_invoices(await self._db.fetch(Q.orders_hold_completed_unsettled, limit))

    async def mark_settled(self, order_id: str) -> None:
        """Record that the hold invoice was settled (from then on the code is shown)."""
        await self._db.execute(Q.order_mark_settled, order_id)

    async def balance_refund_pending(self, limit: int) -> list[str]:
        """Ids of balance orders waiting to be credited back."""
        return [r["id"] for r in await self._db.fetch(Q.orders_balance_refund_pending, limit)]

    # --- provider: order methods ---

    # --- scheduler: order methods ---


class PgTokens:
    """The l402_tokens table: the root key of each credential, by key id."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def insert(self, key_id: bytes, root_key: bytes, order_id: str) -> None:
        """Store a new credential's root key for the order it unlocks."""
        await self._db.execute(Q.token_insert, key_id, root_key, order_id)

    async def delete_for_order(self, order_id: str) -> None:
        """Forget every credential of the order (it expired unpaid)."""
        await self._db.execute(Q.tokens_delete_for_order, order_id)

    # --- gateway: token methods ---


class PgMessages:
    """The order_messages table: each SMS of an order stored once, whichever source saw it."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def record(self, order_id: str, msg: Message) -> bool:
        """Store a message once; returns False when it was already there (a redelivery)."""
        text, phone_from = storable(msg.text), storable(msg.phone_from)
        code = storable(msg.code) or extract_code(text)
        inserted = await self._db.fetchval(
            Q.message_insert, order_id, msg.dedup_key(), phone_from, text, code, msg.received_at
        )
        return inserted is not None

    async def for_order(self, order_id: str) -> list[Message]:
        """Every message of an order, oldest first."""
        rows = await self._db.fetch(Q.messages_for_order, order_id)
        return [
            Message(
                received_at=r["received_at"],
                text=r["text"],
                code=r["code"],
                phone_from=r["phone_from"],
            )
            for r in rows
        ]


# --- gateway: new store classes ---

# --- payments: new store classes ---


def _order_invoices(rows: list[asyncpg.Record]) -> list[OrderInvoice]:
    """Rows of (id, status, payment_hash) as the invoice sweeps see orders."""
    return [OrderInvoice(r["id"], Status(r["status"]), bytes(r["payment_hash"])) for r in rows]


# --- provider: new store classes ---

# --- scheduler: new store classes ---
