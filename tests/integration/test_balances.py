"""The top-up sweep finds paid top-ups by paging the node's pending invoices.

However many top-up invoices are open, the sweep's calls to the node grow by one per page of
pending invoices, never per invoice; only a top-up whose invoice left the pending states is
looked up alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.common.messaging.runtime import open_worker
from libs.common.persistence.db import Q
from services.payments.balances import Balances
from services.payments.invoice_watch import InvoiceWatcher
from tests.integration.conftest import Lightning
from tests.integration.helpers import CountingClient, settings_for

pytestmark = pytest.mark.integration

AMOUNT = 500
PAGE = 2


async def _top_up(pool: asyncpg.Pool, ln: Lightning, account_id: int) -> tuple[str, str, bytes]:
    """A pending top-up with a real hold invoice at the merchant, as POST /fund makes it.

    Returns (funding id, payment request, payment hash).
    """
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).digest()
    invoice = await ln.merchant.add_hold_invoice(
        payment_hash=payment_hash, value_msat=AMOUNT * 1000, memo="t", expiry=600, cltv_expiry=80
    )
    funding_id = secrets.token_hex(32)
    await pool.execute(
        Q.funding_insert,
        funding_id,
        account_id,
        AMOUNT,
        payment_hash,
        preimage,
        invoice.payment_request,
        datetime.now(UTC) + timedelta(minutes=10),
    )
    return funding_id, invoice.payment_request, payment_hash


async def _funding_status(pool: asyncpg.Pool, funding_id: str) -> str:
    return str(await pool.fetchval("SELECT status FROM fundings WHERE id = $1", funding_id))


async def test_the_top_up_sweep_pages_pending_invoices_and_looks_up_only_what_left_them(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = settings_for(database_url, nats_url, bootstrapped, hold_scan_page_size=PAGE)
    info = ln.running.nodes_info["merchant"]
    lnd = CountingClient(info["rest_url"], info["macaroon_hex"], None, timeout=10)
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            balances = Balances(worker, lnd, InvoiceWatcher(worker, lnd))
            account_id = await worker.pool.fetchval(
                Q.account_create, secrets.token_bytes(32), "sweep"
            )
            fundings = [await _top_up(worker.pool, ln, account_id) for _ in range(5)]
            paid_id, paid_req, paid_hash = fundings[-1]  # on the last page
            sending = asyncio.create_task(
                ln.payer.pay(paid_req, fee_limit_sat=0, timeout_seconds=30)
            )
            for _ in range(250):
                if (await ln.merchant.lookup_invoice(paid_hash)).state == "ACCEPTED":
                    break
                await asyncio.sleep(0.02)

            # 5 pending invoices, 2 a page: 3 pages; the paid one is settled (and looked up
            # once more to confirm), the four unpaid ones cost nothing of their own.
            await balances.sweep_fundings()
            assert lnd.calls == Counter(list=3, settle=1, lookup=1)
            assert await _funding_status(worker.pool, paid_id) == "credited"
            assert [await _funding_status(worker.pool, f[0]) for f in fundings[:-1]] == [
                "pending"
            ] * 4
            balance = await worker.pool.fetchval(
                "SELECT balance_sats FROM accounts WHERE id = $1", account_id
            )
            assert balance == AMOUNT
            assert (await asyncio.wait_for(sending, 10)).status == "SUCCEEDED"

            # Twenty more unpaid top-ups: a few more pages, and still no lookup at all.
            for _ in range(20):
                await _top_up(worker.pool, ln, account_id)
            lnd.calls.clear()
            await balances.sweep_fundings()
            # 24 pending invoices, 2 a page: 12 full pages and the empty one that ends the scan.
            assert lnd.calls == Counter(list=13)

            # An invoice the node no longer lists (canceled, e.g. expired): one lookup, and the
            # top-up ends expired.
            gone_id, _, gone_hash = fundings[0]
            await ln.merchant.cancel_invoice(gone_hash)
            lnd.calls.clear()
            await balances.sweep_fundings()
            assert lnd.calls["lookup"] == 1
            assert await _funding_status(worker.pool, gone_id) == "expired"
            balance = await worker.pool.fetchval(
                "SELECT balance_sats FROM accounts WHERE id = $1", account_id
            )
            assert balance == AMOUNT  # credited exactly once
    finally:
        await lnd.close()
