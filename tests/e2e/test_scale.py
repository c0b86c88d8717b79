"""Scaling out: 200 concurrent orders through two replicas of every worker.

Every order must reach its terminal state exactly once (the status log has each step once),
and both replicas of each worker must have done part of the work (their own /metrics).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient
from tests.e2e.conftest import E2E_ENV, UNMETERED_PROVIDER, node_client, running_stack
from tests.e2e.load import check_each_order_once, place_and_pay, quote, scrape, stock_up, total
from tests.e2e.test_l402_order import _pay, _sim

pytestmark = pytest.mark.e2e

ORDERS = 200
# Bounded so the simulated nodes and the gateway are kept busy, not swamped.
IN_FLIGHT = 24
EVENTS = "sms4sats_events_handled_total"


@pytest.fixture(scope="module")
def scaled_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two processes of every worker; codes purged a second after completion, so the
    schedulers have timers to share."""
    env = {
        **E2E_ENV,
        **UNMETERED_PROVIDER,
        "REPLICAS": "2",
        "SMS4SATS_ORDER_TIMEOUT_SECONDS": "90",
        "SMS4SATS_CODE_RETENTION_SECONDS": "1",
    }
    with running_stack(tmp_path_factory.mktemp("scaled-stack"), env) as info:
        yield info


@pytest.fixture
async def wallet(scaled_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node."""
    client = node_client(scaled_stack["payer_lnd"])
    yield client
    await client.close()


async def test_200_concurrent_orders_through_two_replicas_of_every_worker(
    scaled_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    stack = scaled_stack
    gate = asyncio.Semaphore(IN_FLIGHT)
    await stock_up(http, stack)
    # A tenth of the orders are for Indonesia, whose numbers run out once they are placed:
    # those must be refunded, the rest completed.
    quotes = await asyncio.gather(
        *(quote(http, stack, wallet, "ID", gate) for _ in range(ORDERS // 10))
    )
    await _sim(http, stack, "/sim/stock", {"country": 6, "service": "tg", "count": 0})

    async def pay_quoted(challenge: dict[str, Any]) -> None:
        async with gate:
            await _pay(wallet, challenge["invoice"])

    results = await asyncio.gather(
        *(pay_quoted(c) for c in quotes),
        *(place_and_pay(http, stack, wallet, "US", gate) for _ in range(ORDERS - len(quotes))),
    )
    expected = {c["orderId"]: "refunded" for c in quotes}
    expected.update({order_id: "completed" for order_id in results[len(quotes) :]})
    assert len(expected) == ORDERS

    pool = await asyncpg.create_pool(stack["database_url"], min_size=1, max_size=2)
    try:
        await check_each_order_once(http, stack, pool, expected, within=120)
    finally:
        await pool.close()

    # Both replicas of each worker did part of the work, and together each event once: a
    # redelivery would count as "duplicate" (or run the handler again and count twice).
    done: dict[str, list[float]] = {}
    for name, metric, labels in (
        ("payments", EVENTS, {"consumer": "payments", "type": "created", "outcome": "ok"}),
        ("provider", EVENTS, {"consumer": "provider", "type": "paid", "outcome": "ok"}),
        ("scheduler", "sms4sats_timers_fired_total", {"kind": "purge_code"}),
    ):
        done[name] = [
            total(await scrape(http, stack["ops"][f"{name}-{i}"]), metric, **labels) for i in (1, 2)
        ]
    assert all(min(counts) > 0 for counts in done.values()), done
    assert sum(done["payments"]) == sum(done["provider"]) == ORDERS, done
