"""Order persistence: inserts, reads and guarded transitions over PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

import asyncpg

from libs.common import metrics
from libs.common.db import Q
from libs.common.events import Event, EventType
from libs.common.orders import Status, check_transition, is_terminal
from libs.common.outbox import enqueue


class _Now:
    """Marker for "the database's now()" so every writer uses the same clock."""

    def __repr__(self) -> str:
        return "NOW"


NOW: Final = _Now()

# Columns a transition may set besides the status; anything else is a programming error.
_WRITABLE: Final = frozenset(
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
        if column not in _WRITABLE:
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


class Timer:
    """The kinds of durable timer."""

    INVOICE_EXPIRED: Final = "invoice_expired"
    SMS_TIMEOUT: Final = "sms_timeout"
    PURGE_CODE: Final = "purge_code"
    HOLD_DEADLINE: Final = "hold_deadline"
    # The end of the window in which another SMS may be asked for on a code_received order.
    CODE_WINDOW: Final = "code_window"
    RENT_END: Final = "rent_end"


class Alarm:
    """Operator alarms kept in provider_alarms (a row means raised)."""

    # The provider account ran out of money: nothing can be bought until it is topped up.
    NO_BALANCE: Final = "no_balance"
    # The BTC/USD source answered a rate too far from the stored one; it was not stored.
    FX_RATE_JUMP: Final = "fx_rate_jump"
