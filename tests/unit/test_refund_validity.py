"""The refund invoice's minimum validity, derived from the clocks it must outlive."""

from __future__ import annotations

from dataclasses import replace

import pytest

from libs.common.core.config import Settings
from libs.common.domain.orders import OrderType
from libs.common.domain.refund_invoices import (
    REFUND_INVOICE_EXPIRES_TOO_SOON,
    REFUND_VALIDITY_MARGIN_SECONDS,
    refund_min_validity_seconds,
)
from services.gateway.errors import ApiError
from services.gateway.order_requests import parse_order_request
from tests.unit.test_gateway_orders import INDEX
from tests.unit.test_invoices import NOW, check, expect_error, make_invoice

DEFAULTS = Settings()


def test_the_defaults_need_44_minutes() -> None:
    # invoice 600 + SMS wait 1200 + provider give-up 120 + 5 attempts x (timeout 60 + 15 of
    # lease) + backoff 2+4+8+16 + margin 300.
    assert REFUND_VALIDITY_MARGIN_SECONDS == 300
    assert refund_min_validity_seconds(DEFAULTS) == 600 + 1200 + 120 + 5 * 75 + 30 + 300 == 2625


def test_the_latest_automatic_refund_fits_in_the_window() -> None:
    """Walk the worst timeline of a receive-sms order and check it ends inside the minimum."""
    s = DEFAULTS
    paid = s.invoice_expiry_seconds  # paid in the last second of its invoice
    deadline = paid + s.order_timeout_seconds  # no SMS
    refund_starts = deadline + s.provider_giveup_seconds  # the provider never answered the cancel
    at = refund_starts
    for attempt in range(1, s.refund_max_attempts + 1):
        at += s.refund_timeout_seconds + 15  # node wait and lease run out
        if attempt < s.refund_max_attempts:
            at += s.refund_retry_base_seconds * 2 ** (attempt - 1)
    assert at + REFUND_VALIDITY_MARGIN_SECONDS <= refund_min_validity_seconds(s)
    # ...and the old fixed 30 minutes did not cover it.
    assert at > s.refund_min_validity_seconds


@pytest.mark.parametrize(
    ("change", "grows_by"),
    [
        ({"invoice_expiry_seconds": 700}, 100),
        ({"order_timeout_seconds": 1500}, 300),
        ({"provider_giveup_seconds": 300.0}, 180),
        ({"refund_timeout_seconds": 90}, 5 * 30),
        # A sixth attempt: its own timeout and lease, and a fifth backoff of 32 s.
        ({"refund_max_attempts": 6}, 75 + 32),
        ({"refund_retry_base_seconds": 4.0}, 30),
    ],
)
def test_every_clock_it_must_outlive_moves_it(change: dict[str, float], grows_by: int) -> None:
    settings = replace(DEFAULTS, **change)  # type: ignore[arg-type]
    assert refund_min_validity_seconds(settings) == 2625 + grows_by


def test_a_rental_waits_for_its_number_no_longer_than_the_allocation_deadline() -> None:
    # Refundable until it gets a number: when allocation may take longer than the SMS wait,
    # that is what the window must cover.
    longer = replace(DEFAULTS, allocation_deadline_seconds=3000)
    assert refund_min_validity_seconds(longer) == 2625 - 1200 + 3000
    # The hold grace counts when it is the longer wait past the deadline.
    grace = replace(DEFAULTS, hold_grace_seconds=400.0)
    assert refund_min_validity_seconds(grace) == 2625 - 120 + 400


def test_the_setting_is_a_floor() -> None:
    short = replace(
        DEFAULTS, order_timeout_seconds=8, provider_giveup_seconds=2.0, refund_max_attempts=1
    )
    assert refund_min_validity_seconds(short) == 1800
    assert refund_min_validity_seconds(replace(DEFAULTS, refund_min_validity_seconds=7200)) == 7200


def test_the_refusal_says_how_many_minutes_are_needed() -> None:
    text = make_invoice(expiry=2625)
    assert check(text, min_validity_seconds=2625).expires_at == NOW + 2625
    error = expect_error(REFUND_INVOICE_EXPIRES_TOO_SOON, text, min_validity_seconds=2626)
    # 2626 s is 43.8 minutes: the customer is told the whole minutes that suffice.
    assert "44 more minutes" in error.message


@pytest.mark.parametrize("order_type", [t.value for t in OrderType])
def test_an_invoice_valid_for_the_old_minimum_is_refused_for_every_type(order_type: str) -> None:
    body = {
        "type": order_type,
        "refundInvoice": make_invoice(expiry=1800 + 60),
        **(
            {"orderId": "0b8f6c1e-3f2a-4d6e-9a51-2f0c8f9b7d10"}
            if order_type == OrderType.RECEIVE_SMS_REACTIVATE
            else {"country": "US", "service": "tg"}
        ),
        **({"durationMinutes": 240} if order_type == OrderType.RENT_NUMBER else {}),
    }
    with pytest.raises(ApiError) as info:
        parse_order_request(body, DEFAULTS, now=NOW, network="bcrt", index=INDEX)
    assert info.value.code == REFUND_INVOICE_EXPIRES_TOO_SOON
    assert info.value.status == 400
    assert "at least 44 more minutes" in info.value.message
