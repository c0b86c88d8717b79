"""Two replicas of every worker under a burst of orders, and a Lightning node that goes away.

A separate stack runs with REPLICAS=2: two processes each of payments, provider and
scheduler bound to the same durable consumers and claiming the same database rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.lightning import LndClient, LndError
from tests.e2e.conftest import E2E_ENV, node_client, running_stack
from tests.e2e.test_l402_order import TERMINAL, _create, _pay, _poll, _refund_invoice, _sim

pytestmark = pytest.mark.e2e

ORDERS = 30


@pytest.fixture(scope="module")
def twin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with two processes of every worker."""
    env = {**E2E_ENV, "REPLICAS": "2", "SMS4SATS_ORDER_TIMEOUT_SECONDS": "30"}
    with running_stack(tmp_path_factory.mktemp("twin-stack"), env) as info:
        yield info


@pytest.fixture
async def wallet(twin_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node."""
    client = node_client(twin_stack["payer_lnd"])
    yield client
    await client.close()


async def _challenge(
    stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient, country: str
) -> dict[str, Any]:
    refund, _ = await _refund_invoice(wallet)
    resp, challenge = await _create(http, stack, refund, country=country)
    assert resp.status == 402, challenge
    return challenge


async def _pay_and_wait(
    stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient, challenge: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    preimage = await _pay(wallet, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    return await _poll(http, stack, challenge["orderId"], auth, TERMINAL, within=90)


async def _wait_for_node(node: LndClient) -> None:
    """Wait until the node answers again (its old nodes.json survives a SIGKILL)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await node.get_info()
            return
        except LndError:
            assert time.monotonic() < deadline, "the Lightning simulator did not come back"
            await asyncio.sleep(0.2)


def _log_lines(stack: dict[str, Any], name: str, needle: str) -> int:
    path = Path(stack["logs_dir"]) / f"{name}.log"
    return sum(needle in line for line in path.read_text().splitlines())


async def test_a_burst_of_orders_through_two_replicas_of_every_worker(
    twin_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    countries = ["ID" if i % 3 == 0 else "US" for i in range(ORDERS)]
    challenges = await asyncio.gather(*(_challenge(twin_stack, http, wallet, c) for c in countries))
    # Indonesia runs out of numbers after the quotes: those orders must be refunded.
    await _sim(http, twin_stack, "/sim/stock", {"country": 6, "service": "tg", "count": 0})
    before = await wallet.channel_balance_sat()
    results = await asyncio.gather(
        *(_pay_and_wait(twin_stack, http, wallet, c) for c in challenges)
    )
    await _sim(http, twin_stack, "/sim/stock", {"country": 6, "service": "tg", "count": 50})

    spent = 0
    for country, challenge, (order, seen) in zip(countries, challenges, results, strict=True):
        expected = "refunded" if country == "ID" else "completed"
        assert order["status"] == expected, seen
        spent += 0 if expected == "refunded" else challenge["priceSats"]
    assert await wallet.channel_balance_sat() == before - spent
    # Both replicas of each worker did part of the work.
    for name, needle in (("payments", "order paid"), ("provider", "number allocated")):
        counts = [_log_lines(twin_stack, f"{name}-{i}", needle) for i in (1, 2)]
        assert min(counts) > 0, (name, counts)
    paid = sum(_log_lines(twin_stack, f"payments-{i}", "order paid") for i in (1, 2))
    assert paid == ORDERS  # each order marked paid exactly once across the replicas


async def test_orders_survive_the_lightning_node_going_away(
    twin_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    challenge = await _challenge(twin_stack, http, wallet, "US")
    # The node dies (SIGKILL) with an open invoice; the launcher brings it back.
    os.kill(twin_stack["pids"]["lnsim"], signal.SIGKILL)
    await asyncio.sleep(0.5)
    await _wait_for_node(wallet)
    # The invoice survived the restart; paying it now must still complete the order.
    order, seen = await _pay_and_wait(twin_stack, http, wallet, challenge)
    assert order["status"] == "completed", seen
