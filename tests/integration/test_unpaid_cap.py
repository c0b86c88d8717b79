"""The cap on unpaid orders per client address: the real gateway app, PostgreSQL, NATS, lnsim.

Past the cap, order creation answers 429 RATE_LIMITED with Retry-After and creates nothing
(no invoice at the node, no row); the count lives in PostgreSQL, so it holds across replicas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings
from libs.common.persistence.db import Q
from libs.common.persistence.stores import PgStores
from services.gateway.app import init_app
from services.scheduler.catalog_refresh import refresh_catalog, refresh_fx
from tests.integration.conftest import Lightning, running_smssim
from tests.integration.helpers import settings_for

pytestmark = pytest.mark.integration

API_KEY = "cap-key"
CAP = 3
INVOICE_EXPIRY = 600


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The provider simulator (catalog and BTC/USD rate) for the whole module."""
    with running_smssim(tmp_path_factory.mktemp("smssim"), "--api-key", API_KEY) as url:
        yield url


def _settings(
    database_url: str, nats_url: str, stream: tuple[str, str], ln: Lightning, sim_url: str
) -> Settings:
    merchant = ln.running.nodes_info["merchant"]
    return settings_for(
        database_url,
        nats_url,
        stream,
        provider_url=sim_url,
        provider_api_key=API_KEY,
        lnd_rest_url=merchant["rest_url"],
        lnd_macaroon_hex=merchant["macaroon_hex"],
        max_unpaid_per_client=CAP,
        invoice_expiry_seconds=INVOICE_EXPIRY,
        rate_challenges_per_minute=1_000_000,
    )


