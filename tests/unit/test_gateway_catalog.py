"""The gateway's catalog gate: nothing is sold before a refresh or from a too-old rate."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from libs.common.core.config import Settings
from libs.common.core.metrics import FX_RATE_AGE
from libs.common.domain.countries import Country, CountryIndex, Offer
from libs.common.domain.fx import CachedRate
from libs.common.persistence.catalog_store import Catalog, ServiceRow
from services.gateway.discovery import CACHE, CatalogCache, Snapshot, usable_rate
from services.gateway.errors import ApiError
from services.gateway.keys import SETTINGS
from services.gateway.offers import best_offer, price_for

SETTINGS_ = Settings(fx_stale_seconds=600, fx_max_age_seconds=3600)
CATALOG = Catalog(
    countries=CountryIndex([Country(16, "England", "GB"), Country(187, "USA", "US")]),
    services=[ServiceRow("tg", "Telegram")],
    offers=[Offer(16, "tg", Decimal("0.08"), 5), Offer(187, "tg", Decimal("0.05"), 0)],
    refreshed_at=datetime.now(UTC),
)


def _request() -> web.Request:
    app = web.Application()
    app[SETTINGS] = SETTINGS_
    app[CACHE] = CatalogCache(0)
    return make_mocked_request("POST", "/v2/l402/order", app=app)


def _snapshot(age: float | None) -> Snapshot:
    rate = None
    if age is not None:
        rate = CachedRate(Decimal("100000"), datetime.now(UTC), age, "test")
    return Snapshot(CATALOG, rate, time.monotonic())


@pytest.mark.parametrize("age", [0.0, 599.0, 601.0, 3500.0])
def test_a_usable_rate_quotes_and_reports_its_age(age: float) -> None:
    assert usable_rate(_request(), _snapshot(age)) == Decimal("100000")
    assert FX_RATE_AGE._value.get() >= age  # type: ignore[attr-defined]


@pytest.mark.parametrize("age", [None, 3601.0, 1e7])
def test_no_rate_or_a_too_stale_one_is_unavailable(age: float | None) -> None:
    with pytest.raises(ApiError) as refused:
        usable_rate(_request(), _snapshot(age))
    assert (refused.value.status, refused.value.code) == (503, "UNAVAILABLE")


def test_a_catalog_without_a_refresh_is_not_loaded() -> None:
    empty = Catalog(countries=CountryIndex([]), services=[], offers=[])
    assert not empty.loaded and CATALOG.loaded


def test_the_quote_comes_from_the_catalog_offer_at_the_rate() -> None:
    auto = best_offer(CATALOG, "tg", "auto")
    assert auto.country_id == 16  # 187 is cheaper but out of stock
    # 0.08 USD at 100000 USD/BTC = 80 sats; x 1.5 = 120 (above the 100 sats minimum).
    assert price_for(auto.cost_usd, Decimal("100000"), SETTINGS_) == 120
    us = CATALOG.countries.resolve("US")
    assert isinstance(us, Country)
    with pytest.raises(ApiError) as none:
        best_offer(CATALOG, "tg", us)
    assert (none.value.status, none.value.code) == (409, "UNAVAILABLE")
