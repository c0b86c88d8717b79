"""The classic API's price and stock lists: countries, services in stock, rentals, prices.

Endpoints: /getCountries, /getnumbersstatus, /getRentalCountries, /price.

Public, unauthenticated and read-only, like GET /v2/l402/catalog, and fed by the same catalog
snapshot read from PostgreSQL (`services.gateway.discovery.snapshot`), so a classic quote and
the L402 catalog agree. Errors are `ApiError`s, which the error middleware answers in the
classic body `{"status": "error", "reason": "..."}`; before the first catalog refresh every
endpoint answers 503.

Choices the classic docs leave open:

- Countries are the provider's countries from the catalog; `eng` is our English name for it
  (the provider's spelling when we have none), the one /orderstatus reports; /createorder
  accepts it, the provider's spelling, the id and the ISO code. `rent` is the provider's rent
  flag once rentals are sold (see `RENTALS_OFFERED`), 0 until then.
- /getnumbersstatus: `key` is the service code (the same as `value`): unique and stable
  between calls, where a running index would shift whenever stock changes. Services are listed
  by display name. The country defaults to all countries (auto; 999 means auto too).
- /getRentalCountries lists, for the service (default: any), the cheapest rent offer in stock
  per country and duration that is a whole number of weeks (`duration`, a string, as
  documented), priced in sats; `[]` while rentals are not sold.
- /price quotes the cheapest in-stock offer matching the optional filters, ties broken as
  /createorder's auto choice does (most stock, then lowest country id); `receive` (string)
  and `computed.price` are its price in sats, `s4s` (string) equals `receive`, `send` is
  twice `receive` (as in the docs' sample; sending SMS is not sold yet) and `rent` is the
  cheapest matching rental's price, 0 while rentals are not sold.
  `query` echoes the raw `country` and `service` parameters (null when absent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from libs.common.core.config import Settings
from libs.common.domain import countries
from libs.common.domain.countries import Country
from libs.common.persistence.catalog_store import Catalog
from services.gateway.discovery import Snapshot, loaded_snapshot, market
from services.gateway.errors import ApiError
from services.gateway.keys import SETTINGS
from services.gateway.offers import price_for
from services.gateway.usecases import Market

AUTO_COUNTRY = "999"
# Flipped when rent-number orders are sold; until then rentals are not advertised here.
RENTALS_OFFERED = False
HOURS_PER_WEEK = 168


def _country_filter(catalog: Catalog, raw: str | None) -> Callable[[int], bool] | None:
    """A country-id predicate for ?country= (id, ISO, name, auto, 999); None if unknown."""
    if raw is None or not raw.strip() or raw.strip() == AUTO_COUNTRY:
        return lambda _country_id: True
    found = catalog.countries.resolve(raw)
    if found is None:
        return None
    if isinstance(found, Country):
        wanted = found.id
        return lambda country_id: country_id == wanted
    return lambda _country_id: True  # "auto"


async def get_countries(request: web.Request) -> web.Response:
    """GET /getCountries: [{id, eng, visible, rent}] for the provider's countries."""

    async def build(snap: Snapshot) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "eng": c.display_name,
                "visible": int(c.visible),
                "rent": int(c.rent and RENTALS_OFFERED),
            }
            for c in snap.catalog.countries.all()
        ]

    return web.json_response(await build(await loaded_snapshot(request)))


async def get_numbers_status(request: web.Request) -> web.Response:
    """GET /getnumbersstatus?country=: [{key, value, text}] of the services in stock there."""

    async def build(snap: Snapshot) -> list[dict[str, str]]:
        in_country = _country_filter(snap.catalog, request.query.get("country"))
        if in_country is None:
            raise ApiError(400, "INVALID_COUNTRY", "invalid country")
        codes = {o.service for o in snap.catalog.sellable_offers() if in_country(o.country_id)}
        names = {s.code: s.name for s in snap.catalog.services}
        texts = {code: names.get(code, code) for code in codes}
        listed = sorted(codes, key=lambda code: (texts[code].lower(), code))
        return [{"key": code, "value": code, "text": texts[code]} for code in listed]

    return web.json_response(await build(await loaded_snapshot(request)))


def _rentals_json(m: Market, settings: Settings, service: str) -> list[dict[str, Any]]:
    """The /getRentalCountries body: the cheapest weekly rentals per country and duration."""
    if not RENTALS_OFFERED:
        return []
    any_service = service in ("", "full")
    rate = m.rate()
    cheapest: dict[tuple[int, int], Any] = {}
    for r in m.catalog.sellable_rent():
        if r.hours % HOURS_PER_WEEK or not (any_service or r.service == service):
            continue
        key = (r.country_id, r.hours)
        if key not in cheapest or r.cost_usd < cheapest[key].cost_usd:
            cheapest[key] = r
    out = []
    for (country_id, hours), r in sorted(cheapest.items()):
        country = m.catalog.countries.by_id(country_id)
        assert country is not None  # sellable_rent keeps listed countries only
        out.append(
            {
                "cc": country_id,
                "country": country.display_name,
                "duration": str(hours // HOURS_PER_WEEK),
                "price": price_for(r.cost_usd, rate, settings),
            }
        )
    return out


async def get_rental_countries(request: web.Request) -> web.Response:
    """GET /getRentalCountries?service=: [{cc, country, duration (weeks), price (sats)}]."""
    service = countries.normalize_service(request.query.get("service", ""))
    m = market(request, await loaded_snapshot(request))
    return web.json_response(_rentals_json(m, request.app[SETTINGS], service))


def _price_json(
    m: Market, settings: Settings, raw_country: str | None, raw_service: str | None
) -> dict[str, Any]:
    """The /price body: the cheapest matching offer in stock, priced in sats."""
    service = countries.normalize_service(raw_service) if raw_service else ""
    in_country = _country_filter(m.catalog, raw_country)
    if in_country is None:
        raise ApiError(400, "INVALID_COUNTRY", "invalid country")
    names = {s.code: s.name for s in m.catalog.services}
    if service and service not in names:
        raise ApiError(400, "VALIDATION_ERROR", f"unknown service {service!r}")
    matching = [o for o in m.catalog.sellable_offers() if in_country(o.country_id)]
    offer = countries.choose_offer(matching, service or None, None)
    if offer is None:
        raise ApiError(409, "UNAVAILABLE", "no numbers available for that country and service")
    rate = m.rate()
    sats = price_for(offer.cost_usd, rate, settings)
    rent_sats = 0
    if RENTALS_OFFERED:
        rents = [
            r
            for r in m.catalog.sellable_rent()
            if in_country(r.country_id) and (not service or r.service == service)
        ]
        if rents:
            rent_sats = price_for(min(r.cost_usd for r in rents), rate, settings)
    country = m.catalog.countries.by_id(offer.country_id)
    where = country.display_name if country is not None else str(offer.country_id)
    return {
        "receive": str(sats),
        "send": 2 * sats,
        "rent": rent_sats,
        "s4s": str(sats),
        "query": {"country": raw_country, "service": raw_service},
        "computed": {
            "price": sats,
            "country": offer.country_id,
            "description": (
                f"one {names.get(offer.service, offer.service)} ({offer.service}) code "
                f"on a number in {where} ({offer.country_id}): {sats} sats"
            ),
        },
    }


async def price(request: web.Request) -> web.Response:
    """GET /price?country=&service=: the price of the cheapest matching offer in stock."""
    query = request.query
    m = market(request, await loaded_snapshot(request))
    body = _price_json(m, request.app[SETTINGS], query.get("country"), query.get("service"))
    return web.json_response(body)
