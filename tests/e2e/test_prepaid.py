"""Prepaid accounts: a top-up credited once, immediate orders debited atomically, refunds back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.lightning import LndClient
from tests.e2e.test_classic_hold import _classic, _status_until
from tests.e2e.test_l402_order import _sim

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _new_account(stack: dict[str, Any]) -> str:
    """Create an account with the operator command; returns its API key."""
    out = subprocess.run(
        [sys.executable, "-m", "services.gateway.accounts", "create", "--label", "e2e"],
        cwd=ROOT,
        env={**os.environ, "SMS4SATS_DATABASE_URL": stack["database_url"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("api key"))


async def _balance(http: aiohttp.ClientSession, stack: dict[str, Any], key: str) -> int:
    status, body = await _classic(http, stack, "GET", "/balance", headers={"X-API-Key": key})
    assert status == 200, body
    return int(body["balance"])


async def _top_up(
    http: aiohttp.ClientSession, stack: dict[str, Any], payer: LndClient, key: str, amount: int
) -> None:
    status, body = await _classic(
        http, stack, "POST", "/fund", json={"amount": amount}, headers={"X-API-Key": key}
    )
    assert status == 200 and body["payreq"].startswith("lnbcrt"), body
    payment = await asyncio.wait_for(
        payer.pay(body["payreq"], fee_limit_sat=10, timeout_seconds=60), 30
    )
    assert payment.status == "SUCCEEDED"


async def _immediate(
    http: aiohttp.ClientSession, stack: dict[str, Any], key: str, country: str = "US"
) -> tuple[int, dict[str, Any]]:
    return await _classic(
        http,
        stack,
        "POST",
        "/createorder",
        json={"country": country, "service": "tg", "immediate": True},
        headers={"X-API-Key": key},
    )


async def test_top_up_then_immediate_orders_and_a_refund_credited_back(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    key = _new_account(stack)
    assert await _balance(http, stack, key) == 0
    await _top_up(http, stack, payer, key, 5000)
    for _ in range(50):
        if await _balance(http, stack, key) == 5000:
            break
        await asyncio.sleep(0.2)
    assert await _balance(http, stack, key) == 5000

    status, order = await _immediate(http, stack, key)
    assert status == 200 and order["payreq"] == "paid", order
    done = await _status_until(
        http, stack, order["orderId"], lambda b: b["orderStatus"] == "completed"
    )
    assert "code" in done
    after_order = await _balance(http, stack, key)
    assert 0 < after_order < 5000

    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        status, unlucky = await _immediate(http, stack, key, "GB")
        assert status == 200
        await _status_until(
            http, stack, unlucky["orderId"], lambda b: b["orderStatus"] == "refunded"
        )
    finally:
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    assert await _balance(http, stack, key) == after_order  # debited, then credited back

    status, hist = await _classic(http, stack, "GET", "/history", headers={"X-API-Key": key})
    assert status == 200 and hist["totalAmount"] == 5000
    kinds = [(m["kind"], m["orderId"]) for m in reversed(hist["orders"])]
    assert [k for k, _ in kinds] == ["fund", "order", "order", "refund"]
    assert kinds[2][1] == kinds[3][1] == unlucky["orderId"]
    assert hist["orders"][0]["balanceAfter"] == after_order


async def test_concurrent_immediate_orders_never_overdraw(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    key = _new_account(stack)
    # Learn the price of one order, then fund exactly two of them.
    _, price_body = await _classic(
        http, stack, "GET", "/v2/l402/catalog", params={"country": "US", "service": "tg"}
    )
    price = price_body["offers"][0]["priceSats"]
    await _top_up(http, stack, payer, key, 2 * price)
    for _ in range(50):
        if await _balance(http, stack, key) == 2 * price:
            break
        await asyncio.sleep(0.2)
    results = await asyncio.gather(*(_immediate(http, stack, key) for _ in range(6)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 402, 402, 402, 402], results
    assert await _balance(http, stack, key) == 0


async def test_api_key_errors(stack: dict[str, Any], http: aiohttp.ClientSession) -> None:
    status, body = await _classic(http, stack, "GET", "/history")
    assert status == 400 and body["status"] == "error"
    status, body = await _classic(http, stack, "GET", "/balance", headers={"X-API-Key": "nope"})
    assert status == 401 and body["status"] == "error"
    status, body = await _immediate(http, stack, "nope")
    assert status == 401
