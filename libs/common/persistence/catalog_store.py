"""The catalog as stored in PostgreSQL: what the provider sells, where, and at what USD cost."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg

from libs.common.domain.countries import Country, CountryIndex, Offer
from libs.common.persistence.db import Q

CATALOG_JOB = "catalog"
FX_JOB = "fx"


@dataclass(frozen=True)
class ServiceRow:
    """A provider service code and display name."""

    code: str
    name: str


@dataclass(frozen=True)
class RentPrice:
    """Price and stock of renting a number in one country for one service and duration."""

    country_id: int
    service: str
    hours: int
    cost_usd: Decimal
    count: int


@dataclass(frozen=True)
class Catalog:
    """One consistent snapshot of the catalog tables."""

    countries: CountryIndex
    services: list[ServiceRow]
    offers: list[Offer]
    rent: list[RentPrice] = field(default_factory=list)
    refreshed_at: datetime | None = None

    @property
    def loaded(self) -> bool:
        """Whether a refresh ever completed: until then nothing can be sold."""
        return self.refreshed_at is not None

    def service_codes(self) -> set[str]:
        """Every service code the provider lists."""
        return {s.code for s in self.services}

    def sellable_offers(self) -> list[Offer]:
        """Offers in stock in a country the catalog lists."""
        return [
            o for o in self.offers if o.count > 0 and self.countries.by_id(o.country_id) is not None
        ]

    def sellable_rent(self) -> list[RentPrice]:
        """Rent offers in stock in a country the catalog lists."""
        return [
            r for r in self.rent if r.count > 0 and self.countries.by_id(r.country_id) is not None
        ]


@dataclass(frozen=True)
class CatalogData:
    """What one refresh fetched from the provider, ready to be stored."""

    countries: list[Country]
    services: list[ServiceRow]
    offers: list[Offer]
    rent: list[RentPrice] | None  # None: no rent answer at all, keep the stored rent prices

    def counts(self) -> dict[str, int | None]:
        """Row counts per table, for logs and the refresh command's output (None: kept)."""
        return {
            "countries": len(self.countries),
            "services": len(self.services),
            "prices": len(self.offers),
            "rent_prices": None if self.rent is None else len(self.rent),
        }


async def load(conn: asyncpg.Connection) -> Catalog:
    """Read the whole catalog in one repeatable-read snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        countries = await conn.fetch(Q.catalog_countries_all)
        services = await conn.fetch(Q.catalog_services_all)
        prices = await conn.fetch(Q.catalog_prices_all)
        rent = await conn.fetch(Q.catalog_rent_prices_all)
        job = await conn.fetchrow(Q.refresh_job_get, CATALOG_JOB)
    return Catalog(
        countries=CountryIndex(
            Country(r["id"], r["name"], r["iso"], r["visible"], r["rent"], r["retry"])
            for r in countries
        ),
        services=[ServiceRow(r["code"], r["name"]) for r in services],
        offers=[Offer(r["country_id"], r["service"], r["cost_usd"], r["count"]) for r in prices],
        rent=[
            RentPrice(r["country_id"], r["service"], r["hours"], r["cost_usd"], r["count"])
            for r in rent
        ],
        refreshed_at=None if job is None else job["last_ok_at"],
    )


def _columns(rows: Iterable[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows turned into one list per column (for unnest inserts)."""
    cols: list[list[object]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols


async def replace(conn: asyncpg.Connection, data: CatalogData) -> None:
    """Replace every catalog row; call inside a transaction so readers never see half of it."""
    await conn.execute(Q.catalog_clear)
    await conn.execute(
        Q.catalog_countries_insert,
        *_columns(((c.id, c.name, c.iso, c.visible, c.rent, c.retry) for c in data.countries), 6),
    )
    await conn.execute(
        Q.catalog_services_insert, *_columns(((s.code, s.name) for s in data.services), 2)
    )
    await conn.execute(
        Q.catalog_prices_insert,
        *_columns(((o.country_id, o.service, o.cost_usd, o.count) for o in data.offers), 4),
    )
    if data.rent is None:
        return
    await conn.execute(Q.catalog_rent_clear)
    await conn.execute(
        Q.catalog_rent_prices_insert,
        *_columns(((r.country_id, r.service, r.hours, r.cost_usd, r.count) for r in data.rent), 5),
    )
