"""The hold sweep finds ACCEPTED hold invoices by paging the node's pending invoices.

An unpaid order costs rows, never a connection or a task: the sweep's calls to the node grow
by one per page of pending invoices, never per invoice, and held HTLCs listed ACCEPTED need
no lookup of their own.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest

from libs.common.domain.orders import Status
from libs.common.messaging.runtime import open_worker
from libs.common.persistence.stores import PgStores
from services.payments.hold import HoldInvoices
from services.payments.invoice_watch import InvoiceWatcher
from tests.integration.conftest import Lightning
from tests.integration.helpers import CountingClient, insert_hold_order, settings_for

pytestmark = pytest.mark.integration

PRICE = 300
PAGE = 2


async def _hold_order(pool: asyncpg.Pool, ln: Lightning) -> tuple[str, str, bytes]:
    """A classic order with a real hold invoice at the merchant."""
    return await insert_hold_order(pool, ln.merchant, price_sats=PRICE)


async def _status(pool: asyncpg.Pool, order_id: str) -> Status:
    order = await PgStores(pool, "orders").orders.get(order_id)
    assert order is not None
    return order.status


async def test_the_sweep_pages_pending_invoices_and_looks_up_only_what_left_them(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped, hold_scan_page_size=PAGE)
    info = ln.running.nodes_info["merchant"]
    lnd = CountingClient(info["rest_url"], info["macaroon_hex"], None, timeout=10)
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            holds = HoldInvoices(worker, lnd, InvoiceWatcher(worker, lnd))
            orders = [await _hold_order(worker.pool, ln) for _ in range(5)]
            paid_id, paid_req, paid_hash = orders[-1]  # on the last page
            sending = asyncio.create_task(
                ln.payer.pay(paid_req, fee_limit_sat=0, timeout_seconds=30)
            )
            for _ in range(250):
                if (await ln.merchant.lookup_invoice(paid_hash)).state == "ACCEPTED":
                    break
                await asyncio.sleep(0.02)

            await holds.sweep_once()
            assert await _status(worker.pool, paid_id) == Status.PAID
            assert [await _status(worker.pool, o[0]) for o in orders[:-1]] == [
                Status.PENDING_PAYMENT
            ] * 4
            # 5 pending invoices, 2 a page: 3 pages, and no lookup at all.
            assert lnd.calls == Counter(list=3)

            # Twenty more unpaid orders: a few more pages, still no lookups; the paid order's
            # HTLC is listed ACCEPTED, so it needs no lookup either.
            for _ in range(20):
                await _hold_order(worker.pool, ln)
            lnd.calls.clear()
            await holds.sweep_once()
            assert lnd.calls == Counter(list=13)

            # The node gives the HTLC back: the paid order's invoice leaves the pending list,
            # one lookup sees it CANCELED, and the order ends refunded.
            await ln.merchant.cancel_invoice(paid_hash)
            lnd.calls.clear()
            await holds.sweep_once()
            assert lnd.calls["lookup"] == 1
            assert await _status(worker.pool, paid_id) == Status.REFUNDED
            assert (await asyncio.wait_for(sending, 10)).status == "FAILED"
    finally:
        await lnd.close()


async def test_reconcile_looks_up_only_invoices_no_longer_pending(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped, hold_scan_page_size=PAGE)
    info = ln.running.nodes_info["merchant"]
    lnd = CountingClient(info["rest_url"], info["macaroon_hex"], None, timeout=10)
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            watcher = InvoiceWatcher(worker, lnd)
            orders = [await _hold_order(worker.pool, ln) for _ in range(6)]
            # An order whose invoice the node no longer lists (here: canceled at the node).
            await ln.merchant.cancel_invoice(orders[0][2])
            held_id, held_req, held_hash = orders[1]
            sending = asyncio.create_task(
                ln.payer.pay(held_req, fee_limit_sat=0, timeout_seconds=30)
            )
            for _ in range(250):
                if (await ln.merchant.lookup_invoice(held_hash)).state == "ACCEPTED":
                    break
                await asyncio.sleep(0.02)

            assert await watcher.reconcile() == 1
            assert await _status(worker.pool, held_id) == Status.PAID
            assert lnd.calls == Counter(list=3, lookup=1)
            await ln.merchant.cancel_invoice(held_hash)
            assert (await asyncio.wait_for(sending, 10)).status == "FAILED"
    finally:
        await lnd.close()


async def _completed_without_settled_at(pool: asyncpg.Pool, ln: Lightning, *, settle: bool) -> str:
    """A hold order completed by a payments worker that did not record settled_at (an older
    release mid deploy): its HTLC settled at the node, or given back when `settle` is false."""
    order_id, payreq, payment_hash = await _hold_order(pool, ln)
    paying = asyncio.create_task(ln.payer.pay(payreq, fee_limit_sat=0, timeout_seconds=30))
    for _ in range(250):
        if (await ln.merchant.lookup_invoice(payment_hash)).state == "ACCEPTED":
            break
        await asyncio.sleep(0.02)
    order = await PgStores(pool, "orders").orders.get(order_id)
    assert order is not None and order.preimage is not None
    if settle:
        await ln.merchant.settle_invoice(order.preimage)
    else:
        await ln.merchant.cancel_invoice(payment_hash)
    await paying
    await pool.execute(
        "UPDATE orders SET status = 'completed', paid_at = now(), sms_received_at = now(),"
        " finished_at = now(), code = '4242', activation_id = '1', phone_number = '1555'"
        " WHERE id = $1",
        order_id,
    )
    return order_id


async def test_the_sweep_records_a_settle_an_older_worker_did_not(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped)
    lnd = ln.client("merchant")
    async with open_worker("payments", settings, asyncio.Event()) as worker:
        holds = HoldInvoices(worker, lnd, InvoiceWatcher(worker, lnd))
        settled = await _completed_without_settled_at(worker.pool, ln, settle=True)
        given_back = await _completed_without_settled_at(worker.pool, ln, settle=False)

        try:
            await holds.sweep_once()
        finally:
            await lnd.close()

        # The customer who paid is shown the code (settled_at gates it); the one whose HTLC
        # went back is not.
        shown = await worker.stores.orders.get(settled)
        hidden = await worker.stores.orders.get(given_back)
        assert shown is not None and shown.settled_at is not None
        assert hidden is not None and hidden.settled_at is None
