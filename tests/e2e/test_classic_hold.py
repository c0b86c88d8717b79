"""The classic API on hold invoices: settled only when the code is delivered, else cancelled.

The payer's payment stays IN_FLIGHT while we hold it; it ends SUCCEEDED when we settle and
FAILED (funds back in the wallet, no refund payment) when we cancel.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.lightning import LndClient, Payment
from tests.e2e.conftest import node_client
from tests.e2e.test_l402_order import _sim

pytestmark = pytest.mark.e2e

NO_NUMBER = "No available number"


async def _classic(
    http: aiohttp.ClientSession, stack: dict[str, Any], method: str, path: str, **kw: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, f"{stack['gateway_url']}{path}", **kw) as resp:
        return resp.status, await resp.json()


async def _status_until(
    http: aiohttp.ClientSession, stack: dict[str, Any], order_id: str, done: Any, within: float = 40
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = await _classic(
            http, stack, "GET", "/orderstatus", params={"orderId": order_id}
        )
        assert status == 200, body
        if done(body):
            return body
        assert time.monotonic() < deadline, f"stuck: {body}"
        await asyncio.sleep(0.3)


async def _order(
    http: aiohttp.ClientSession, stack: dict[str, Any], country: str = "US"
) -> dict[str, Any]:
    status, body = await _classic(
        http, stack, "POST", "/createorder", json={"country": country, "service": "telegram"}
    )
    assert status == 200 and body["status"] == "OK", body
    assert len(body["orderId"]) == 64 and body["payreq"].startswith("lnbcrt")
    return body


def _pay_in_background(payer: LndClient, payreq: str) -> asyncio.Task[Payment]:
    return asyncio.create_task(payer.pay(payreq, fee_limit_sat=10, timeout_seconds=60))


async def test_code_delivered_settles_the_held_payment(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    order = await _order(http, stack)
    price = (await payer.decode_payreq(order["payreq"])).num_msat // 1000
    before = await payer.channel_balance_sat()
    payment = _pay_in_background(payer, order["payreq"])

    body = await _status_until(http, stack, order["orderId"], lambda b: "code" in b)
    assert body["paid"] is True
    assert isinstance(body["number"], int) and not str(body["number"]).startswith("+")
    assert body["country"] == "United States"
    final = await asyncio.wait_for(payment, 30)
    assert final.status == "SUCCEEDED"
    assert await payer.channel_balance_sat() == before - price
    done = await _status_until(
        http, stack, order["orderId"], lambda b: b["orderStatus"] == "completed"
    )
    assert done["code"] == body["code"]


async def test_no_number_cancels_the_hold_and_the_funds_return(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    order = await _order(http, stack, country="DE")
    await _sim(http, stack, "/sim/stock", {"country": 43, "service": "tg", "count": 0})
    try:
        before = await payer.channel_balance_sat()
        final = await asyncio.wait_for(_pay_in_background(payer, order["payreq"]), 30)
    finally:
        await _sim(http, stack, "/sim/stock", {"country": 43, "service": "tg", "count": 50})
    assert final.status == "FAILED"
    body = await _status_until(
        http, stack, order["orderId"], lambda b: b["orderStatus"] == "refunded"
    )
    assert body["paid"] is True and body["error"].startswith(NO_NUMBER)
    assert "number" not in body
    assert await payer.channel_balance_sat() == before


async def test_no_sms_in_time_and_customer_cancel_both_release_the_hold(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        before = await payer.channel_balance_sat()
        timed_out, cancelled = await _order(http, stack), await _order(http, stack, "GB")
        pay_a = _pay_in_background(payer, timed_out["payreq"])
        pay_b = _pay_in_background(payer, cancelled["payreq"])
        await _status_until(http, stack, cancelled["orderId"], lambda b: "number" in b)
        status, early = await _classic(
            http, stack, "GET", "/cancelorder", params={"orderId": cancelled["orderId"]}
        )
        assert status == 409 and early["status"] == "error"
        await asyncio.sleep(3.2)  # the classic cancel window in this stack
        status, ok = await _classic(
            http, stack, "GET", "/cancelorder", params={"orderId": cancelled["orderId"]}
        )
        assert (status, ok) == (200, {"status": "OK"})
        finals = await asyncio.wait_for(asyncio.gather(pay_a, pay_b), 40)
    finally:
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    assert [p.status for p in finals] == ["FAILED", "FAILED"]
    for order in (timed_out, cancelled):
        body = await _status_until(
            http, stack, order["orderId"], lambda b: b["orderStatus"] == "refunded"
        )
        assert "code" not in body
    assert await payer.channel_balance_sat() == before


async def test_classic_errors(stack: dict[str, Any], http: aiohttp.ClientSession) -> None:
    for params in ({"orderId": "nope"}, {"orderId": "0" * 64}, {}):
        status, body = await _classic(http, stack, "GET", "/orderstatus", params=params)
        assert status == 404 and body == {"status": "error", "reason": "order not found"}
    status, body = await _classic(
        http, stack, "POST", "/createorder", json={"country": "Atlantis", "service": "tg"}
    )
    assert status == 400 and body["status"] == "error"
    status, body = await _classic(
        http,
        stack,
        "POST",
        "/createorder",
        json={"country": 187, "service": "tg", "immediate": True},
    )
    assert status == 400 and "X-API-Key" in body["reason"]  # immediate needs an account


async def test_the_hold_is_released_by_its_deadline_even_if_the_provider_refuses_to_cancel(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    await _sim(http, stack, "/sim/config", {"earlyCancelSeconds": 3600})
    try:
        before = await payer.channel_balance_sat()
        order = await _order(http, stack)
        # SMS deadline 8 s, then 2 s of grace: the invoice is cancelled around 10 s.
        final = await asyncio.wait_for(_pay_in_background(payer, order["payreq"]), 40)
    finally:
        await _sim(http, stack, "/sim/config", {"earlyCancelSeconds": 2})
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    assert final.status == "FAILED"
    body = await _status_until(
        http, stack, order["orderId"], lambda b: b["orderStatus"] == "refunded"
    )
    assert body["paid"] is True and "code" not in body
    assert await payer.channel_balance_sat() == before


async def test_a_hold_the_node_gave_back_ends_refunded(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    merchant = node_client(stack["merchant_lnd"])
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        order = await _order(http, stack)
        payment = _pay_in_background(payer, order["payreq"])
        await _status_until(http, stack, order["orderId"], lambda b: "number" in b)
        # Drift: the node cancels the held HTLC on its own (as LND does near its expiry).
        invoice_hash = (await payer.decode_payreq(order["payreq"])).payment_hash
        await merchant.cancel_invoice(invoice_hash)
        final = await asyncio.wait_for(payment, 30)
        body = await _status_until(
            http, stack, order["orderId"], lambda b: b["orderStatus"] == "refunded"
        )
    finally:
        await merchant.close()
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    assert final.status == "FAILED"
    assert "code" not in body
