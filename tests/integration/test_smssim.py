"""Integration tests: HeroSmsClient against the smssim simulator subprocess."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.sms import (
    ActivationNotActive,
    ActivationStatus,
    BadKey,
    BadService,
    Banned,
    CodeAlreadyReceived,
    HeroSmsClient,
    InsufficientBalance,
    NoNumbers,
    NotFound,
    PriceTooLow,
    ProviderUnavailable,
    RateLimited,
    RentCatalog,
    RentEnded,
    TooEarlyToCancel,
)
from tests.integration.conftest import running_smssim

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "integration-key"
AUTO_DELAY = 0.3
STYLES = ("herosms", "smsactivate")


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `python -m sandbox.smssim` on a free port for the whole module."""
    with running_smssim(
        tmp_path_factory.mktemp("smssim"),
        *("--api-key", API_KEY, "--auto-sms-delay", str(AUTO_DELAY), "--seed", "7"),
    ) as url:
        yield url


class Control:
    """Tiny helper around the simulator's /sim control API."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Bind to a session and the simulator URL."""
        self.session = session
        self.base_url = base_url

    async def post(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        """POST JSON and return the decoded reply, checking the status."""
        async with self.session.post(self.base_url + path, json=body or {}) as resp:
            data = await resp.json()
            assert resp.status == status, data
            return data

    async def get(self, path: str) -> Any:
        """GET JSON."""
        async with self.session.get(self.base_url + path) as resp:
            assert resp.status == 200
            return await resp.json()

    async def activation(self, activation_id: str) -> dict[str, Any]:
        """One activation as the simulator sees it."""
        data = await self.get(f"/sim/activations/{activation_id}")
        assert isinstance(data, dict)
        return data


@pytest.fixture
async def control(sim_url: str) -> AsyncIterator[Control]:
    """Control API helper; resets the simulator to known settings before each test."""
    async with aiohttp.ClientSession() as session:
        ctl = Control(session, sim_url)
        await ctl.post("/sim/reset")
        await ctl.post(
            "/sim/config",
            {"errorStyle": "herosms", "earlyCancelSeconds": 120, "bannedUntil": None},
        )
        await ctl.post("/sim/auto-sms", {"delaySeconds": AUTO_DELAY})
        yield ctl


@pytest.fixture
async def client(sim_url: str) -> AsyncIterator[HeroSmsClient]:
    """A real client pointed at the simulator."""
    async with HeroSmsClient(sim_url, API_KEY, timeout=5.0) as sms:
        yield sms


async def wait_for(
    sms: HeroSmsClient, activation_id: str, state: str, within: float = 5.0
) -> ActivationStatus:
    """Poll until the activation reaches `state`."""
    deadline = time.monotonic() + within
    while True:
        status = await sms.poll(activation_id)
        if status.state == state:
            return status
        assert time.monotonic() < deadline, f"still {status} after {within}s"
        await asyncio.sleep(0.05)


async def test_buy_auto_sms_finish(client: HeroSmsClient, control: Control) -> None:
    offers = await client.prices(service="tg", country_id=187)
    assert len(offers) == 1 and offers[0].count == 50
    act = await client.buy(service="tg", country_id=187, max_price_usd=Decimal("1"))
    assert act.id.isdigit() and act.country_id == 187
    assert act.phone.startswith("1") and len(act.phone) == 11 and act.phone.isdigit()
    assert act.cost_usd == offers[0].cost_usd
    assert act.ends_at is not None

    assert (await client.poll(act.id)).state == "waiting"
    status = await wait_for(client, act.id, "received")
    assert status.code is not None and status.code.isdigit() and 5 <= len(status.code) <= 6
    assert status.text == f"Your Telegram code is {status.code}"

    await client.finish(act.id)
    sim = await control.activation(act.id)
    assert sim["status"] == "FINISHED" and sim["codes"] == [status.code]
    assert await client.balance_usd() == Decimal("100.50") - act.cost_usd
    assert (await client.prices(service="tg", country_id=187))[0].count == 49
    stats = await control.get("/sim/stats")
    assert stats["actions"]["getNumberV2"] == 1 and stats["actions"]["setStatus"] == 1


async def test_request_another_sms(client: HeroSmsClient, control: Control) -> None:
    act = await client.buy(service="wa", country_id=16)
    assert act.phone.startswith("44")
    first = await wait_for(client, act.id, "received")
    await client.request_another(act.id)
    retry = await client.poll(act.id)
    assert retry == ActivationStatus("retry_wait", code=first.code)
    await control.post("/sim/auto-sms", {"delaySeconds": None})
    await control.post(f"/sim/activations/{act.id}/sms", {"text": "WhatsApp code 246-810"})
    second = await client.poll(act.id)
    assert second == ActivationStatus("received", code="246810", text="WhatsApp code 246-810")
    sim = await control.activation(act.id)
    assert sim["codes"] == [first.code, "246810"]
    await client.finish(act.id)


@pytest.mark.parametrize("style", STYLES)
async def test_cancel_rules(client: HeroSmsClient, control: Control, style: str) -> None:
    await control.post("/sim/config", {"errorStyle": style})
    await control.post("/sim/auto-sms", {"delaySeconds": None})
    act = await client.buy(service="tg", country_id=43)
    assert act.phone.startswith("49")
    with pytest.raises(TooEarlyToCancel) as early:
        await client.cancel(act.id)
    assert early.value.seconds == (120 if style == "herosms" else None)

    await control.post("/sim/config", {"earlyCancelSeconds": 0})
    await client.cancel(act.id)
    assert await client.poll(act.id) == ActivationStatus("cancelled")
    assert await client.balance_usd() == Decimal("100.50")  # refunded
    with pytest.raises(ActivationNotActive):
        await client.cancel(act.id)  # callers treat this as done
    with pytest.raises(ActivationNotActive):
        await client.finish(act.id)
    reply = await control.post(f"/sim/activations/{act.id}/sms", {"code": "1234"}, status=409)
    assert reply["error"] == "ACTIVATION_NOT_ACTIVE"

    with_code = await client.buy(service="tg", country_id=43)
    await control.post(f"/sim/activations/{with_code.id}/sms", {"code": "5555", "text": "x 5555"})
    with pytest.raises(CodeAlreadyReceived):
        await client.cancel(with_code.id)
    await client.finish(with_code.id)
    with pytest.raises(ActivationNotActive):
        await client.cancel(with_code.id)


@pytest.mark.parametrize("style", STYLES)
async def test_errors_map_the_same(
    client: HeroSmsClient, control: Control, sim_url: str, style: str
) -> None:
    await control.post("/sim/config", {"errorStyle": style})
    await control.post("/sim/stock", {"country": 187, "service": "tg", "count": 0})
    with pytest.raises(NoNumbers):
        await client.buy(service="tg", country_id=187)
    with pytest.raises(BadService):
        await client.buy(service="nope", country_id=187)

    cost = (await client.prices(service="wa", country_id=187))[0].cost_usd
    with pytest.raises(PriceTooLow) as low:
        await client.buy(service="wa", country_id=187, max_price_usd=cost - Decimal("0.01"))
    assert low.value.min_price == float(cost)

    with pytest.raises(NotFound):
        await client.poll("123")
    with pytest.raises(NotFound):
        await client.cancel("123")
    with pytest.raises(NotFound):
        await client.poll("not-a-number")

    async with HeroSmsClient(sim_url, "wrong-key") as bad:
        with pytest.raises(BadKey) as bad_key:
            await bad.balance_usd()
        assert bad_key.value.code == "BAD_KEY"
    async with HeroSmsClient(sim_url, "") as missing:
        with pytest.raises(BadKey) as no_key:
            await missing.balance_usd()
        assert no_key.value.code == "NO_KEY"

    await control.post("/sim/config", {"balance": 0.01})
    with pytest.raises(InsufficientBalance):
        await client.buy(service="wa", country_id=187)

    await control.post("/sim/config", {"bannedUntil": "2026-12-31 23:59:59"})
    with pytest.raises(Banned) as banned:
        await client.buy(service="wa", country_id=187)
    assert banned.value.until == "2026-12-31 23:59:59"


async def test_catalog(client: HeroSmsClient, control: Control) -> None:
    countries = {c.id: c for c in await client.countries()}
    assert set(countries) == {0, 2, 6, 12, 16, 43, 187}
    assert countries[16].name == "England" and countries[187].name == "USA"
    assert all(c.visible for c in countries.values())
    services = {s.code: s.name for s in await client.services()}
    assert services["go"] == "Google,youtube,Gmail" and services["ot"] == "Any other"
    assert set(services) == {"tg", "wa", "go", "fb", "ds", "ot"}
    offers = await client.prices()
    assert len(offers) == 42
    assert all(Decimal("0.05") <= o.cost_usd <= Decimal("0.60") and o.count == 50 for o in offers)
    assert {o.country_id for o in await client.prices(service="ds")} == set(countries)

    await control.post("/sim/stock", {"country": 6, "service": "fb", "count": 3, "cost": 0.42})
    assert [(o.count, o.cost_usd) for o in await client.prices(service="fb", country_id=6)] == [
        (3, Decimal("0.42"))
    ]
    await control.post("/sim/stock", {"country": 999, "service": "fb", "count": 1}, status=404)


async def test_phone_prefixes(client: HeroSmsClient, control: Control) -> None:
    await control.post("/sim/auto-sms", {"delaySeconds": None})
    prefixes = {187: "1", 12: "1", 16: "44", 43: "49", 6: "62", 2: "7", 0: "7"}
    for country_id, prefix in prefixes.items():
        act = await client.buy(service="ot", country_id=country_id)
        assert act.phone.startswith(prefix), (country_id, act.phone)
    listed = await control.get("/sim/activations")
    assert len(listed) == len(prefixes)
    assert {a["status"] for a in listed} == {"WAIT_CODE"}


async def test_auto_sms_toggle(client: HeroSmsClient, control: Control) -> None:
    await control.post("/sim/auto-sms", {"delaySeconds": None})
    act = await client.buy(service="ds", country_id=2)
    await asyncio.sleep(AUTO_DELAY + 0.2)
    assert (await client.poll(act.id)).state == "waiting"
    await control.post("/sim/auto-sms", {"delaySeconds": 0})  # waiting activations get one now
    status = await wait_for(client, act.id, "received", within=2)
    assert status.text is not None and "Discord" in status.text


async def test_faults_and_stats(client: HeroSmsClient, control: Control, sim_url: str) -> None:
    await control.post("/sim/faults", {"action": "getBalance", "status": 503, "body": "<html>"})
    with pytest.raises(ProviderUnavailable):
        await client.balance_usd()
    assert await client.balance_usd() == Decimal("100.50")

    # A long Retry-After is not slept through: raised at once, and the client holds every
    # call (without reaching the provider) until it is over.
    await control.post("/sim/faults", {"status": 429, "retryAfter": 60})
    with pytest.raises(RateLimited) as limited:
        await client.countries()
    assert limited.value.retry_after == 60 and limited.value.transient
    with pytest.raises(RateLimited):
        await client.services()

    # A short one pauses the client, then the call is retried and succeeds.
    await control.post("/sim/faults", {"status": 429, "retryAfter": 0.2})
    async with HeroSmsClient(sim_url, API_KEY) as patient:
        assert len(await patient.countries()) > 0

    await control.post("/sim/faults", {"action": "getStatus", "delaySeconds": 1.0, "status": 200})
    async with HeroSmsClient(sim_url, API_KEY, timeout=0.3) as impatient:
        with pytest.raises(ProviderUnavailable):
            await impatient.poll("1")

    stats = await control.get("/sim/stats")
    assert stats["actions"] == {"getBalance": 2, "getCountries": 3, "getStatus": 1}
    assert stats["total"] == 6
    await control.post("/sim/reset")
    assert (await control.get("/sim/stats"))["total"] == 0
    assert await control.get("/sim/faults") == []


async def test_expiry(client: HeroSmsClient, control: Control) -> None:
    await control.post("/sim/auto-sms", {"delaySeconds": None})
    await control.post("/sim/config", {"activationLifetimeSeconds": 0.4})
    try:
        unused = await client.buy(service="fb", country_id=0)
        used = await client.buy(service="fb", country_id=0)
        await control.post(f"/sim/activations/{used.id}/sms", {"code": "9999"})
        await asyncio.sleep(0.5)
        assert await client.poll(unused.id) == ActivationStatus("cancelled")  # refunded
        assert (await client.poll(used.id)).code == "9999"
        assert (await control.activation(used.id))["status"] == "FINISHED"
        assert await client.balance_usd() == Decimal("100.50") - used.cost_usd
    finally:
        await control.post("/sim/config", {"activationLifetimeSeconds": 1200})


async def test_the_provider_ends_a_rental_early(client: HeroSmsClient, control: Control) -> None:
    rental = await client.rent(service="tg", country=187, hours=4)
    ended = await control.post(f"/sim/rentals/{rental.rent_id}/end", {"status": "cancel"})
    assert ended["status"] == "CANCEL"
    with pytest.raises(RentEnded) as raised:
        await client.rent_messages(rental.rent_id)
    assert raised.value.code == "STATUS_CANCEL"
    # Over already: a second end is refused; an unknown rental is not found.
    await control.post(f"/sim/rentals/{rental.rent_id}/end", {"status": "finish"}, status=409)
    await control.post("/sim/rentals/999999/end", {"status": "finish"}, status=404)
    other = await client.rent(service="tg", country=187, hours=4)
    await control.post(f"/sim/rentals/{other.rent_id}/end", {"status": "soon"}, status=400)
    await control.post(f"/sim/rentals/{other.rent_id}/end", {"status": "finish"})
    with pytest.raises(RentEnded) as raised:
        await client.rent_messages(other.rent_id)
    assert raised.value.code == "STATUS_FINISH"


async def test_rent_prices_follow_the_pair_price(client: HeroSmsClient, control: Control) -> None:
    def tg(catalog: RentCatalog) -> Decimal:
        return next(o.cost_usd for o in catalog.offers if o.service == "tg")

    before = tg(await client.rent_offers(4, 187))
    await control.post("/sim/stock", {"country": 187, "service": "tg", "cost": 1.0})
    after = tg(await client.rent_offers(4, 187))
    assert after > before
    assert after == (Decimal(4) * Decimal(4) ** Decimal("0.75")).quantize(Decimal("0.01"))
    rental = await client.rent(service="tg", country=187, hours=4)
    assert (await control.get(f"/sim/rentals/{rental.rent_id}"))["cost"] == float(after)
