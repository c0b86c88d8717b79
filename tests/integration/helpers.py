"""Helpers for integration tests: settings for the test's servers and order rows."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from libs.common.config import Settings
from libs.common.db import Q


def settings_for(
    database_url: str, nats_url: str, stream: tuple[str, str], **extra: object
) -> Settings:
    """Settings pointing at the test's database, NATS server and private stream."""
    name, prefix = stream
    return replace(
        Settings(),
        database_url=database_url,
        nats_url=nats_url,
        nats_stream=name,
        subject_prefix=prefix,
        **extra,  # type: ignore[arg-type]
    )


async def insert_order(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    price_sats: int = 150,
    cost_usd: Decimal | None = None,
    order_type: str = "receive-sms",
    rent_hours: int | None = None,
    reactivates: str | None = None,
) -> str:
    """Insert a pending_payment (US, tg) order with random hashes; returns its id.

    The quoted provider cost is above every simulator price unless a test lowers it (rentals
    cost more than activations: up to 90 USD for a week).
    """
    if cost_usd is None:
        cost_usd = Decimal("100.00") if order_type == "rent-number" else Decimal("1.00")
    order_id = str(uuid.uuid4())
    await conn.execute(
        Q.order_insert,
        order_id,
        order_type,
        "tg",
        187,
        price_sats,
        cost_usd,
        secrets.token_bytes(32),
        "lnbcrt1fake",
        datetime.now(UTC) + timedelta(minutes=10),
        "lnbcrt1refund",
        secrets.token_bytes(32),
        rent_hours,
        reactivates,
    )
    return order_id
