"""The BTC/USD rate: parsing the source's answer and the staleness decision."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from libs.common.domain.fx import (
    Freshness,
    FxSourceError,
    freshness,
    implausible_change,
    parse_simple_price,
)


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0.0, Freshness.FRESH),
        (600.0, Freshness.FRESH),
        (600.5, Freshness.STALE),
        (3600.0, Freshness.STALE),
        (3600.1, Freshness.TOO_STALE),
        (1e9, Freshness.TOO_STALE),
    ],
)
def test_freshness_thresholds(age: float, expected: Freshness) -> None:
    assert freshness(age, stale_after=600, max_age=3600) is expected


def test_parses_coingecko_simple_price() -> None:
    assert parse_simple_price({"bitcoin": {"usd": Decimal("97000.5")}}) == Decimal("97000.5")
    assert parse_simple_price({"bitcoin": {"usd": 97000}}) == Decimal(97000)
    assert parse_simple_price({"bitcoin": {"usd": "65432.10"}}) == Decimal("65432.10")


@pytest.mark.parametrize(
    "data",
    [
        {},
        [],
        None,
        {"bitcoin": {}},
        {"bitcoin": {"eur": 1}},
        {"bitcoin": {"usd": 0}},
        {"bitcoin": {"usd": -5}},
        {"bitcoin": {"usd": True}},
        {"bitcoin": {"usd": "NaN"}},
        {"bitcoin": {"usd": "Infinity"}},
        {"bitcoin": {"usd": "abc"}},
        {"bitcoin": {"usd": None}},
        {"bitcoin": "97000"},
    ],
)
def test_refuses_anything_but_a_positive_number(data: Any) -> None:
    with pytest.raises(FxSourceError):
        parse_simple_price(data)


@pytest.mark.parametrize(
    ("new", "last", "refused"),
    [
        ("100000", None, False),  # nothing stored yet: the first rate is taken
        ("150000", "100000", False),  # exactly 50 % up: still in range
        ("50000", "100000", False),  # exactly 50 % down
        ("150001", "100000", True),
        ("49999", "100000", True),
        ("1000", "100000", True),  # a unit slip (cents, thousands...)
        ("10000000", "100000", True),
        ("101000", "100000", False),
    ],
)
def test_a_rate_too_far_from_the_stored_one_is_refused(
    new: str, last: str | None, refused: bool
) -> None:
    stored = None if last is None else Decimal(last)
    assert implausible_change(Decimal(new), stored, max_change=0.5) is refused


def test_the_change_check_can_be_turned_off() -> None:
    assert implausible_change(Decimal(1), Decimal(100000), max_change=0) is False
