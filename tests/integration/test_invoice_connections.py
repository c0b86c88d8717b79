"""Watching invoices costs the payments worker a constant number of connections to its node.

The whole payments worker (`services.payments.service.main`) runs against the simulated
merchant node with hundreds of open invoices, paid and unpaid, standard and hold; the test
counts the TCP connections this process holds to the node's port, from the OS (psutil), all
along: a per-invoice stream or a lookup per order at once would show one each.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from libs.common.domain.orders import NewOrder, OrderType
from libs.common.persistence.stores import PgStores
from services.payments import service
from tests.integration.conftest import Lightning
from tests.integration.helpers import insert_hold_order, settings_for

pytestmark = pytest.mark.integration

PRICE = 200
UNPAID = 300
UNPAID_HOLD = 40
PAID_BEFORE = 20  # settled before the worker starts: only the reconcile can find them
PAID_DURING = 10  # settled while it runs: the invoice stream reports them
HELD = 10  # hold invoices paid (ACCEPTED): only the hold sweep's paged scan sees them
# The worker's loops that talk to the node at once: the invoice stream, the reconcile, the
# hold sweep and the balance sweep, one call each at a time (plus one kept-alive spare).
CONSTANT = 6


async def _standard_order(pool: asyncpg.Pool, ln: Lightning) -> tuple[str, str]:
    """A pending L402 order with a real merchant invoice; returns (order id, request)."""
    invoice = await ln.merchant.add_invoice(value_msat=PRICE * 1000, memo="t", expiry=600)
    order_id = str(uuid.uuid4())
    await PgStores(pool, "orders").orders.insert(
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
            refund_invoice="lnbcrt1refund" + order_id,
            refund_payment_hash=os.urandom(32),
        )
    )
    return order_id, invoice.payment_request


def _connections_to(port: int) -> int:
    """TCP connections this process holds to `port` (the client ends), counted by the OS."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def _sample(port: int, peaks: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peaks.append(_connections_to(port))
        await asyncio.sleep(0.02)


async def _paid(pool: asyncpg.Pool, ids: list[str]) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::text[]) AND status = 'paid'", ids
        )
    )


async def test_open_invoices_cost_a_constant_number_of_node_connections(
    pool: asyncpg.Pool,
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
) -> None:
    info = ln.running.nodes_info["merchant"]
    port = urlsplit(info["rest_url"]).port
    assert port is not None
    settings = settings_for(
        database_url,
        nats_url,
        bootstrapped,
        lnd_rest_url=info["rest_url"],
        lnd_macaroon_hex=info["macaroon_hex"],
        reconcile_interval_seconds=0.3,
        hold_scan_page_size=50,  # several pages per scan, still one call at a time
        ops_port=0,
    )
    unpaid = [await _standard_order(pool, ln) for _ in range(UNPAID)]
    for _ in range(UNPAID_HOLD):
        await insert_hold_order(pool, ln.merchant, price_sats=PRICE)
    before = [await _standard_order(pool, ln) for _ in range(PAID_BEFORE)]
    during = [await _standard_order(pool, ln) for _ in range(PAID_DURING)]
    held = [await insert_hold_order(pool, ln.merchant, price_sats=PRICE) for _ in range(HELD)]
    for _, request in before:
        assert (await ln.payer.pay(request, fee_limit_sat=10, timeout_seconds=30)).is_final
    # A paid hold invoice stays in flight at the payer until we settle: leave those running.
    holding = [
        asyncio.create_task(ln.payer.pay(request, fee_limit_sat=10, timeout_seconds=600))
        for _, request, _ in held
    ]
    paid_ids = [o for o, _ in before] + [o for o, _ in during] + [o for o, _, _ in held]

    stop, sampling = asyncio.Event(), asyncio.Event()
    peaks: list[int] = []
    sampler = asyncio.create_task(_sample(port, peaks, sampling))
    worker = asyncio.create_task(service.main(settings, stop))
    try:
        await asyncio.sleep(1.0)
        for _, request in during:
            assert (await ln.payer.pay(request, fee_limit_sat=10, timeout_seconds=30)).is_final
        deadline = time.monotonic() + 60
        while await _paid(pool, paid_ids) < len(paid_ids):
            assert time.monotonic() < deadline, "the worker did not see every payment"
            assert not worker.done(), worker
            await asyncio.sleep(0.1)
        # Several more reconciles and hold sweeps (every 2 s) over the open invoices.
        await asyncio.sleep(4.5)
        assert not worker.done(), worker
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
        sampling.set()
        await sampler
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)

    assert await _paid(pool, [o for o, _ in unpaid]) == 0
    assert peaks and max(peaks) >= 1  # the stream was open: the count is real
    assert max(peaks) <= CONSTANT, f"{max(peaks)} connections to the node for {UNPAID} invoices"
