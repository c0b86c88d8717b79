"""The body of POST /v2/l402/order, validated into an `OrderRequest` (errors name the field)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from libs.common.core.config import Settings
from libs.common.domain import countries
from libs.common.domain.countries import Country, CountryIndex
from libs.common.domain.orders import OrderType
from libs.common.domain.refund_invoices import (
    RefundInvoice,
    RefundInvoiceError,
    check_refund_invoice,
    refund_min_validity_seconds,
)
from services.gateway.errors import ApiError

_SERVICE_CODE = re.compile(r"[a-z0-9_]{1,16}")
_FIELDS = {"type", "country", "service", "refundInvoice", "durationMinutes", "orderId"}
_ORDER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The longest rental sold (30 days); the provider's offer decides which durations exist.
MAX_RENT_MINUTES = 30 * 24 * 60


def bad_field(field: str, message: str) -> ApiError:
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
    """Validate the order body against the catalog's countries; ApiError naming the field."""
    if not isinstance(body, dict):
        raise bad_field("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad_field(unknown[0], "unknown field")
    raw_type = body.get("type", OrderType.RECEIVE_SMS.value)
    if not isinstance(raw_type, str) or raw_type not in {t.value for t in OrderType}:
        raise bad_field("type", "must be receive-sms, receive-sms-reactivate or rent-number")
    order_type = OrderType(raw_type)
    if order_type is OrderType.RECEIVE_SMS_REACTIVATE:
        return _reactivation(body, _refund_invoice(body, settings, now=now, network=network))

    raw_service = body.get("service")
    if not isinstance(raw_service, str) or not raw_service.strip():
        raise bad_field("service", "required, e.g. tg")
    service = countries.normalize_service(raw_service)
    if not _SERVICE_CODE.fullmatch(service):
        raise bad_field("service", "unknown service code")

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
        raise bad_field("durationMinutes", "only for rent-number orders")
    if "orderId" in body:
        raise bad_field("orderId", "only for receive-sms-reactivate orders")
    refund = _refund_invoice(body, settings, now=now, network=network)
    return OrderRequest(order_type, country, service, refund, rent_hours=rent_hours)


def _refund_invoice(
    body: dict[str, Any], settings: Settings, *, now: int, network: str
) -> RefundInvoice:
    """The refundInvoice every L402 order needs: a paid order that gets no number is refunded."""
    raw_refund = body.get("refundInvoice")
    if raw_refund is None:
        raise bad_field("refundInvoice", "required: a no-amount BOLT11 invoice for refunds")
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
        raise bad_field("durationMinutes", "required for rent-number, e.g. 240")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise bad_field("durationMinutes", "must be an integer number of minutes")
    if raw <= 0 or raw > MAX_RENT_MINUTES or raw % 60:
        raise bad_field("durationMinutes", "must be a whole number of hours, in minutes (e.g. 240)")
    return raw // 60


def _reactivation(body: dict[str, Any], refund: RefundInvoice) -> OrderRequest:
    """A receive-sms-reactivate body: the earlier order only (its number, country, service)."""
    for name in ("country", "service", "durationMinutes"):
        if name in body:
            raise bad_field(name, "not used by receive-sms-reactivate: orderId's number is reused")
    raw = body.get("orderId")
    if not isinstance(raw, str) or not _ORDER_ID.fullmatch(raw):
        raise bad_field("orderId", "required: the id of your earlier completed order")
    return OrderRequest(
        OrderType.RECEIVE_SMS_REACTIVATE, countries.AUTO, "", refund, reactivates=raw
    )
