"""Public, unauthenticated documents: discovery, L402 auto-discovery, OpenAPI, the catalog.

The catalog and the BTC/USD rate are read from PostgreSQL (filled by the scheduler's catalog
job), reused in-process for `catalog_ttl_seconds`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from libs.common.core.config import Settings
from libs.common.core.metrics import FX_RATE_AGE
from libs.common.domain import countries, fx
from libs.common.domain.countries import Country, CountryIndex
from libs.common.domain.orders import OrderType
from libs.common.persistence.catalog_store import Catalog, ServiceRow
from libs.common.persistence.ports import Catalogs
from services.gateway.errors import ApiError
from services.gateway.keys import SETTINGS, STORES
from services.gateway.offers import price_for
from services.gateway.usecases import Market

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def _base_url(request: web.Request) -> str:
    """The public base URL: configured, or what the client used."""
    configured = request.app[SETTINGS].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


async def discovery(request: web.Request) -> web.Response:
    """GET /v2/l402: what this API offers, for agents."""
    return web.json_response(
        {
            "name": "sms4sats",
            "protocol": "L402",
            "orderTypes": [t.value for t in OrderType],
            "openapi": "/v2/l402/openapi.json",
            "classicOpenapi": "/classic/openapi.json",
            "endpoints": {
                "services": "GET /v2/l402/services",
                "catalog": "GET /v2/l402/catalog",
                "createOrder": "POST /v2/l402/order",
                "getOrder": "GET /v2/l402/order/{orderId}",
                "cancelOrder": "POST /v2/l402/order/{orderId}/cancel",
                "anotherSms": "POST /v2/l402/order/{orderId}/another-sms",
            },
            "auth": "Authorization: L402 <macaroon>:<preimage>",
        }
    )


async def openapi(request: web.Request) -> web.Response:
    """GET /v2/l402/openapi.json: the OpenAPI 3.1 document."""
    del request
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


async def index_verify(request: web.Request) -> web.Response:
    """GET /.well-known/402index-verify.txt: the 402index.io verification token."""
    token = request.app[SETTINGS].index_verify_token
    if not token:
        raise ApiError(404, "NOT_FOUND", "no 402index verification token is configured")
    return web.Response(text=token, content_type="text/plain")


async def l402_services(request: web.Request) -> web.Response:
    """GET /.well-known/l402-services: the L402 auto-discovery document."""
    base = _base_url(request)
    return web.json_response(
        {
            "version": "1.0",
            "name": "sms4sats",
            "description": "One-time SMS verification numbers paid over Lightning (L402)",
            "homepage": base,
            "protocol": "L402",
            "services": [
                {
                    "id": "receive-sms",
                    "name": "Receive one SMS verification code",
                    "description": "A phone number for a country and service; poll for the code",
                    "endpoint": f"{base}/v2/l402/order",
                    "method": "POST",
                    "pricing": {"amount": None, "currency": "sats", "type": "dynamic"},
                }
            ],
        }
    )


@dataclass(frozen=True)
class Snapshot:
    """The catalog and the cached rate as read from PostgreSQL at one moment."""

    catalog: Catalog
    rate: fx.CachedRate | None
    loaded_at: float  # time.monotonic() of the read

    def rate_age(self) -> float | None:
        """The rate's age now: its age at the read plus the time since."""
        if self.rate is None:
            return None
        return self.rate.age_seconds + (time.monotonic() - self.loaded_at)


class CatalogCache:
    """The catalog tables and the rate row, re-read from PostgreSQL at most every ttl seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._entry: Snapshot | None = None
        self._warned_stale_at = -float("inf")

    async def get(self, store: Catalogs) -> Snapshot:
        """A snapshot no older than ttl (PostgreSQL is the source of truth)."""
        async with self._lock:  # one read at a time, however many requests wait
            entry = self._entry
            if entry is None or time.monotonic() - entry.loaded_at >= self._ttl:
                # The tables are re-read only after a refresh (they can be large).
                catalog, rate = await store.read(entry.catalog if entry is not None else None)
                entry = self._entry = Snapshot(catalog, rate, time.monotonic())
            return entry

    def warn_stale(self, age: float) -> None:
        """Log a stale rate at most once a minute per process."""
        if time.monotonic() - self._warned_stale_at >= 60:
            self._warned_stale_at = time.monotonic()
            log.warning("the BTC/USD rate is stale (%.0f s old); is the rate source down?", age)


CACHE = web.AppKey("catalog_cache", CatalogCache)
NOT_LOADED = "the catalog is not loaded yet; retry later"


async def snapshot(request: web.Request) -> Snapshot:
    """The current snapshot; 503 UNAVAILABLE when PostgreSQL cannot be read."""
    try:
        return await request.app[CACHE].get(request.app[STORES].catalog)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise ApiError(503, "UNAVAILABLE", "the catalog cannot be read now; retry later") from exc


async def loaded_snapshot(request: web.Request) -> Snapshot:
    """The current snapshot of a loaded catalog; 503 UNAVAILABLE until the first refresh."""
    snap = await snapshot(request)
    if not snap.catalog.loaded:
        raise ApiError(503, "UNAVAILABLE", NOT_LOADED)
    return snap


async def country_index(request: web.Request) -> CountryIndex | None:
    """The catalog's countries for presenting orders, or None if they cannot be read now."""
    try:
        return (await snapshot(request)).catalog.countries
    except ApiError:
        return None


