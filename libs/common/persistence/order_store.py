"""The order aggregate's store: orders, their status log, timers, tokens and messages.

Every SQL statement that touches these tables lives here. A row becomes an `Order` in exactly
one place, `order_from_row`; nothing else reads an order column by name.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
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
from libs.common.domain.refunds import RefundStatus
from libs.common.persistence.db import Executor, Q
from libs.common.persistence.outbox_store import PgOutbox
from libs.common.persistence.ports import (
    CredentialedOrder,
    DueTimer,
    OrderInvoice,
    RefundState,
    StatusChange,
    UnpaidOrders,
)


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


async def _transition(
    conn: Executor,
    order_id: str,
    expected: Status,
    target: Status,
    **changes: Any,
) -> asyncpg.Record | None:
    """The guarded UPDATE behind `PgOrders.transition`: the row moved, or None if not in expected.

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
    conn: Executor, row: asyncpg.Record, expected: Status, target: Status
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

    # --- scheduler: timer methods ---

    async def claim_due(self, limit: int) -> list[DueTimer]:
        """Lock up to `limit` due, unfired timers, earliest first (inside a transaction).

        FOR UPDATE SKIP LOCKED: any number of scheduler replicas claim at once and none
        gets a timer another holds; the database clock decides what is due.
        """
        rows = await self._db.fetch(Q.timers_claim_due, limit)
        return [DueTimer(r["id"], r["order_id"], r["kind"], r["due_at"]) for r in rows]

    async def mark_fired(self, ids: list[int]) -> None:
        """Mark claimed timers fired (in the claiming transaction)."""
        await self._db.execute(Q.timers_mark_fired, ids)

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest unfired timer is due (negative: overdue; None: none)."""
        value = await self._db.fetchval(Q.timers_next_due_in)
        return None if value is None else float(value)

    async def rearm_overdue(self, after_seconds: float) -> None:
        """Fire again the deadline timers that fired `after_seconds` ago without moving on.

        The safety net for a lost or dead-lettered message: a paid order still short of an
        outcome (SMS deadline, another-SMS window, rental end) gets its timer due now.
        """
        await self._db.execute(Q.orders_overdue_rearm, after_seconds)


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
        return _maybe_order(await _transition(self._db, order_id, expected, target, **changes))

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

    async def refund_invoice_in_use(self, payment_hash: bytes) -> bool:
        """Whether an order already names this refund invoice (by its payment hash)."""
        return await self._db.fetchval(Q.order_refund_invoice_in_use, payment_hash) is not None

    async def reactivation_in_progress(self, order_id: str) -> bool:
        """Whether a paid reactivation of this order is not over yet."""
        return await self._db.fetchval(Q.order_reactivation_in_progress, order_id) is not None

    async def unpaid_of_client(self, address: str) -> UnpaidOrders:
        """The client's unpaid orders that can still be paid (the unpaid cap counts them)."""
        row = await self._db.fetchrow(Q.unpaid_count_for_client, address)
        assert row is not None  # an aggregate always answers one row
        return UnpaidOrders(int(row["unpaid"]), row["first_expiry"])

    async def tag_client(self, address: str) -> None:
        """Record, for the orders this transaction inserts, the client address they came from.

        A transaction-local setting that the new row's client_addr default reads.
        """
        await self._db.execute(Q.unpaid_tag_transaction, address)

    async def lock_client(self, address: str) -> None:
        """Serialise this client's order inserts until the transaction ends (advisory lock)."""
        await self._db.execute(Q.unpaid_lock_client, address)

    async def by_rent_id(self, rent_id: str) -> Order | None:
        """The rent-number order of this provider rental id, if any."""
        return _maybe_order(await self._db.fetchrow(Q.order_by_rent_id, rent_id))

    async def poll_now(self, activation_id: str) -> str | None:
        """Have the SMS poller look at this activation's order now; its id, or None if none."""
        order_id: str | None = await self._db.fetchval(Q.order_poll_now, activation_id)
        return order_id

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

    async def now(self) -> datetime:
        """The database's clock, which every deadline of the provider stage is judged by."""
        now: datetime = await self._db.fetchval(Q.db_now)
        return now

    async def claim_sms_poll(self, limit: int, interval: float) -> list[Order]:
        """Due orders with a number to poll, claimed and pushed back by `interval` seconds."""
        rows = await self._db.fetch(Q.orders_claim_sms_poll, limit, interval)
        return [order_from_row(r) for r in rows]

    async def claim_rent_poll(self, limit: int, interval: float) -> list[Order]:
        """Due active rentals to poll, claimed and pushed back by `interval` seconds."""
        rows = await self._db.fetch(Q.orders_claim_rent_poll, limit, interval)
        return [order_from_row(r) for r in rows]

    async def claim_sms_poll_missing(
        self, limit: int, interval: float, present: list[str]
    ) -> list[Order]:
        """As claim_sms_poll, only orders whose activation is not in `present` (the bulk answer)."""
        rows = await self._db.fetch(Q.orders_claim_sms_poll_missing, limit, interval, present)
        return [order_from_row(r) for r in rows]

    async def claim_bulk_poll(self, account: str, interval: float) -> bool:
        """Claim the account's bulk poll turn; True for one caller per `interval` seconds."""
        return await self._db.fetchval(Q.sms_poll_turn_claim, account, interval) is not None

    async def hurry_bulk_poll(self, account: str) -> None:
        """Make the account's next bulk poll turn due now."""
        await self._db.execute(Q.sms_poll_turn_hurry, account)

    async def awaiting_sms(self, activation_ids: list[str]) -> list[Order]:
        """Orders of these activations waiting for an SMS (the first, or another asked for)."""
        if not activation_ids:
            return []
        rows = await self._db.fetch(Q.orders_awaiting_sms, activation_ids)
        return [order_from_row(r) for r in rows]

    async def by_activation(self, activation_id: str) -> Order | None:
        """The one-time order of this provider activation, whatever its status."""
        return _maybe_order(await self._db.fetchrow(Q.order_by_activation, activation_id))

    async def record_new_code(self, order_id: str, code: str, text: str | None) -> Order | None:
        """Another SMS (asked for, differing from the code shown) becomes the order's code.

        None when the order is not waiting for another SMS or the code is the one shown: of a
        webhook and a poll reporting the same SMS at once, exactly one gets the row.
        """
        return _maybe_order(await self._db.fetchrow(Q.order_new_code, order_id, code, text))

    async def reopen_for_another_sms(self, order_id: str) -> bool:
        """Poll a code_received order again (another SMS asked for); False when it is not one."""
        return await self._db.fetchrow(Q.order_another_sms, order_id) is not None

    async def stop_polling(self, order_id: str) -> None:
        """Stop polling a code_received order."""
        await self._db.execute(Q.order_stop_polling, order_id)

    async def arm_finish(self, order_id: str) -> None:
        """Arm the housekeeping finish at the provider, first try now (orders with a number)."""
        await self._db.execute(Q.order_finish_arm, order_id)

    async def claim_finish(self, limit: int, lease: float) -> list[Order]:
        """Orders whose finish is due, claimed and pushed back by a `lease` of seconds."""
        rows = await self._db.fetch(Q.orders_claim_finish, limit, lease)
        return [order_from_row(r) for r in rows]

    async def retry_finish(self, order_id: str, delay: float) -> None:
        """A failed finish: count the attempt and try again in `delay` seconds."""
        await self._db.execute(Q.order_finish_retry, order_id, delay)

    async def finish_done(self, order_id: str) -> None:
        """Finished at the provider (or given up on): count the attempt, nothing left to do."""
        await self._db.execute(Q.order_finish_done, order_id)

    # --- scheduler: order methods ---

    async def purge_code(self, order_id: str) -> None:
        """Forget the SMS codes and texts of an ended order (its row's and its messages')."""
        await self._db.execute(Q.order_purge_code, order_id)
        await self._db.execute(Q.messages_purge, order_id)

    async def history(self, order_id: str) -> list[StatusChange]:
        """The order's status log (kept by a trigger), oldest first."""
        rows = await self._db.fetch(Q.order_transitions, order_id)
        return [
            StatusChange(
                None if r["from_status"] is None else Status(r["from_status"]),
                Status(r["to_status"]),
                r["at"],
            )
            for r in rows
        ]


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

    async def order_for_key(self, key_id: bytes) -> CredentialedOrder | None:
        """The order a credential's key id unlocks, with its root key, refund and messages.

        The whole authenticated poll in one indexed read.
        """
        row = await self._db.fetchrow(Q.order_by_token, key_id)
        if row is None:
            return None
        refund = None
        if row["refund_status"] is not None:
            refund = RefundState(
                RefundStatus(row["refund_status"]), row["refund_amount_sats"], row["refund_paid_at"]
            )
        return CredentialedOrder(
            order_from_row(row),
            bytes(row["root_key"]),
            refund,
            messages_from_json(row["messages"]),
        )


def messages_from_json(items: list[dict[str, Any]] | None) -> list[Message]:
    """The messages as order_by_token aggregates them (receivedAt in epoch seconds)."""
    return [
        Message(
            received_at=datetime.fromtimestamp(float(m["receivedAt"]), UTC),
            text=m["text"],
            code=m["code"],
            phone_from=m["phoneFrom"],
        )
        for m in items or []
    ]


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
