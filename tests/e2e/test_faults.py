"""Workers killed (SIGKILL) at the worst moments, restarted like an orchestrator would.

A separate stack runs with crash points armed: each point kills its process once. The
launcher restarts dead services. Every order must still end in the right terminal state
with the money matching, and the invariant checker (run when the stack stops) must find
nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.lightning import LndClient
from tests.e2e.conftest import E2E_ENV, node_client, running_stack
from tests.e2e.test_l402_order import TERMINAL, _create, _pay, _poll, _refund_invoice, _sim

pytestmark = pytest.mark.e2e

POINTS = (
    "payments.settle_seen",  # the settle arrived; the paid status was not saved yet
    "provider.number_bought",  # the provider sold us a number; we did not record it
    "provider.activation_finished",  # finished at the provider; not recorded as done
    "payments.refund_sent",  # the refund payment succeeded; nothing recorded
    "payments.hold_settled",  # the held payment was settled; completed not saved
)


@pytest.fixture(scope="module")
def crash_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where crash points leave their once-only markers."""
    return tmp_path_factory.mktemp("crashes")


@pytest.fixture(scope="module")
def fault_stack(
    tmp_path_factory: pytest.TempPathFactory, crash_dir: Path
) -> Iterator[dict[str, Any]]:
    """A stack whose workers die once at each crash point."""
    env = {
        **E2E_ENV,
        "SMS4SATS_CRASH_AT": ",".join(POINTS),
        "SMS4SATS_CRASH_DIR": str(crash_dir),
        # Restarts take seconds: a roomier deadline, quick redelivery, short refund leases.
        "SMS4SATS_ORDER_TIMEOUT_SECONDS": "40",
        "SMS4SATS_ACK_WAIT_SECONDS": "3",
        "SMS4SATS_REFUND_TIMEOUT_SECONDS": "5",
    }
    with running_stack(tmp_path_factory.mktemp("fault-stack"), env) as info:
        yield info


@pytest.fixture
async def wallet(fault_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node in the fault stack."""
    client = node_client(fault_stack["payer_lnd"])
    yield client
    await client.close()


async def test_crashes_on_the_happy_path_still_deliver_the_code_and_keep_the_payment(
    fault_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient, crash_dir: Path
) -> None:
    refund, refund_hash = await _refund_invoice(wallet)
    resp, challenge = await _create(http, fault_stack, refund)
    assert resp.status == 402
    before = await wallet.channel_balance_sat()
    preimage = await _pay(wallet, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    order, seen = await _poll(http, fault_stack, challenge["orderId"], auth, TERMINAL, within=90)

    assert order["status"] == "completed", seen
    assert order["code"]
    assert (crash_dir / "crashed-payments.settle_seen").exists()
    assert (crash_dir / "crashed-provider.number_bought").exists()
    # The activation is finished at the provider after the order completed (housekeeping).
    deadline = time.monotonic() + 30
    while not (crash_dir / "crashed-provider.activation_finished").exists():
        assert time.monotonic() < deadline, "the provider never finished the activation"
        await asyncio.sleep(0.2)
    # Paid once, never refunded.
    assert await wallet.channel_balance_sat() == before - challenge["priceSats"]
    assert (await wallet.lookup_invoice(refund_hash)).state == "OPEN"


async def test_a_crash_right_after_the_refund_went_out_does_not_pay_it_twice(
    fault_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient, crash_dir: Path
) -> None:
    refund, refund_hash = await _refund_invoice(wallet)
    resp, challenge = await _create(http, fault_stack, refund, country="DE")
    assert resp.status == 402
    await _sim(http, fault_stack, "/sim/stock", {"country": 43, "service": "tg", "count": 0})
    try:
        before = await wallet.channel_balance_sat()
        preimage = await _pay(wallet, challenge["invoice"])
        auth = f"L402 {challenge['macaroon']}:{preimage}"
        order, seen = await _poll(
            http, fault_stack, challenge["orderId"], auth, TERMINAL, within=90
        )
    finally:
        await _sim(http, fault_stack, "/sim/stock", {"country": 43, "service": "tg", "count": 50})

    assert order["status"] == "refunded", seen
    assert (crash_dir / "crashed-payments.refund_sent").exists()
    refund_invoice = await wallet.lookup_invoice(refund_hash)
    assert refund_invoice.state == "SETTLED"
    assert refund_invoice.amt_paid_msat == challenge["priceSats"] * 1000
    assert await wallet.channel_balance_sat() == before


async def test_a_crash_between_settling_a_hold_invoice_and_saving_it_completes_once(
    fault_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient, crash_dir: Path
) -> None:
    url = f"{fault_stack['gateway_url']}"
    async with http.post(f"{url}/createorder", json={"country": "US", "service": "tg"}) as resp:
        order = await resp.json()
    price = (await wallet.decode_payreq(order["payreq"])).num_msat // 1000
    before = await wallet.channel_balance_sat()
    payment = await asyncio.wait_for(
        wallet.pay(order["payreq"], fee_limit_sat=10, timeout_seconds=60), 90
    )
    assert payment.status == "SUCCEEDED"  # settled: only ever after the code was delivered
    for _ in range(300):
        async with http.get(f"{url}/orderstatus", params={"orderId": order["orderId"]}) as resp:
            status = await resp.json()
        if status["orderStatus"] == "completed":
            break
        await asyncio.sleep(0.3)
    assert status["orderStatus"] == "completed" and "code" in status
    assert (crash_dir / "crashed-payments.hold_settled").exists()
    assert await wallet.channel_balance_sat() == before - price
