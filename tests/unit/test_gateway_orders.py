"""Order requests of every type: validation, the rental offer, reactivation rights, token life."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from libs.common.core.config import Settings
from libs.common.domain.countries import AUTO, Country, CountryIndex, Offer
from libs.common.domain.orders import Order, OrderType, PaymentMode, Status
from libs.common.persistence.catalog_store import Catalog, RentPrice, ServiceRow
from services.gateway.errors import ApiError
from services.gateway.offers import reactivation_offer, rent_offer
from services.gateway.order_requests import OrderRequest, parse_order_request
from services.gateway.usecases import check_reactivation, credential_lifetime
from tests.unit.test_invoices import NOW, make_invoice

SETTINGS = Settings()
INDEX = CountryIndex([Country(16, "England", "GB"), Country(187, "USA", "US")])
CATALOG = Catalog(
    countries=INDEX,
    services=[ServiceRow("tg", "Telegram")],
    offers=[Offer(16, "tg", Decimal("0.08"), 5), Offer(187, "tg", Decimal("0.05"), 0)],
    rent=[
        RentPrice(187, "tg", 4, Decimal("1.00"), 3),
        RentPrice(16, "tg", 4, Decimal("0.90"), 2),
        RentPrice(16, "tg", 24, Decimal("3.00"), 2),
        RentPrice(187, "tg", 24, Decimal("2.00"), 0),  # out of stock
    ],
    refreshed_at=datetime.now(UTC),
)
REFUND = make_invoice()
EARLIER = str(uuid.uuid4())


def parse(**body: Any) -> OrderRequest:
    return parse_order_request(
        {"refundInvoice": REFUND, **body}, SETTINGS, now=NOW, network="bcrt", index=INDEX
    )


def refused(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(**body)
    return info.value


def test_a_rental_request_carries_whole_hours() -> None:
    req = parse(type="rent-number", country="US", service="telegram", durationMinutes=240)
    assert req.type is OrderType.RENT_NUMBER and req.rent_hours == 4
    assert req.service == "tg" and isinstance(req.country, Country) and req.country.id == 187


@pytest.mark.parametrize("minutes", [None, 0, -60, 90, 61, "240", 240.0, True, 31 * 24 * 60])
def test_a_rental_needs_a_sane_duration(minutes: Any) -> None:
    body = {"type": "rent-number", "country": "US", "service": "tg"}
    if minutes is not None:
        body["durationMinutes"] = minutes
    error = refused(**body)
    assert (error.status, error.code) == (400, "VALIDATION_ERROR")
    assert error.message.startswith("durationMinutes")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "receive-sms", "service": "tg", "durationMinutes": 240}, "durationMinutes"),
        ({"type": "receive-sms", "service": "tg", "orderId": str(uuid.uuid4())}, "orderId"),
        ({"type": "receive-sms-reactivate"}, "orderId"),
        ({"type": "receive-sms-reactivate", "orderId": "not-a-uuid"}, "orderId"),
        ({"type": "receive-sms-reactivate", "orderId": 7}, "orderId"),
        (
            {"type": "receive-sms-reactivate", "orderId": str(uuid.uuid4()), "service": "tg"},
            "service",
        ),
        (
            {"type": "receive-sms-reactivate", "orderId": str(uuid.uuid4()), "country": "US"},
            "country",
        ),
    ],
)
def test_fields_of_another_type_are_refused(body: dict[str, Any], field: str) -> None:
    error = refused(**body)
    assert error.code == "VALIDATION_ERROR" and error.message.startswith(field), error.message


def test_every_type_needs_a_refund_invoice() -> None:
    for body in (
        {"type": "rent-number", "service": "tg", "durationMinutes": 240},
        {"type": "receive-sms-reactivate", "orderId": str(uuid.uuid4())},
    ):
        with pytest.raises(ApiError) as info:
            parse_order_request(body, SETTINGS, now=NOW, network="bcrt", index=INDEX)
        assert info.value.message.startswith("refundInvoice")


def test_a_reactivation_request_names_the_earlier_order() -> None:
    earlier = str(uuid.uuid4())
    req = parse(type="receive-sms-reactivate", orderId=earlier)
    assert req.type is OrderType.RECEIVE_SMS_REACTIVATE and req.reactivates == earlier


def test_the_rental_offer_matches_country_service_and_hours() -> None:
    us = INDEX.by_id(187)
    assert us is not None
    offer = rent_offer(CATALOG, "tg", us, 4)
    assert (offer.country_id, offer.cost_usd) == (187, Decimal("1.00"))
    # auto: the cheapest in stock for those hours
    assert rent_offer(CATALOG, "tg", AUTO, 4).country_id == 16
    assert rent_offer(CATALOG, "tg", AUTO, 24).country_id == 16  # the US one is out of stock


def test_hours_not_offered_list_the_offered_durations() -> None:
    us = INDEX.by_id(187)
    assert us is not None
    with pytest.raises(ApiError) as info:
        rent_offer(CATALOG, "tg", us, 12)
    assert info.value.code == "VALIDATION_ERROR"
    assert "240" in info.value.message and "720" not in info.value.message
    with pytest.raises(ApiError) as none:
        rent_offer(CATALOG, "wa", us, 4)
    assert (none.value.status, none.value.code) == (409, "UNAVAILABLE")


def test_a_reactivation_is_priced_from_the_catalog_even_without_stock() -> None:
    assert reactivation_offer(CATALOG, 187, "tg").cost_usd == Decimal("0.05")
    with pytest.raises(ApiError):
        reactivation_offer(CATALOG, 16, "wa")


def _earlier(**changes: Any) -> Order:
    at = datetime.now(UTC)
    order = Order(
        id=str(uuid.uuid4()),
        type=OrderType.RECEIVE_SMS,
        status=Status.COMPLETED,
        payment_mode=PaymentMode.STANDARD,
        service="tg",
        country_id=187,
        price_sats=100,
        provider_cost_usd=Decimal("0.05"),
        payment_hash=b"h" * 32,
        payment_request="lnbcrt1",
        invoice_expires_at=at,
        created_at=at,
        updated_at=at,
        activation_id="123",
    )
    return replace(order, **changes)


def test_only_the_owner_of_a_completed_order_may_reactivate_it() -> None:
    earlier = _earlier()
    req = OrderRequest(OrderType.RECEIVE_SMS_REACTIVATE, AUTO, "", None, reactivates=earlier.id)
    check_reactivation(earlier, req)
    for credential in (None, _earlier()):  # no credential / the credential of another order
        with pytest.raises(ApiError) as info:
            check_reactivation(credential, req)
        assert (info.value.status, info.value.code) == (403, "INVALID_MACAROON")
    for bad in (
        _earlier(status=Status.WAITING_FOR_SMS),
        _earlier(status=Status.REFUNDED),
        _earlier(type=OrderType.RENT_NUMBER),
        _earlier(payment_mode=PaymentMode.HOLD),
        _earlier(activation_id=None),
    ):
        req = OrderRequest(OrderType.RECEIVE_SMS_REACTIVATE, AUTO, "", None, reactivates=bad.id)
        with pytest.raises(ApiError) as info:
            check_reactivation(bad, req)
        assert info.value.code == "VALIDATION_ERROR"


def test_a_rental_credential_outlives_the_rental() -> None:
    settings = Settings(macaroon_ttl_seconds=86400, invoice_expiry_seconds=600)
    assert credential_lifetime(settings, None) == 86400
    assert credential_lifetime(settings, 4) == 86400
    week = credential_lifetime(settings, 168)
    assert week >= 600 + 168 * 3600 + settings.code_retention_seconds
