"""The catalog and rate jobs: provider catalog and BTC/USD rate into PostgreSQL.

Run periodically by every scheduler replica; a claimed row in `refresh_jobs` lets one replica
run each job per interval, and a PostgreSQL advisory lock keeps catalog refreshes (periodic or
on demand) single-flight. A refresh replaces every row in one transaction, so readers see the
old or the new catalog; when the provider fails, nothing is written and the old rows stay.

On demand: `python -m services.scheduler.catalog_refresh refresh` (or `make catalog`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from urllib.parse import urlsplit

import aiohttp

from libs.common.adapters.fx_source import fetch_rate
from libs.common.adapters.sms import BadRentTime, ProviderError, SmsProvider
from libs.common.core.config import Settings, load_settings
from libs.common.core.logs import setup_logging
from libs.common.core.metrics import FX_RATE_REJECTED
from libs.common.domain.alarms import Alarm
from libs.common.domain.countries import Country, Offer, static_iso
from libs.common.domain.fx import PAIR, FxRateRejected, FxSourceError, implausible_change
from libs.common.messaging.runtime import provider_client
from libs.common.persistence import db
from libs.common.persistence.catalog_store import (
    CATALOG_JOB,
    FX_JOB,
    CatalogData,
    RentPrice,
    ServiceRow,
)
from libs.common.persistence.ports import Stores
from libs.common.persistence.stores import PgStores

log = logging.getLogger(__name__)

# A failed run is retried this soon (or at the regular interval, if that is shorter).
RETRY_SECONDS = 15.0
TICK_SECONDS = 2.0


class CatalogIncomplete(Exception):
    """The provider answered, but with an empty list: never replace a catalog with nothing."""


async def fetch_rent(
    provider: SmsProvider, rent_countries: list[int], durations: list[int]
) -> list[RentPrice] | None:
    """Rent offers per duration and rent country; None when no rent answer came at all."""
    found: dict[tuple[int, str, int], RentPrice] = {}
    answered = False
    for hours in durations:
        for country_id in rent_countries:
            try:
                got = await provider.rent_offers(hours, country=country_id)
            except ProviderError as exc:
                log.info("rent offers for %s h in country %s skipped: %s", hours, country_id, exc)
                if isinstance(exc, BadRentTime):
                    break  # the provider does not offer this duration at all
                continue
            answered = True
            for o in got.offers:
                if o.hours == hours and o.count >= 0 and o.cost_usd >= 0:
                    key = (o.country, o.service, o.hours)
                    found[key] = RentPrice(o.country, o.service, o.hours, o.cost_usd, o.count)
    if rent_countries and durations and not answered:
        return None
    return sorted(found.values(), key=lambda r: (r.country_id, r.service, r.hours))


async def fetch_catalog(provider: SmsProvider, durations: list[int]) -> CatalogData:
    """Ask the provider for countries, services, prices and rent offers."""
    provided = await provider.countries()
    listed = await provider.services()
    prices = await provider.prices()
    if not provided or not listed or not prices:
        raise CatalogIncomplete("the provider listed no countries, services or prices")
    countries = {
        c.id: Country(
            c.id,
            c.name,
            static_iso(c.id, c.name),
            c.visible,
            c.rent,
            None,  # the port's Country does not say whether retries are allowed
        )
        for c in provided
    }
    services = {s.code: ServiceRow(s.code, s.name) for s in listed}
    offers = {
        (o.country_id, o.service): Offer(o.country_id, o.service, Decimal(o.cost_usd), o.count)
        for o in prices
        if o.cost_usd >= 0
    }
    rent_countries = [c.id for c in countries.values() if c.rent]
    rent = await fetch_rent(provider, rent_countries, durations)
    return CatalogData(
        countries=sorted(countries.values(), key=lambda c: c.id),
        services=sorted(services.values(), key=lambda s: s.code),
        offers=sorted(offers.values(), key=lambda o: (o.country_id, o.service)),
        rent=rent,
    )


async def refresh_catalog(
    stores: Stores, provider: SmsProvider, settings: Settings, *, wait: bool = False
) -> dict[str, int | None] | None:
    """Refresh the catalog tables; returns the counts, or None if another refresh is running."""
    async with stores.catalog.single_flight(wait=wait) as mine:
        if not mine:
            log.info("a catalog refresh is already running elsewhere")
            return None
        data = await fetch_catalog(provider, settings.rent_durations())
        counts = data.counts()
        async with stores.transaction() as tx:
            await tx.catalog.replace(data)
            await tx.catalog.job_ok(CATALOG_JOB, counts, settings.catalog_refresh_seconds)
    log.info("catalog refreshed: %s", json.dumps(counts))
    return counts


async def refresh_fx(
    stores: Stores,
    session: aiohttp.ClientSession,
    url: str,
    interval: float = 0.0,
    *,
    max_change: float = 0.0,
) -> Decimal:
    """Fetch the BTC/USD rate and cache it in PostgreSQL (next periodic run in `interval`).

    A rate more than `max_change` away from the stored one is not stored: the fx_rate_jump
    alarm goes up (FxRateRejected) and the stored rate keeps ageing, so the max-age rule
    stops sales if the source never comes back in range. A rate in range clears the alarm.
    """
    rate = await fetch_rate(session, url)
    last = await stores.catalog.rate()
    if last is not None and implausible_change(rate, last.rate, max_change=max_change):
        await _raise_fx_alarm(stores, rate, last.rate)
        raise FxRateRejected(f"{PAIR} {rate:f} is more than {max_change:.0%} from {last.rate:f}")
    await stores.catalog.store_rate(rate, urlsplit(url).netloc or url)
    await stores.catalog.job_ok(FX_JOB, {"rate": str(rate)}, interval)
    if await stores.alarms.clear(Alarm.FX_RATE_JUMP):
        log.warning("BTC/USD rate back within range; the fx_rate_jump alarm is cleared")
    FX_RATE_REJECTED.set(0)
    log.info("BTC/USD rate refreshed")
    return rate


async def _raise_fx_alarm(stores: Stores, rate: Decimal, last: Decimal) -> None:
    """Tell the operator (once per episode) that the source answered an implausible rate."""
    FX_RATE_REJECTED.set(1)
    if await stores.alarms.raise_(Alarm.FX_RATE_JUMP, f"{rate:f} vs {last:f}") is not None:
        log.error(
            "ALARM: the BTC/USD source answered %s, too far from the stored %s; not stored. "
            "Quotes use the stored rate until it is too old (then new orders are refused); "
            "if the move is real, run `python -m services.scheduler.catalog_refresh refresh "
            "--accept-rate`",
            format(rate, "f"),
            format(last, "f"),
        )


async def run_if_due(
    stores: Stores, name: str, interval: float, job: Callable[[], Awaitable[object]]
) -> bool:
    """Run a job if this replica claims it as due; a failure is logged and retried soon."""
    if not await stores.catalog.claim_job(name, interval):
        return False
    try:
        await job()
    except Exception as exc:
        # Provider or rate source down: the stored rows stay as they are.
        log.warning("%s refresh failed: %s", name, type(exc).__name__)
        await stores.catalog.job_failed(name, f"{type(exc).__name__}: {exc}"[:500], RETRY_SECONDS)
    return True


async def refresh_forever(
    stores: Stores,
    provider: SmsProvider,
    settings: Settings,
    stop: asyncio.Event,
    tick: float = TICK_SECONDS,
) -> None:
    """Run the catalog and rate jobs whenever they are due, until stop."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                await run_if_due(
                    stores,
                    CATALOG_JOB,
                    settings.catalog_refresh_seconds,
                    lambda: refresh_catalog(stores, provider, settings),
                )
                await run_if_due(
                    stores,
                    FX_JOB,
                    settings.fx_refresh_seconds,
                    lambda: refresh_fx(
                        stores,
                        session,
                        settings.fx_url,
                        settings.fx_refresh_seconds,
                        max_change=settings.fx_max_change_ratio,
                    ),
                )
            except Exception:
                log.exception("catalog job tick failed")
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass


