"""The BTC/USD rate: parsing the source's answer and the staleness decision."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from libs.common.fx import Freshness, FxSourceError, freshness, parse_simple_price


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
