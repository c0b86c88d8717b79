"""The catalog and rate jobs against the real provider simulator and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from libs.common.adapters.sms import HeroSmsClient, ProviderError
from libs.common.core.config import Settings
from libs.common.domain import fx
from libs.common.domain.alarms import Alarm
from libs.common.messaging import ops
from libs.common.persistence import catalog_store as catalog
from libs.common.persistence.catalog_store import LOCK_KEY
from libs.common.persistence.db import Q
from libs.common.persistence.stores import PgStores
from services.scheduler.catalog_refresh import (
    refresh_catalog,
    refresh_forever,
    refresh_fx,
    refresh_once,
    run_if_due,
)
from tests.integration.conftest import running_smssim

pytestmark = pytest.mark.integration

API_KEY = "catalog-key"


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The provider simulator for the whole module."""
    with running_smssim(tmp_path_factory.mktemp("smssim"), "--api-key", API_KEY) as url:
        yield url


@pytest.fixture
async def provider(sim_url: str) -> AsyncIterator[HeroSmsClient]:
    """A client of the simulator; the simulator is reset around each test."""
    async with aiohttp.ClientSession() as http:
        await http.post(f"{sim_url}/sim/reset")
        async with HeroSmsClient(sim_url, API_KEY) as client:
            yield client
        await http.post(f"{sim_url}/sim/reset")


class RateSource:
    """A tiny CoinGecko `simple/price` server whose answer the test controls."""

    def __init__(self) -> None:
        self.rate: Any = 97000.5
        self.status = 200
        self.calls = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        assert request.query["ids"] == "bitcoin" and request.query["vs_currencies"] == "usd"
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"bitcoin": {"usd": self.rate}})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/api/v3/simple/price"))


@pytest.fixture
async def rate_source() -> AsyncIterator[RateSource]:
    """The rate server on a free port."""
    source = RateSource()
    app = web.Application()
    app.router.add_get("/api/v3/simple/price", source.handle)
    source.server = TestServer(app)
    await source.server.start_server()
    yield source
    await source.server.close()


def _stores(pool: asyncpg.Pool) -> PgStores:
    return PgStores(pool, "orders")


def _settings(sim_url: str) -> Settings:
    return Settings(provider_url=sim_url, provider_api_key=API_KEY)


async def _snapshot(pool: asyncpg.Pool) -> tuple[Any, ...]:
    loaded = await _stores(pool).catalog.load()
    return (
        loaded.countries.all(),
        loaded.services,
        loaded.offers,
        loaded.rent,
        loaded.refreshed_at,
    )


async def test_refresh_loads_the_simulator_catalog(
    pool: asyncpg.Pool, provider: HeroSmsClient, sim_url: str
) -> None:
    assert not (await _stores(pool).catalog.load()).loaded
    counts = await refresh_catalog(_stores(pool), provider, _settings(sim_url))
    assert counts is not None
    assert counts["countries"] == 7 and counts["services"] == 6 and counts["prices"] == 42
    loaded = await _stores(pool).catalog.load()
    assert loaded.loaded and loaded.refreshed_at is not None
    england = loaded.countries.by_id(16)
    assert england is not None and (england.name, england.iso) == ("England", "GB")
    for typed in ("England", "GB", "United Kingdom", "16"):
        assert loaded.countries.resolve(typed) == england
    us = loaded.countries.resolve("US")
    assert us is not None and us == loaded.countries.resolve("USA") == loaded.countries.by_id(187)
    assert {"code": "tg", "name": "Telegram"} in [vars(s) for s in loaded.services]
    assert {o.country_id for o in loaded.offers} == {0, 2, 6, 12, 16, 43, 187}
    assert all(o.count == 50 for o in loaded.offers)
    # Rent offers come in only once the provider port can list them.
    if counts["rent_prices"] is not None:
        assert counts["rent_prices"] > 0 and len(loaded.rent) == counts["rent_prices"]
        assert {r.hours for r in loaded.rent} <= {2, 4, 12, 24, 72, 168}
        assert {r.country_id for r in loaded.rent} <= {
            c.id for c in loaded.countries.all() if c.rent
        }
    job = await pool.fetchrow(Q.refresh_job_get, catalog.CATALOG_JOB)
    assert job["counts"] == counts and job["last_error"] is None


async def test_refresh_follows_the_provider_and_keeps_old_rows_when_it_fails(
    pool: asyncpg.Pool, provider: HeroSmsClient, sim_url: str
) -> None:
    settings = _settings(sim_url)
    await refresh_catalog(_stores(pool), provider, settings)
    async with aiohttp.ClientSession() as http:
        stock = {"country": 6, "service": "fb", "count": 3, "cost": 0.42}
        async with http.post(f"{sim_url}/sim/stock", json=stock) as resp:
            assert resp.status == 200
        await refresh_catalog(_stores(pool), provider, settings)
        before = await _snapshot(pool)
        assert any(
            (o.country_id, o.service, o.count, o.cost_usd) == (6, "fb", 3, Decimal("0.42"))
            for o in before[2]
        )
        # The provider goes down in the middle of a refresh: countries answer, prices do not.
        fault = {"action": "getPrices", "status": 503, "times": 100}
        async with http.post(f"{sim_url}/sim/faults", json=fault) as resp:
            assert resp.status == 200
        with pytest.raises(ProviderError):
            await refresh_catalog(_stores(pool), provider, settings)
        assert await _snapshot(pool) == before


