"""Graceful shutdown: SIGTERM to every worker process in turn while orders stream through.

Each process must stop on its own within the grace (finishing or handing back what it was
doing) and come back (the launcher restarts it). Afterwards every order ended right and no
step happened twice: the status log has each step once, and the provider sold exactly one
number per completed order. The acknowledgement wait stays at 120 s, so a message a stopping
worker had neither finished nor handed back would stall its order past the test's deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient
from tests.e2e.conftest import E2E_ENV, UNMETERED_PROVIDER, node_client, running_stack
from tests.e2e.load import check_each_order_once, place_and_pay, quote, stock_up
from tests.e2e.test_l402_order import _pay, _sim

pytestmark = pytest.mark.e2e

WORKERS = [f"{name}-{i}" for i in (1, 2) for name in ("payments", "provider", "scheduler")]
MIN_ORDERS = 60
IN_FLIGHT = 6


@pytest.fixture(scope="module")
def twin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two processes of every worker, so one keeps working while the other restarts."""
    env = {
        **E2E_ENV,
        **UNMETERED_PROVIDER,
        "REPLICAS": "2",
        "SMS4SATS_ORDER_TIMEOUT_SECONDS": "90",
    }
    with running_stack(tmp_path_factory.mktemp("shutdown-stack"), env) as info:
        yield info


@pytest.fixture
async def wallet(twin_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node."""
    client = node_client(twin_stack["payer_lnd"])
    yield client
    await client.close()


def _current_pid(stack: dict[str, Any], name: str) -> int:
    """The process id the launcher reports now (it rewrites stack.json after a restart)."""
    doc = json.loads((Path(stack["state_dir"]) / "stack.json").read_text())
    return int(doc["pids"][name])


async def _restarted(
    http: aiohttp.ClientSession, stack: dict[str, Any], name: str, old_pid: int
) -> None:
    """Wait until the launcher has restarted the process and the new one is ready."""
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, f"{name} did not come back"
        if _current_pid(stack, name) != old_pid:
            try:
                async with http.get(f"{stack['ops'][name]}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass  # the new process has not opened its ops port yet
        await asyncio.sleep(0.2)


def _graceful_stops(stack: dict[str, Any], name: str) -> int:
    text = (Path(stack["logs_dir"]) / f"{name}.log").read_text()
    assert "did not stop within the grace" not in text, name
    return text.count(f'"msg": "{name.split("-")[0]} stopped"')


async def test_sigterm_to_every_worker_mid_stream_loses_and_repeats_nothing(
    twin_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    stack = twin_stack
    gate = asyncio.Semaphore(IN_FLIGHT)
    await stock_up(http, stack)
    # A few orders whose number will be sold out when they are paid: the refund path.
    refunded = [await quote(http, stack, wallet, "ID", gate) for _ in range(8)]
    await _sim(http, stack, "/sim/stock", {"country": 6, "service": "tg", "count": 0})
    unpaid = list(refunded)
    completed: list[str] = []
    killing = True

    async def pay_one_refunded() -> str:
        async with gate:
            await _pay(wallet, unpaid.pop()["invoice"])
        return ""

    async def stream() -> None:
        """Orders keep coming, a few at a time, until every worker was restarted."""
        pending: set[asyncio.Task[str]] = set()
        placed = 0
        while killing or placed < MIN_ORDERS:
            if len(pending) >= IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                completed.extend(t.result() for t in done)
            pending.add(asyncio.create_task(place_and_pay(http, stack, wallet, "US", gate)))
            placed += 1
            if placed % 10 == 5 and unpaid:
                pending.add(asyncio.create_task(pay_one_refunded()))
        completed.extend(await asyncio.gather(*pending))

    producer = asyncio.create_task(stream())
    try:
        for name in WORKERS:
            await asyncio.sleep(1.5)  # orders in every stage by now
            pid = _current_pid(stack, name)
            os.kill(pid, signal.SIGTERM)
            await _restarted(http, stack, name, pid)
    finally:
        killing = False
        await producer
    while unpaid:
        await pay_one_refunded()

    expected = {order_id: "completed" for order_id in completed if order_id}
    expected.update({c["orderId"]: "refunded" for c in refunded})
    assert len(expected) >= MIN_ORDERS + len(refunded)
    pool = await asyncpg.create_pool(stack["database_url"], min_size=1, max_size=2)
    try:
        await check_each_order_once(http, stack, pool, expected, within=90)
    finally:
        await pool.close()
    # Each process stopped by itself once (the rest of its log is its successor's).
    assert {name: _graceful_stops(stack, name) for name in WORKERS} == dict.fromkeys(WORKERS, 1)
