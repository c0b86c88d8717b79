"""Discovery documents, the catalog and the rent webhook's authentication."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

pytestmark = pytest.mark.e2e


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_well_known_documents(stack: dict[str, Any], http: aiohttp.ClientSession) -> None:
    gw = stack["gateway_url"]
    assert await _get(http, f"{gw}/.well-known/402index-verify.txt") == (200, "e2e-402index-token")
    status, doc = await _get(http, f"{gw}/.well-known/l402-services")
    assert status == 200 and doc["protocol"] == "L402"
    assert doc["services"][0]["endpoint"] == f"{gw}/v2/l402/order"
    status, doc = await _get(http, f"{gw}/v2/l402")
    assert status == 200 and doc["openapi"] == "/v2/l402/openapi.json"
    status, spec = await _get(http, f"{gw}/v2/l402/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.1")


async def test_services_list_in_the_seed_shape(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, body = await _get(http, f"{stack['gateway_url']}/v2/l402/services")
    assert status == 200
    assert {"code": "tg", "name": "Telegram"} in body["services"]
    assert all(set(s) == {"code", "name"} for s in body["services"])


async def test_catalog_filters_and_prices(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    gw = stack["gateway_url"]
    status, body = await _get(http, f"{gw}/v2/l402/catalog?country=GB&service=telegram")
    assert status == 200
    numbers = [o for o in body["offers"] if o["type"] == "receive-sms"]
    assert [(o["countryId"], o["service"]) for o in numbers] == [(16, "tg")]
    offer = numbers[0]
    assert offer["country"] == "GB" and offer["priceSats"] > 0 and offer["available"] > 0
    assert offer["countryName"] == "United Kingdom"
    # Rentals, where the provider offers them: a duration in minutes and a price in sats.
    for rent in (o for o in body["offers"] if o["type"] != "receive-sms"):
        assert rent["type"] == "rent-number" and (rent["countryId"], rent["service"]) == (16, "tg")
        assert rent["durationMinutes"] % 60 == 0 and rent["priceSats"] > 0
    for same in ("16", "England", "united kingdom"):
        status, again = await _get(http, f"{gw}/v2/l402/catalog?country={same}&service=tg")
        assert (status, again) == (200, body)
    status, everything = await _get(http, f"{gw}/v2/l402/catalog")
    assert status == 200 and len(everything["offers"]) > 10
    status, err = await _get(http, f"{gw}/v2/l402/catalog?country=Atlantis")
    assert status == 400 and err["error"]["code"] == "INVALID_COUNTRY"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Webhook-Secret": "wrong"}, 401),
        ({"X-Webhook-Secret": "e2e-webhook-secret"}, 200),
    ],
)
async def test_rent_webhook_needs_the_shared_secret_and_changes_nothing_without_it(
    stack: dict[str, Any], http: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        before = await conn.fetchval("SELECT count(*) FROM order_transitions")
        body = {"rentId": "123", "sms": {"phoneFrom": "x", "text": "code 1234", "date": "now"}}
        async with http.post(
            f"{stack['gateway_url']}/v2/l402/webhooks/rent", json=body, headers=headers
        ) as resp:
            assert resp.status == status
            data = await resp.json()
        if status == 401:
            assert data["error"]["code"] == "UNAUTHORIZED"
        else:
            assert data == {"status": "ok", "matched": False}
        assert await conn.fetchval("SELECT count(*) FROM order_transitions") == before
    finally:
        await conn.close()