async def test_only_one_refresh_runs_at_a_time(
    pool: asyncpg.Pool, provider: HeroSmsClient, sim_url: str
) -> None:
    settings = _settings(sim_url)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim_url}/sim/stats") as resp:
            calls_before = (await resp.json())["total"]
        async with pool.acquire() as holder:
            # Another replica (or the on-demand command) is refreshing.
            assert await holder.fetchval(Q.catalog_try_lock, LOCK_KEY)
            assert await refresh_catalog(_stores(pool), provider, settings) is None
            waiting = asyncio.ensure_future(
                refresh_catalog(_stores(pool), provider, settings, wait=True)
            )
            await asyncio.sleep(0.3)
            assert not waiting.done()  # the command waits for the running refresh
            async with http.get(f"{sim_url}/sim/stats") as resp:
                assert (await resp.json())["total"] == calls_before  # nobody asked the provider
            await holder.execute(Q.catalog_unlock, LOCK_KEY)
        counts = await asyncio.wait_for(waiting, 30)
        assert counts is not None and counts["prices"] == 42


async def test_a_due_job_is_claimed_by_one_replica_per_interval(pool: asyncpg.Pool) -> None:
    ran: list[int] = []

    async def job(i: int) -> None:
        ran.append(i)

    claims = await asyncio.gather(
        *(run_if_due(_stores(pool), "test-job", 3600, lambda i=i: job(i)) for i in range(8))
    )
    assert sum(claims) == 1 and len(ran) == 1
    assert not await run_if_due(_stores(pool), "test-job", 3600, lambda: job(99))

    async def failing() -> None:
        raise RuntimeError("source down")

    await pool.execute("UPDATE refresh_jobs SET next_run_at = now() WHERE name = 'test-job'")
    assert await run_if_due(_stores(pool), "test-job", 3600, failing)
    row = await pool.fetchrow(Q.refresh_job_get, "test-job")
    assert "source down" in row["last_error"]
    # A failure is retried soon, not after the whole interval.
    retry_in = await pool.fetchval(
        "SELECT extract(epoch FROM next_run_at - now()) FROM refresh_jobs WHERE name = 'test-job'"
    )
    assert retry_in < 60


async def test_rate_is_cached_with_its_age_and_kept_when_the_source_fails(
    pool: asyncpg.Pool, rate_source: RateSource
) -> None:
    assert await _stores(pool).catalog.rate() is None
    async with aiohttp.ClientSession() as http:
        assert await refresh_fx(_stores(pool), http, rate_source.url) == Decimal("97000.5")
        cached = await _stores(pool).catalog.rate()
        assert cached is not None and cached.rate == Decimal("97000.5")
        assert 0 <= cached.age_seconds < 60
        assert fx.freshness(cached.age_seconds, stale_after=600, max_age=3600) is (
            fx.Freshness.FRESH
        )

        rate_source.status = 500
        with pytest.raises(fx.FxSourceError):
            await refresh_fx(_stores(pool), http, rate_source.url)
        rate_source.status, rate_source.rate = 200, "not a number"
        with pytest.raises(fx.FxSourceError):
            await refresh_fx(_stores(pool), http, rate_source.url)
        kept = await _stores(pool).catalog.rate()
        assert kept is not None and (kept.rate, kept.fetched_at) == (cached.rate, cached.fetched_at)

        # The source stays down: the cached rate ages into stale, then too stale.
        await pool.execute("UPDATE fx_rates SET fetched_at = now() - interval '20 minutes'")
        aged = await _stores(pool).catalog.rate()
        assert aged is not None and 1199 < aged.age_seconds < 1260
        assert fx.freshness(aged.age_seconds, stale_after=600, max_age=3600) is fx.Freshness.STALE
        await pool.execute("UPDATE fx_rates SET fetched_at = now() - interval '2 hours'")
        aged = await _stores(pool).catalog.rate()
        assert aged is not None
        assert fx.freshness(aged.age_seconds, stale_after=600, max_age=3600) is (
            fx.Freshness.TOO_STALE
        )

        rate_source.rate = 65432.1
        assert await refresh_fx(_stores(pool), http, rate_source.url) == Decimal("65432.1")
        fresh = await _stores(pool).catalog.rate()
        assert fresh is not None and fresh.age_seconds < 60 and fresh.rate == Decimal("65432.1")


