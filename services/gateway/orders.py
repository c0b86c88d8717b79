"""Order creation and presentation: validation, quoting, the JSON view of an order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from libs.common.core.config import Settings
from libs.common.domain import countries
from libs.common.domain.countries import Country, CountryIndex, Offer
from libs.common.domain.messages import Message
from libs.common.domain.orders import OrderType, Status
from libs.common.domain.pricing import quote_sats
from libs.common.domain.refund_invoices import (
    RefundInvoice,
    RefundInvoiceError,
    check_refund_invoice,
    refund_min_validity_seconds,
)
from libs.common.persistence.catalog_store import Catalog
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
    country: Country | str  # a catalog country or "auto"
    service: str
    refund_invoice: RefundInvoice | None
    rent_hours: int | None = None
    # receive-sms-reactivate: the earlier order whose number is reused (country and service
    # are that order's).
    reactivates: str | None = None


def parse_order_request(
    body: Any, settings: Settings, *, now: int, network: str, index: CountryIndex
) -> OrderRequest:
    """Validate the order body against the catalog's countries; ApiError with the seed's codes."""
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
    country = index.resolve(raw_country)
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
            min_validity_seconds=refund_min_validity_seconds(settings),
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


def best_offer(catalog: Catalog, service: str, country: Country | str) -> Offer:
    """The offer to sell: the country's, or for auto the cheapest in stock (ties: most stock)."""
    offer = countries.choose_offer(catalog.sellable_offers(), service, country)
    if offer is None:
        raise ApiError(409, "UNAVAILABLE", f"no numbers available for {service} in that country")
    return offer


def rent_offer(catalog: Catalog, service: str, country: Country | str, hours: int) -> Offer:
    """The rental to sell for these hours; 400 naming the offered durations if hours is not one."""
    wanted = country.id if isinstance(country, Country) else None
    matching = [
        r
        for r in catalog.sellable_rent()
        if r.service == service and (wanted is None or r.country_id == wanted)
    ]
    if not matching:
        raise ApiError(409, "UNAVAILABLE", f"no rentals available for {service} in that country")
    offers = [
        Offer(r.country_id, r.service, r.cost_usd, r.count) for r in matching if r.hours == hours
    ]
    if not offers:
        offered = ", ".join(str(h * 60) for h in sorted({r.hours for r in matching}))
        raise _bad("durationMinutes", f"not offered; choose one of {offered}")
    return min(offers, key=countries.auto_key)


def reactivation_offer(catalog: Catalog, country_id: int, service: str) -> Offer:
    """The price of reusing a number: the catalog's for its country and service (no stock)."""
    for offer in catalog.offers:
        if offer.country_id == country_id and offer.service == service:
            return offer
    raise ApiError(409, "UNAVAILABLE", f"{service} numbers of that country are not sold now")


def check_reactivation(earlier: asyncpg.Record | None, req: OrderRequest) -> None:
    """Refuse a reactivation unless the credential's order is the completed one named."""
    if earlier is None or earlier["id"] != req.reactivates:
        raise ApiError(
            403,
            "INVALID_MACAROON",
            "reactivating needs the earlier order's credential: "
            "Authorization: L402 <macaroon>:<preimage> of orderId",
        )
    if (
        earlier["status"] != Status.COMPLETED
        or earlier["type"] == OrderType.RENT_NUMBER
        or earlier["payment_mode"] != "standard"
        or not earlier["activation_id"]
    ):
        raise _bad("orderId", "only a completed receive-sms order can be reactivated")


def credential_lifetime(settings: Settings, rent_hours: int | None) -> int:
    """Seconds a new order's macaroon stays valid: the TTL, or a rental's whole life."""
    if rent_hours is None:
        return settings.macaroon_ttl_seconds
    # A rental's messages must stay readable until it ends and its SMS are purged.
    rental = settings.invoice_expiry_seconds + rent_hours * 3600 + settings.code_retention_seconds
    return max(settings.macaroon_ttl_seconds, rental)


def price_for(cost_usd: Decimal, btc_usd: Decimal, settings: Settings) -> int:
    """The customer's price in sats for a provider cost in USD at a BTC/USD rate."""
    return quote_sats(
        Decimal(cost_usd),
        btc_usd=btc_usd,
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


def country_iso(index: CountryIndex | None, country_id: int) -> str | None:
    """The ISO code of an order's country: the catalog's, else the static table's."""
    country = index.by_id(country_id) if index is not None else None
    if country is not None:
        return country.iso
    return countries.static_iso(country_id, "")


def order_json(
    row: asyncpg.Record | dict[str, Any],
    settings: Settings,
    index: CountryIndex | None = None,
    received: list[Message] | None = None,
) -> dict[str, Any]:
    """The public JSON view of an order row and its messages (see the API reference)."""
    status = Status(row["status"])
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
        "country": country_iso(index, row["country_id"]),
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
