"""The classic catalog: /getCountries, /getnumbersstatus, /getRentalCountries, /price."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.e2e


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def _catalog(http: aiohttp.ClientSession, gw: str, query: str = "") -> list[dict[str, Any]]:
    status, body = await _get(http, f"{gw}/v2/l402/catalog{query}")
    assert status == 200
    # The numbers (receive-sms) only: the classic catalog quotes those.
    offers: list[dict[str, Any]] = [o for o in body["offers"] if o["type"] == "receive-sms"]
    return offers


async def test_get_countries_lists_the_provider_countries(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, body = await _get(http, f"{stack['gateway_url']}/getCountries")
    assert status == 200 and isinstance(body, list) and body
    for country in body:
        assert set(country) == {"id", "eng", "visible", "rent"}
        assert type(country["id"]) is int and isinstance(country["eng"], str)
        assert country["visible"] in (0, 1) and type(country["visible"]) is int
        assert country["rent"] == 0  # no rentals are sold yet
    ids = [c["id"] for c in body]
    assert ids == sorted(set(ids))
    # The simulator's countries, from the catalog tables; our names where the provider's differ.
    assert ids == [0, 2, 6, 12, 16, 43, 187]
    assert {"id": 187, "eng": "United States", "visible": 1, "rent": 0} in body
    assert {"id": 16, "eng": "United Kingdom", "visible": 1, "rent": 0} in body
    # Every country the catalog sells in is listed.
    assert {o["countryId"] for o in await _catalog(http, stack["gateway_url"])} <= set(ids)


async def test_numbers_status_lists_services_in_stock(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    gw = stack["gateway_url"]
    status, germany = await _get(http, f"{gw}/getnumbersstatus?country=43")
    assert status == 200 and germany
    for entry in germany:
        assert set(entry) == {"key", "value", "text"}
        assert entry["key"] == entry["value"] and isinstance(entry["text"], str)
    assert {e["value"] for e in germany} == {
        o["service"] for o in await _catalog(http, gw, "?country=DE")
    }
    for alias in ("DE", "Germany", "germany"):
        assert await _get(http, f"{gw}/getnumbersstatus?country={alias}") == (200, germany)
    if any(e["value"] == "tg" for e in germany):
        assert {"key": "tg", "value": "tg", "text": "Telegram"} in germany

    status, everywhere = await _get(http, f"{gw}/getnumbersstatus")
    assert status == 200
    assert {e["value"] for e in everywhere} == {o["service"] for o in await _catalog(http, gw)}
    for auto in ("auto", "999", ""):
        assert await _get(http, f"{gw}/getnumbersstatus?country={auto}") == (200, everywhere)

    # Ukraine is in our name table, but the provider does not list it: not a country to sell.
    for unknown in ("Ukraine", "Atlantis"):
        status, err = await _get(http, f"{gw}/getnumbersstatus?country={unknown}")
        assert (status, err) == (400, {"status": "error", "reason": "invalid country"})


async def test_rental_countries_are_empty_while_rentals_are_not_sold(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    gw = stack["gateway_url"]
    assert await _get(http, f"{gw}/getRentalCountries") == (200, [])
    assert await _get(http, f"{gw}/getRentalCountries?service=tg") == (200, [])


async def test_price_has_the_documented_shape_and_matches_the_l402_catalog(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    gw = stack["gateway_url"]
    status, body = await _get(http, f"{gw}/price?country=US&service=tg")
    assert status == 200
    assert set(body) == {"receive", "send", "rent", "s4s", "query", "computed"}
    assert set(body["computed"]) == {"price", "country", "description"}
    assert isinstance(body["receive"], str) and isinstance(body["s4s"], str)
    assert type(body["send"]) is int and type(body["rent"]) is int
    assert type(body["computed"]["price"]) is int and type(body["computed"]["country"]) is int
    assert isinstance(body["computed"]["description"], str) and body["computed"]["description"]
    assert body["query"] == {"country": "US", "service": "tg"}

    [offer] = await _catalog(http, gw, "?country=US&service=tg")
    sats = offer["priceSats"]
    assert body["computed"]["price"] == sats and body["computed"]["country"] == 187
    assert body["receive"] == body["s4s"] == str(sats)
    assert body["send"] == 2 * sats and body["rent"] == 0

    # Names, ids and aliases quote the same offer.
    for query in (
        "country=187&service=telegram",
        "country=United%20States&service=tg",
        "country=USA&service=tg",
        "country=us&service=tg",
    ):
        status, same = await _get(http, f"{gw}/price?{query}")
        assert status == 200 and same["computed"] == body["computed"]


async def test_price_filters_pick_the_cheapest_offer_in_stock(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    gw = stack["gateway_url"]
    status, anything = await _get(http, f"{gw}/price")
    assert status == 200 and anything["query"] == {"country": None, "service": None}
    every = await _catalog(http, gw)
    assert anything["computed"]["price"] == min(o["priceSats"] for o in every)

    status, tg = await _get(http, f"{gw}/price?service=tg&country=auto")
    assert status == 200
    tg_offers = await _catalog(http, gw, "?service=tg")
    assert tg["computed"]["price"] == min(o["priceSats"] for o in tg_offers)
    assert tg["computed"]["country"] in {o["countryId"] for o in tg_offers}

    status, germany = await _get(http, f"{gw}/price?country=DE")
    assert status == 200 and germany["computed"]["country"] == 43
    de_offers = await _catalog(http, gw, "?country=DE")
    assert germany["computed"]["price"] == min(o["priceSats"] for o in de_offers)


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ("country=Atlantis&service=tg", 400, "invalid country"),
        ("country=1234567&service=tg", 400, "invalid country"),
        ("country=US&service=nosuchservice", 400, "unknown service 'nosuchservice'"),
        ("country=Ukraine&service=tg", 400, "invalid country"),
    ],
)
async def test_price_errors_use_the_classic_body(
    stack: dict[str, Any], http: aiohttp.ClientSession, query: str, status: int, reason: str
) -> None:
    got = await _get(http, f"{stack['gateway_url']}/price?{query}")
    assert got == (status, {"status": "error", "reason": reason})
