"""The classic API's catalog: /getCountries, /getnumbersstatus, /getRentalCountries, /price.

Public, unauthenticated and read-only, like GET /v2/l402/catalog, and fed by the same cached
provider price list (`request.app[CACHE]`), so a classic quote and the L402 catalog agree.
Errors use the classic body `{"status": "error", "reason": "..."}`.

Choices the classic docs leave open:

- Countries are the provider's countries that we can also sell (our `libs.common.countries`
  table, which /createorder resolves against); `eng` is our English name, the one /orderstatus
  reports and /createorder accepts. The provider's list is cached per app for
  `catalog_ttl_seconds`, like the price list. `rent` is 0 everywhere while rentals are not
  sold (see `RENTALS_OFFERED`).
- /getnumbersstatus: `key` is the service code (the same as `value`): unique and stable
  between calls, where a running index would shift whenever stock changes. Services are listed
  by display name. The country defaults to all countries (auto; 999 means auto too).
- /getRentalCountries answers `[]` (200) for any service: no rentals are sold yet.
- /price quotes the cheapest in-stock offer matching the optional filters, ties broken by
  country id as /createorder's auto choice does; `receive` (string) and `computed.price` are
  its `price_for` in sats, `s4s` (string) equals `receive`, `send` is twice `receive` (as in
  the docs' sample; sending SMS is not sold yet) and `rent` is 0 until rentals exist.
  `query` echoes the raw `country` and `service` parameters (null when absent).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from libs.common import countries
from libs.common.sms import Country, Offer, Service, SmsProvider
from services.gateway.discovery import CACHE, known_services
from services.gateway.errors import ApiError
from services.gateway.keys import PROVIDER, SETTINGS
from services.gateway.orders import price_for

AUTO_COUNTRY = "999"
RENTALS_OFFERED = False
UNAVAILABLE = "the number provider is unavailable; retry later"


def _error(status: int, reason: str) -> web.Response:
    """The classic error body."""
    return web.json_response({"status": "error", "reason": reason}, status=status)


class _CountryCache:
    """The provider's country list, refreshed at most every ttl seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._entry: tuple[float, list[Country]] = (-float("inf"), [])

    async def get(self, provider: SmsProvider) -> list[Country]:
        """Every provider country, from the cache when fresh."""
        async with self._lock:  # one refresh at a time, however many requests wait
            if time.monotonic() - self._entry[0] >= self._ttl:
                self._entry = (time.monotonic(), await provider.countries())
            return self._entry[1]


# Keyed on the app so that test apps and the real one never share an entry.
_COUNTRY_CACHES: weakref.WeakKeyDictionary[web.Application, _CountryCache] = (
    weakref.WeakKeyDictionary()
)


async def _provider_countries(request: web.Request) -> list[Country]:
    """The provider's countries (cached per app); ApiError 503 when it cannot be asked."""
    cache = _COUNTRY_CACHES.get(request.app)
    if cache is None:
        cache = _COUNTRY_CACHES.setdefault(
            request.app, _CountryCache(request.app[SETTINGS].catalog_ttl_seconds)
        )
    try:
        return await cache.get(request.app[PROVIDER])
    except Exception as exc:
        raise ApiError(503, "UNAVAILABLE", UNAVAILABLE) from exc


async def _offers(request: web.Request) -> list[Offer]:
    """The provider's offers in stock in a country we sell (cached); ApiError 503 on failure."""
    try:
        offers = await request.app[CACHE].offers(request.app[PROVIDER])
    except Exception as exc:
        raise ApiError(503, "UNAVAILABLE", UNAVAILABLE) from exc
    return [o for o in offers if o.count > 0 and countries.by_id(o.country_id) is not None]


def _country_filter(raw: str | None) -> Callable[[int], bool] | None:
    """A country-id predicate for ?country= (id, ISO, name, auto, 999); None if unknown."""
    if raw is None or not raw.strip() or raw.strip() == AUTO_COUNTRY:
        return lambda _country_id: True
    found = countries.resolve_country(raw)
    if found is None:
        return None
    if isinstance(found, countries.Country):
        wanted = found.id
        return lambda country_id: country_id == wanted
    return lambda _country_id: True  # "auto"


async def _guarded(build: Callable[[], Awaitable[Any]]) -> web.Response:
    """The JSON of an async body builder; an ApiError becomes the classic error body."""
    try:
        return web.json_response(await build())
    except ApiError as exc:
        return _error(exc.status, exc.message)


async def get_countries(request: web.Request) -> web.Response:
    """GET /getCountries: [{id, eng, visible, rent}] for the countries we can sell."""

    async def build() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for provided in await _provider_countries(request):
            ours = countries.by_id(provided.id)
            if ours is None:
                continue
            out.append(
                {
                    "id": ours.id,
                    "eng": ours.name,
                    "visible": int(provided.visible),
                    "rent": int(provided.rent and RENTALS_OFFERED),
                }
            )
        out.sort(key=lambda c: c["id"])
        return out

    return await _guarded(build)


async def get_numbers_status(request: web.Request) -> web.Response:
    """GET /getnumbersstatus?country=: [{key, value, text}] of the services in stock there."""
    in_country = _country_filter(request.query.get("country"))
    if in_country is None:
        return _error(400, "invalid country")

    async def build() -> list[dict[str, str]]:
        codes = {o.service for o in await _offers(request) if in_country(o.country_id)}
        names = {s.code: s.name for s in await known_services(request)}
        texts = {code: names.get(code, code) for code in codes}
        listed = sorted(codes, key=lambda code: (texts[code].lower(), code))
        return [{"key": code, "value": code, "text": texts[code]} for code in listed]

    return await _guarded(build)


async def get_rental_countries(request: web.Request) -> web.Response:
    """GET /getRentalCountries?service=: always [] while rentals are not sold."""
    del request
    return web.json_response([])


async def price(request: web.Request) -> web.Response:
    """GET /price?country=&service=: the price of the cheapest matching offer in stock."""
    raw_country = request.query.get("country")
    raw_service = request.query.get("service")
    in_country = _country_filter(raw_country)
    if in_country is None:
        return _error(400, "invalid country")
    service = countries.normalize_service(raw_service) if raw_service else ""
    settings = request.app[SETTINGS]

    async def build() -> dict[str, Any]:
        services: list[Service] = await known_services(request)
        if service and service not in {s.code for s in services}:
            raise ApiError(400, "VALIDATION_ERROR", f"unknown service {service!r}")
        matching = [
            o
            for o in await _offers(request)
            if in_country(o.country_id) and (not service or o.service == service)
        ]
        if not matching:
            raise ApiError(409, "UNAVAILABLE", "no numbers available for that country and service")
        offer = min(matching, key=lambda o: (o.cost_usd, o.country_id, o.service))
        sats = price_for(offer, settings)
        country = countries.by_id(offer.country_id)
        names = {s.code: s.name for s in services}
        where = country.name if country is not None else str(offer.country_id)
        return {
            "receive": str(sats),
            "send": 2 * sats,
            "rent": 0,
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

    return await _guarded(build)
