"""Pricing: USD cost to sats, multiplier, rounding up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.common.domain.pricing import (
    quote_sats,
    refund_fee_limit_sat,
    unused_rent_sats,
    usd_to_sats,
)


def test_usd_to_sats_exact_and_rounded_up() -> None:
    assert usd_to_sats(Decimal("1"), Decimal("100000")) == 1000
    assert usd_to_sats(Decimal("0.08"), Decimal("100000")) == 80
    # 0.05 / 65432.10 BTC = 76.41... sats -> 77
    assert usd_to_sats(Decimal("0.05"), Decimal("65432.10")) == 77


def test_quote_applies_multiplier_and_rounds_up() -> None:
    assert quote_sats(Decimal("0.08"), btc_usd=Decimal("100000"), multiplier=Decimal("1.5")) == 120
    # 77 sats x 1.3 = 100.1 -> 101
    assert (
        quote_sats(Decimal("0.05"), btc_usd=Decimal("65432.10"), multiplier=Decimal("1.3")) == 101
    )


def test_quote_never_below_minimum() -> None:
    assert (
        quote_sats(Decimal("0"), btc_usd=Decimal("1"), multiplier=Decimal("2"), min_sats=50) == 50
    )


@pytest.mark.parametrize(
    ("cost", "rate", "mult"), [("1", "0", "1"), ("-1", "1", "1"), ("1", "1", "0")]
)
def test_bad_inputs_raise(cost: str, rate: str, mult: str) -> None:
    with pytest.raises(ValueError):
        quote_sats(Decimal(cost), btc_usd=Decimal(rate), multiplier=Decimal(mult))


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (100, 2),  # 2 % of a small refund, far below the flat ceiling
        (149, 2),  # rounded down: never more than the share
        (150, 3),
        (499, 9),
        (500, 10),
        (100_000, 10),  # the flat value stays the ceiling
        (0, 0),
    ],
)
def test_refund_fee_limit_is_a_share_capped_by_the_flat_value(amount: int, expected: int) -> None:
    assert refund_fee_limit_sat(amount, ppm=20_000, ceiling_sat=10) == expected


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (10, 2),  # a tiny partial refund still gets a routable budget
        (49, 2),
        (100, 2),
        (150, 3),  # above the floor the share decides
        (100_000, 10),
    ],
)
def test_refund_fee_limit_has_a_floor_below_the_ceiling(amount: int, expected: int) -> None:
    assert refund_fee_limit_sat(amount, ppm=20_000, ceiling_sat=10, floor_sat=2) == expected
    assert refund_fee_limit_sat(amount, ppm=20_000, ceiling_sat=1, floor_sat=2) == 1


def test_refund_fee_limit_refuses_negative_inputs() -> None:
    with pytest.raises(ValueError):
        refund_fee_limit_sat(-1, ppm=20_000, ceiling_sat=10)
    with pytest.raises(ValueError):
        refund_fee_limit_sat(100, ppm=-1, ceiling_sat=10)


@pytest.mark.parametrize(
    ("unused", "expected"),
    [
        (7200.0, 75),  # half of 4 h: half of 150
        (7200.5, 76),  # part of a second counts as a whole one, and the share rounds up
        (1.0, 1),  # the customer's favour: a second unused is still a sat back
        (0.0, 0),
        (-30.0, 0),  # ended after its end: nothing owed
        (14_400.0, 150),
        (20_000.0, 150),  # never more than the price
    ],
)
def test_unused_rent_share_rounds_in_the_customers_favour(unused: float, expected: int) -> None:
    assert unused_rent_sats(150, total_seconds=14_400, unused_seconds=unused) == expected


def test_unused_rent_share_needs_a_rental_that_lasts() -> None:
    with pytest.raises(ValueError):
        unused_rent_sats(150, total_seconds=0, unused_seconds=10)
