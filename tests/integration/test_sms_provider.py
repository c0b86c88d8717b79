"""Integration tests: the provider port's rentals, reactivation, rate limits and faults, with
HeroSmsClient against the smssim subprocess over real HTTP (webhooks to a local receiver)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from libs.common.adapters.sms import (
    HANDLER_PATH,
    ActivationStatus,
    BadRentTime,
    BadStatus,
    HeroSmsClient,
    InsufficientBalance,
    NotFound,
    ProviderUnavailable,
    ReactivationNotAvailable,
    RentEnded,
)
from tests.integration.conftest import running_smssim

pytestmark = pytest.mark.integration

API_KEY = "provider-port-key"
SECRET = "webhook-s3cret"
AUTO_DELAY = 0.3
STYLES = ("herosms", "smsactivate")
DEFAULTS: dict[str, Any] = {
    "errorStyle": "herosms",
    "earlyCancelSeconds": 120,
    "bannedUntil": None,
    "autoSmsDelaySeconds": AUTO_DELAY,
    "rentHours": [2, 4, 12, 24, 72, 168],
    "rentCancelSeconds": 1200,
    "webhookUrl": None,
    "webhookTries": 7,
    "webhookRetrySeconds": 0.05,
    "webhookTimeoutSeconds": 3,
    "rateLimitPerSecond": 50,
    "rateBlockSeconds": 10,
    "btcUsd": 100000,
}


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The simulator, with its webhook secret from the environment as in deployment."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SMSSIM_WEBHOOK_SECRET", SECRET)
        env.setenv("SMSSIM_RENT_HOURS", "2,4,12,24,72,168")
        with running_smssim(
            tmp_path_factory.mktemp("smssim"),
            *("--api-key", API_KEY, "--auto-sms-delay", str(AUTO_DELAY), "--seed", "11"),
        ) as url:
            yield url


class Control:
    """The simulator's /sim control API."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Bind to a session and the simulator URL."""
        self.session = session
        self.base_url = base_url

    async def request(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """Send JSON, check the status, return the decoded reply."""
        async with self.session.request(method, self.base_url + path, json=body) as resp:
            data = await resp.json()
            assert resp.status == status, data
            return data

    async def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        """POST JSON."""
        return await self.request("POST", path, body if body is not None else {}, status)

    async def get(self, path: str) -> Any:
        """GET JSON."""
        return await self.request("GET", path)

    async def raw(self, **params: str) -> tuple[int, str, dict[str, str]]:
        """A handler_api call without the client: status, body and headers."""
        form = {"api_key": API_KEY, **params}
        async with self.session.post(self.base_url + HANDLER_PATH, data=form) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


@pytest.fixture
async def control(sim_url: str) -> AsyncIterator[Control]:
    """Control API helper; the simulator is reset to known settings before each test."""
    async with aiohttp.ClientSession() as session:
        ctl = Control(session, sim_url)
        await ctl.post("/sim/reset")
        await ctl.post("/sim/config", DEFAULTS)
        yield ctl


@pytest.fixture
async def client(sim_url: str) -> AsyncIterator[HeroSmsClient]:
    """A real client pointed at the simulator."""
    async with HeroSmsClient(sim_url, API_KEY, timeout=5.0) as sms:
        yield sms


@dataclass
class Receiver:
    """A webhook endpoint that records what it gets and answers the queued statuses."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    secrets: list[str | None] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Run a local webhook receiver."""
    rec = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        rec.secrets.append(request.headers.get("X-Webhook-Secret"))
        status = rec.statuses.pop(0) if rec.statuses else 200
        if status == 200:
            rec.bodies.append(await request.json())
            rec.arrived.set()
        return web.json_response({"ok": status == 200}, status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    rec.url = str(server.make_url("/hook"))
    try:
        yield rec
    finally:
        await server.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Wait until check() holds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def wait_status(
    sms: HeroSmsClient, activation_id: str, state: str, within: float = 5.0
) -> ActivationStatus:
    """Poll until the activation reaches `state`."""
    result: list[ActivationStatus] = []

    async def reached() -> bool:
        result.append(await sms.poll(activation_id))
        return result[-1].state == state

    await eventually(reached, within)
    return result[-1]


# ---------------------------------------------------------------------------------- rentals


async def test_rent_offers_follow_the_configured_hours(
    client: HeroSmsClient, control: Control
) -> None:
    catalog = await client.rent_offers(4, country=187)
    countries = {c.id: c for c in await client.countries()}
    assert catalog.countries and all(countries[c].rent for c in catalog.countries)
    tg = next(o for o in catalog.offers if o.service == "tg")
    assert (tg.country, tg.hours, tg.count) == (187, 4, 20) and tg.cost_usd > 0
    longer = next(
        o for o in (await client.rent_offers(24, country=187)).offers if o.service == "tg"
    )
    assert longer.cost_usd > tg.cost_usd

    with pytest.raises(BadRentTime):
        await client.rent_offers(5)
    await control.post("/sim/config", {"rentHours": [5]})
    assert (await client.rent_offers(5, country=187)).offers
    with pytest.raises(BadRentTime):
        await client.rent(service="tg", country=187, hours=4)


@pytest.mark.parametrize("style", STYLES)
async def test_rental_messages_arrive_by_webhook_and_polling(
    client: HeroSmsClient, control: Control, receiver: Receiver, style: str
) -> None:
    await control.post("/sim/config", {"errorStyle": style})
    before = datetime.now(UTC)
    rental = await client.rent(service="tg", country=187, hours=4, webhook_url=receiver.url)
    assert rental.phone.startswith("1")
    assert timedelta(hours=4) - timedelta(seconds=5) < rental.ends_at - before
    assert rental.ends_at - before <= timedelta(hours=4, seconds=1)

    # The automatic SMS: pushed with the shared secret, and visible by polling.
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    pushed = receiver.bodies[0]
    assert receiver.secrets == [SECRET]
    assert pushed["rentId"] == int(rental.rent_id)
    messages = await client.rent_messages(rental.rent_id)
    assert [m.text for m in messages] == [pushed["sms"]["text"]]
    assert messages[0].phone_from == pushed["sms"]["phoneFrom"] == "Telegram"
    assert messages[0].service == "tg"

    # One injected by hand comes after it.
    receiver.arrived.clear()
    await control.post(
        "/sim/rent-sms", {"rentId": rental.rent_id, "text": "Code 4410", "phoneFrom": "+4470"}
    )
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert receiver.bodies[1]["sms"]["text"] == "Code 4410"
    messages = await client.rent_messages(rental.rent_id)
    assert [m.text for m in messages][1:] == ["Code 4410"]
    assert messages[1].phone_from == "+4470"

    await client.finish_rent(rental.rent_id)
    with pytest.raises(RentEnded) as ended:
        await client.rent_messages(rental.rent_id)
    assert ended.value.code == "STATUS_FINISH"
    with pytest.raises(RentEnded) as again:
        await client.finish_rent(rental.rent_id)
    assert again.value.code == "ALREADY_FINISH"
    await control.post("/sim/rent-sms", {"rentId": rental.rent_id}, status=409)


@pytest.mark.parametrize("style", STYLES)
async def test_rental_without_sms_yet(client: HeroSmsClient, control: Control, style: str) -> None:
    await control.post("/sim/config", {"errorStyle": style, "autoSmsDelaySeconds": None})
    rental = await client.rent(service="wa", country=16, hours=2)
    assert await client.rent_messages(rental.rent_id) == []
    with pytest.raises(NotFound):
        await client.rent_messages("999")


async def test_rental_cancel_refunds_only_early(client: HeroSmsClient, control: Control) -> None:
    balance = await client.balance_usd()
    rental = await client.rent(service="tg", country=43, hours=12)
    assert await client.balance_usd() < balance
    await client.cancel_rent(rental.rent_id)
    assert await client.balance_usd() == balance
    with pytest.raises(RentEnded) as ended:
        await client.rent_messages(rental.rent_id)
    assert ended.value.code == "STATUS_CANCEL"

    await control.post("/sim/config", {"rentCancelSeconds": 0})
    late = await client.rent(service="tg", country=43, hours=12)
    with pytest.raises(BadStatus) as refused:
        await client.cancel_rent(late.rent_id)
    assert refused.value.code == "CANT_CANCEL"


async def test_rent_webhook_is_retried_until_200(
    client: HeroSmsClient, control: Control, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    rental = await client.rent(service="tg", country=187, hours=4, webhook_url=receiver.url)
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    [delivery] = await control.get("/sim/webhooks")
    assert delivery["rentId"] == rental.rent_id
    assert (delivery["attempts"], delivery["delivered"], delivery["lastStatus"]) == (3, True, 200)
    assert len(receiver.bodies) == 1


async def test_rent_webhook_gives_up_after_its_tries(
    client: HeroSmsClient, control: Control, receiver: Receiver
) -> None:
    await control.post("/sim/config", {"webhookTries": 3})
    receiver.statuses = [500] * 10
    await client.rent(service="tg", country=187, hours=4, webhook_url=receiver.url)

    async def gave_up() -> bool:
        deliveries = await control.get("/sim/webhooks")
        return bool(deliveries) and deliveries[0]["gaveUp"]

    await eventually(gave_up)
    [delivery] = await control.get("/sim/webhooks")
    assert (delivery["attempts"], delivery["delivered"], delivery["lastStatus"]) == (3, False, 500)
    assert receiver.bodies == []


async def test_rent_webhook_default_url(
    client: HeroSmsClient, control: Control, receiver: Receiver
) -> None:
    await control.post("/sim/config", {"webhookUrl": receiver.url})
    rental = await client.rent(service="ds", country=0, hours=2)
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert receiver.bodies[0]["rentId"] == int(rental.rent_id)


# ----------------------------------------------------------------------------- activations


async def test_reactivation(client: HeroSmsClient, control: Control) -> None:
    first = await client.buy(service="tg", country_id=187)
    with pytest.raises(ReactivationNotAvailable):
        await client.reactivate(first.id)  # no code yet, not finished
    code = (await wait_status(client, first.id, "received")).code
    await client.finish(first.id)

    again = await client.reactivate(first.id)
    assert again.id != first.id and again.phone == first.phone
    assert again.country_id == 187 and again.cost_usd == first.cost_usd
    second = await wait_status(client, again.id, "received")  # auto-SMS applies
    assert second.code is not None and second.code != code

    status, body, _ = await control.raw(action="getExtraActivation", activationId=first.id)
    key, new_id, phone = body.split(":")
    assert (status, key, phone) == (200, "ACCESS_NUMBER", first.phone)
    assert new_id not in (first.id, again.id)

    cancelled = await client.buy(service="wa", country_id=16)
    await control.post("/sim/config", {"earlyCancelSeconds": 0, "autoSmsDelaySeconds": None})
    await client.cancel(cancelled.id)
    with pytest.raises(ReactivationNotAvailable):
        await client.reactivate(cancelled.id)


@pytest.mark.parametrize("style", STYLES)
async def test_another_sms_on_the_same_number(
    client: HeroSmsClient, control: Control, style: str
) -> None:
    await control.post("/sim/config", {"errorStyle": style})
    act = await client.buy(service="go", country_id=6)
    first = await wait_status(client, act.id, "received")
    await client.request_another(act.id)
    status, body, _ = await control.raw(action="getStatus", id=act.id)
    assert (status, body) == (200, f"STATUS_WAIT_RETRY:{first.code}")
    assert await client.poll(act.id) == ActivationStatus("retry_wait", code=first.code)
    second = await wait_status(client, act.id, "received")
    assert second.code != first.code
    await client.finish(act.id)


# --------------------------------------------------------------------------------- rate limit


async def test_rate_limit_blocks_a_burst(control: Control) -> None:
    await control.post("/sim/config", {"rateLimitPerSecond": 5, "rateBlockSeconds": 30})
    replies = await asyncio.gather(*(control.raw(action="getBalance") for _ in range(10)))
    blocked = [r for r in replies if r[0] == 429]
    assert 0 < len(blocked) <= 5
    assert blocked[0][2]["Retry-After"] == "30"
    assert '"TOO_MANY_REQUESTS"' in blocked[0][1]
    # Blocked means blocked: the key stays refused, in either style.
    await control.post("/sim/config", {"errorStyle": "smsactivate"})
    status, body, _ = await control.raw(action="getBalance")
    assert status == 200 and body.startswith("BANNED:")
    assert (await control.get("/sim/stats"))["rateLimited"] >= len(blocked) + 1


@pytest.mark.parametrize("style", STYLES)
async def test_client_waits_out_a_short_block(sim_url: str, control: Control, style: str) -> None:
    await control.post(
        "/sim/config", {"errorStyle": style, "rateLimitPerSecond": 5, "rateBlockSeconds": 1}
    )
    # A client paced faster than the upstream allows runs into the block and rides it out.
    async with HeroSmsClient(sim_url, API_KEY, rate_per_second=1000) as hasty:
        balances = await asyncio.gather(*(hasty.balance_usd() for _ in range(12)))
    assert set(balances) == {Decimal("100.50")}
    assert (await control.get("/sim/stats"))["rateLimited"] > 0


@pytest.mark.parametrize("style", STYLES)
async def test_default_pacing_stays_under_the_upstream_limit(
    client: HeroSmsClient, control: Control, style: str
) -> None:
    await control.post("/sim/config", {"errorStyle": style})
    await asyncio.gather(*(client.balance_usd() for _ in range(80)))
    assert (await control.get("/sim/stats"))["rateLimited"] == 0


async def test_rate_limit_can_be_switched_off(control: Control) -> None:
    await control.post("/sim/config", {"rateLimitPerSecond": None})
    replies = await asyncio.gather(*(control.raw(action="getBalance") for _ in range(80)))
    assert {r[0] for r in replies} == {200}


# ------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"mode": "error", "code": "ERROR_SQL"}, "ERROR_SQL"),
        ({"mode": "error"}, "HTTP_503"),
        ({"mode": "error", "status": 500}, "HTTP_500"),
        ({"mode": "garbage"}, "GARBAGE_REPLY"),
        ({"mode": "garbage", "kind": "truncated"}, "BAD_JSON"),
        ({"mode": "garbage", "kind": "empty"}, "EMPTY_REPLY"),
    ],
)
async def test_fault_modes_are_transient_errors(
    client: HeroSmsClient, control: Control, fault: dict[str, Any], code: str
) -> None:
    await control.post("/sim/faults", {**fault, "actions": ["getNumberV2"]})
    with pytest.raises(ProviderUnavailable) as info:
        await client.buy(service="tg", country_id=187)
    assert info.value.code == code and info.value.transient
    assert (await client.buy(service="tg", country_id=187)).phone  # times defaults to 1


async def test_delay_fault(sim_url: str, client: HeroSmsClient, control: Control) -> None:
    await control.post("/sim/faults", {"mode": "delay", "seconds": 0.6, "times": 2})
    async with HeroSmsClient(sim_url, API_KEY, timeout=0.2) as impatient:
        with pytest.raises(ProviderUnavailable) as info:
            await impatient.balance_usd()
    assert info.value.code == "TIMEOUT"
    assert await client.balance_usd() == Decimal("100.50")  # slow, but answered
    assert await control.get("/sim/faults") == []


async def test_no_balance_fault_until_cleared(client: HeroSmsClient, control: Control) -> None:
    [listed] = await control.post("/sim/faults", {"mode": "no_balance"})
    assert (listed["mode"], listed["times"]) == ("no_balance", None)
    for _ in range(2):
        with pytest.raises(InsufficientBalance):
            await client.buy(service="tg", country_id=187)
    with pytest.raises(InsufficientBalance):
        await client.rent(service="tg", country=187, hours=4)
    assert await client.balance_usd() == Decimal("100.50")  # only purchases fail
    assert await control.request("DELETE", "/sim/faults") == []
    assert (await client.buy(service="tg", country_id=187)).phone


async def test_fault_probability_and_count(control: Control) -> None:
    await control.post(
        "/sim/faults", {"mode": "error", "actions": ["getBalance"], "probability": 0.5, "times": 5}
    )
    statuses = [(await control.raw(action="getBalance"))[0] for _ in range(40)]
    assert statuses.count(503) == 5 and statuses.count(200) == 35
    await control.post("/sim/faults", {"mode": "bogus"}, status=400)
    await control.post("/sim/faults", {"mode": "error", "probability": 2}, status=400)


# ------------------------------------------------------------------------------- BTC / USD


async def test_btc_usd_rate_in_coingecko_shape(control: Control) -> None:
    path = "/api/v3/simple/price?ids=bitcoin&vs_currencies=usd"
    assert await control.get(path) == {"bitcoin": {"usd": 100000}}
    await control.post("/sim/config", {"btcUsd": 64250.5})
    assert await control.get(path) == {"bitcoin": {"usd": 64250.5}}
    stamped = await control.get(path + "&include_last_updated_at=true")
    assert abs(stamped["bitcoin"]["last_updated_at"] - time.time()) < 60
    assert await control.get("/api/v3/simple/price?ids=dogecoin&vs_currencies=usd") == {}

    await control.post("/sim/faults", {"mode": "error", "actions": ["simple/price"]})
    async with control.session.get(control.base_url + path) as resp:
        assert resp.status == 503
    assert await control.get(path) == {"bitcoin": {"usd": 64250.5}}


# ------------------------------------------------------------------------------- catalog


@pytest.mark.parametrize("style", STYLES)
async def test_catalog_lists_agree(client: HeroSmsClient, control: Control, style: str) -> None:
    await control.post("/sim/config", {"errorStyle": style})
    countries = {c.id for c in await client.countries()}
    services = {s.code for s in await client.services()}
    offers = await client.prices()
    assert {(o.country_id, o.service) for o in offers} == {
        (c, s) for c in countries for s in services
    }
    await control.post("/sim/stock", {"country": 187, "service": "tg", "count": 3, "cost": 0.42})
    [tg] = await client.prices(service="tg", country_id=187)
    assert (tg.count, tg.cost_usd) == (3, Decimal("0.42"))
    rent_countries = (await client.rent_offers(4)).countries
    assert set(rent_countries) <= countries
