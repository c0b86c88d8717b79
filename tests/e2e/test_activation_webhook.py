"""Activation webhooks through the whole stack: pushes racing the poller store each SMS once.

The stack runs with SMS4SATS_ACTIVATION_WEBHOOKS on (the dev stack points the simulator's
account webhook at /v2/l402/webhooks/sms) and a quick safety poll, so the provider worker's
poll and the pushes the test sends (the provider's retries, replayed) meet on every order.
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
from tests.e2e.test_l402_order import TERMINAL, _pay, _poll, _refund_invoice

pytestmark = pytest.mark.e2e

SECRET = E2E_ENV["SMS4SATS_WEBHOOK_SECRET"]


@pytest.fixture(scope="module")
def hook_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with activation webhooks on and SMS sent only when a test says so."""
    env = {
        **E2E_ENV,
        "SMS4SATS_ACTIVATION_WEBHOOKS": "true",
        "SMS4SATS_SMS_SAFETY_POLL_SECONDS": "0.5",
        "SMSSIM_AUTO_SMS_DELAY": "off",
    }
    with running_stack(tmp_path_factory.mktemp("hook-stack"), env) as info:
        yield info


@pytest.fixture
async def wallet(hook_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node."""
    client = node_client(hook_stack["payer_lnd"])
    yield client
    await client.close()


async def _buy(http: aiohttp.ClientSession, stack: dict[str, Any], wallet: LndClient) -> Any:
    """A paid receive-sms order with its number: (order id, credential, activation id)."""
    refund, _ = await _refund_invoice(wallet)
    body = {"type": "receive-sms", "country": "US", "service": "tg", "refundInvoice": refund}
    async with http.post(f"{stack['gateway_url']}/v2/l402/order", json=body) as resp:
        assert resp.status == 402, await resp.text()
        challenge = await resp.json()
    preimage = await _pay(wallet, challenge["invoice"])
    auth = f"L402 {challenge['macaroon']}:{preimage}"
    order, _ = await _poll(http, stack, challenge["orderId"], auth, {"waiting_for_sms"} | TERMINAL)
    assert order["status"] == "waiting_for_sms", order
    async with http.get(f"{stack['provider_sim_url']}/sim/activations") as resp:
        activations = await resp.json()
    [activation] = [a for a in activations if "+" + a["phoneNumber"] == order["phoneNumber"]]
    return challenge["orderId"], auth, activation["activationId"]


async def _push(
    http: aiohttp.ClientSession, stack: dict[str, Any], body: Any, token: str = SECRET
) -> tuple[int, Any]:
    """POST one activation push to the gateway's account webhook."""
    url = f"{stack['gateway_url']}/v2/l402/webhooks/sms"
    async with http.post(url, params={"token": token}, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def _logs_naming(logs: Path, needles: list[str]) -> list[str]:
    """The log files of our services that contain any of the needles."""
    return [
        log_file.name
        for name in ("gateway", "provider", "payments", "scheduler")
        for log_file in logs.glob(f"{name}*.log")
        if any(needle in log_file.read_text() for needle in needles)
    ]


async def test_pushes_and_the_poller_racing_store_each_sms_once(
    http: aiohttp.ClientSession, hook_stack: dict[str, Any], wallet: LndClient
) -> None:
    bought = [await _buy(http, hook_stack, wallet) for _ in range(3)]
    sim = hook_stack["provider_sim_url"]

    async def sms_and_pushes(n: int, activation_id: str) -> list[tuple[int, Any]]:
        code = f"73{n}911"
        push = {
            "activationId": int(activation_id),
            "service": "tg",
            "text": f"Telegram code: {code}",
            "code": code,
            "country": 187,
            "receivedAt": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        }
        async with http.post(
            f"{sim}/sim/activations/{activation_id}/sms", json={"text": push["text"], "code": code}
        ) as resp:
            assert resp.status == 200
        # The provider's retries of one push (at-least-once), all at once with the poller.
        return await asyncio.gather(*(_push(http, hook_stack, push) for _ in range(5)))

    answers = await asyncio.gather(
        *(sms_and_pushes(n, act) for n, (_, _, act) in enumerate(bought))
    )

    assert all(a == (200, {"status": "ok", "matched": True}) for got in answers for a in got)
    for n, (order_id, auth, _) in enumerate(bought):
        order, seen = await _poll(http, hook_stack, order_id, auth, {"completed"} | TERMINAL)
        assert order["status"] == "completed", seen
        assert order["code"] == f"73{n}911"
        assert [m["code"] for m in order["messages"]] == [f"73{n}911"]
        assert seen.count("code_received") <= 1
    await asyncio.sleep(1.5)  # a few more safety polls see the same SMS again: still one
    for n, (order_id, auth, _) in enumerate(bought):
        order, _ = await _poll(http, hook_stack, order_id, auth, {"completed"})
        assert [m["code"] for m in order["messages"]] == [f"73{n}911"]
    # Codes never reach a log line of ours.
    assert _logs_naming(Path(hook_stack["logs_dir"]), [f"73{n}911" for n in range(3)]) == []


async def test_the_webhook_refuses_strangers_and_garbage_without_a_5xx(
    http: aiohttp.ClientSession, hook_stack: dict[str, Any], wallet: LndClient
) -> None:
    order_id, auth, activation_id = await _buy(http, hook_stack, wallet)
    good = {"activationId": activation_id, "code": "112233", "text": "code 112233"}

    assert (await _push(http, hook_stack, good, token="wrong"))[0] == 401
    for body in (
        [good],
        {**good, "activationId": True},
        {**good, "code": ["112233"]},
        {**good, "code": "11\x002233"},
        {**good, "text": {"x": 1}},
    ):
        status, answer = await _push(http, hook_stack, body)
        assert status == 400 and answer["error"]["code"] == "VALIDATION_ERROR", body
    unknown = {**good, "activationId": "999999999"}
    assert await _push(http, hook_stack, unknown) == (200, {"status": "ok", "matched": False})

    order, _ = await _poll(http, hook_stack, order_id, auth, {"waiting_for_sms"})
    assert order["messages"] == [] and order.get("code") is None
