"""The catalog as stored in PostgreSQL: what the provider sells, where, at what USD cost, and
the BTC/USD rate to quote it with.

Every SQL statement that touches `catalog_*`, `fx_rates` or `refresh_jobs` lives here. The
scheduler's catalog job fills these tables; the gateway only reads them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from libs.common.domain.countries import Country, CountryIndex, Offer
from libs.common.domain.fx import PAIR, CachedRate
from libs.common.persistence.db import Executor, Q

CATALOG_JOB = "catalog"
FX_JOB = "fx"
# The advisory lock that keeps catalog refreshes (periodic or on demand) single-flight.
LOCK_KEY = "sms4sats.catalog"


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


def _columns(rows: Iterable[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows turned into one list per column (for unnest inserts)."""
    cols: list[list[object]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols


async def _load(conn: asyncpg.Connection) -> Catalog:
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


async def _rate(db: Executor) -> CachedRate | None:
    """The cached BTC/USD rate with its age by the database clock, or None."""
    row = await db.fetchrow(Q.fx_rate_get, PAIR)
    if row is None:
        return None
    return CachedRate(row["rate"], row["fetched_at"], float(row["age_seconds"]), row["source"])


class PgCatalog:
    """The catalog tables, the rate row and the refresh jobs, bound to one database handle."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection: the bound one, or one borrowed from the pool for the block."""
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    # Reads (the gateway's quotes and catalog pages).

    async def load(self) -> Catalog:
        """The whole catalog, read in one repeatable-read snapshot."""
        async with self._connection() as conn:
            return await _load(conn)

    async def rate(self) -> CachedRate | None:
        """The cached BTC/USD rate with its age by the database clock; None before the first."""
        return await _rate(self._db)

    async def read(self, known: Catalog | None = None) -> tuple[Catalog, CachedRate | None]:
        """The catalog and the rate on one connection; `known` is reused if still current.

        The tables can be large, so they are re-read only when a refresh replaced them since
        `known` was read (its `refreshed_at` differs from the catalog job's last success).
        """
        async with self._connection() as conn:
            version = await conn.fetchval(Q.catalog_version, CATALOG_JOB)
            catalog = known
            if catalog is None or catalog.refreshed_at != version:
                catalog = await _load(conn)
            return catalog, await _rate(conn)

    # Writes (the scheduler's catalog and rate jobs).

    async def replace(self, data: CatalogData) -> None:
        """Replace every catalog row; call inside a transaction so readers never see half."""
        await self._db.execute(Q.catalog_clear)
        await self._db.execute(
            Q.catalog_countries_insert,
            *_columns(
                ((c.id, c.name, c.iso, c.visible, c.rent, c.retry) for c in data.countries), 6
            ),
        )
        await self._db.execute(
            Q.catalog_services_insert, *_columns(((s.code, s.name) for s in data.services), 2)
        )
        await self._db.execute(
            Q.catalog_prices_insert,
            *_columns(((o.country_id, o.service, o.cost_usd, o.count) for o in data.offers), 4),
        )
        if data.rent is None:
            return
        await self._db.execute(Q.catalog_rent_clear)
        await self._db.execute(
            Q.catalog_rent_prices_insert,
            *_columns(
                ((r.country_id, r.service, r.hours, r.cost_usd, r.count) for r in data.rent), 5
            ),
        )

    async def store_rate(self, rate: Decimal, source: str) -> None:
        """Record a freshly fetched rate (fetched now, by the database clock)."""
        await self._db.execute(Q.fx_rate_upsert, PAIR, rate, source)

    @asynccontextmanager
    async def single_flight(self, *, wait: bool) -> AsyncIterator[bool]:
        """Hold the catalog refresh lock for the block; yields False if it is held elsewhere.

        A session advisory lock on a connection of its own: it is released at the end of
        the block, or by PostgreSQL if this process dies. `wait` waits for a running holder.
        """
        async with self._connection() as conn:
            if wait:
                await conn.execute(Q.catalog_lock, LOCK_KEY)
            elif not await conn.fetchval(Q.catalog_try_lock, LOCK_KEY):
                yield False
                return
            try:
                yield True
            finally:
                await conn.execute(Q.catalog_unlock, LOCK_KEY)

    async def claim_job(self, name: str, interval: float) -> bool:
        """Claim a due job for this replica; it is then not due again for `interval` seconds."""
        return await self._db.fetchval(Q.refresh_job_claim, name, interval) is not None

    async def job_ok(self, name: str, counts: dict[str, Any], interval: float) -> None:
        """Record a success; the next periodic run is postponed to `interval` from now."""
        await self._db.execute(Q.refresh_job_ok, name, counts, interval)

    async def job_failed(self, name: str, error: str, retry: float) -> None:
        """Record a failure; the job is due again within `retry` seconds."""
        await self._db.execute(Q.refresh_job_failed, name, error, retry)
