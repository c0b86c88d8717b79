"""The payments worker's invoice side: paid on settle (stream or lookup), expired when unpaid."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from libs.common.adapters.lightning import LndError
from libs.common.domain import l402
from libs.common.domain.events import Timer
from libs.common.domain.orders import NewOrder, OrderType, Status
from libs.common.messaging.runtime import open_worker
from libs.common.persistence.stores import PgStores
from services.payments.invoice_watch import InvoiceWatcher
from tests.integration.conftest import Lightning
from tests.integration.helpers import settings_for

pytestmark = pytest.mark.integration

PRICE = 500


async def _order(pool: asyncpg.Pool, ln: Lightning) -> tuple[str, str, bytes]:
    """An order with a real merchant invoice and an L402 token, as the gateway makes it."""
    order_id = str(uuid.uuid4())
    invoice = await ln.merchant.add_invoice(value_msat=PRICE * 1000, memo="t", expiry=600)
    refund = await ln.payer.add_invoice(value_msat=0, memo="refund", expiry=3600)
    identifier = l402.new_identifier(invoice.r_hash)
    async with PgStores(pool, "orders").transaction() as tx:
        await tx.orders.insert(
            NewOrder(
                id=order_id,
                type=OrderType.RECEIVE_SMS,
                service="tg",
                country_id=187,
                price_sats=PRICE,
                provider_cost_usd=Decimal("0.1"),
                payment_hash=invoice.r_hash,
                payment_request=invoice.payment_request,
                invoice_expires_at=datetime.now(UTC) + timedelta(minutes=10),
                refund_invoice=refund.payment_request,
                refund_payment_hash=refund.r_hash,
            ),
        )
        await tx.tokens.insert(l402.root_key_id(identifier), l402.new_root_key(), order_id)
        await tx.timers.set(order_id, Timer.INVOICE_EXPIRED, 600)
    return order_id, invoice.payment_request, invoice.r_hash


async def _types(pool: asyncpg.Pool, order_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT payload->>'type' AS t FROM outbox WHERE payload->>'orderId' = $1"
        " ORDER BY created_at",
        order_id,
    )
    return [r["t"] for r in rows]


async def test_unpaid_invoice_expiry_cancels_it_expires_the_order_and_prunes_tokens(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped)
    async with open_worker("payments", settings, asyncio.Event()) as worker:
        watcher = InvoiceWatcher(worker, ln.merchant)
        order_id, payreq, r_hash = await _order(worker.pool, ln)

        await watcher.expire(order_id)

        order = await worker.stores.orders.get(order_id)
        assert order is not None and order.status is Status.EXPIRED
        assert (
            await worker.pool.fetchval(
                "SELECT count(*) FROM l402_tokens WHERE order_id = $1", order_id
            )
            == 0
        )
        assert (await ln.merchant.lookup_invoice(r_hash)).state == "CANCELED"
        assert await _types(worker.pool, order_id) == ["expired"]
        # A late payment can no longer land on the expired order.
        try:
            late = await ln.payer.pay(payreq, fee_limit_sat=0, timeout_seconds=10)
            assert late.status == "FAILED"
        except LndError:
            pass
        await watcher.expire(order_id)  # a redelivered timer event changes nothing
        assert await _types(worker.pool, order_id) == ["expired"]


async def test_expiry_of_a_paid_invoice_whose_settle_was_missed_marks_it_paid(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped, order_timeout_seconds=1200)
    async with open_worker("payments", settings, asyncio.Event()) as worker:
        watcher = InvoiceWatcher(worker, ln.merchant)  # not watching: the settle is missed
        order_id, payreq, _ = await _order(worker.pool, ln)
        assert (
            await ln.payer.pay(payreq, fee_limit_sat=0, timeout_seconds=10)
        ).status == "SUCCEEDED"

        await watcher.expire(order_id)

        order = await worker.stores.orders.get(order_id)
        assert order is not None and order.status is Status.PAID
        assert order.deadline_at is not None and order.paid_at is not None
        assert order.deadline_at - order.paid_at == timedelta(seconds=1200)
        timers = {
            r["kind"]: r
            for r in await worker.pool.fetch("SELECT * FROM timers WHERE order_id = $1", order_id)
        }
        assert set(timers) == {Timer.SMS_TIMEOUT}
        assert await _types(worker.pool, order_id) == ["paid"]


async def test_reconcile_and_stream_both_mark_settled_orders_paid_once(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped)
    async with open_worker("payments", settings, asyncio.Event()) as worker:
        watcher = InvoiceWatcher(worker, ln.merchant)
        missed, missed_req, _ = await _order(worker.pool, ln)
        await ln.payer.pay(missed_req, fee_limit_sat=0, timeout_seconds=10)
        assert await watcher.reconcile() == 1
        assert await watcher.reconcile() == 0

        task = asyncio.create_task(watcher.watch())
        try:
            live, live_req, _ = await _order(worker.pool, ln)
            # No event says "subscribed"; give the stream a moment (a settle in the gap would
            # be caught by the periodic reconcile, which this test does not run).
            await asyncio.sleep(1.0)
            await ln.payer.pay(live_req, fee_limit_sat=0, timeout_seconds=10)
            for _ in range(200):
                order = await worker.stores.orders.get(live)
                if order is not None and order.status is Status.PAID:
                    break
                await asyncio.sleep(0.05)
            assert order is not None and order.status is Status.PAID
        finally:
            worker.stop.set()
            await asyncio.wait_for(task, 10)
        for order_id in (missed, live):
            assert await _types(worker.pool, order_id) == ["paid"]
