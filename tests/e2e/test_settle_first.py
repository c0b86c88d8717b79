"""With the provider failing every setStatus: a classic order's hold invoice is settled as soon
as its SMS arrives and its code is never shown before that; classic, prepaid and L402 orders
all complete by their activation's end plus PROVIDER_GIVEUP_SECONDS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient, Payment
from tests.e2e.conftest import E2E_ENV, node_client
from tests.e2e.test_classic_hold import _classic, _order, _pay_in_background, _status_until
from tests.e2e.test_l402_order import _activations, _create, _pay, _poll, _refund_invoice, _sim
from tests.e2e.test_prepaid import _immediate, _new_account, _top_up

pytestmark = pytest.mark.e2e

SET_STATUS_DOWN = {"mode": "error", "status": 503, "actions": ["setStatus"], "times": None}
GIVEUP = timedelta(seconds=float(E2E_ENV["SMS4SATS_PROVIDER_GIVEUP_SECONDS"]))


@pytest.fixture
async def set_status_down(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> AsyncIterator[None]:
    """Every setStatus fails at the provider for the test; afterwards the stack is as before."""
    await _sim(http, stack, "/sim/faults", SET_STATUS_DOWN)
    try:
        yield
    finally:
        async with http.delete(f"{stack['provider_sim_url']}/sim/faults") as resp:
            assert resp.status == 200, await resp.text()
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})


@pytest.fixture
async def merchant(stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """Our own node, where the hold invoices live."""
    client = node_client(stack["merchant_lnd"])
    yield client
    await client.close()


async def _activation_of(http: aiohttp.ClientSession, stack: dict[str, Any], number: Any) -> str:
    """The simulator's activation id for the phone number an order shows."""
    for activation in await _activations(http, stack):
        if str(activation["phoneNumber"]).lstrip("+") == str(number):
            return str(activation["activationId"])
    raise AssertionError(f"no activation for {number}")


async def _waiting_classic(
    http: aiohttp.ClientSession, stack: dict[str, Any], payer: LndClient
) -> tuple[dict[str, Any], bytes, asyncio.Task[Payment], str]:
    """A paid classic order whose number waits for an SMS that only the test sends.

    Returns the order, its invoice's payment hash, the payer's payment and the activation.
    """
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    order = await _order(http, stack)
    payment_hash = (await payer.decode_payreq(order["payreq"])).payment_hash
    payment = _pay_in_background(payer, order["payreq"])
    waiting = await _status_until(http, stack, order["orderId"], lambda b: "number" in b)
    activation_id = await _activation_of(http, stack, waiting["number"])
    return order, payment_hash, payment, activation_id


async def test_a_classic_code_is_shown_only_once_its_hold_invoice_is_settled(
    stack: dict[str, Any],
    http: aiohttp.ClientSession,
    payer: LndClient,
    merchant: LndClient,
    set_status_down: None,
) -> None:
    order, payment_hash, payment, activation_id = await _waiting_classic(http, stack, payer)

    # Read /orderstatus in a tight loop. A code is fine only in an answer to a request sent
    # once the invoice was SETTLED; an answer is checked against a lookup made after it
    # arrived, so a correct server always passes and one showing a code early is caught
    # (the settle lands well after such an answer).
    answers: list[tuple[bool, bool]] = []  # (settled when sent, shows the code)
    early: list[dict[str, Any]] = []
    reading = True

    async def read() -> None:
        while reading:
            settled_before = (await merchant.lookup_invoice(payment_hash)).state == "SETTLED"
            status, body = await _classic(
                http, stack, "GET", "/orderstatus", params={"orderId": order["orderId"]}
            )
            assert status == 200, body
            if "code" in body and not settled_before:
                if (await merchant.lookup_invoice(payment_hash)).state != "SETTLED":
                    early.append(body)
            answers.append((settled_before, "code" in body))

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.5)  # a few reads while the number waits for its SMS
        sms_at = time.monotonic()
        await _sim(http, stack, f"/sim/activations/{activation_id}/sms", {"code": "246810"})
        while (await merchant.lookup_invoice(payment_hash)).state != "SETTLED":
            assert time.monotonic() - sms_at < 5.0, "not settled within 5 s of the SMS"
            await asyncio.sleep(0.05)
        settled_after = time.monotonic() - sms_at
        deadline = time.monotonic() + 10
        while not any(shown for _, shown in answers[-1:]):
            assert time.monotonic() < deadline, "the code never showed after the settle"
            await asyncio.sleep(0.05)
    finally:
        reading = False
        await reader
    print(f"settled {settled_after:.2f} s after the SMS; {len(answers)} reads")

    assert early == [], f"code shown before the invoice was settled: {early}"
    assert any(not settled for settled, _ in answers)  # the loop did read before the settle
    final = await _status_until(
        http, stack, order["orderId"], lambda b: b["orderStatus"] == "completed"
    )
    assert final["code"] == 246810
    assert (await asyncio.wait_for(payment, 30)).status == "SUCCEEDED"


