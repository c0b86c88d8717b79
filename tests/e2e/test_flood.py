"""A free flood of unpaid classic orders must not slow money down (issue 10, finding 1).

With 2,000 unpaid classic orders open, a paid L402 order that gets no number is refunded
within 5 s of its payment, and a paid classic order is settled within 5 s of its SMS; the
payments worker's connections to the merchant node stay bounded whatever the flood.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil
import pytest

from libs.common.adapters.lightning import LndClient, Payment
from tests.e2e.conftest import E2E_ENV, UNMETERED_PROVIDER, node_client, running_stack
from tests.e2e.test_l402_order import _sim

pytestmark = pytest.mark.e2e

FLOOD = 2_000
CONCURRENCY = 24  # creates in flight at once: a flood, but bounded
DEADLINE = 5.0  # seconds, from the acceptance
# The payments worker's LND pools at their defaults (16 payment + 4 settle + 8 other):
# whatever the flood, the worker never holds more connections to the node than that.
MAX_CONNECTIONS = 28

FLOOD_ENV = {
    **E2E_ENV,
    **UNMETERED_PROVIDER,
    # Limits raised for the test: one address makes every order.
    "SMS4SATS_MAX_UNPAID_PER_CLIENT": "100000",
    # The flood stays unpaid and open for the whole test.
    "SMS4SATS_INVOICE_EXPIRY_SECONDS": "1800",
    "SMS4SATS_ORDER_TIMEOUT_SECONDS": "120",
    "SMSSIM_AUTO_SMS_DELAY": "off",
}


@pytest.fixture(scope="module")
def flood_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack of its own: the flood must not leak into the other e2e tests."""
    with running_stack(tmp_path_factory.mktemp("flood"), FLOOD_ENV) as info:
        yield info


def _connections_to_node(stack: dict[str, Any]) -> int:
    """ESTABLISHED TCP connections from the payments worker to the merchant node's port."""
    port = urlsplit(stack["merchant_lnd"]["rest_url"]).port
    proc = psutil.Process(stack["pids"]["payments"])
    return sum(
        1
        for c in proc.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port
    )


async def _flood(http: aiohttp.ClientSession, stack: dict[str, Any]) -> list[str]:
    """Create FLOOD unpaid classic orders, CONCURRENCY at a time; their payment hashes."""
    gate = asyncio.Semaphore(CONCURRENCY)
    url = f"{stack['gateway_url']}/createorder"

    async def one(i: int) -> str:
        country = ("US", "GB", "DE")[i % 3]
        async with gate, http.post(url, json={"country": country, "service": "tg"}) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "OK", body
            return str(body["orderId"])

    return await asyncio.gather(*(one(i) for i in range(FLOOD)))


async def _unpaid(stack: dict[str, Any]) -> int:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE status = 'pending_payment' AND payment_mode = 'hold'"
        )
        return int(count)
    finally:
        await conn.close()


async def _until(check: Any, within: float) -> float:
    """Seconds until `check()` is true (fails after `within`)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, "never happened"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def _refund_after_payment(
    http: aiohttp.ClientSession, stack: dict[str, Any], payer: LndClient
) -> float:
    """Seconds from paying an L402 order that gets no number to its refund reaching the payer."""
    refund = await payer.add_invoice(value_msat=0, memo="refund me", expiry=86_400)
    body = {
        "type": "receive-sms",
        "country": "Indonesia",
        "service": "telegram",
        "refundInvoice": refund.payment_request,
    }
    async with http.post(f"{stack['gateway_url']}/v2/l402/order", json=body) as resp:
        challenge = await resp.json()
        assert resp.status == 402, challenge
    # The quote saw stock; it runs out before the customer pays.
    await _sim(http, stack, "/sim/stock", {"country": 6, "service": "tg", "count": 0})
    payment = await payer.pay(challenge["invoice"], fee_limit_sat=10, timeout_seconds=30)
    paid_at = time.monotonic()
    assert payment.status == "SUCCEEDED", payment.failure_reason

    async def refunded() -> bool:
        return (await payer.lookup_invoice(refund.r_hash)).state == "SETTLED"

    await _until(refunded, within=120)
    return time.monotonic() - paid_at


async def _settle_after_sms(
    http: aiohttp.ClientSession, stack: dict[str, Any], payer: LndClient, merchant: LndClient
) -> float:
    """Seconds from a paid classic order's SMS to its hold invoice SETTLED at the node."""
    gw = stack["gateway_url"]
    async with http.post(f"{gw}/createorder", json={"country": "US", "service": "tg"}) as resp:
        order = await resp.json()
        assert resp.status == 200, order
    payment_hash = (await payer.decode_payreq(order["payreq"])).payment_hash
    paying: asyncio.Task[Payment] = asyncio.create_task(
        payer.pay(order["payreq"], fee_limit_sat=10, timeout_seconds=120)
    )
    number = ""

    async def has_number() -> bool:
        nonlocal number
        async with http.get(f"{gw}/orderstatus", params={"orderId": order["orderId"]}) as r:
            body = await r.json()
        number = str(body.get("number", ""))
        return bool(number)

    await _until(has_number, within=120)
    async with http.get(f"{stack['provider_sim_url']}/sim/activations") as resp:
        activations = await resp.json()
    activation = next(a for a in activations if a["phoneNumber"] == number)
    sms_at = time.monotonic()
    await _sim(http, stack, f"/sim/activations/{activation['activationId']}/sms", {"code": "4242"})

    async def settled() -> bool:
        return (await merchant.lookup_invoice(payment_hash)).state == "SETTLED"

    await _until(settled, within=120)
    took = time.monotonic() - sms_at
    assert (await asyncio.wait_for(paying, 30)).status == "SUCCEEDED"
    return took


async def test_money_moves_in_seconds_under_a_flood_of_unpaid_orders(
    flood_stack: dict[str, Any],
) -> None:
    stack = flood_stack
    payer, merchant = node_client(stack["payer_lnd"]), node_client(stack["merchant_lnd"])
    samples: list[int] = []
    stop = asyncio.Event()

    async def sample_connections() -> None:
        while not stop.is_set():
            samples.append(_connections_to_node(stack))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample_connections())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
            started = time.monotonic()
            await _flood(http, stack)
            print(f"\n{FLOOD} unpaid classic orders created in {time.monotonic() - started:.1f}s")
            await asyncio.sleep(3)  # let the worker see the whole flood (a sweep or more)

            refund_s = await _refund_after_payment(http, stack, payer)
            settle_s = await _settle_after_sms(http, stack, payer, merchant)
            still_open = await _unpaid(stack)
    finally:
        stop.set()
        await sampler
        await payer.close()
        await merchant.close()

    print(f"paid L402 order without a number refunded {refund_s:.2f}s after payment")
    print(f"paid classic order settled {settle_s:.2f}s after its SMS")
    print(f"payments -> merchant LND connections: max {max(samples)} over {len(samples)} samples")
    assert still_open >= FLOOD, f"only {still_open} unpaid orders were still open"
    assert refund_s < DEADLINE, f"refund took {refund_s:.2f}s under the flood"
    assert settle_s < DEADLINE, f"settle took {settle_s:.2f}s under the flood"
    assert max(samples) <= MAX_CONNECTIONS, f"connections to the node grew: {max(samples)}"
    logs = Path(stack["logs_dir"])
    assert "hold sweep: pending invoice scan failed" not in (logs / "payments.log").read_text()
