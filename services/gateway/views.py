"""HTTP handlers of the L402 API: each reads the request, runs a use case, answers its JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from libs.common.domain import l402
from libs.common.domain.orders import Order, OrderType
from libs.common.persistence.ports import CredentialedOrder
from services.gateway import usecases
from services.gateway.discovery import country_index, known_services, loaded_snapshot, market
from services.gateway.errors import ApiError, StaleCredential, read_json
from services.gateway.keys import JS_CONN, NETWORK, SETTINGS, STORES, gateway
from services.gateway.limits import charge_challenge, client_address
from services.gateway.order_requests import parse_order_request
from services.gateway.order_view import iso, order_json
from services.gateway.usecases import Challenge, NewL402Order


def _authorization(request: web.Request) -> list[str]:
    """The request's Authorization header values."""
    return request.headers.getall("Authorization", [])


async def _reactivation_target(request: web.Request) -> str | None:
    """The orderId of a receive-sms-reactivate body, or None for any other body."""
    try:
        body = await read_json(request)
    except ApiError:
        return None
    if isinstance(body, dict) and body.get("type") == OrderType.RECEIVE_SMS_REACTIVATE:
        target = body.get("orderId")
        return target if isinstance(target, str) else None
    return None


async def _credential_order(request: web.Request) -> CredentialedOrder | None:
    """The order a credential on POST /v2/l402/order unlocks; None without a usable one."""
    if not _authorization(request):
        return None
    try:
        return await usecases.read_order(gateway(request), _authorization(request), None)
    except StaleCredential:
        return None  # a client's cached, expired token: a fresh challenge (aperture does)


async def create_order(request: web.Request) -> web.Response:
    """POST /v2/l402/order: answer 402 with an invoice and macaroon (or the order, if paid)."""
    owned: Order | None = None  # the order the credential unlocks, when it is the one to reactivate
    found = await _credential_order(request)
    if found is not None:
        if found.order.id != await _reactivation_target(request):
            # Generic L402 clients re-send the original request with the credential.
            return web.json_response(await _order_body(request, found))
        owned = found.order
    # From here on it mints an order: the challenge bucket pays, whatever headers it carried.
    charge_challenge(request)
    settings = request.app[SETTINGS]
    body = await read_json(request)
    now = int(time.time())
    snap = await loaded_snapshot(request)
    req = parse_order_request(
        body, settings, now=now, network=request.app[NETWORK], index=snap.catalog.countries
    )
    new = NewL402Order(req, client_address(request, settings), owned)
    created = await usecases.create_l402_order(gateway(request), market(request, snap), new)
    return _challenge(created)


def _challenge(created: Challenge) -> web.Response:
    """The 402 answer: both WWW-Authenticate headers and the same data in the JSON body."""
    body = {
        "error": {
            "code": "PAYMENT_REQUIRED",
            "message": "pay the invoice, then poll with L402 auth",
        },
        "orderId": created.order_id,
        "invoice": created.invoice,
        "macaroon": created.macaroon,
        "priceSats": created.price_sats,
        "expiresAt": iso(created.expires_at),
    }
    resp = web.json_response(body, status=402)
    for name, value in l402.challenge_headers(created.macaroon, created.invoice):
        resp.headers.add(name, value)
    return resp


async def _order_body(request: web.Request, found: CredentialedOrder) -> dict[str, Any]:
    """The order's JSON, with the messages and refund read along with it."""
    index = await country_index(request)
    settings = request.app[SETTINGS]
    return order_json(found.order, settings, index, found.messages, found.refund)


async def _authenticated(request: web.Request) -> CredentialedOrder:
    """The order of the path, for the holder of its credential."""
    order_id = request.match_info["order_id"]
    return await usecases.read_order(gateway(request), _authorization(request), order_id)


async def get_order(request: web.Request) -> web.Response:
    """GET /v2/l402/order/{id}: the order, for the holder of its paid credential."""
    return web.json_response(await _order_body(request, await _authenticated(request)))


async def cancel_order(request: web.Request) -> web.Response:
    """POST /v2/l402/order/{id}/cancel: cancel at the provider, then refund (asynchronously)."""
    found = await _authenticated(request)
    min_age = request.app[SETTINGS].cancel_min_age_seconds
    await usecases.cancel(gateway(request), found.order, min_age)
    return web.json_response(
        {**await _order_body(request, found), "cancel": "requested"}, status=202
    )


async def another_sms(request: web.Request) -> web.Response:
    """POST /v2/l402/order/{id}/another-sms: ask for another SMS on the same number."""
    found = await _authenticated(request)
    await usecases.another_sms(gateway(request), found.order)
    body = {**await _order_body(request, found), "anotherSms": "requested"}
    return web.json_response(body, status=202)


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 when PostgreSQL and NATS answer, 503 otherwise."""
    checks = {"database": "ok", "nats": "ok"}
    try:
        await asyncio.wait_for(request.app[STORES].health.ping(), 2.0)
    except Exception:
        checks["database"] = "unreachable"
    if not request.app[JS_CONN].is_connected:
        checks["nats"] = "unreachable"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "degraded", **checks}, status=200 if ok else 503
    )


async def services(request: web.Request) -> web.Response:
    """GET /v2/l402/services: the service codes the provider offers."""
    listed = await known_services(request)
    return web.json_response({"services": [{"code": s.code, "name": s.name} for s in listed]})
