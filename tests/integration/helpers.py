"""Helpers for integration tests: settings for the test's servers and order rows."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from libs.common.adapters.lightning import Invoice, InvoicePage, LndClient
from libs.common.core.config import Settings
from libs.common.persistence.db import Q, transaction


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


class CountingClient(LndClient):
    """An LND client counting the invoice calls a sweep makes (list, lookup, settle)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    async def list_invoices(self, **kwargs: Any) -> InvoicePage:
        """Count, then ListInvoices."""
        self.calls["list"] += 1
        return await super().list_invoices(**kwargs)

    async def lookup_invoice(self, payment_hash: bytes) -> Invoice:
        """Count, then LookupInvoiceV2."""
        self.calls["lookup"] += 1
        return await super().lookup_invoice(payment_hash)

    async def settle_invoice(self, preimage: bytes) -> None:
        """Count, then SettleInvoice."""
        self.calls["settle"] += 1
        await super().settle_invoice(preimage)


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


async def insert_hold_order(
    pool: asyncpg.Pool, merchant: LndClient, *, price_sats: int = 300
) -> tuple[str, str, bytes]:
    """A pending classic order with a real hold invoice at the merchant, as the gateway makes it.

    Returns (order id, payment request, payment hash).
    """
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).digest()
    invoice = await merchant.add_hold_invoice(
        payment_hash=payment_hash,
        value_msat=price_sats * 1000,
        memo="h",
        expiry=600,
        cltv_expiry=80,
    )
    order_id = uuid.uuid4().hex * 2
    async with transaction(pool) as conn:
        await conn.execute(
            Q.order_insert_hold,
            order_id,
            "receive-sms",
            "tg",
            187,
            price_sats,
            Decimal("0.1"),
            payment_hash,
            invoice.payment_request,
            datetime.now(UTC) + timedelta(minutes=10),
            preimage,
        )
    return order_id, invoice.payment_request, payment_hash
