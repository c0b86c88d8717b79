"""Public, unauthenticated documents: discovery, L402 auto-discovery, OpenAPI, the catalog."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from libs.common import countries
from libs.common.orders import OrderType
from libs.common.sms import Offer, Service, SmsProvider
from services.gateway.errors import ApiError
from services.gateway.keys import PROVIDER, SETTINGS
from services.gateway.orders import price_for

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
            "orderTypes": [OrderType.RECEIVE_SMS.value],
            "openapi": "/v2/l402/openapi.json",
            "endpoints": {
                "services": "GET /v2/l402/services",
                "catalog": "GET /v2/l402/catalog",
                "createOrder": "POST /v2/l402/order",
                "getOrder": "GET /v2/l402/order/{orderId}",
                "cancelOrder": "POST /v2/l402/order/{orderId}/cancel",
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


class ProviderCache:
    """The provider's price list and service list, each refreshed at most every ttl seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._prices: tuple[float, list[Offer]] = (-float("inf"), [])
        self._services: tuple[float, list[Service]] = (-float("inf"), [])

    async def offers(self, provider: SmsProvider) -> list[Offer]:
        """Every offer, from the cache when fresh."""
        async with self._lock:  # one refresh at a time, however many requests wait
            if time.monotonic() - self._prices[0] >= self._ttl:
                self._prices = (time.monotonic(), await provider.prices())
            return self._prices[1]

    async def services(self, provider: SmsProvider) -> list[Service]:
        """Every service code, from the cache when fresh."""
        async with self._lock:
            if time.monotonic() - self._services[0] >= self._ttl:
                self._services = (time.monotonic(), await provider.services())
            return self._services[1]


CACHE = web.AppKey("provider_cache", ProviderCache)


async def known_services(request: web.Request) -> list[Service]:
    """The provider's services (cached), or 503 when it cannot be asked."""
    try:
        return await request.app[CACHE].services(request.app[PROVIDER])
    except Exception as exc:
        raise ApiError(503, "UNAVAILABLE", "the number provider is unavailable") from exc


async def catalog(request: web.Request) -> web.Response:
    """GET /v2/l402/catalog: what can be bought, where, and for how many sats."""
    settings = request.app[SETTINGS]
    want_country: int | None = None
    if raw := request.query.get("country"):
        found = countries.resolve_country(raw)
        if found is None:
            raise ApiError(400, "INVALID_COUNTRY", f"country {raw!r} is not recognized")
        if isinstance(found, countries.Country):
            want_country = found.id
    want_service = countries.normalize_service(request.query.get("service", "")) or None
    try:
        offers = await request.app[CACHE].offers(request.app[PROVIDER])
    except Exception as exc:
        raise ApiError(503, "UNAVAILABLE", "the number provider is unavailable") from exc
    out: list[dict[str, Any]] = []
    for offer in offers:
        country = countries.by_id(offer.country_id)
        if country is None or offer.count <= 0:
            continue
        if want_country is not None and offer.country_id != want_country:
            continue
        if want_service is not None and offer.service != want_service:
            continue
        out.append(
            {
                "type": OrderType.RECEIVE_SMS.value,
                "country": country.iso,
                "countryId": country.id,
                "countryName": country.name,
                "service": offer.service,
                "priceSats": price_for(offer, settings),
                "available": offer.count,
            }
        )
    out.sort(key=lambda o: (o["countryId"], o["service"]))
    return web.json_response({"offers": out})


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as data (for tests)."""
    return dict(json.loads(OPENAPI_PATH.read_text()))