@asynccontextmanager
async def gateway(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway app on a free port, with the catalog and rate loaded."""
    stores = PgStores(pool, settings.subject_prefix)
    async with HeroSmsClient(settings.provider_url, API_KEY) as provider:
        assert await refresh_catalog(stores, provider, settings) is not None
    async with aiohttp.ClientSession() as http:
        await refresh_fx(stores, http, settings.provider_url + "/api/v3/simple/price")
    client: TestClient[Any, Any] = TestClient(TestServer(init_app(settings, asyncio.Event())))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def _counts(pool: asyncpg.Pool, ln: Lightning) -> tuple[int, int]:
    """(orders in the database, invoices at the merchant node)."""
    rows = await pool.fetchval("SELECT count(*) FROM orders")
    return int(rows), len(ln.running.nodes["merchant"].state.invoices)


async def _assert_refused(resp: Any, pool: asyncpg.Pool, ln: Lightning, before: Any) -> Any:
    assert resp.status == 429, await resp.text()
    retry_after = int(resp.headers["Retry-After"])
    # A slot frees when the client's oldest unpaid order expires.
    assert INVOICE_EXPIRY - 30 <= retry_after <= INVOICE_EXPIRY
    assert await _counts(pool, ln) == before, "a refused order created something"
    return await resp.json()


async def test_classic_createorder_past_the_cap_is_429_and_creates_nothing(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    sim_url: str,
    pool: asyncpg.Pool,
) -> None:
    settings = _settings(database_url, nats_url, bootstrapped, ln, sim_url)
    async with gateway(settings, pool) as client:
        for _ in range(CAP):
            resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
            assert resp.status == 200, await resp.text()
        before = await _counts(pool, ln)
        resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
        body = await _assert_refused(resp, pool, ln, before)
        assert body["status"] == "error" and "unpaid" in body["reason"]
        # The address is recorded on the orders the cap counts.
        addresses = await pool.fetch("SELECT DISTINCT client_addr FROM orders")
        assert [r["client_addr"] for r in addresses] == ["127.0.0.1"]

        # Once one of them stops being unpaid (paid, or expired), a slot is free again.
        await pool.execute(
            "UPDATE orders SET status = 'expired' WHERE id = (SELECT id FROM orders LIMIT 1)"
        )
        resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
        assert resp.status == 200, await resp.text()


async def test_l402_order_past_the_cap_is_429_and_creates_nothing(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    sim_url: str,
    pool: asyncpg.Pool,
) -> None:
    settings = _settings(database_url, nats_url, bootstrapped, ln, sim_url)

    async def order() -> Any:
        refund = await ln.payer.add_invoice(value_msat=0, memo="refund", expiry=86_400)
        body = {"country": "US", "service": "tg", "refundInvoice": refund.payment_request}
        return await client.post("/v2/l402/order", json=body)

    async with gateway(settings, pool) as client:
        # Classic and L402 unpaid orders share the client's cap.
        resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
        assert resp.status == 200, await resp.text()
        for _ in range(CAP - 1):
            resp = await order()
            assert resp.status == 402, await resp.text()
        before = await _counts(pool, ln)
        resp = await order()
        body = await _assert_refused(resp, pool, ln, before)
        assert body["error"]["code"] == "RATE_LIMITED"


async def test_concurrent_creates_never_leave_more_than_the_cap(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    sim_url: str,
    pool: asyncpg.Pool,
) -> None:
    settings = _settings(database_url, nats_url, bootstrapped, ln, sim_url)
    async with gateway(settings, pool) as client:
        resps = await asyncio.gather(
            *(
                client.post("/createorder", json={"country": "US", "service": "tg"})
                for _ in range(4 * CAP)
            )
        )
        statuses = sorted(r.status for r in resps)
        assert statuses == [200] * CAP + [429] * (3 * CAP), statuses
        unpaid = await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'pending_payment'")
        assert unpaid == CAP
        # An invoice made for a create that lost the race is cancelled, not left open.
        states = [i.state for i in ln.running.nodes["merchant"].state.invoices.values()]
        assert states.count("OPEN") == CAP, states


async def test_an_order_whose_invoice_expired_frees_its_slot_before_the_worker_catches_up(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    sim_url: str,
    pool: asyncpg.Pool,
) -> None:
    settings = _settings(database_url, nats_url, bootstrapped, ln, sim_url)
    async with gateway(settings, pool) as client:
        for _ in range(CAP):
            resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
            assert resp.status == 200, await resp.text()
        # The payments worker is down: the oldest order's invoice expired, but its row still
        # says pending_payment. It can no longer be paid, so it no longer holds a slot.
        expired = await pool.fetchval(
            "UPDATE orders SET invoice_expires_at = now() - interval '1 second'"
            " WHERE id = (SELECT id FROM orders ORDER BY created_at LIMIT 1) RETURNING id"
        )
        resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
        assert resp.status == 200, await resp.text()
        assert await pool.fetchval("SELECT status FROM orders WHERE id = $1", expired) == (
            "pending_payment"
        )
        # Full again: Retry-After counts down to the oldest order that can still be paid,
        # never a 1 s retry loop on the expired one.
        before = await _counts(pool, ln)
        resp = await client.post("/createorder", json={"country": "US", "service": "tg"})
        await _assert_refused(resp, pool, ln, before)


async def test_the_cap_query_is_served_by_the_partial_index(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # A tiny table is cheaper to scan whole; forbid that to see whether the index fits.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {Q.unpaid_count_for_client}", "x")
    assert "orders_unpaid_by_client" in json.dumps(plan), plan


async def test_an_undecodable_forwarded_entry_is_counted_as_the_peer_not_a_500(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    sim_url: str,
    pool: asyncpg.Pool,
) -> None:
    settings = replace(
        _settings(database_url, nats_url, bootstrapped, ln, sim_url), trusted_proxy_hops=1
    )
    body = b'{"country": "US", "service": "tg"}'
    async with gateway(settings, pool) as client:
        # A client that skipped our proxy writes the entry itself: bytes that are not UTF-8,
        # which aiohttp keeps as lone surrogates and asyncpg cannot encode.
        for forwarded in (b"\xff\xfe", b"junk", b"[2001:db8:1:2::9]:443"):
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(
                b"POST /createorder HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nX-Forwarded-For: " + forwarded + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        rows = await pool.fetch("SELECT client_addr FROM orders ORDER BY created_at")
        assert [r["client_addr"] for r in rows] == ["127.0.0.1", "127.0.0.1", "2001:db8:1:2::/64"]
