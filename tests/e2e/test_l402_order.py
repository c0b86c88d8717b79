"""One real L402 order end to end: happy path, no number after payment, no SMS in time, cancel."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "refunded", "refund_failed", "failed", "expired"}


async def _refund_invoice(payer: LndClient) -> tuple[str, bytes]:
    inv = await payer.add_invoice(value_msat=0, memo="refund me", expiry=3600)
    return inv.payment_request, inv.r_hash


async def _create(
    http: aiohttp.ClientSession, stack: dict[str, Any], refund: str, **extra: Any
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    body = {"type": "receive-sms", "country": "US", "service": "telegram", "refundInvoice": refund}
    body.update(extra)
    async with http.post(f"{stack['gateway_url']}/v2/l402/order", json=body) as resp:
        return resp, await resp.json()


async def _pay(payer: LndClient, invoice: str) -> str:
    payment = await payer.pay(invoice, fee_limit_sat=10, timeout_seconds=30)
    assert payment.status == "SUCCEEDED", payment.failure_reason
    assert payment.preimage is not None
    return payment.preimage.hex()


async def _poll(
    http: aiohttp.ClientSession,
    stack: dict[str, Any],
    order_id: str,
    auth: str,
    until: set[str],
    within: float = 40.0,
) -> tuple[dict[str, Any], list[str]]:
    """Poll the order until its status is in `until`; returns it and the statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + within
    while True:
        async with http.get(
            f"{stack['gateway_url']}/v2/l402/order/{order_id}", headers={"Authorization": auth}
        ) as resp:
            assert resp.status == 200, await resp.text()
            order = await resp.json()
        if not seen or seen[-1] != order["status"]:
            seen.append(order["status"])
        if order["status"] in until:
            return order, seen
        assert time.monotonic() < deadline, f"order stuck; statuses seen {seen}"
        await asyncio.sleep(0.2)