async def test_the_scheduler_loop_loads_catalog_and_rate_at_start(
    pool: asyncpg.Pool, provider: HeroSmsClient, sim_url: str, rate_source: RateSource
) -> None:
    settings = Settings(provider_url=sim_url, provider_api_key=API_KEY, fx_url=rate_source.url)
    stop = asyncio.Event()
    loops = [
        asyncio.ensure_future(refresh_forever(_stores(pool), provider, settings, stop, tick=0.1))
        for _ in range(3)  # three scheduler replicas
    ]
    try:
        deadline = time.monotonic() + 30
        while await _stores(pool).catalog.rate() is None or not await _loaded(pool):
            assert time.monotonic() < deadline, "the loop loaded nothing"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # more ticks: nothing is due again for an interval
    finally:
        stop.set()
        await asyncio.gather(*loops)
    assert rate_source.calls == 1
    async with aiohttp.ClientSession() as http, http.get(f"{sim_url}/sim/stats") as resp:
        assert (await resp.json())["actions"]["getPrices"] == 1


async def _loaded(pool: asyncpg.Pool) -> bool:
    return (await _stores(pool).catalog.load()).loaded


async def _set_sim_rate(http: aiohttp.ClientSession, sim_url: str, rate: float) -> None:
    async with http.post(f"{sim_url}/sim/config", json={"btcUsd": rate}) as resp:
        assert resp.status == 200, await resp.text()


async def test_a_rate_far_from_the_stored_one_raises_the_alarm_and_is_not_stored(
    pool: asyncpg.Pool, sim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{sim_url}/api/v3/simple/price"
    async with aiohttp.ClientSession() as http:
        try:
            await _set_sim_rate(http, sim_url, 100000)
            assert await refresh_fx(_stores(pool), http, url, max_change=0.5) == Decimal(100000)
            stored = await _stores(pool).catalog.rate()
            assert stored is not None

            # The source slips a unit: 1000 USD per bitcoin. Not stored; the alarm is up.
            await _set_sim_rate(http, sim_url, 1000)
            with caplog.at_level("ERROR"), pytest.raises(fx.FxRateRejected):
                await refresh_fx(_stores(pool), http, url, max_change=0.5)
            kept = await _stores(pool).catalog.rate()
            assert kept is not None and (kept.rate, kept.fetched_at) == (
                stored.rate,
                stored.fetched_at,
            )
            alarm = await pool.fetchrow(Q.alarm_active, Alarm.FX_RATE_JUMP)
            assert alarm is not None and alarm["detail"] == "1000 vs 100000"
            assert sum("ALARM" in r.getMessage() for r in caplog.records) == 1
            await ops.sample_database(_stores(pool))
            assert REGISTRY.get_sample_value("sms4sats_fx_rate_rejected") == 1
            # Raised once per episode: a second refusal logs no second ALARM.
            with caplog.at_level("ERROR"), pytest.raises(fx.FxRateRejected):
                await refresh_fx(_stores(pool), http, url, max_change=0.5)
            assert sum("ALARM" in r.getMessage() for r in caplog.records) == 1

            # The stored rate keeps ageing, so the max-age rule stops sales eventually.
            await pool.execute("UPDATE fx_rates SET fetched_at = now() - interval '2 hours'")
            aged = await _stores(pool).catalog.rate()
            assert aged is not None and aged.rate == Decimal(100000)
            assert fx.freshness(aged.age_seconds, stale_after=600, max_age=3600) is (
                fx.Freshness.TOO_STALE
            )

            # Back within range of the stored rate: stored, and the alarm clears.
            await _set_sim_rate(http, sim_url, 120000)
            assert await refresh_fx(_stores(pool), http, url, max_change=0.5) == Decimal(120000)
            fresh = await _stores(pool).catalog.rate()
            assert fresh is not None and fresh.rate == Decimal(120000) and fresh.age_seconds < 60
            assert await pool.fetchrow(Q.alarm_active, Alarm.FX_RATE_JUMP) is None
            await ops.sample_database(_stores(pool))
            assert REGISTRY.get_sample_value("sms4sats_fx_rate_rejected") == 0
        finally:
            await _set_sim_rate(http, sim_url, 100000)


async def test_an_operator_accepts_a_real_move_of_the_rate(
    pool: asyncpg.Pool, database_url: str, sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        database_url=database_url,
        provider_url=sim_url,
        provider_api_key=API_KEY,
        fx_url=f"{sim_url}/api/v3/simple/price",
    )
    async with aiohttp.ClientSession() as http:
        try:
            await _set_sim_rate(http, sim_url, 100000)
            assert await refresh_once(settings) == 0
            await _set_sim_rate(http, sim_url, 40000)  # -60 %: refused, alarm up
            assert await refresh_once(settings) == 1
            assert "more than 50%" in capsys.readouterr().out
            assert await pool.fetchrow(Q.alarm_active, Alarm.FX_RATE_JUMP) is not None
            stored = await _stores(pool).catalog.rate()
            assert stored is not None and stored.rate == Decimal(100000)

            # `refresh --accept-rate`: the operator confirmed the move.
            assert await refresh_once(settings, accept_rate=True) == 0
            accepted = await _stores(pool).catalog.rate()
            assert accepted is not None and accepted.rate == Decimal(40000)
            assert await pool.fetchrow(Q.alarm_active, Alarm.FX_RATE_JUMP) is None
        finally:
            await _set_sim_rate(http, sim_url, 100000)
