"""Refunds pay concurrently under a bounded pool: many due at once, each paid exactly once.

The figure of the issue (1,000 refunds due at once, all paid within 60 s against the
simulator) comes from `test_measure_a_thousand_refunds`, run only with SMS4SATS_MEASURE=1.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient, Payment
from libs.common.core.config import Settings
from libs.common.messaging.runtime import open_worker
from services.payments.refunds import RefundPayer
from tests.integration.conftest import Lightning
from tests.integration.test_refunds import (
    RefundOrder,
    assert_refunded_once,
    make_order,
    make_settings,
)

pytestmark = pytest.mark.integration

MEASURE = pytest.mark.skipif(
    not os.environ.get("SMS4SATS_MEASURE"), reason="a measurement: set SMS4SATS_MEASURE=1"
)


class CountingClient(LndClient):
    """The merchant's client, counting the payment streams (send, track) open at once.

    An attempt opens one at a time (track, then send), so the peak bounds the attempts
    talking to the node at once. `linger` keeps each stream open a little longer, so that
    attempts which may overlap surely do.
    """

    def __init__(self, info: dict[str, Any], linger: float = 0.0) -> None:
        super().__init__(info["rest_url"], info["macaroon_hex"], None, timeout=30)
        self.linger = linger
        self.open = 0
        self.peak = 0

    async def _counted(self, stream: AsyncIterator[Payment]) -> AsyncIterator[Payment]:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await asyncio.sleep(self.linger)
            async for update in stream:
                yield update
        finally:
            self.open -= 1
            await stream.aclose()  # type: ignore[attr-defined]

    def send_payment(  # type: ignore[override]
        self, payment_request: str, **kwargs: Any
    ) -> AsyncIterator[Payment]:
        """SendPaymentV2, counted."""
        return self._counted(super().send_payment(payment_request, **kwargs))

    def track_payment(self, payment_hash: bytes) -> AsyncIterator[Payment]:  # type: ignore[override]
        """TrackPaymentV2, counted."""
        return self._counted(super().track_payment(payment_hash))


async def _refund_pending(pool: asyncpg.Pool, ln: Lightning, count: int) -> list[RefundOrder]:
    return [await make_order(pool, ln, price=100 + i) for i in range(count)]


async def _all_refunded(pool: asyncpg.Pool, ids: list[str]) -> bool:
    done = await pool.fetchval(
        "SELECT count(*) FROM orders WHERE id = ANY($1::text[]) AND status = 'refunded'", ids
    )
    return bool(done == len(ids))


async def _sample_in_flight(pool: asyncpg.Pool, peaks: list[int], stop: asyncio.Event) -> None:
    """The most refund rows seen claimed (in_flight) at once, sampled until stop."""
    while not stop.is_set():
        n = await pool.fetchval("SELECT count(*) FROM refunds WHERE status = 'in_flight'")
        peaks.append(int(n))
        await asyncio.sleep(0.01)


async def test_two_hundred_refunds_due_at_once_are_paid_once_each_within_the_bound(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    bound = 6
    settings = make_settings(database_url, nats_url, bootstrapped, refund_concurrency=bound)
    info = ln.running.nodes_info["merchant"]
    clients = [CountingClient(info, linger=0.02) for _ in range(2)]
    try:
        async with (
            open_worker("payments", settings, asyncio.Event()) as a,
            open_worker("payments", settings, asyncio.Event()) as b,
        ):
            payers = [RefundPayer(w, c) for w, c in zip((a, b), clients, strict=True)]
            orders = await _refund_pending(a.pool, ln, 200)
            ids = [o.id for o in orders]
            merchant_before, payer_before = await ln.balances()
            sends_before = ln.sends()
            # Two replicas, as in production: the event handler's requests and the loops.
            loops = [asyncio.create_task(p.retry_due()) for p in payers]
            sampled: list[int] = []
            sampling = asyncio.Event()
            sampler = asyncio.create_task(_sample_in_flight(a.pool, sampled, sampling))
            for i, order_id in enumerate(ids):
                await payers[i % 2].request(order_id, wait=False)
            deadline = time.monotonic() + 120  # a loaded CI machine; the figure is measured
            while not await _all_refunded(a.pool, ids):
                assert time.monotonic() < deadline, "refunds not all paid in time"
                await asyncio.sleep(0.1)
            sampling.set()
            await sampler
            a.stop.set()
            b.stop.set()
            await asyncio.wait_for(asyncio.gather(*loops), 30)

            total = sum(o.price for o in orders)
            assert ln.sends() == sends_before + len(orders)  # one payment each, no more
            assert await ln.balances() == (merchant_before - total, payer_before + total)
            for order in orders:
                await assert_refunded_once(a.pool, ln, order)
            for client in clients:
                assert client.peak <= bound, f"{client.peak} payment streams at once"
            assert max(c.peak for c in clients) >= 2, "refunds were paid one by one"
            assert max(sampled) <= 2 * bound, f"{max(sampled)} refunds claimed at once"
    finally:
        for client in clients:
            await client.close()


async def _measure(settings: Settings, ln: Lightning, count: int) -> None:
    info = ln.running.nodes_info["merchant"]
    client = CountingClient(info)
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            payer = RefundPayer(worker, client)
            orders = await _refund_pending(worker.pool, ln, count)
            ids = [o.id for o in orders]
            for order_id in ids:
                await worker.stores.refunds.insert(order_id)
            # All due in the same instant, then the payer's loop starts.
            due_at = await worker.pool.fetchval(
                "UPDATE refunds SET next_attempt_at = clock_timestamp() "
                "WHERE order_id = ANY($1::text[]) RETURNING next_attempt_at",
                ids,
            )
            started = time.monotonic()
            loop = asyncio.create_task(payer.retry_due())
            while not await _all_refunded(worker.pool, ids):
                assert time.monotonic() - started < 300
                await asyncio.sleep(0.05)
            took = time.monotonic() - started
            p99 = await worker.pool.fetchval(
                "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM "
                "paid_at - $2)) FROM refunds WHERE order_id = ANY($1::text[])",
                ids,
                due_at,
            )
            worker.stop.set()
            await asyncio.wait_for(loop, 30)
            assert ln.sends() >= count
            print(
                f"\n{count} refunds due at once, refund_concurrency="
                f"{settings.refund_concurrency}: all paid in {took:.1f}s "
                f"({count / took:.0f}/s); due->paid p99 {p99:.1f}s; peak streams {client.peak}"
            )
    finally:
        await client.close()


@MEASURE
async def test_measure_a_thousand_refunds(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    await _measure(settings, ln, 1000)
