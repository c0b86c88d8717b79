"""The store contract's test kit: a backend (PostgreSQL or the twin) and probes behind it.

Contract tests (`tests/integration/test_store_contract*.py`) take the `backend` fixture of
`tests/integration/conftest.py`, which runs each test once per implementation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from libs.common.domain.events import EventType
from libs.common.domain.orders import NewOrder, OrderType
from libs.common.persistence.memory import MemoryStores
from libs.common.persistence.ports import Stores

PREFIX = "orders"


@dataclass
class Backend:
    """A store implementation plus the probes a test needs to look behind it."""

    stores: Stores
    name: str
    pool: asyncpg.Pool | None = None
    memory: MemoryStores | None = None

    async def events(self) -> list[tuple[EventType, str]]:
        """(type, order id) of every event written to the outbox, oldest first."""
        if self.memory is not None:
            return [(e.type, e.order_id) for e in self.memory.events()]
        assert self.pool is not None
        rows = await self.pool.fetch("SELECT payload FROM outbox ORDER BY created_at, id")
        return [(EventType(r["payload"]["type"]), r["payload"]["orderId"]) for r in rows]

    async def timer_in(self, order_id: str, kind: str) -> float | None:
        """Seconds until the order's unfired timer of this kind is due (None: not armed)."""
        if self.memory is not None:
            due = self.memory.timer_due(order_id, kind)
            return None if due is None else (due - self.memory.clock()).total_seconds()
        assert self.pool is not None
        return await self.pool.fetchval(
            "SELECT extract(epoch FROM due_at - now())::float8 FROM timers "
            "WHERE order_id = $1 AND kind = $2 AND fired_at IS NULL",
            order_id,
            kind,
        )


def new_order(**overrides: Any) -> NewOrder:
    """A valid new receive-sms order with a fresh id and payment hash."""
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": OrderType.RECEIVE_SMS,
        "service": "tg",
        "country_id": 187,
        "price_sats": 2500,
        "provider_cost_usd": Decimal("0.250000"),
        "payment_hash": uuid.uuid4().bytes * 2,
        "payment_request": "lnbcrt25u1...",
        "invoice_expires_at": datetime.now(UTC) + timedelta(minutes=10),
        "refund_invoice": "lnbcrt1refund",
        "refund_payment_hash": uuid.uuid4().bytes * 2,
    }
    values.update(overrides)
    return NewOrder(**values)
