"""Order creation and presentation: validation, quoting, the JSON view of an order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from libs.common import countries
from libs.common.config import Settings
from libs.common.invoices import RefundInvoice, RefundInvoiceError, check_refund_invoice
from libs.common.messages import Message
from libs.common.orders import OrderType, Status
from libs.common.pricing import quote_sats
from libs.common.sms import Offer, ProviderError, SmsProvider
from services.gateway.errors import ApiError

_SERVICE_CODE = re.compile(r"[a-z0-9_]{1,16}")
_FIELDS = {"type", "country", "service", "refundInvoice", "durationMinutes", "orderId"}
_ORDER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The longest rental sold (30 days); the provider's offer decides which durations exist.
MAX_RENT_MINUTES = 30 * 24 * 60


def _bad(field: str, message: str) -> ApiError:
    """A VALIDATION_ERROR naming the field."""
    return ApiError(400, "VALIDATION_ERROR", f"{field}: {message}")


@dataclass(frozen=True)
class OrderRequest:
    """A validated POST /v2/l402/order body."""

    type: OrderType
    country: countries.Country | str
    service: str
    refund_invoice: RefundInvoice | None
    rent_hours: int | None = None
    # receive-sms-reactivate: the earlier order whose number is reused (country and service
    # are that order's).
    reactivates: str | None = None


def parse_order_request(body: Any, settings: Settings, *, now: int, network: str) -> OrderRequest:
    """Validate the order body; raises ApiError with the seed's codes."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _bad(unknown[0], "unknown field")
    raw_type = body.get("type", OrderType.RECEIVE_SMS.value)
    if not isinstance(raw_type, str) or raw_type not in {t.value for t in OrderType}:
        raise _bad("type", "must be receive-sms, receive-sms-reactivate or rent-number")
    order_type = OrderType(raw_type)
    if order_type is OrderType.RECEIVE_SMS_REACTIVATE:
        return _reactivation(body, _refund_invoice(body, settings, now=now, network=network))

    raw_service = body.get("service")
    if not isinstance(raw_service, str) or not raw_service.strip():
        raise _bad("service", "required, e.g. tg")
    service = countries.normalize_service(raw_service)
    if not _SERVICE_CODE.fullmatch(service):
        raise _bad("service", "unknown service code")

    raw_country = body.get("country", countries.AUTO)
    if isinstance(raw_country, bool) or not isinstance(raw_country, str | int):
        raise ApiError(400, "INVALID_COUNTRY", "country must be an id, ISO code, name or auto")
    country = countries.resolve_country(raw_country)
    if country is None:
        raise ApiError(400, "INVALID_COUNTRY", f"country {raw_country!r} is not recognized")

    rent_hours = None
    if order_type is OrderType.RENT_NUMBER:
        rent_hours = _rent_hours(body.get("durationMinutes"))
    elif "durationMinutes" in body:
        raise _bad("durationMinutes", "only for rent-number orders")
    if "orderId" in body:
        raise _bad("orderId", "only for receive-sms-reactivate orders")
    refund = _refund_invoice(body, settings, now=now, network=network)
    return OrderRequest(order_type, country, service, refund, rent_hours=rent_hours)


def _refund_invoice(
    body: dict[str, Any], settings: Settings, *, now: int, network: str
) -> RefundInvoice:
    """The refundInvoice every L402 order needs: a paid order that gets no number is refunded."""
    raw_refund = body.get("refundInvoice")
    if raw_refund is None:
        raise _bad("refundInvoice", "required: a no-amount BOLT11 invoice for refunds")
    if not isinstance(raw_refund, str):
        raise ApiError(400, "INVALID_REFUND_INVOICE", "refundInvoice must be a BOLT11 string")
    try:
        return check_refund_invoice(
            raw_refund,
            currency=network,
            now=now,
            min_validity_seconds=settings.refund_min_validity_seconds,
        )
    except RefundInvoiceError as exc:
        raise ApiError(400, exc.code, exc.message) from exc


def _rent_hours(raw: Any) -> int:
    """durationMinutes of a rental: whole hours; the provider's offer decides which exist."""
    if raw is None:
        raise _bad("durationMinutes", "required for rent-number, e.g. 240")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _bad("durationMinutes", "must be an integer number of minutes")
    if raw <= 0 or raw > MAX_RENT_MINUTES or raw % 60:
        raise _bad("durationMinutes", "must be a whole number of hours, in minutes (e.g. 240)")
    return raw // 60