async def _code_recorded(stack: dict[str, Any], order_id: str) -> bool:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        sql = "SELECT code IS NOT NULL FROM orders WHERE id = $1"
        recorded = await conn.fetchval(sql, order_id)
        return bool(recorded)
    finally:
        await conn.close()


async def test_a_recorded_code_stays_hidden_while_nobody_settles_the_invoice(
    stack: dict[str, Any],
    http: aiohttp.ClientSession,
    payer: LndClient,
    merchant: LndClient,
    set_status_down: None,
) -> None:
    order, payment_hash, payment, activation_id = await _waiting_classic(http, stack, payer)
    pids = json.loads((Path(stack["state_dir"]) / "stack.json").read_text())["pids"]
    payments = [pid for name, pid in pids.items() if name.startswith("payments")]
    assert payments
    # The payments worker is frozen: the provider records the code, nobody can settle.
    for pid in payments:
        os.kill(pid, signal.SIGSTOP)
    try:
        await _sim(http, stack, f"/sim/activations/{activation_id}/sms", {"code": "97531"})
        deadline = time.monotonic() + 10
        while not await _code_recorded(stack, order["orderId"]):
            assert time.monotonic() < deadline, "the provider never recorded the code"
            await asyncio.sleep(0.05)
        for _ in range(10):
            status, body = await _classic(
                http, stack, "GET", "/orderstatus", params={"orderId": order["orderId"]}
            )
            assert status == 200 and "code" not in body, body
            await asyncio.sleep(0.1)
        assert (await merchant.lookup_invoice(payment_hash)).state == "ACCEPTED"
    finally:
        for pid in payments:
            os.kill(pid, signal.SIGCONT)
    done = await _status_until(http, stack, order["orderId"], lambda b: "code" in b)
    assert done["code"] == 97531 and done["orderStatus"] == "completed"
    assert (await merchant.lookup_invoice(payment_hash)).state == "SETTLED"
    assert (await asyncio.wait_for(payment, 30)).status == "SUCCEEDED"


async def _completed_in_time(stack: dict[str, Any], order_id: str) -> None:
    """The order completed no later than its deadline (the activation's end) plus the giveup."""
    conn = await asyncpg.connect(stack["database_url"])
    try:
        row = await conn.fetchrow(
            "SELECT o.status, o.deadline_at, t.at AS completed_at FROM orders o"
            " LEFT JOIN order_transitions t ON t.order_id = o.id AND t.to_status = 'completed'"
            " WHERE o.id = $1",
            order_id,
        )
    finally:
        await conn.close()
    assert row is not None and row["status"] == "completed", row
    assert row["completed_at"] <= row["deadline_at"] + GIVEUP, dict(row)


async def test_classic_prepaid_and_l402_orders_complete_while_setstatus_fails(
    stack: dict[str, Any],
    http: aiohttp.ClientSession,
    payer: LndClient,
    set_status_down: None,
) -> None:
    key = _new_account(stack)
    await _top_up(http, stack, payer, key, 5000)
    for _ in range(100):
        status, body = await _classic(http, stack, "GET", "/balance", headers={"X-API-Key": key})
        if body.get("balance") == 5000:
            break
        await asyncio.sleep(0.1)

    classic = await _order(http, stack)
    classic_payment = _pay_in_background(payer, classic["payreq"])
    status, prepaid = await _immediate(http, stack, key)
    assert status == 200 and prepaid["payreq"] == "paid", prepaid
    refund, refund_hash = await _refund_invoice(payer)
    resp, challenge = await _create(http, stack, refund)
    assert resp.status == 402
    auth = f"L402 {challenge['macaroon']}:{await _pay(payer, challenge['invoice'])}"

    # ORDER_TIMEOUT 8 s + PROVIDER_GIVEUP 2 s in this stack; polled for a little longer.
    for order_id in (classic["orderId"], prepaid["orderId"]):
        done = await _status_until(
            http, stack, order_id, lambda b: b["orderStatus"] == "completed", within=20
        )
        assert "code" in done
    l402, seen = await _poll(http, stack, challenge["orderId"], auth, {"completed"}, within=20)
    assert l402["code"], seen
    for order_id in (classic["orderId"], prepaid["orderId"], challenge["orderId"]):
        await _completed_in_time(stack, order_id)
    assert (await asyncio.wait_for(classic_payment, 30)).status == "SUCCEEDED"
    assert (await payer.lookup_invoice(refund_hash)).state == "OPEN"  # nothing refunded
