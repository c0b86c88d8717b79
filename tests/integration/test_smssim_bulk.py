"""Integration tests of the simulator's issue-12 parts over real HTTP: getActiveActivations
through HeroSmsClient in both error styles, activation webhooks with retries, the rate-limit
peak/blocks counters and the spread/share of automatic SMS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from libs.common.adapters.sms import ActiveActivation, BadAction, HeroSmsClient
from tests.integration.test_sms_provider import (
    SECRET,
    STYLES,
    Control,
    Receiver,
    client,
    control,
    eventually,
    receiver,
    sim_url,
    wait_status,
)

pytestmark = pytest.mark.integration

__all__ = ["client", "control", "receiver", "sim_url"]  # fixtures used by this module

AUTO_OFF: dict[str, Any] = {"delaySeconds": None, "spreadSeconds": 0, "share": 1}


@pytest.fixture
async def ctl(control: Control) -> AsyncIterator[Control]:
    """The control API with automatic SMS off and the bulk page unlimited; restored after."""
    await control.post("/sim/auto-sms", AUTO_OFF)
    await control.post("/sim/config", {"activeActivationsPageLimit": None})
    yield control
    await control.post("/sim/auto-sms", {**AUTO_OFF, "delaySeconds": 0.3})


def by_id(found: list[ActiveActivation]) -> dict[str, ActiveActivation]:
    """Bulk answer keyed by activation id."""
    return {a.id: a for a in found}


# ------------------------------------------------------------------------- getActiveActivations


@pytest.mark.parametrize("style", STYLES)
async def test_bulk_status_through_the_client(
    client: HeroSmsClient, ctl: Control, style: str
) -> None:
    await ctl.post("/sim/config", {"errorStyle": style})
    assert await client.active_activations() == []
    waiting, received, again, finished = [
        await client.buy(service="tg", country_id=187) for _ in range(4)
    ]
    await ctl.post(f"/sim/activations/{received.id}/sms", {"code": "11111"})
    await ctl.post(f"/sim/activations/{again.id}/sms", {"code": "22222"})
    await client.request_another(again.id)
    await ctl.post(f"/sim/activations/{finished.id}/sms", {"code": "33333"})
    await client.finish(finished.id)

    found = by_id(await client.active_activations())
    assert set(found) == {waiting.id, received.id, again.id}
    assert found[waiting.id] == ActiveActivation(waiting.id, "waiting", phone=waiting.phone)
    assert (found[received.id].state, found[received.id].code) == ("received", "11111")
    text = found[received.id].text
    assert text is not None and "11111" in text
    assert (found[again.id].state, found[again.id].code) == ("retry_wait", "22222")
    # The bulk answer says what getStatus says.
    for activation_id, entry in found.items():
        status = await client.poll(activation_id)
        assert (status.state, status.code) == (entry.state, entry.code)

    # Another SMS on the same number: the latest one is reported.
    await ctl.post(f"/sim/activations/{again.id}/sms", {"code": "44444"})
    assert by_id(await client.active_activations())[again.id].code == "44444"
    stats = await ctl.get("/sim/stats")
    assert stats["actions"]["getActiveActivations"] == 3


@pytest.mark.parametrize("style", STYLES)
async def test_bulk_status_raw_shapes_and_pages(ctl: Control, style: str) -> None:
    await ctl.post("/sim/config", {"errorStyle": style})
    status, body, _ = await ctl.raw(action="getActiveActivations")
    if style == "herosms":
        assert (status, body) == (200, '{"status": "success", "data": []}')
    else:
        assert (status, body) == (200, "NO_ACTIVATIONS")
    ids = []
    for _ in range(5):
        _, bought, _ = await ctl.raw(action="getNumber", service="wa", country="187")
        ids.append(bought.split(":")[1])
    key = "data" if style == "herosms" else "activeActivations"

    async def page(**params: str) -> list[dict[str, Any]]:
        async with ctl.session.post(
            ctl.base_url + "/stubs/handler_api.php",
            data={"api_key": "provider-port-key", "action": "getActiveActivations", **params},
        ) as resp:
            assert resp.status == 200
            rows: list[dict[str, Any]] = (await resp.json())[key]
            return rows

    everything = await page()
    assert [r["activationId"] for r in everything] == ids
    assert everything[0]["activationStatus"] == "4" and everything[0]["smsCode"] is None
    assert [r["activationId"] for r in await page(start="2", limit="2")] == ids[2:4]
    await ctl.post("/sim/config", {"activeActivationsPageLimit": 3})
    assert [r["activationId"] for r in await page()] == ids[:3]
    assert [r["activationId"] for r in await page(start="3", limit="100")] == ids[3:]


@pytest.mark.parametrize("style", STYLES)
async def test_provider_without_bulk_status(
    client: HeroSmsClient, ctl: Control, style: str
) -> None:
    await ctl.post("/sim/config", {"errorStyle": style})
    if style == "smsactivate":
        fault = {"mode": "error", "code": "BAD_ACTION", "status": 200}
    else:
        fault = {
            "mode": "custom",
            "status": 404,
            "contentType": "application/json",
            "body": '{"title": "BAD_ACTION", "details": "Method Not Found", "info": {}}',
        }
    await ctl.post("/sim/faults", {**fault, "action": "getActiveActivations", "times": None})
    with pytest.raises(BadAction):
        await client.active_activations()


async def test_bulk_status_counts_against_the_rate_limit(ctl: Control) -> None:
    await ctl.post("/sim/config", {"rateLimitPerSecond": 3, "rateBlockSeconds": 30})
    replies = await asyncio.gather(*(ctl.raw(action="getActiveActivations") for _ in range(6)))
    assert 429 in {r[0] for r in replies}
    stats = await ctl.get("/sim/stats")
    assert stats["actions"]["getActiveActivations"] == 6
    assert stats["blocks"] == 1


# ---------------------------------------------------------------------------- webhooks


@pytest.mark.parametrize("style", STYLES)
async def test_activation_sms_pushed_to_the_account_webhook(
    client: HeroSmsClient, ctl: Control, receiver: Receiver, style: str
) -> None:
    await ctl.post(
        "/sim/config",
        {"errorStyle": style, "webhookUrl": receiver.url, "webhookRetrySeconds": 0.05},
    )
    receiver.statuses = [500, 503]
    await ctl.post("/sim/auto-sms", {"delaySeconds": 0.1})
    act = await client.buy(service="tg", country_id=187)
    first = await wait_status(client, act.id, "received")
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    [body] = receiver.bodies
    assert set(body) == {"activationId", "service", "text", "code", "country", "receivedAt"}
    assert (body["service"], body["code"], body["country"]) == ("tg", first.code, 187)
    assert first.code is not None and first.code in body["text"]
    if style == "herosms":
        assert body["activationId"] == act.id
        assert body["receivedAt"].endswith("Z") and "T" in body["receivedAt"]
    else:
        assert body["activationId"] == int(act.id)
        assert datetime.strptime(body["receivedAt"], "%Y-%m-%d %H:%M:%S")
    assert receiver.secrets == [SECRET] * 3
    [delivery] = await ctl.get("/sim/webhooks")
    assert delivery["activationId"] == act.id and "rentId" not in delivery
    assert (delivery["attempts"], delivery["delivered"], delivery["lastStatus"]) == (3, True, 200)

    # Another SMS on the same number is pushed too; a manual one as well.
    receiver.arrived.clear()
    await client.request_another(act.id)
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    second = await ctl.post(f"/sim/activations/{act.id}/sms", {"code": "98765"})
    await eventually(lambda: _count(receiver, 3))
    assert [b["code"] for b in receiver.bodies][2] == "98765"
    assert second["codes"][-1] == "98765"


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.bodies) >= n


async def test_activation_webhook_gives_up_after_its_tries(
    client: HeroSmsClient, ctl: Control, receiver: Receiver
) -> None:
    await ctl.post(
        "/sim/config",
        {"webhookUrl": receiver.url, "webhookTries": 2, "webhookRetrySeconds": 0.05},
    )
    receiver.statuses = [500] * 10
    act = await client.buy(service="wa", country_id=187)
    await ctl.post(f"/sim/activations/{act.id}/sms", {"code": "12345"})

    async def gave_up() -> bool:
        deliveries = await ctl.get("/sim/webhooks")
        return bool(deliveries) and deliveries[0]["gaveUp"]

    await eventually(gave_up)
    [delivery] = await ctl.get("/sim/webhooks")
    assert (delivery["attempts"], delivery["delivered"]) == (2, False)
    assert receiver.bodies == []


async def test_no_activation_webhook_without_an_account_url(
    client: HeroSmsClient, ctl: Control
) -> None:
    act = await client.buy(service="wa", country_id=187)
    await ctl.post(f"/sim/activations/{act.id}/sms", {"code": "12345"})
    assert await ctl.get("/sim/webhooks") == []


# ------------------------------------------------------------------------ rate-limit counters


async def test_peak_per_second_and_blocks(ctl: Control) -> None:
    stats = await ctl.get("/sim/stats")
    assert (stats["peakPerSecond"], stats["blocks"]) == (0, 0)
    await ctl.post("/sim/config", {"rateLimitPerSecond": 5, "rateBlockSeconds": 0.3})
    replies = await asyncio.gather(*(ctl.raw(action="getBalance") for _ in range(10)))
    refused = sum(1 for r in replies if r[0] == 429)
    stats = await ctl.get("/sim/stats")
    # Refused requests count in the peak: that second did see more than the limit.
    assert stats["blocks"] == 1 and refused >= 4
    assert 6 <= stats["peakPerSecond"] <= 10
    await asyncio.sleep(1.2)  # the block and the burst's second are over
    for _ in range(2):
        await ctl.raw(action="getBalance")
    await asyncio.gather(*(ctl.raw(action="getBalance") for _ in range(8)))
    assert (await ctl.get("/sim/stats"))["blocks"] == 2

    await ctl.post("/sim/reset")
    stats = await ctl.get("/sim/stats")
    assert (stats["peakPerSecond"], stats["blocks"], stats["rateLimited"]) == (0, 0, 0)
    # Paced requests: the peak is what one second saw, and nothing was blocked.
    await ctl.post("/sim/config", {"rateLimitPerSecond": 50})
    for _ in range(3):
        await ctl.raw(action="getBalance")
        await asyncio.sleep(0.4)
    stats = await ctl.get("/sim/stats")
    assert stats["peakPerSecond"] in (2, 3) and stats["blocks"] == 0


# --------------------------------------------------------------------------- auto SMS


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_auto_sms_spread_and_share(client: HeroSmsClient, ctl: Control) -> None:
    reply = await ctl.post(
        "/sim/auto-sms", {"delaySeconds": 0.2, "spreadSeconds": 1.0, "share": 0.5}
    )
    assert reply == {"delaySeconds": 0.2, "spreadSeconds": 1.0, "share": 0.5}
    bought = [await client.buy(service="tg", country_id=187) for _ in range(40)]
    await asyncio.sleep(1.2 + 1.0)
    sims = {a["activationId"]: a for a in await ctl.get("/sim/activations")}
    delays = []
    for act in bought:
        entry = sims[act.id]
        assert len(entry["smsAt"]) == len(entry["codes"]) <= 1
        if entry["codes"]:
            delays.append(entry["smsAt"][0] - _epoch(entry["createdAt"]))
        else:
            assert entry["status"] == "WAIT_CODE"
    # About half got an SMS (binomial 40 x 0.5: 8..32 is beyond four standard deviations).
    assert 8 <= len(delays) <= 32
    assert all(0.2 - 0.01 <= d <= 1.2 + 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.2  # spread, not one fixed delay


async def test_auto_sms_defaults_deliver_every_one(client: HeroSmsClient, ctl: Control) -> None:
    await ctl.post("/sim/auto-sms", {"delaySeconds": 0.1})
    config = await ctl.get("/sim/config")
    assert (config["autoSmsSpreadSeconds"], config["autoSmsShare"]) == (0, 1)
    acts = [await client.buy(service="ds", country_id=187) for _ in range(5)]
    for act in acts:
        await wait_status(client, act.id, "received")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"delaySeconds": 1, "share": 1.5}, "BAD_SHARE"),
        ({"delaySeconds": 1, "share": -0.1}, "BAD_SHARE"),
        ({"delaySeconds": 1, "share": True}, "BAD_SHARE"),
        ({"delaySeconds": 1, "spreadSeconds": -1}, "BAD_SPREAD"),
        ({"delaySeconds": 1, "spreadSeconds": "2"}, "BAD_SPREAD"),
        ({"spreadSeconds": 2}, "BAD_DELAY"),
    ],
)
async def test_auto_sms_rejects_bad_values(ctl: Control, body: dict[str, Any], code: str) -> None:
    before = await ctl.get("/sim/config")
    reply = await ctl.post("/sim/auto-sms", body, status=400)
    assert reply["error"] == code
    assert await ctl.get("/sim/config") == before


async def test_sms_times_are_precise(client: HeroSmsClient, ctl: Control) -> None:
    act = await client.buy(service="tg", country_id=187)
    before = time.time()
    await ctl.post(f"/sim/activations/{act.id}/sms", {"code": "12345"})
    await ctl.post(f"/sim/activations/{act.id}/sms", {"code": "67890"})
    entry = await ctl.get(f"/sim/activations/{act.id}")
    assert entry["codes"] == ["12345", "67890"]
    first, second = entry["smsAt"]
    assert before <= first <= second <= time.time()
    assert first != int(first) or second != int(second)  # not whole seconds


async def test_auto_sms_spread_and_share_in_the_config(ctl: Control) -> None:
    config = await ctl.post("/sim/config", {"autoSmsSpreadSeconds": 2, "autoSmsShare": 0.25})
    assert (config["autoSmsSpreadSeconds"], config["autoSmsShare"]) == (2, 0.25)
    assert await ctl.post("/sim/auto-sms", {"delaySeconds": 1}) == {
        "delaySeconds": 1,
        "spreadSeconds": 2,
        "share": 0.25,
    }
    before = await ctl.get("/sim/config")
    for bad, code in (
        ({"autoSmsShare": 2}, "BAD_SHARE"),
        ({"autoSmsSpreadSeconds": -1}, "BAD_SPREAD"),
    ):
        reply = await ctl.post("/sim/config", {**bad, "balance": 1}, status=400)
        assert reply["error"] == code
    assert await ctl.get("/sim/config") == before