async def _sim(http: aiohttp.ClientSession, stack: dict[str, Any], path: str, body: Any) -> Any:
    async with http.post(f"{stack['provider_sim_url']}{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _provider_log_lines(stack: dict[str, Any]) -> list[str]:
    """Every line the provider worker(s) logged."""
    logs = Path(stack["logs_dir"]).glob("provider*.log")
    return [line for path in logs for line in path.read_text().splitlines()]


async def _activations(http: aiohttp.ClientSession, stack: dict[str, Any]) -> list[dict[str, Any]]:
    async with http.get(f"{stack['provider_sim_url']}/sim/activations") as resp:
        data = await resp.json()
        listed: list[dict[str, Any]] = data["activations"] if isinstance(data, dict) else data
        return listed


async def test_happy_path_delivers_the_code(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    refund, _ = await _refund_invoice(payer)
    resp, challenge = await _create(http, stack, refund)
    assert resp.status == 402
    assert challenge["error"]["code"] == "PAYMENT_REQUIRED"
    www = resp.headers.getall("WWW-Authenticate")
    assert www[0].startswith('LSAT macaroon="') and www[1].startswith('L402 macaroon="')
    for key in ("invoice", "macaroon", "priceSats", "orderId", "expiresAt"):
        assert challenge[key]
    decoded = await payer.decode_payreq(challenge["invoice"])
    assert decoded.num_msat == challenge["priceSats"] * 1000

    balance_before = await payer.channel_balance_sat()
    preimage = await _pay(payer, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    order, seen = await _poll(http, stack, challenge["orderId"], auth, TERMINAL)

    assert order["status"] == "completed", seen
    assert order["phoneNumber"] and order["phoneNumber"].startswith("+1")
    activation = next(
        a for a in await _activations(http, stack) if a["phoneNumber"] == order["phoneNumber"][1:]
    )
    assert order["code"] == activation["codes"][-1]
    assert order["refund"] is None
    # The statuses seen follow the order's life (payments may still be catching up at first).
    life = [
        "pending_payment",
        "paid",
        "allocating_number",
        "waiting_for_sms",
        "code_received",
        "completed",
    ]
    assert [life.index(s) for s in seen] == sorted(life.index(s) for s in seen), seen
    assert await payer.channel_balance_sat() == balance_before - challenge["priceSats"]

    # A generic L402 client re-sends the original POST with the credential: same order, 200.
    body = {"type": "receive-sms", "country": "US", "service": "tg", "refundInvoice": refund}
    async with http.post(
        f"{stack['gateway_url']}/v2/l402/order", json=body, headers={"Authorization": auth}
    ) as again:
        assert again.status == 200
        assert (await again.json())["orderId"] == challenge["orderId"]


async def test_no_number_after_payment_refunds_exactly_once(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    refund, refund_hash = await _refund_invoice(payer)
    resp, challenge = await _create(http, stack, refund, country="DE")
    assert resp.status == 402
    # The quote saw stock; it runs out before the customer pays.
    await _sim(http, stack, "/sim/stock", {"country": 43, "service": "tg", "count": 0})
    balance_before = await payer.channel_balance_sat()
    preimage = await _pay(payer, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    order, seen = await _poll(http, stack, challenge["orderId"], auth, TERMINAL)
    await _sim(http, stack, "/sim/stock", {"country": 43, "service": "tg", "count": 50})

    assert order["status"] == "refunded", seen
    assert "waiting_for_sms" not in seen
    assert order["refund"]["status"] == "paid"
    assert order["refund"]["amountSats"] == challenge["priceSats"]
    refund_inv = await payer.lookup_invoice(refund_hash)
    assert refund_inv.state == "SETTLED"
    assert refund_inv.amt_paid_msat == challenge["priceSats"] * 1000
    assert await payer.channel_balance_sat() == balance_before


async def test_no_sms_in_time_cancels_and_refunds(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        refund, refund_hash = await _refund_invoice(payer)
        resp, challenge = await _create(http, stack, refund, country="GB")
        assert resp.status == 402
        balance_before = await payer.channel_balance_sat()
        preimage = await _pay(payer, challenge["invoice"])
        auth = f"L402 {challenge['macaroon']}:{preimage}"
        order, seen = await _poll(http, stack, challenge["orderId"], auth, TERMINAL)
    finally:
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})

    assert order["status"] == "refunded", seen
    assert "waiting_for_sms" in seen
    assert order["code"] is None
    activation = next(
        a for a in await _activations(http, stack) if a["phoneNumber"] == order["phoneNumber"][1:]
    )
    assert activation["status"] == "CANCEL"
    refund_inv = await payer.lookup_invoice(refund_hash)
    assert refund_inv.state == "SETTLED"
    assert refund_inv.amt_paid_msat == challenge["priceSats"] * 1000
    assert await payer.channel_balance_sat() == balance_before


async def test_customer_cancel_after_the_window_refunds(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        refund, refund_hash = await _refund_invoice(payer)
        resp, challenge = await _create(http, stack, refund, country="DE")
        assert resp.status == 402
        balance_before = await payer.channel_balance_sat()
        preimage = await _pay(payer, challenge["invoice"])
        auth = f"L402 {challenge['macaroon']}:{preimage}"
        order, _ = await _poll(http, stack, challenge["orderId"], auth, {"waiting_for_sms"})
        cancel_url = f"{stack['gateway_url']}/v2/l402/order/{challenge['orderId']}/cancel"

        async with http.post(cancel_url, headers={"Authorization": auth}) as early:
            assert early.status == 409
            assert (await early.json())["error"]["code"] == "CANCEL_TOO_SOON"

        # cancelableAt is paidAt + SMS4SATS_CANCEL_MIN_AGE_SECONDS (3 s in this stack).
        while True:
            async with http.post(cancel_url, headers={"Authorization": auth}) as resp:
                if resp.status == 202:
                    assert (await resp.json())["cancel"] == "requested"
                    break
                assert resp.status == 409
            await asyncio.sleep(0.3)
        order, seen = await _poll(http, stack, challenge["orderId"], auth, TERMINAL)
        # The customer's cancel did it, not the 8 s SMS deadline.
        assert any(
            challenge["orderId"] in line and "cancelled by the customer" in line
            for line in _provider_log_lines(stack)
        )
    finally:
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})

    assert order["status"] == "refunded", seen
    activation = next(
        a for a in await _activations(http, stack) if a["phoneNumber"] == order["phoneNumber"][1:]
    )
    assert activation["status"] == "CANCEL"
    assert (await payer.lookup_invoice(refund_hash)).amt_paid_msat == challenge["priceSats"] * 1000
    assert await payer.channel_balance_sat() == balance_before


async def test_cancel_after_the_code_arrived_is_refused(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    refund, _ = await _refund_invoice(payer)
    _, challenge = await _create(http, stack, refund)
    preimage = await _pay(payer, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    order, _ = await _poll(http, stack, challenge["orderId"], auth, TERMINAL)
    assert order["status"] == "completed"
    await asyncio.sleep(3)  # past the cancel window
    url = f"{stack['gateway_url']}/v2/l402/order/{challenge['orderId']}/cancel"
    async with http.post(url, headers={"Authorization": auth}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "CANCEL_SMS_RECEIVED"


async def test_unknown_service_and_revoked_tokens(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient
) -> None:
    refund, _ = await _refund_invoice(payer)
    resp, err = await _create(http, stack, refund, service="zz")
    assert resp.status == 400 and err["error"]["code"] == "VALIDATION_ERROR"
    assert "service" in err["error"]["message"]

    resp, challenge = await _create(http, stack, refund)
    assert resp.status == 402
    preimage = await _pay(payer, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    await _poll(http, stack, challenge["orderId"], auth, TERMINAL)
    conn = await asyncpg.connect(stack["database_url"])
    try:
        await conn.execute("DELETE FROM l402_tokens WHERE order_id = $1", challenge["orderId"])
    finally:
        await conn.close()
    url = f"{stack['gateway_url']}/v2/l402/order/{challenge['orderId']}"
    async with http.get(url, headers={"Authorization": auth}) as revoked:
        assert revoked.status == 403
        assert (await revoked.json())["error"]["code"] == "INVALID_MACAROON"
    # A client re-sending its cached, now revoked token gets a fresh challenge, as from aperture.
    refund2, _ = await _refund_invoice(payer)
    body = {"type": "receive-sms", "country": "US", "service": "tg", "refundInvoice": refund2}
    async with http.post(
        f"{stack['gateway_url']}/v2/l402/order", json=body, headers={"Authorization": auth}
    ) as again:
        assert again.status == 402
        assert (await again.json())["orderId"] != challenge["orderId"]
