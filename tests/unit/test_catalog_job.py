"""The catalog job against an in-memory provider and the stores' twin (no network, no database)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from libs.common.adapters.sms import BadRentTime, Country, Offer, ProviderUnavailable, Service
from libs.common.core.config import Settings
from libs.common.persistence.memory import MemoryStores
from services.scheduler.catalog_refresh import CatalogIncomplete, fetch_catalog, refresh_catalog


@dataclass(frozen=True)
class RentOffer:
    """The port's RentOffer shape."""

    country: int
    service: str
    hours: int
    cost_usd: Decimal
    count: int


@dataclass(frozen=True)
class RentCatalog:
    """The port's RentCatalog shape."""

    countries: list[int]
    offers: list[RentOffer]


@dataclass
class FakeProvider:
    """Countries, services, prices and rent offers from memory; records rent calls."""

    countries_: list[Country] = field(
        default_factory=lambda: [
            Country(16, "England", visible=True, rent=True),
            Country(187, "USA", visible=True, rent=True),
            Country(6, "Indonesia", visible=True, rent=False),
            Country(4242, "Nowhere Land", visible=False, rent=False),
        ]
    )
    services_: list[Service] = field(
        default_factory=lambda: [Service("tg", "Telegram"), Service("wa", "WhatsApp")]
    )
    prices_: list[Offer] = field(
        default_factory=lambda: [
            Offer(16, "tg", Decimal("0.10"), 5),
            Offer(187, "tg", Decimal("0.20"), 0),
            Offer(6, "wa", Decimal("0.05"), 7),
        ]
    )
    rent_offered: tuple[int, ...] = (4, 24)
    rent_down_for: set[tuple[int, int]] = field(default_factory=set)
    rent_calls: list[tuple[int, int | None]] = field(default_factory=list)

    async def countries(self) -> list[Country]:
        return self.countries_

    async def services(self) -> list[Service]:
        return self.services_

    async def prices(self, **_: Any) -> list[Offer]:
        return self.prices_

    async def rent_offers(self, hours: int, country: int | None = None) -> RentCatalog:
        self.rent_calls.append((hours, country))
        if hours not in self.rent_offered:
            raise BadRentTime()
        if (hours, country) in self.rent_down_for:
            raise ProviderUnavailable("NETWORK_ERROR")
        assert country is not None
        offer = RentOffer(country, "tg", hours, Decimal(hours) / 10, 3)
        return RentCatalog([country], [offer])


async def test_fetches_every_table_with_iso_codes() -> None:
    provider = FakeProvider()
    data = await fetch_catalog(provider, [4, 24])  # type: ignore[arg-type]
    by_id = {c.id: c for c in data.countries}
    assert [c.id for c in data.countries] == [6, 16, 187, 4242]
    assert (by_id[16].name, by_id[16].iso, by_id[16].rent) == ("England", "GB", True)
    assert by_id[187].iso == "US" and by_id[6].iso == "ID"
    assert by_id[4242].iso is None and by_id[4242].visible is False
    assert [s.code for s in data.services] == ["tg", "wa"]
    assert {(o.country_id, o.service, o.count) for o in data.offers} == {
        (16, "tg", 5),
        (187, "tg", 0),
        (6, "wa", 7),
    }
    assert data.rent is not None
    assert {(r.country_id, r.hours, r.cost_usd) for r in data.rent} == {
        (16, 4, Decimal("0.4")),
        (16, 24, Decimal("2.4")),
        (187, 4, Decimal("0.4")),
        (187, 24, Decimal("2.4")),
    }
    # Only rent countries are asked, once per duration.
    assert sorted(provider.rent_calls) == [(4, 16), (4, 187), (24, 16), (24, 187)]


async def test_a_rent_error_skips_only_that_duration_or_country() -> None:
    provider = FakeProvider(rent_down_for={(24, 187)})
    data = await fetch_catalog(provider, [2, 4, 24])  # type: ignore[arg-type]
    assert data.rent is not None
    assert {(r.country_id, r.hours) for r in data.rent} == {(16, 4), (16, 24), (187, 4)}
    # A duration the provider does not offer (BadRentTime) is asked once, not per country.
    assert [call for call in provider.rent_calls if call[0] == 2] == [(2, 16)]


async def test_no_rent_answer_at_all_keeps_the_stored_rent_prices() -> None:
    provider = FakeProvider(rent_offered=())
    data = await fetch_catalog(provider, [4, 24])  # type: ignore[arg-type]
    assert data.rent is None
    assert data.counts()["rent_prices"] is None


@pytest.mark.parametrize("empty", ["countries_", "services_", "prices_"])
async def test_an_empty_list_never_replaces_the_catalog(empty: str) -> None:
    provider = FakeProvider()
    setattr(provider, empty, [])
    with pytest.raises(CatalogIncomplete):
        await fetch_catalog(provider, [4])  # type: ignore[arg-type]


async def test_a_provider_error_propagates_so_nothing_is_written() -> None:
    class Down(FakeProvider):
        async def prices(self, **_: Any) -> list[Offer]:
            raise ProviderUnavailable("HTTP_503")

    with pytest.raises(ProviderUnavailable):
        await fetch_catalog(Down(), [4])  # type: ignore[arg-type]


def _twin() -> MemoryStores:
    return MemoryStores(lambda: datetime(2026, 1, 1, tzinfo=UTC))


async def test_a_refresh_stores_the_catalog_and_marks_it_loaded() -> None:
    stores = _twin()
    counts = await refresh_catalog(stores, FakeProvider(), Settings(rent_hours="4,24"))  # type: ignore[arg-type]
    assert counts == {"countries": 4, "services": 2, "prices": 3, "rent_prices": 4}
    loaded = await stores.catalog.load()
    assert loaded.loaded and [c.id for c in loaded.countries.all()] == [6, 16, 187, 4242]


async def test_a_failed_refresh_keeps_the_stored_catalog() -> None:
    stores = _twin()
    await refresh_catalog(stores, FakeProvider(), Settings(rent_hours="4"))  # type: ignore[arg-type]
    before = await stores.catalog.load()
    with pytest.raises(CatalogIncomplete):
        await refresh_catalog(stores, FakeProvider(prices_=[]), Settings(rent_hours="4"))  # type: ignore[arg-type]
    after = await stores.catalog.load()
    assert after.offers == before.offers and after.refreshed_at == before.refreshed_at


async def test_a_refresh_running_elsewhere_is_not_repeated() -> None:
    stores = _twin()
    provider = FakeProvider()
    async with stores.catalog.single_flight(wait=False):
        assert await refresh_catalog(stores, provider, Settings()) is None  # type: ignore[arg-type]
    assert provider.rent_calls == [] and not (await stores.catalog.load()).loaded
