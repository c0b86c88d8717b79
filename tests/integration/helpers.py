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
from libs.common.domain.orders import NewOrder, OrderType, PaymentMode
from libs.common.persistence.db import Executor
from libs.common.persistence.stores import PgStores


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
    await new_order(
        conn,
        NewOrder(
            id=order_id,
            type=OrderType(order_type),
            service="tg",
            country_id=187,
            price_sats=price_sats,
            provider_cost_usd=cost_usd,
            payment_hash=secrets.token_bytes(32),
            payment_request="lnbcrt1fake",
            invoice_expires_at=datetime.now(UTC) + timedelta(minutes=10),
            refund_invoice="lnbcrt1refund",
            refund_payment_hash=secrets.token_bytes(32),
            rent_hours=rent_hours,
            reactivates=reactivates,
        ),
    )
    return order_id


async def new_order(db: Executor, new: NewOrder) -> None:
    """Insert an order row as the gateway does (the order store's insert)."""
    await PgStores(db, "orders").orders.insert(new)


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
    await new_order(
        pool,
        NewOrder(
            id=order_id,
            type=OrderType.RECEIVE_SMS,
            service="tg",
            country_id=187,
            price_sats=price_sats,
            provider_cost_usd=Decimal("0.1"),
            payment_hash=payment_hash,
            payment_request=invoice.payment_request,
            invoice_expires_at=datetime.now(UTC) + timedelta(minutes=10),
            payment_mode=PaymentMode.HOLD,
            preimage=preimage,
        ),
    )
    return order_id, invoice.payment_request, payment_hash
