"""HTTP handlers of the L402 API."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from libs.common.adapters.lightning import AddedInvoice, LndError
from libs.common.core.faults import crash_point
from libs.common.domain import l402
from libs.common.domain.countries import Offer
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.orders import (
    CancelRefused,
    OrderType,
    PaymentMode,
    Status,
    check_another_sms,
    check_customer_cancel,
)
from libs.common.persistence import message_store as messages
from libs.common.persistence import order_store as store
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.outbox_store import enqueue
from services.gateway import unpaid
from services.gateway.discovery import (
    country_index,
    ensure_selling,
    known_services,
    loaded_snapshot,
    usable_rate,
)
from services.gateway.errors import ApiError, StaleCredential, read_json
from services.gateway.keys import JS_CONN, LND, NETWORK, POOL, SETTINGS
from services.gateway.limits import charge_challenge
from services.gateway.orders import (
    OrderRequest,
    best_offer,
    check_reactivation,
    credential_lifetime,
    order_json,
    parse_order_request,
    price_for,
    reactivation_offer,
    rent_offer,
)

log = logging.getLogger(__name__)


async def _authenticate(request: web.Request, order_id: str | None) -> Any:
    """Check the L402 credential; returns the order row (with refund columns) it unlocks."""
    values = request.headers.getall("Authorization", [])
    try:
        credential = l402.parse_authorization(values)
        row = await request.app[POOL].fetchrow(
            Q.order_by_token, l402.root_key_id(credential.identifier.raw)
        )
        if row is None:
            raise StaleCredential(403, l402.INVALID_MACAROON, "unknown or revoked token")
        if order_id is not None and row["id"] != order_id:
            raise l402.L402Error(l402.INVALID_MACAROON, "token is for another order")
        l402.verify(
            credential, root_key=bytes(row["root_key"]), order_id=row["id"], now=int(time.time())
        )
    except l402.L402Error as exc:
        kind = StaleCredential if exc.code == l402.EXPIRED_MACAROON else ApiError
        raise kind(403, exc.code, exc.message) from exc
    # Order binding twice over: the caveat names the order, the identifier names its invoice.
    if bytes(row["payment_hash"]) != credential.identifier.payment_hash:
        raise ApiError(403, l402.INVALID_MACAROON, "token is for another invoice")
    return row


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


async def create_order(request: web.Request) -> web.Response:
    """POST /v2/l402/order: answer 402 with an invoice and macaroon (or the order, if paid)."""
    owned: Any = None  # the order the credential unlocks, when it is the one to reactivate
    if request.headers.getall("Authorization", []):
        try:
            row = await _authenticate(request, None)
        except StaleCredential:
            row = None  # a client's cached, expired token: a fresh challenge (aperture does)
        if row is not None:
            if row["id"] != await _reactivation_target(request):
                # Generic L402 clients re-send the original request with the credential.
                return web.json_response(await order_body(request, row))
            owned = row
    # From here on it mints an order: the challenge bucket pays, whatever headers it carried.
    charge_challenge(request)
    settings = request.app[SETTINGS]
    body = await read_json(request)
    now = int(time.time())
    snap = await loaded_snapshot(request)
    req = parse_order_request(
        body, settings, now=now, network=request.app[NETWORK], index=snap.catalog.countries
    )
    pool = request.app[POOL]
    await ensure_selling(request)
    assert req.refund_invoice is not None
    if await pool.fetchval(Q.order_refund_invoice_in_use, req.refund_invoice.payment_hash):
        raise ApiError(
            400, "INVALID_REFUND_INVOICE", "this refundInvoice is already used by another order"
        )
    if req.type is OrderType.RECEIVE_SMS_REACTIVATE:
        check_reactivation(owned, req)
        if await pool.fetchval(Q.order_reactivation_in_progress, owned["id"]):
            raise ApiError(409, "UNAVAILABLE", "a reactivation of this order is in progress")
        req = replace(req, service=owned["service"])
        offer = reactivation_offer(snap.catalog, owned["country_id"], owned["service"])
    else:
        if req.service not in snap.catalog.service_codes():
            raise ApiError(
                400,
                "VALIDATION_ERROR",
                f"service: unknown code {req.service!r}; see /v2/l402/services",
            )
        if req.rent_hours is not None:
            offer = rent_offer(snap.catalog, req.service, req.country, req.rent_hours)
        else:
            offer = best_offer(snap.catalog, req.service, req.country)
    # The quote is what the invoice asks for and what the order row stores.
    price = price_for(offer.cost_usd, usable_rate(request, snap), settings)
    await unpaid.refuse(request, pool)
    order_id = str(uuid.uuid4())
    try:
        invoice = await request.app[LND].add_invoice(
            value_msat=price * 1000,
            memo=f"sms4sats {req.service} order {order_id}",
            expiry=settings.invoice_expiry_seconds,
        )
    except (TimeoutError, LndError, OSError) as exc:
        log.error("invoice creation failed: %s", exc)
        raise ApiError(503, "UNAVAILABLE", "cannot create an invoice now; retry later") from exc
    identifier = l402.new_identifier(invoice.r_hash)
    root_key = l402.new_root_key()
    macaroon = l402.mint(
        root_key=root_key,
        identifier=identifier,
        order_id=order_id,
        valid_until=now + credential_lifetime(settings, req.rent_hours),
    )
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.invoice_expiry_seconds)
    try:
        async with transaction(pool) as conn:
            await unpaid.claim(conn, request, invoice.r_hash)
            await _insert_order(conn, order_id, req, offer, price, invoice, expires_at)
            await conn.execute(Q.token_insert, l402.root_key_id(identifier), root_key, order_id)
            await store.set_timer(
                conn, order_id, Timer.INVOICE_EXPIRED, settings.invoice_expiry_seconds
            )
            await enqueue(conn, Event(EventType.CREATED, order_id), prefix=settings.subject_prefix)
            crash_point("gateway.order_invoiced")
    except asyncpg.UniqueViolationError as exc:
        # Two concurrent orders with the same refundInvoice: only one may keep it.
        raise ApiError(
            400, "INVALID_REFUND_INVOICE", "this refundInvoice is already used by another order"
        ) from exc
    log.info("order created", extra={"order_id": order_id})
    return _challenge(order_id, invoice.payment_request, macaroon, price, expires_at)


async def _insert_order(
    conn: asyncpg.Connection,
    order_id: str,
    req: OrderRequest,
    offer: Offer,
    price: int,
    invoice: AddedInvoice,
    expires_at: datetime,
) -> None:
    """Insert a new pending_payment order."""
    assert req.refund_invoice is not None
    await conn.execute(
        Q.order_insert,
        order_id,
        req.type.value,
        req.service,
        offer.country_id,
        price,
        offer.cost_usd,
        invoice.r_hash,
        invoice.payment_request,
        expires_at,
        req.refund_invoice.payment_request,
        req.refund_invoice.payment_hash,
        req.rent_hours,
        req.reactivates,
    )


def _challenge(
    order_id: str, invoice: str, macaroon: str, price: int, expires_at: datetime
) -> web.Response:
    """The 402 answer: both WWW-Authenticate headers and the same data in the JSON body."""
    body = {
        "error": {
            "code": "PAYMENT_REQUIRED",
            "message": "pay the invoice, then poll with L402 auth",
        },
        "orderId": order_id,
        "invoice": invoice,
        "macaroon": macaroon,
        "priceSats": price,
        "expiresAt": expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    resp = web.json_response(body, status=402)
    for name, value in l402.challenge_headers(macaroon, invoice):
        resp.headers.add(name, value)
    return resp


async def order_body(request: web.Request, row: Any) -> dict[str, Any]:
    """The order's JSON; its messages came with the row (order_by_token)."""
    received = messages.from_json(row["messages"])
    return order_json(row, request.app[SETTINGS], await country_index(request), received)


