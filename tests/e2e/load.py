"""Helpers of the load-shaped e2e tests (scaling, shutdown): many orders placed and paid
concurrently, their outcome read back from the status log, and metrics scraped per process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from libs.common.adapters.lightning import LndClient
from tests.e2e.test_l402_order import (
    TERMINAL,
    _activations,
    _create,
    _pay,
    _refund_invoice,
    _sim,
)

# Life of an order in these tests: completed, or refunded when no number could be bought.
COMPLETED_PATH = [
    (None, "pending_payment"),
    ("pending_payment", "paid"),
    ("paid", "allocating_number"),
    ("allocating_number", "waiting_for_sms"),
    ("waiting_for_sms", "code_received"),
    ("code_received", "completed"),
]
NO_NUMBER_PATH = [
    (None, "pending_payment"),
    ("pending_payment", "paid"),
    ("paid", "allocating_number"),
    ("allocating_number", "refund_pending"),
    ("refund_pending", "refunded"),
]


async def stock_up(http: aiohttp.ClientSession, stack: dict[str, Any]) -> None:
    """Enough US numbers and provider balance that only a test's own choices refuse an order."""
    await _sim(http, stack, "/sim/stock", {"country": 187, "service": "tg", "count": 5000})
    await _sim(http, stack, "/sim/config", {"balance": 1000000})


async def quote(
    http: aiohttp.ClientSession,
    stack: dict[str, Any],
    wallet: LndClient,
    country: str,
    gate: asyncio.Semaphore,
) -> dict[str, Any]:
    """Place one order (with a refund invoice from the wallet); returns its 402 challenge."""
    async with gate:
        refund, _ = await _refund_invoice(wallet)
        resp, challenge = await _create(http, stack, refund, country=country)
        assert resp.status == 402, challenge
        return challenge


async def place_and_pay(
    http: aiohttp.ClientSession,
    stack: dict[str, Any],
    wallet: LndClient,
    country: str,
    gate: asyncio.Semaphore,
) -> str:
    """Place one order and pay its invoice; returns the order id."""
    challenge = await quote(http, stack, wallet, country, gate)
    async with gate:
        await _pay(wallet, challenge["invoice"])
    return str(challenge["orderId"])


async def wait_terminal(
    pool: asyncpg.Pool, order_ids: list[str], within: float
) -> dict[str, asyncpg.Record]:
    """Wait until every order is terminal (read from the database); returns the orders."""
    deadline = time.monotonic() + within
    while True:
        rows = await pool.fetch(
            "SELECT id, status, sms_received_at, activation_id FROM orders WHERE id = ANY($1)",
            order_ids,
        )
        waiting = [r["status"] for r in rows if r["status"] not in TERMINAL]
        if len(rows) == len(order_ids) and not waiting:
            return {r["id"]: r for r in rows}
        assert time.monotonic() < deadline, f"orders not terminal: {Counter(waiting)}"
        await asyncio.sleep(0.5)


async def status_log(pool: asyncpg.Pool, order_ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every order's status changes, in order, from the trigger-written log."""
    rows = await pool.fetch(
        "SELECT order_id, from_status, to_status FROM order_transitions"
        " WHERE order_id = ANY($1) ORDER BY id",
        order_ids,
    )
    log: dict[str, list[tuple[Any, ...]]] = {order_id: [] for order_id in order_ids}
    for row in rows:
        log[row["order_id"]].append((row["from_status"], row["to_status"]))
    return log


async def check_each_order_once(
    http: aiohttp.ClientSession,
    stack: dict[str, Any],
    pool: asyncpg.Pool,
    expected: dict[str, str],
    within: float,
) -> None:
    """Every order reached its expected end exactly once, and bought at most one number."""
    ids = list(expected)
    orders = await wait_terminal(pool, ids, within)
    log = await status_log(pool, ids)
    for order_id, outcome in expected.items():
        order = orders[order_id]
        path = COMPLETED_PATH if outcome == "completed" else NO_NUMBER_PATH
        # The full life, each step once: nothing was marked paid, bought or refunded twice.
        assert log[order_id] == path, (order_id, log[order_id])
        assert order["status"] == outcome
        if outcome == "completed":
            assert order["sms_received_at"] is not None, order_id
    # One purchase at the provider per order that got a number, none for the others, and no
    # purchase left unrecorded (the stack is the test's own: every activation is ours).
    bought = [str(o["activation_id"]) for o in orders.values() if o["activation_id"]]
    assert len(bought) == len(set(bought)) == list(expected.values()).count("completed")
    sold = [str(a["activationId"]) for a in await _activations(http, stack)]
    assert sorted(sold) == sorted(bought)


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    """One process's /metrics as {(sample name, sorted labels): value}."""
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: dict[tuple[str, tuple[Any, ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of a metric whose labels include the given ones."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))