def _reactivation(body: dict[str, Any], refund: RefundInvoice) -> OrderRequest:
    """A receive-sms-reactivate body: the earlier order only (its number, country, service)."""
    for name in ("country", "service", "durationMinutes"):
        if name in body:
            raise _bad(name, "not used by receive-sms-reactivate: orderId's number is reused")
    raw = body.get("orderId")
    if not isinstance(raw, str) or not _ORDER_ID.fullmatch(raw):
        raise _bad("orderId", "required: the id of your earlier completed order")
    return OrderRequest(
        OrderType.RECEIVE_SMS_REACTIVATE, countries.AUTO, "", refund, reactivates=raw
    )


async def best_offer(
    provider: SmsProvider, service: str, country: countries.Country | str
) -> Offer:
    """The offer to sell: the given country's, or for auto the cheapest known one in stock."""
    try:
        if isinstance(country, countries.Country):
            offers = await provider.prices(service=service, country_id=country.id)
        else:
            offers = await provider.prices(service=service)
    except ProviderError as exc:
        raise ApiError(
            503, "UNAVAILABLE", "the number provider is unavailable; retry later"
        ) from exc
    in_stock = [
        o
        for o in offers
        if o.service == service
        and o.count > 0
        and countries.by_id(o.country_id) is not None
        and (not isinstance(country, countries.Country) or o.country_id == country.id)
    ]
    if not in_stock:
        raise ApiError(409, "UNAVAILABLE", f"no numbers available for {service} in that country")
    return min(in_stock, key=lambda o: (o.cost_usd, o.country_id))


def price_for(offer: Offer, settings: Settings) -> int:
    """The customer's price in sats for an offer."""
    return quote_sats(
        Decimal(offer.cost_usd),
        btc_usd=settings.btc_usd,
        multiplier=settings.price_multiplier,
        min_sats=settings.min_price_sats,
    )


def _iso(ts: datetime | None) -> str | None:
    """RFC 3339 UTC with a Z."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_REFUND_STATUS = {
    "pending": "pending",
    "in_flight": "pending",
    "succeeded": "paid",
    "failed": "failed",
}


def order_json(
    row: asyncpg.Record | dict[str, Any], settings: Settings, received: list[Message] | None = None
) -> dict[str, Any]:
    """The public JSON view of an order row and its messages (see the API reference)."""
    status = Status(row["status"])
    country = countries.by_id(row["country_id"])
    paid_at: datetime | None = row["paid_at"]
    expires_at = row["deadline_at"] if paid_at else row["invoice_expires_at"]
    code = row["code"]
    messages = [
        {"text": m.text, "code": m.code, "receivedAt": _iso(m.received_at)}
        for m in received or []
        if m.text is not None or m.code is not None  # purged after the retention
    ]
    if not messages and (code is not None or row["sms_text"] is not None):
        # Orders from before messages were stored keep showing their one SMS.
        messages.append(
            {"text": row["sms_text"], "code": code, "receivedAt": _iso(row["sms_received_at"])}
        )
    if code is None and messages:
        # A rental has no single code: show the latest one its messages carry.
        code = next((m["code"] for m in reversed(messages) if m["code"]), None)
    refund = None
    refund_status = row.get("refund_status")
    if refund_status is not None:
        refund = {
            "status": _REFUND_STATUS[refund_status],
            "amountSats": row["refund_amount_sats"],
            "paidAt": _iso(row["refund_paid_at"]),
        }
    elif status is Status.REFUND_PENDING:
        refund = {"status": "pending", "amountSats": row["price_sats"], "paidAt": None}
    cancelable_at = None
    if paid_at is not None and row["type"] == OrderType.RECEIVE_SMS:
        cancelable_at = _iso(paid_at + timedelta(seconds=settings.cancel_min_age_seconds))
    phone = row["phone_number"]
    return {
        "orderId": row["id"],
        "type": row["type"],
        "status": status.value,
        "country": country.iso if country else None,
        "countryId": row["country_id"],
        "service": row["service"],
        "priceSats": row["price_sats"],
        "phoneNumber": f"+{phone}" if phone else None,
        "code": code,
        "messages": messages,
        "createdAt": _iso(row["created_at"]),
        "paidAt": _iso(paid_at),
        "expiresAt": _iso(expires_at),
        "cancelableAt": cancelable_at,
        "refund": refund,
        "rentEndsAt": _iso(row.get("rent_ends_at")),
    }
