"""Prices from the PostgreSQL catalog and the cached BTC/USD rate; `auto` records its choice."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient
from libs.common.domain.pricing import quote_sats

pytestmark = pytest.mark.e2e


async def _refund_invoice(payer: LndClient) -> str:
    inv = await payer.add_invoice(value_msat=0, memo="refund me", expiry=3600)
    return inv.payment_request


async def _catalog(http: aiohttp.ClientSession, gw: str, query: str) -> list[dict[str, Any]]:
    async with http.get(f"{gw}/v2/l402/catalog{query}") as resp:
        assert resp.status == 200
        offers: list[dict[str, Any]] = (await resp.json())["offers"]
    return [o for o in offers if o["type"] == "receive-sms"]


async def test_auto_records_the_cheapest_country_and_the_quote_is_the_invoice(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    gw = stack["gateway_url"]
    body = {"country": "auto", "service": "wa", "refundInvoice": await _refund_invoice(payer)}
    async with http.post(f"{gw}/v2/l402/order", json=body) as resp:
        assert resp.status == 402
        challenge = await resp.json()
    conn = await asyncpg.connect(stack["database_url"])
    try:
        order = await conn.fetchrow(
            "SELECT country_id, price_sats, provider_cost_usd FROM orders WHERE id = $1",
            challenge["orderId"],
        )
        cheapest = await conn.fetchrow(
            "SELECT country_id, cost_usd FROM catalog_prices WHERE service = 'wa' AND count > 0 "
            "ORDER BY cost_usd, count DESC, country_id LIMIT 1"
        )
        rate = await conn.fetchval("SELECT rate FROM fx_rates WHERE pair = 'BTC/USD'")
    finally:
        await conn.close()
    # The resolved country is stored, not "auto": the cheapest in stock.
    assert order["country_id"] == cheapest["country_id"]
    assert order["provider_cost_usd"] == cheapest["cost_usd"]
    # providerCostSats x PRICE_MULTIPLIER (1.5 by default), rounded up, at the cached rate.
    expected = quote_sats(
        cheapest["cost_usd"], btc_usd=rate, multiplier=Decimal("1.5"), min_sats=100
    )
    assert challenge["priceSats"] == order["price_sats"] == expected
    decoded = await payer.decode_payreq(challenge["invoice"])
    assert decoded.num_msat == expected * 1000
    # The catalog quotes the same price for that offer.
    [offer] = await _catalog(http, gw, f"?country={order['country_id']}&service=wa")
    assert offer["priceSats"] == expected
    assert expected == min(o["priceSats"] for o in await _catalog(http, gw, "?service=wa"))

    # Paid, the order shows the resolved country too.
    payment = await payer.pay(challenge["invoice"], fee_limit_sat=10, timeout_seconds=30)
    assert payment.status == "SUCCEEDED" and payment.preimage is not None
    auth = f"L402 {challenge['macaroon']}:{payment.preimage.hex()}"
    url = f"{gw}/v2/l402/order/{challenge['orderId']}"
    async with http.get(url, headers={"Authorization": auth}) as resp:
        assert resp.status == 200
        shown = await resp.json()
    assert shown["countryId"] == cheapest["country_id"] and shown["priceSats"] == expected
    assert shown["country"] == offer["country"]


async def test_a_too_stale_rate_stops_new_orders_without_creating_anything(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    gw = stack["gateway_url"]
    conn = await asyncpg.connect(stack["database_url"])
    try:
        fetched_at = await conn.fetchval("SELECT fetched_at FROM fx_rates WHERE pair = 'BTC/USD'")
        assert fetched_at is not None
        # The rate source has been down for two hours (SMS4SATS_FX_MAX_AGE_SECONDS: 3600).
        await conn.execute(
            "UPDATE fx_rates SET fetched_at = now() - interval '2 hours' WHERE pair = 'BTC/USD'"
        )
        try:
            orders_before = await conn.fetchval("SELECT count(*) FROM orders")
            body = {"country": "US", "service": "tg", "refundInvoice": await _refund_invoice(payer)}
            async with http.post(f"{gw}/v2/l402/order", json=body) as resp:
                assert resp.status == 503
                error = (await resp.json())["error"]
            assert error["code"] == "UNAVAILABLE" and "rate" in error["message"]
            async with http.post(
                f"{gw}/createorder", json={"country": "US", "service": "tg"}
            ) as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "error"
            async with http.get(f"{gw}/v2/l402/catalog?service=tg") as resp:
                assert resp.status == 503  # never a price from a rate that old
            async with http.get(f"{gw}/v2/l402/services") as resp:
                assert resp.status == 200  # what needs no price still answers
            assert await conn.fetchval("SELECT count(*) FROM orders") == orders_before
        finally:
            await conn.execute(
                "UPDATE fx_rates SET fetched_at = $1 WHERE pair = 'BTC/USD'", fetched_at
            )
    finally:
        await conn.close()
    async with http.get(f"{gw}/v2/l402/catalog?service=tg") as resp:
        assert resp.status == 200