async def refresh_once(settings: Settings, *, accept_rate: bool = False) -> int:
    """The on-demand refresh: catalog (waiting for a running one) and rate; prints counts.

    `accept_rate` stores the fetched rate however far it moved (an operator confirmed it).
    """
    pool = await db.create_pool(settings.database_url, min_size=2, max_size=2)
    stores = PgStores(pool, settings.subject_prefix)
    provider = provider_client(pool, settings)
    status = 0
    try:
        try:
            counts = await refresh_catalog(stores, provider, settings, wait=True)
            print("catalog: " + ", ".join(f"{k}={v}" for k, v in (counts or {}).items()))
        except (ProviderError, CatalogIncomplete) as exc:
            print(f"catalog: refresh failed ({exc}); the stored catalog is unchanged")
            status = 1
        try:
            async with aiohttp.ClientSession() as session:
                rate = await refresh_fx(
                    stores,
                    session,
                    settings.fx_url,
                    settings.fx_refresh_seconds,
                    max_change=0.0 if accept_rate else settings.fx_max_change_ratio,
                )
            print(f"fx: {PAIR}={rate}")
        except FxSourceError as exc:
            print(f"fx: refresh failed ({exc}); the stored rate is unchanged")
            status = 1
    finally:
        await provider.close()
        await pool.close()
    return status


def main(argv: list[str] | None = None) -> None:
    """Command line: `refresh` loads the catalog and the rate now."""
    parser = argparse.ArgumentParser(prog="python -m services.scheduler.catalog_refresh")
    parser.add_argument("command", choices=["refresh"], help="refresh: load catalog and rate now")
    parser.add_argument(
        "--accept-rate",
        action="store_true",
        help="store the fetched BTC/USD rate even if it moved more than FX_MAX_CHANGE_RATIO",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging("catalog", settings.log_level)
    sys.exit(asyncio.run(refresh_once(settings, accept_rate=args.accept_rate)))


if __name__ == "__main__":
    main()
