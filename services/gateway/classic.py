"""The classic API (hold invoices): /createorder, /orderstatus, /cancelorder.

Errors are `{"status": "error", "reason": "..."}`; the 64-hex orderId is the bearer secret.
Prepaid accounts use the `X-API-Key` header: /fund, /balance, /history, and
`immediate: true` orders paid from the balance.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from libs.common.adapters.lightning import AddedInvoice, LndError
from libs.common.core.faults import crash_point
from libs.common.domain import countries
from libs.common.domain.api_keys import key_hash, plausible_key
from libs.common.domain.countries import Offer
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.orders import CancelRefused, OrderType, Status, check_customer_cancel
from libs.common.persistence import account_store as accounts
from libs.common.persistence import order_store as store
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.outbox_store import enqueue
from services.gateway import unpaid
from services.gateway.discovery import (
    country_index,
    ensure_selling,
    loaded_snapshot,
    usable_rate,
)
from services.gateway.errors import ApiError
from services.gateway.keys import LND, POOL, SETTINGS
from services.gateway.orders import best_offer, price_for

AUTO_COUNTRY = 999
MAX_FUND_SATS = 10_000_000
LND_HOLD_EXPIRY_DELTA = 18  # blocks before the HTLC expiry at which LND cancels on its own
BLOCK_SECONDS = 600
NO_NUMBER = (
    "No available number, payment request is canceled. "
    "Your funds are returned to your wallet automatically."
)
_ORDER_ID = re.compile(r"[0-9a-f]{64}")


def _error(status: int, reason: str) -> web.Response:
    """The classic error body."""
    return web.json_response({"status": "error", "reason": reason}, status=status)


# What reading a body can raise on hostile input: ValueError (bad JSON, bad UTF-8, a multipart
# without boundary), LookupError (unknown charset), RecursionError (absurd nesting),
# RequestPayloadError (a body that fails to decompress), HttpProcessingError (a malformed
# multipart part header).
_UNREADABLE = (
    ValueError,
    LookupError,
    RecursionError,
    web.RequestPayloadError,
    HttpProcessingError,
)


async def _params(request: web.Request) -> dict[str, Any]:
    """Request fields from the query, a form or a JSON object; 400 for an unreadable body."""
    fields: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except _UNREADABLE:
                body = None
            if not isinstance(body, dict):
                raise ApiError(400, "VALIDATION_ERROR", "body must be a JSON object")
            fields.update(body)
        else:
            try:
                form = await request.post()
            except _UNREADABLE as exc:
                raise ApiError(
                    400, "VALIDATION_ERROR", "body must be a form, multipart form or JSON object"
                ) from exc
            fields.update(form)
    return fields


def cltv_expiry_blocks(invoice_expiry: int, order_timeout: int) -> int:
    """A final CLTV delta that outlives the longest hold (payment window + SMS wait) safely."""
    hold_blocks = math.ceil((invoice_expiry + order_timeout + BLOCK_SECONDS) / BLOCK_SECONDS)
    return max(40, LND_HOLD_EXPIRY_DELTA + hold_blocks + 12)


async def _hold_invoice(
    request: web.Request, amount_sats: int, memo: str, hold_seconds: int
) -> tuple[bytes, bytes, AddedInvoice] | None:
    """A hold invoice on our own fresh preimage; None when the node cannot be reached."""
    settings = request.app[SETTINGS]
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).digest()
    try:
        invoice = await request.app[LND].add_hold_invoice(
            payment_hash=payment_hash,
            value_msat=amount_sats * 1000,
            memo=memo,
            expiry=settings.invoice_expiry_seconds,
            cltv_expiry=cltv_expiry_blocks(settings.invoice_expiry_seconds, hold_seconds),
        )
    except (TimeoutError, LndError, OSError):
        return None
    return preimage, payment_hash, invoice


async def create_order(request: web.Request) -> web.Response:
    """POST /createorder: a hold invoice for a one-time number."""
    settings = request.app[SETTINGS]
    try:
        fields = await _params(request)
    except ApiError as exc:
        return _error(400, exc.message)
    if str(fields.get("isRental", "false")).lower() in ("true", "1"):
        return _error(400, "rentals are not available yet")
    immediate = str(fields.get("immediate", "false")).lower() in ("true", "1")
    account_id: int | None = None
    if immediate:
        found = await _account(request)
        if isinstance(found, web.Response):
            return found
        account_id = found
    raw_country = fields.get("country", AUTO_COUNTRY)
    if str(raw_country).strip() == str(AUTO_COUNTRY):
        raw_country = countries.AUTO
    if isinstance(raw_country, bool) or not isinstance(raw_country, str | int):
        return _error(400, "invalid country")
    try:
        snap = await loaded_snapshot(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    country = snap.catalog.countries.resolve(raw_country)
    if country is None:
        return _error(400, "invalid country")
    raw_service = fields.get("service")
    if not isinstance(raw_service, str) or not raw_service.strip():
        return _error(400, "service is required")
    service = countries.normalize_service(raw_service)
    try:
        if service not in snap.catalog.service_codes():
            return _error(400, f"unknown service {service!r}")
        await ensure_selling(request)
        offer = best_offer(snap.catalog, service, country)
        # The quote is what the hold invoice asks for and what the order row stores.
        price = price_for(offer.cost_usd, usable_rate(request, snap), settings)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    if account_id is not None:
        return await _create_paid_from_balance(request, account_id, service, offer, price)
    await unpaid.refuse(request, request.app[POOL])
    order_id = secrets.token_hex(32)
    held = await _hold_invoice(
        request, price, f"sms4sats {service} order", settings.order_timeout_seconds
    )
    if held is None:
        return _error(503, "cannot create an invoice now; retry later")
    preimage, payment_hash, invoice = held
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.invoice_expiry_seconds)
    async with transaction(request.app[POOL]) as conn:
        await unpaid.claim(conn, request, payment_hash)
        await conn.execute(
            Q.order_insert_hold,
            order_id,
            OrderType.RECEIVE_SMS.value,
            service,
            offer.country_id,
            price,
            offer.cost_usd,
            payment_hash,
            invoice.payment_request,
            expires_at,
            preimage,
        )
        await store.set_timer(
            conn, order_id, Timer.INVOICE_EXPIRED, settings.invoice_expiry_seconds
        )
        await enqueue(conn, Event(EventType.CREATED, order_id), prefix=settings.subject_prefix)
        crash_point("gateway.hold_order_invoiced")
    return web.json_response(
        {"status": "OK", "orderId": order_id, "payreq": invoice.payment_request}
    )


async def _account_row(request: web.Request) -> Any:
    """The account row of the X-API-Key header, or the classic error to answer."""
    api_key = request.headers.get("X-API-Key", "")
    if not api_key:
        return _error(400, "X-API-Key header is required")
    if not plausible_key(api_key):
        # Non-ASCII bytes, control characters, absurd length: no key we issued looks so.
        return _error(401, "unknown or revoked API key")
    row = await request.app[POOL].fetchrow(Q.account_by_key, key_hash(api_key))
    if row is None:
        return _error(401, "unknown or revoked API key")
    return row


async def _account(request: web.Request) -> int | web.Response:
    """The account id of the X-API-Key header, or the classic error to answer."""
    found = await _account_row(request)
    return found if isinstance(found, web.Response) else int(found["id"])


class _Insufficient(Exception):
    """The balance does not cover the order."""


async def _create_paid_from_balance(
    request: web.Request, account_id: int, service: str, offer: Offer, price: int
) -> web.Response:
    """An order paid from the prepaid balance: debit and paid in one transaction."""
    settings = request.app[SETTINGS]
    order_id = secrets.token_hex(32)
    try:
        async with transaction(request.app[POOL]) as conn:
            await conn.execute(
                Q.order_insert_balance,
                order_id,
                OrderType.RECEIVE_SMS.value,
                service,
                offer.country_id,
                price,
                offer.cost_usd,
                secrets.token_bytes(32),  # no invoice; the column wants a unique hash
                account_id,
            )
            if await accounts.move(conn, account_id, -price, "order", order_id) is None:
                raise _Insufficient
            await store.mark_paid(
                conn,
                order_id,
                deadline=settings.order_timeout_seconds,
                prefix=settings.subject_prefix,
            )
            crash_point("gateway.balance_debited")
    except _Insufficient:
        return _error(402, f"insufficient balance: this order costs {price} sats")
    return web.json_response({"status": "OK", "orderId": order_id, "payreq": "paid"})


async def fund(request: web.Request) -> web.Response:
    """POST /fund: a hold invoice that credits the balance once when paid."""
    found = await _account(request)
    if isinstance(found, web.Response):
        return found
    try:
        fields = await _params(request)
    except ApiError as exc:
        return _error(400, exc.message)
    try:
        amount = int(str(fields.get("amount", "")))
    except ValueError:
        return _error(400, "amount must be a whole number of sats")
    if not 1 <= amount <= MAX_FUND_SATS:
        return _error(400, f"amount must be between 1 and {MAX_FUND_SATS} sats")
    settings = request.app[SETTINGS]
    held = await _hold_invoice(request, amount, "sms4sats balance top-up", 0)
    if held is None:
        return _error(503, "cannot create an invoice now; retry later")
    preimage, payment_hash, invoice = held
    funding_id = secrets.token_hex(32)
    crash_point("gateway.funding_invoiced")
    await request.app[POOL].execute(
        Q.funding_insert,
        funding_id,
        found,
        amount,
        payment_hash,
        preimage,
        invoice.payment_request,
        datetime.now(UTC) + timedelta(seconds=settings.invoice_expiry_seconds),
    )
    return web.json_response(
        {"status": "OK", "orderId": funding_id, "payreq": invoice.payment_request}
    )


async def balance(request: web.Request) -> web.Response:
    """GET /balance: the prepaid balance in sats."""
    row = await _account_row(request)
    if isinstance(row, web.Response):
        return row
    return web.json_response({"status": "OK", "balance": row["balance_sats"]})


async def history(request: web.Request) -> web.Response:
    """GET /history: every movement of the balance, newest first."""
    found = await _account(request)
    if isinstance(found, web.Response):
        return found
    rows = await request.app[POOL].fetch(Q.ledger_history, found, 500)
    return web.json_response(
        {
            "status": "OK",
            "totalAmount": sum(r["amount_sats"] for r in rows if r["kind"] == "fund"),
            "orders": [
                {
                    "amount": r["amount_sats"],
                    "kind": r["kind"],
                    "orderId": r["ref"],
                    "balanceAfter": r["balance_after"],
                    "timestamp": int(r["created_at"].timestamp() * 1000),
                }
                for r in rows
            ],
        }
    )


async def _order(request: web.Request) -> Any:
    """The classic order named by ?orderId=, or None."""
    order_id = request.query.get("orderId", "")
    if not _ORDER_ID.fullmatch(order_id):
        return None
    order = await store.get(request.app[POOL], order_id)
    if order is None or order["payment_mode"] not in ("hold", "balance"):
        return None
    return order


def _number(text: str | None) -> int | str | None:
    """Digits as a JSON number when that loses nothing (the classic docs show numbers)."""
    if text is None:
        return None
    return int(text) if text.isdigit() and not text.startswith("0") else text


async def order_status(request: web.Request) -> web.Response:
    """GET /orderstatus?orderId=: paid, the number once assigned, the code once paid for."""
    order = await _order(request)
    if order is None:
        return _error(404, "order not found")
    status = Status(order["status"])
    paid = order["paid_at"] is not None
    body: dict[str, Any] = {
        "status": "OK",
        "paid": paid,
        "id": order["id"],
        "timestamp": int(order["created_at"].timestamp() * 1000),
        "service": order["service"],
        "orderStatus": status.value,
    }
    if (
        paid
        and order["activation_id"] is None
        and status
        in (
            Status.REFUND_PENDING,
            Status.REFUNDED,
        )
    ):
        body["error"] = NO_NUMBER
    if order["phone_number"]:
        index = await country_index(request)
        country = index.by_id(order["country_id"]) if index is not None else None
        body["number"] = _number(order["phone_number"])  # without "+", as documented
        body["country"] = country.display_name if country else str(order["country_id"])
    # A hold order's code is shown only once its invoice is SETTLED (settled_at is written by
    # the payments worker after the node settled, with the completion); a prepaid order's
    # price was debited before its number was bought.
    if order["code"] is not None and (
        order["settled_at"] is not None or order["payment_mode"] == "balance"
    ):
        body["code"] = _number(order["code"])
    return web.json_response(body)


async def cancel_order(request: web.Request) -> web.Response:
    """GET /cancelorder?orderId=: cancel at the provider, then cancel the hold invoice."""
    order = await _order(request)
    if order is None:
        return _error(404, "order not found")
    try:
        check_customer_cancel(
            order_type=OrderType(order["type"]),
            status=Status(order["status"]),
            paid_at=order["paid_at"],
            now=datetime.now(UTC),
            min_age=timedelta(seconds=request.app[SETTINGS].classic_cancel_min_age_seconds),
        )
    except CancelRefused as exc:
        return _error(409, exc.message)
    settings = request.app[SETTINGS]
    async with transaction(request.app[POOL]) as conn:
        await enqueue(
            conn, Event(EventType.CANCEL_REQUESTED, order["id"]), prefix=settings.subject_prefix
        )
    return web.json_response({"status": "OK"})