async def get_order(request: web.Request) -> web.Response:
    """GET /v2/l402/order/{id}: the order, for the holder of its paid credential."""
    row = await _authenticate(request, request.match_info["order_id"])
    return web.json_response(await order_body(request, row))


async def cancel_order(request: web.Request) -> web.Response:
    """POST /v2/l402/order/{id}/cancel: cancel at the provider, then refund (asynchronously)."""
    row = await _authenticate(request, request.match_info["order_id"])
    settings = request.app[SETTINGS]
    try:
        check_customer_cancel(
            order_type=OrderType(row["type"]),
            status=Status(row["status"]),
            paid_at=row["paid_at"],
            now=datetime.now(UTC),
            min_age=timedelta(seconds=settings.cancel_min_age_seconds),
        )
    except CancelRefused as exc:
        raise _refused(exc) from exc
    return await _requested(request, row, EventType.CANCEL_REQUESTED, "cancel")


async def another_sms(request: web.Request) -> web.Response:
    """POST /v2/l402/order/{id}/another-sms: ask for another SMS on the same number."""
    row = await _authenticate(request, request.match_info["order_id"])
    try:
        check_another_sms(
            order_type=OrderType(row["type"]),
            status=Status(row["status"]),
            payment_mode=PaymentMode(row["payment_mode"]),
        )
    except CancelRefused as exc:
        raise _refused(exc) from exc
    return await _requested(request, row, EventType.ANOTHER_SMS_REQUESTED, "anotherSms")


def _refused(exc: CancelRefused) -> ApiError:
    """The API error of a request the order's rules refuse."""
    return ApiError(400 if exc.code == "VALIDATION_ERROR" else 409, exc.code, exc.message)


async def _requested(request: web.Request, row: Any, kind: EventType, field: str) -> web.Response:
    """Queue the customer's request for the workers; 202 with the order and `field`."""
    async with transaction(request.app[POOL]) as conn:
        await enqueue(conn, Event(kind, row["id"]), prefix=request.app[SETTINGS].subject_prefix)
    body = await order_body(request, row)
    body[field] = "requested"
    return web.json_response(body, status=202)


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 when PostgreSQL and NATS answer, 503 otherwise."""
    checks = {"database": "ok", "nats": "ok"}
    try:
        await asyncio.wait_for(request.app[POOL].fetchval("SELECT 1"), 2.0)
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
