"""The L402 API's JSON view of an order (see the API reference's Order schema)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common.core.config import Settings
from libs.common.domain import countries
from libs.common.domain.countries import CountryIndex
from libs.common.domain.messages import Message
from libs.common.domain.orders import Order, OrderType, Status
from libs.common.domain.refunds import RefundStatus
from libs.common.persistence.ports import RefundState


def iso(ts: datetime | None) -> str | None:
    """RFC 3339 UTC with a Z."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_REFUND_STATUS = {
    RefundStatus.PENDING: "pending",
    RefundStatus.IN_FLIGHT: "pending",
    RefundStatus.SUCCEEDED: "paid",
    RefundStatus.FAILED: "failed",
}


def country_iso(index: CountryIndex | None, country_id: int) -> str | None:
    """The ISO code of an order's country: the catalog's, else the static table's."""
    country = index.by_id(country_id) if index is not None else None
    if country is not None:
        return country.iso
    return countries.static_iso(country_id, "")


def _messages(order: Order, received: list[Message]) -> list[dict[str, Any]]:
    """The order's messages as shown: purged ones left out, a pre-messages order's one SMS."""
    shown = [
        {"text": m.text, "code": m.code, "receivedAt": iso(m.received_at)}
        for m in received
        if m.text is not None or m.code is not None  # purged after the retention
    ]
    if not shown and (order.code is not None or order.sms_text is not None):
        # Orders from before messages were stored keep showing their one SMS.
        shown.append(
            {"text": order.sms_text, "code": order.code, "receivedAt": iso(order.sms_received_at)}
        )
    return shown


def _refund(order: Order, refund: RefundState | None) -> dict[str, Any] | None:
    """The refund as shown: the refund's own state, or pending while it is being written."""
    if refund is not None:
        return {
            "status": _REFUND_STATUS[refund.status],
            "amountSats": refund.amount_sats,
            "paidAt": iso(refund.paid_at),
        }
    if order.status is Status.REFUND_PENDING:
        return {"status": "pending", "amountSats": order.price_sats, "paidAt": None}
    return None


def order_json(
    order: Order,
    settings: Settings,
    index: CountryIndex | None = None,
    received: list[Message] | None = None,
    refund: RefundState | None = None,
) -> dict[str, Any]:
    """The public JSON view of an order, its messages and its refund (see the API reference)."""
    paid_at = order.paid_at
    expires_at = order.deadline_at if paid_at else order.invoice_expires_at
    messages = _messages(order, received or [])
    code = order.code
    if code is None and messages:
        # A rental has no single code: show the latest one its messages carry.
        code = next((m["code"] for m in reversed(messages) if m["code"]), None)
    cancelable_at = None
    if paid_at is not None and order.type is OrderType.RECEIVE_SMS:
        cancelable_at = iso(paid_at + timedelta(seconds=settings.cancel_min_age_seconds))
    phone = order.phone_number
    return {
        "orderId": order.id,
        "type": order.type.value,
        "status": order.status.value,
        "country": country_iso(index, order.country_id),
        "countryId": order.country_id,
        "service": order.service,
        "priceSats": order.price_sats,
        "phoneNumber": f"+{phone}" if phone else None,
        "code": code,
        "messages": messages,
        "createdAt": iso(order.created_at),
        "paidAt": iso(paid_at),
        "expiresAt": iso(expires_at),
        "cancelableAt": cancelable_at,
        "refund": _refund(order, refund),
        "rentEndsAt": iso(order.rent_ends_at),
    }
