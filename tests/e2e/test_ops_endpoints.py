"""Every process of the stack serves its ops endpoints; a request's correlation id reaches the
events it causes; the gateway counts requests by route template."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient
from tests.e2e.load import scrape, total
from tests.e2e.test_l402_order import _refund_invoice

pytestmark = pytest.mark.e2e


async def test_every_process_is_live_and_ready_and_exports_metrics(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    assert set(stack["ops"]) == {"gateway", "payments", "provider", "scheduler"}
    for name, url in stack["ops"].items():
        for path in ("/livez", "/readyz"):
            async with http.get(f"{url}{path}") as resp:
                assert resp.status == 200, (name, path, await resp.text())
        samples = await scrape(http, url)
        assert any(n.startswith("sms4sats_") for n, _ in samples), name


async def test_a_requests_correlation_id_travels_with_its_events(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    refund, _ = await _refund_invoice(payer)
    body = {"type": "receive-sms", "country": "US", "service": "tg", "refundInvoice": refund}
    before = total(
        await scrape(http, stack["ops"]["gateway"]),
        "sms4sats_http_requests_total",
        route="/v2/l402/order",
        status="402",
    )
    async with http.post(
        f"{stack['gateway_url']}/v2/l402/order",
        json=body,
        headers={"X-Correlation-Id": "e2e-trace-1"},
    ) as resp:
        assert resp.status == 402
        assert resp.headers["X-Correlation-Id"] == "e2e-trace-1"
        order_id = (await resp.json())["orderId"]
    conn = await asyncpg.connect(stack["database_url"])
    try:
        headers = await conn.fetchval(
            "SELECT headers FROM outbox WHERE payload->>'orderId' = $1"
            " AND payload->>'type' = 'created'",
            order_id,
        )
    finally:
        await conn.close()
    assert json.loads(headers)["X-Correlation-Id"] == "e2e-trace-1"
    after = total(
        await scrape(http, stack["ops"]["gateway"]),
        "sms4sats_http_requests_total",
        route="/v2/l402/order",
        status="402",
    )
    assert after - before == 1
