"""The classic API (hold invoices): /createorder, /orderstatus, /cancelorder.

Errors are `{"status": "error", "reason": "..."}` (the error middleware answers every
`ApiError` of these routes so); the 64-hex orderId is the bearer secret. Prepaid accounts use
the `X-API-Key` header: /fund, /balance, /history, and `immediate: true` orders paid from the
balance.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from libs.common.domain import countries
from libs.common.domain.countries import Country, CountryIndex
from libs.common.domain.orders import Order, PaymentMode, Status
from libs.common.persistence.account_store import Account
from services.gateway import usecases
from services.gateway.discovery import country_index, loaded_snapshot, market
from services.gateway.errors import ApiError
from services.gateway.keys import SETTINGS, STORES, gateway, prepaid
from services.gateway.limits import client_address
from services.gateway.usecases import NewClassicOrder

AUTO_COUNTRY = 999
MAX_FUND_SATS = 10_000_000
NO_NUMBER = (
    "No available number, payment request is canceled. "
    "Your funds are returned to your wallet automatically."
)
_ORDER_ID = re.compile(r"[0-9a-f]{64}")

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


def _invalid(reason: str) -> ApiError:
    """A 400 of the classic API (its body shows the reason only)."""
    return ApiError(400, "VALIDATION_ERROR", reason)


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
                raise _invalid("body must be a JSON object")
            fields.update(body)
        else:
            try:
                form = await request.post()
            except _UNREADABLE as exc:
                raise _invalid("body must be a form, multipart form or JSON object") from exc
            fields.update(form)
    return fields


def _flag(fields: dict[str, Any], name: str) -> bool:
    """A true/false request field (absent: false)."""
    return str(fields.get(name, "false")).lower() in ("true", "1")


async def _account(request: web.Request) -> Account:
    """The prepaid account of the X-API-Key header; 400/401 for a missing or unknown key."""
    api_key = request.headers.get("X-API-Key", "")
    usecases.check_api_key(api_key)  # before the database is touched
    return await usecases.account(prepaid(request), api_key)


def _country(index: CountryIndex, raw: str | int) -> Country | str:
    """The country of a /createorder request (id, ISO, name, auto or 999)."""
    found = index.resolve(countries.AUTO if str(raw).strip() == str(AUTO_COUNTRY) else raw)
    if found is None:
        raise _invalid("invalid country")
    return found


def _service(raw: Any, known: set[str]) -> str:
    """The service code of a /createorder request, which the catalog must list."""
    if not isinstance(raw, str) or not raw.strip():
        raise _invalid("service is required")
    service = countries.normalize_service(raw)
    if service not in known:
        raise _invalid(f"unknown service {service!r}")
    return service


async def create_order(request: web.Request) -> web.Response:
    """POST /createorder: a hold invoice for a one-time number (or paid from the balance)."""
    fields = await _params(request)
    if _flag(fields, "isRental"):
        raise _invalid("rentals are not available yet")
    account_id = (await _account(request)).id if _flag(fields, "immediate") else None
    raw_country = fields.get("country", AUTO_COUNTRY)
    if isinstance(raw_country, bool) or not isinstance(raw_country, str | int):
        raise _invalid("invalid country")
    snap = await loaded_snapshot(request)
    country = _country(snap.catalog.countries, raw_country)
    service = _service(fields.get("service"), snap.catalog.service_codes())
    client = client_address(request, request.app[SETTINGS])
    new = NewClassicOrder(service, country, client, account_id)
    if account_id is not None:
        created = await usecases.create_balance_order(prepaid(request), market(request, snap), new)
    else:
        created = await usecases.create_hold_order(gateway(request), market(request, snap), new)
    return web.json_response(
        {"status": "OK", "orderId": created.order_id, "payreq": created.payment_request}
    )


async def fund(request: web.Request) -> web.Response:
    """POST /fund: a hold invoice that credits the balance once when paid."""
    account = await _account(request)
    fields = await _params(request)
    try:
        amount = int(str(fields.get("amount", "")))
    except ValueError:
        raise _invalid("amount must be a whole number of sats") from None
    if not 1 <= amount <= MAX_FUND_SATS:
        raise _invalid(f"amount must be between 1 and {MAX_FUND_SATS} sats")
    funded = await usecases.fund(prepaid(request), account.id, amount)
    return web.json_response(
        {"status": "OK", "orderId": funded.order_id, "payreq": funded.payment_request}
    )


async def balance(request: web.Request) -> web.Response:
    """GET /balance: the prepaid balance in sats."""
    account = await _account(request)
    return web.json_response({"status": "OK", "balance": account.balance_sats})


async def history(request: web.Request) -> web.Response:
    """GET /history: every movement of the balance, newest first."""
    account = await _account(request)
    entries = await usecases.history(prepaid(request), account.id)
    return web.json_response(
        {
            "status": "OK",
            "totalAmount": sum(e.amount_sats for e in entries if e.kind == "fund"),
            "orders": [
                {
                    "amount": e.amount_sats,
                    "kind": e.kind,
                    "orderId": e.ref,
                    "balanceAfter": e.balance_after,
                    "timestamp": int(e.created_at.timestamp() * 1000),
                }
                for e in entries
            ],
        }
    )


async def _order(request: web.Request) -> Order:
    """The classic order named by ?orderId=; 404 when there is none."""
    order_id = request.query.get("orderId", "")
    found = None
    if _ORDER_ID.fullmatch(order_id):
        found = await usecases.classic_order(request.app[STORES], order_id)
    if found is None:
        raise ApiError(404, "NOT_FOUND", "order not found")
    return found


def _number(text: str | None) -> int | str | None:
    """Digits as a JSON number when that loses nothing (the classic docs show numbers)."""
    if text is None:
        return None
    return int(text) if text.isdigit() and not text.startswith("0") else text


def _status_json(order: Order, index: CountryIndex | None) -> dict[str, Any]:
    """The /orderstatus body: paid, the number once assigned, the code once paid for."""
    paid = order.paid_at is not None
    body: dict[str, Any] = {
        "status": "OK",
        "paid": paid,
        "id": order.id,
        "timestamp": int(order.created_at.timestamp() * 1000),
        "service": order.service,
        "orderStatus": order.status.value,
    }
    if (
        paid
        and order.activation_id is None
        and order.status
        in (
            Status.REFUND_PENDING,
            Status.REFUNDED,
        )
    ):
        body["error"] = NO_NUMBER
    if order.phone_number:
        country = index.by_id(order.country_id) if index is not None else None
        body["number"] = _number(order.phone_number)  # without "+", as documented
        body["country"] = country.display_name if country else str(order.country_id)
    # A hold order's code is shown only once its invoice is SETTLED (settled_at is written by
    # the payments worker after the node settled, with the completion); a prepaid order's
    # price was debited before its number was bought.
    if order.code is not None and (
        order.settled_at is not None or order.payment_mode is PaymentMode.BALANCE
    ):
        body["code"] = _number(order.code)
    return body


async def order_status(request: web.Request) -> web.Response:
    """GET /orderstatus?orderId=: paid, the number once assigned, the code once paid for."""
    order = await _order(request)
    index = await country_index(request) if order.phone_number else None
    return web.json_response(_status_json(order, index))


async def cancel_order(request: web.Request) -> web.Response:
    """GET /cancelorder?orderId=: cancel at the provider, then cancel the hold invoice."""
    order = await _order(request)
    min_age = request.app[SETTINGS].classic_cancel_min_age_seconds
    await usecases.cancel(gateway(request), order, min_age)
    return web.json_response({"status": "OK"})