def usable_rate(request: web.Request, snap: Snapshot) -> Decimal:
    """The BTC/USD rate to quote with; 503 UNAVAILABLE when missing or too stale."""
    settings = request.app[SETTINGS]
    age = snap.rate_age()
    if snap.rate is None or age is None:
        raise ApiError(
            503, "UNAVAILABLE", "no BTC/USD rate yet: new orders are paused; retry later"
        )
    FX_RATE_AGE.set(age)
    state = fx.freshness(
        age, stale_after=settings.fx_stale_seconds, max_age=settings.fx_max_age_seconds
    )
    if state is fx.Freshness.TOO_STALE:
        raise ApiError(
            503,
            "UNAVAILABLE",
            "the BTC/USD rate is out of date: new orders are paused until it is refreshed",
        )
    if state is fx.Freshness.STALE:
        request.app[CACHE].warn_stale(age)
    return snap.rate.rate


def market(request: web.Request, snap: Snapshot) -> Market:
    """The snapshot's catalog, priced at the usable rate (read when an order is priced)."""
    return Market(snap.catalog, functools.partial(usable_rate, request, snap))


async def known_services(request: web.Request) -> list[ServiceRow]:
    """The provider's services from the catalog, or 503 before the first refresh."""
    return (await loaded_snapshot(request)).catalog.services


def _offer_json(
    kind: OrderType, country: Country, service: str, price: int, available: int
) -> dict[str, Any]:
    """One catalog entry."""
    return {
        "type": kind.value,
        "country": country.iso,
        "countryId": country.id,
        "countryName": country.display_name,
        "service": service,
        "priceSats": price,
        "available": available,
    }


def _catalog_json(
    catalog: Catalog,
    rate: Decimal,
    settings: Settings,
    want_country: int | None,
    want_service: str | None,
) -> list[dict[str, Any]]:
    """Every sellable offer and rental matching the filters, priced in sats, in a stable order."""
    index = catalog.countries
    out: list[dict[str, Any]] = []
    for offer in catalog.sellable_offers():
        country = index.by_id(offer.country_id)
        if country is None or want_country not in (None, offer.country_id):
            continue
        if want_service is not None and offer.service != want_service:
            continue
        price = price_for(offer.cost_usd, rate, settings)
        out.append(_offer_json(OrderType.RECEIVE_SMS, country, offer.service, price, offer.count))
    for rent in catalog.sellable_rent():
        country = index.by_id(rent.country_id)
        if country is None or want_country not in (None, rent.country_id):
            continue
        if want_service is not None and rent.service != want_service:
            continue
        price = price_for(rent.cost_usd, rate, settings)
        entry = _offer_json(OrderType.RENT_NUMBER, country, rent.service, price, rent.count)
        entry["durationMinutes"] = rent.hours * 60
        out.append(entry)
    out.sort(key=lambda e: (e["countryId"], e["service"], e["type"], e.get("durationMinutes", 0)))
    return out


async def catalog(request: web.Request) -> web.Response:
    """GET /v2/l402/catalog: what can be bought (numbers and rentals), where, for how many sats."""
    snap = await loaded_snapshot(request)
    want_country: int | None = None
    if raw := request.query.get("country"):
        found = snap.catalog.countries.resolve(raw)
        if found is None:
            raise ApiError(400, "INVALID_COUNTRY", f"country {raw!r} is not recognized")
        if isinstance(found, Country):
            want_country = found.id
    want_service = countries.normalize_service(request.query.get("service", "")) or None
    rate = usable_rate(request, snap)
    offers = _catalog_json(snap.catalog, rate, request.app[SETTINGS], want_country, want_service)
    return web.json_response({"offers": offers})


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as data (for tests)."""
    return dict(json.loads(OPENAPI_PATH.read_text()))
