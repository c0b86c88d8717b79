"""Every order type of the seed through HTTP: rentals, reactivations, another SMS, and how
orders fare when the provider fails or runs out of money."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.lightning import LndClient
from tests.e2e.conftest import E2E_ENV, node_client, running_stack
from tests.e2e.test_l402_order import TERMINAL, _pay, _poll, _refund_invoice

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def typed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack whose code_received orders stay open long enough to ask for another SMS."""
    env = {
        **E2E_ENV,
        "SMS4SATS_ORDER_TIMEOUT_SECONDS": "40",
        "SMS4SATS_ANOTHER_SMS_WINDOW_SECONDS": "12",
        "SMS4SATS_ALLOCATION_DEADLINE_SECONDS": "3",
    }
    with running_stack(tmp_path_factory.mktemp("typed-stack"), env) as info:
        yield info


@pytest.fixture
async def wallet(typed_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node."""
    client = node_client(typed_stack["payer_lnd"])
    yield client
    await client.close()


class Api:
    """The stack's gateway and simulator, as a customer and a test operator reach them."""

    def __init__(self, http: aiohttp.ClientSession, stack: dict[str, Any], wallet: LndClient):
        self.http = http
        self.stack = stack
        self.wallet = wallet
        self.base = stack["gateway_url"]

    async def create(self, body: dict[str, Any], auth: str | None = None) -> tuple[int, Any]:
        """POST /v2/l402/order with a fresh refund invoice."""
        refund, _ = await _refund_invoice(self.wallet)
        headers = {"Authorization": auth} if auth else {}
        async with self.http.post(
            f"{self.base}/v2/l402/order", json={"refundInvoice": refund, **body}, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def buy(self, body: dict[str, Any], auth: str | None = None) -> tuple[str, str]:
        """Create and pay an order; returns its id and credential."""
        status, challenge = await self.create(body, auth)
        assert status == 402, challenge
        preimage = await _pay(self.wallet, challenge["invoice"])
        return challenge["orderId"], f"L402 {challenge['macaroon']}:{preimage}"

    async def poll(self, order_id: str, auth: str, until: set[str]) -> dict[str, Any]:
        order, seen = await _poll(self.http, self.stack, order_id, auth, until, within=60)
        assert order["status"] in until, seen
        return order

    async def post(self, path: str, auth: str) -> tuple[int, Any]:
        async with self.http.post(f"{self.base}{path}", headers={"Authorization": auth}) as resp:
            return resp.status, await resp.json()

    async def calls_made(self, action: str, count: int, within: float = 20.0) -> None:
        """Wait until the provider has answered `count` more calls of this action."""
        start = (await self.sim("GET", "/sim/stats"))["actions"].get(action, 0)
        deadline = time.monotonic() + within
        while (await self.sim("GET", "/sim/stats"))["actions"].get(action, 0) < start + count:
            assert time.monotonic() < deadline, f"no {action} calls"
            await asyncio.sleep(0.1)

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, f"{self.stack['provider_sim_url']}{path}", json=body
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


@pytest.fixture
async def api(
    http: aiohttp.ClientSession, typed_stack: dict[str, Any], wallet: LndClient
) -> AsyncIterator[Api]:
    """The API with the simulator answering SMS after a second and no faults."""
    client = Api(http, typed_stack, wallet)
    await client.sim("DELETE", "/sim/faults")
    await client.sim("POST", "/sim/auto-sms", {"delaySeconds": 1})
    yield client
    await client.sim("DELETE", "/sim/faults")


async def test_a_rental_shows_every_sms_once_from_webhook_and_polling(api: Api) -> None:
    status, refused = await api.create(
        {"type": "rent-number", "country": "US", "service": "tg", "durationMinutes": 300}
    )
    assert status == 400 and refused["error"]["code"] == "VALIDATION_ERROR"
    assert "durationMinutes" in refused["error"]["message"]
    assert "120" in refused["error"]["message"]  # the offered durations are listed

    order_id, auth = await api.buy(
        {"type": "rent-number", "country": "US", "service": "tg", "durationMinutes": 120}
    )
    order = await api.poll(order_id, auth, {"rent_active"} | TERMINAL)
    assert order["status"] == "rent_active"
    assert order["type"] == "rent-number" and order["phoneNumber"]
    ends = datetime.fromisoformat(order["rentEndsAt"].replace("Z", "+00:00"))
    assert 1.9 < (ends - datetime.now(UTC)).total_seconds() / 3600 <= 2.0
    rental = next(
        r
        for r in await api.sim("GET", "/sim/rentals")
        if r["phoneNumber"] == order["phoneNumber"][1:]
    )

    for text in ("Telegram code 51515", "Telegram code 62626"):
        await api.sim("POST", "/sim/rent-sms", {"rentId": rental["rentId"], "text": text})
    # The simulator also sends one SMS of its own to a new rental (auto mode).
    sent = (await api.sim("GET", f"/sim/rentals/{rental['rentId']}"))["messages"]
    assert len(sent) >= 2
    deadline = time.monotonic() + 20
    while len(order["messages"]) < len(sent):
        assert time.monotonic() < deadline, order
        await asyncio.sleep(0.3)
        order = await api.poll(order_id, auth, {"rent_active"})
    await api.calls_made("getRentStatus", 2)  # polling has seen the same SMS again
    order = await api.poll(order_id, auth, {"rent_active"})
    sent = (await api.sim("GET", f"/sim/rentals/{rental['rentId']}"))["messages"]
    assert sorted(m["text"] for m in order["messages"]) == sorted(m["text"] for m in sent)
    assert {"51515", "62626"} <= {m["code"] for m in order["messages"]}
    # The webhook reached the gateway and matched the rental.
    pushes = [d for d in await api.sim("GET", "/sim/webhooks") if d["rentId"] == rental["rentId"]]
    assert pushes and all(d["delivered"] for d in pushes), pushes

    # A rental is not refundable: no cancel.
    status, body = await api.post(f"/v2/l402/order/{order_id}/cancel", auth)
    assert status == 400 and body["error"]["code"] == "VALIDATION_ERROR"


async def test_a_rental_the_provider_ends_early_refunds_the_unused_time(api: Api) -> None:
    refund, refund_hash = await _refund_invoice(api.wallet)
    body = {"type": "rent-number", "country": "US", "service": "tg", "durationMinutes": 120}
    async with api.http.post(
        f"{api.base}/v2/l402/order", json={**body, "refundInvoice": refund}
    ) as resp:
        assert resp.status == 402
        challenge = await resp.json()
    preimage = await _pay(api.wallet, challenge["invoice"])
    order_id, auth = challenge["orderId"], f"L402 {challenge['macaroon']}:{preimage}"
    order = await api.poll(order_id, auth, {"rent_active"} | TERMINAL)
    assert order["status"] == "rent_active", order
    rental = next(
        r
        for r in await api.sim("GET", "/sim/rentals")
        if r["phoneNumber"] == order["phoneNumber"][1:]
    )

    # The provider ends the rental minutes into its two hours (the customer cannot).
    await api.sim("POST", f"/sim/rentals/{rental['rentId']}/end", {"status": "cancel"})
    order = await api.poll(order_id, auth, TERMINAL)

    assert order["status"] == "refunded", order
    price, paid_back = order["priceSats"], order["refund"]["amountSats"]
    # Almost all of it was unused: the share, rounded up, never above the price.
    assert price * (7200 - 120) / 7200 <= paid_back <= price
    assert order["refund"]["status"] == "paid"
    invoice = await api.wallet.lookup_invoice(refund_hash)
    assert invoice.state == "SETTLED" and invoice.amt_paid_msat == paid_back * 1000
    assert len(invoice.htlc_expiry_heights) == 1  # paid once


async def test_a_reactivation_reuses_the_number_of_an_earlier_order(api: Api) -> None:
    first_id, first_auth = await api.buy({"country": "US", "service": "tg"})
    first = await api.poll(first_id, first_auth, TERMINAL)
    assert first["status"] == "completed", first

    body = {"type": "receive-sms-reactivate", "orderId": first_id}
    status, refused = await api.create(body)  # no credential: nobody else's number
    assert status == 403 and refused["error"]["code"] == "INVALID_MACAROON"
    other_id, other_auth = await api.buy({"country": "US", "service": "tg"})
    status, refused = await api.create(body, auth=other_auth)  # another order's credential
    assert status == 200 and refused["orderId"] == other_id  # that is a plain re-POST

    order_id, auth = await api.buy(body, auth=first_auth)
    assert order_id != first_id
    order = await api.poll(order_id, auth, TERMINAL)
    assert order["status"] == "completed", order
    assert order["type"] == "receive-sms-reactivate"
    assert order["phoneNumber"] == first["phoneNumber"]
    assert order["code"] and order["messages"]
    await api.poll(other_id, other_auth, TERMINAL)


async def test_another_sms_on_the_same_number(api: Api) -> None:
    order_id, auth = await api.buy({"country": "US", "service": "tg"})
    status, early = await api.post(f"/v2/l402/order/{order_id}/another-sms", auth)
    assert status == 409 and early["error"]["code"] == "ANOTHER_SMS_NOT_ALLOWED"

    order = await api.poll(order_id, auth, {"code_received"} | TERMINAL)
    assert order["status"] == "code_received", order
    first_code = order["code"]
    status, accepted = await api.post(f"/v2/l402/order/{order_id}/another-sms", auth)
    assert status == 202 and accepted["anotherSms"] == "requested"

    deadline = time.monotonic() + 20
    while order["code"] == first_code:
        assert time.monotonic() < deadline and order["status"] == "code_received", order
        await asyncio.sleep(0.3)
        order = await api.poll(order_id, auth, {"code_received", "completed"})
    assert len(order["messages"]) == 2 and order["messages"][-1]["code"] == order["code"]
    final = await api.poll(order_id, auth, TERMINAL)  # the window closes
    assert final["status"] == "completed" and final["code"] == order["code"]


async def test_a_provider_that_keeps_failing_refunds_the_order(api: Api) -> None:
    await api.sim(
        "POST",
        "/sim/faults",
        {"mode": "error", "status": 503, "times": None, "actions": ["getNumberV2", "getNumber"]},
    )
    before = await api.wallet.channel_balance_sat()
    order_id, auth = await api.buy({"country": "US", "service": "tg"})
    order = await api.poll(order_id, auth, TERMINAL)
    assert order["status"] == "refunded", order
    assert order["refund"]["status"] == "paid"
    assert await api.wallet.channel_balance_sat() == before


async def test_no_balance_stops_sales_until_the_account_is_topped_up(api: Api) -> None:
    balance = (await api.sim("GET", "/sim/config"))["balance"]
    await api.sim("POST", "/sim/config", {"balance": 0})
    try:
        order_id, auth = await api.buy({"country": "US", "service": "tg"})
        order = await api.poll(order_id, auth, TERMINAL)
        assert order["status"] == "refunded", order

        await api.calls_made("getBalance", 2)  # checks that found it still empty
        status, refused = await api.create({"country": "US", "service": "tg"})
        assert status == 503 and refused["error"]["code"] == "UNAVAILABLE"
    finally:
        await api.sim("POST", "/sim/config", {"balance": balance})
    deadline = time.monotonic() + 20
    while status != 402:
        assert time.monotonic() < deadline, refused
        await asyncio.sleep(0.5)
        status, refused = await api.create({"country": "US", "service": "tg"})


async def test_the_rent_webhook_refuses_unstorable_ids_and_cleans_text(api: Api) -> None:
    order_id, auth = await api.buy(
        {"type": "rent-number", "country": "US", "service": "tg", "durationMinutes": 120}
    )
    order = await api.poll(order_id, auth, {"rent_active"} | TERMINAL)
    rental = next(
        r
        for r in await api.sim("GET", "/sim/rentals")
        if r["phoneNumber"] == order["phoneNumber"][1:]
    )
    url = f"{api.base}/v2/l402/webhooks/rent"
    secret = {"X-Webhook-Secret": E2E_ENV["SMS4SATS_WEBHOOK_SECRET"]}
    sms = {
        "phoneFrom": "Tele\x00gram",
        "text": "Code \udc80 97531\x00",
        "date": "2026-11-22 10:00:00",
    }
    bad_id = {"rentId": "12\x0034", "sms": sms}
    async with api.http.post(url, data=_json(bad_id), headers=secret) as resp:
        assert resp.status == 400, await resp.text()
    good = {"rentId": rental["rentId"], "sms": sms}
    for _ in range(2):  # a retried push
        async with api.http.post(url, data=_json(good), headers=secret) as resp:
            assert resp.status == 200 and (await resp.json())["matched"] is True
    order = await api.poll(order_id, auth, {"rent_active"})
    mine = [m for m in order["messages"] if m["code"] == "97531"]
    assert [m["text"] for m in mine] == ["Code ? 97531"]


def _json(body: Any) -> bytes:
    """JSON with lone surrogates escaped as the fuzzer sends them."""
    return json.dumps(body).encode()
