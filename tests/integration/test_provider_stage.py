"""The provider worker's parts against the SMS provider simulator and real PostgreSQL/NATS."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import pytest

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings
from libs.common.domain.events import Timer
from libs.common.domain.orders import Order, Status
from libs.common.messaging import bus
from libs.common.messaging.bus import Retry
from libs.common.messaging.runtime import Worker, open_worker
from libs.common.persistence.order_store import NOW
from libs.common.persistence.stores import PgStores
from services.provider.service import ProviderStage
from tests.integration.conftest import running_smssim
from tests.integration.helpers import insert_order, settings_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sim-key"
COUNTRY, SERVICE = 187, "tg"  # what helpers.insert_order orders
S = Status


# ----------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def smssim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The provider simulator with no early-cancel rule and no automatic SMS."""
    with running_smssim(
        tmp_path_factory.mktemp("smssim"),
        *("--api-key", API_KEY, "--early-cancel-seconds", "0", "--auto-sms-delay", "off"),
    ) as url:
        yield url


class Sim:
    """The simulator's /sim control API."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def request(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        async with self.session.request(method, self.url + path, json=body) as resp:
            data = await resp.json()
            assert resp.status == status, data
            return data

    async def activations(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/sim/activations"))

    async def activation(self, activation_id: str | None) -> dict[str, Any]:
        assert activation_id is not None
        return dict(await self.request("GET", f"/sim/activations/{activation_id}"))

    async def purchases(self) -> int:
        """How many getNumber/getNumberV2 calls reached the simulator since the reset."""
        actions = (await self.request("GET", "/sim/stats"))["actions"]
        return int(actions.get("getNumberV2", 0)) + int(actions.get("getNumber", 0))

    async def deliver(self, activation_id: str | None, code: str) -> dict[str, Any]:
        assert activation_id is not None
        body = {"code": code, "text": f"Your Telegram code is {code}"}
        return dict(await self.request("POST", f"/sim/activations/{activation_id}/sms", body))

    async def config(self, **changes: Any) -> dict[str, Any]:
        return dict(await self.request("POST", "/sim/config", changes))


@pytest.fixture
async def sim(smssim_url: str) -> AsyncIterator[Sim]:
    """Control API, reset to a known state before each test."""
    async with aiohttp.ClientSession() as session:
        ctl = Sim(session, smssim_url)
        await ctl.request("POST", "/sim/reset")
        await ctl.config(earlyCancelSeconds=0, autoSmsDelaySeconds=None, errorStyle="herosms")
        yield ctl
        await ctl.config(earlyCancelSeconds=0)


# ----------------------------------------------------------------------------- worker


@pytest.fixture
async def settings(database_url: str, nats_url: str, stream_names: tuple[str, str]) -> Settings:
    """Settings of the test's database and private (bootstrapped) stream."""
    nc = await nats.connect(nats_url)
    try:
        await bus.bootstrap(nc.jetstream(), *stream_names)
    finally:
        await nc.drain()
    # No another-SMS window: a delivered code finishes the activation at once (the window has
    # its own tests in test_provider_types.py).
    return settings_for(
        database_url,
        nats_url,
        stream_names,
        sms_poll_interval_seconds=0.2,
        another_sms_window_seconds=0.0,
    )


@asynccontextmanager
async def provider_worker(
    settings: Settings, smssim_url: str
) -> AsyncIterator[tuple[Worker, ProviderStage]]:
    """A provider Worker with its parts talking to the simulator."""
    provider = HeroSmsClient(smssim_url, API_KEY)
    try:
        async with open_worker("provider", settings, asyncio.Event()) as worker:
            yield worker, provider_stage(worker, provider)
    finally:
        await provider.close()


def provider_stage(worker: Worker, provider: HeroSmsClient) -> ProviderStage:
    """The worker's parts, as its main() builds them."""
    return ProviderStage.build(worker.stores, worker.settings, provider, worker.stop)


@pytest.fixture
async def stage(settings: Settings, smssim_url: str) -> AsyncIterator[tuple[Worker, ProviderStage]]:
    async with provider_worker(settings, smssim_url) as pair:
        yield pair


# ----------------------------------------------------------------------------- orders


async def paid_order(
    pool: asyncpg.Pool, settings: Settings, cost_usd: Decimal = Decimal("1.00")
) -> str:
    """A receive-sms order made paid the way the invoice watcher does it (with its deadline)."""
    order_id = await insert_order(pool, cost_usd=cost_usd)
    async with PgStores(pool, settings.subject_prefix).transaction() as tx:
        moved = await tx.orders.transition(
            order_id,
            S.PENDING_PAYMENT,
            S.PAID,
            paid_at=NOW,
            deadline_at=timedelta(seconds=settings.order_timeout_seconds),
        )
        assert moved is not None
        await tx.timers.set(order_id, Timer.SMS_TIMEOUT, settings.order_timeout_seconds)
    return order_id


async def waiting_order(worker: Worker, acts: ProviderStage) -> Order:
    """A paid order that got its number."""
    order_id = await paid_order(worker.pool, worker.settings)
    await acts.allocation.allocate(order_id)
    order = await get(worker.pool, order_id)
    assert order.status == S.WAITING_FOR_SMS
    return order


async def get(pool: asyncpg.Pool, order_id: str) -> Order:
    order = await PgStores(pool, "unused").orders.get(order_id)
    assert order is not None
    return order


async def claimed_for_poll(pool: asyncpg.Pool) -> list[Order]:
    """Claim every order due for polling, through the SMS poller's store call."""
    return await PgStores(pool, "unused").orders.claim_sms_poll(50, 0.0)


async def claim_for_poll(pool: asyncpg.Pool, order_id: str) -> Order:
    """Claim the order through the SMS poller's store call (as poll_forever does)."""
    mine = [o for o in await claimed_for_poll(pool) if o.id == order_id]
    assert len(mine) == 1, "the order was not due for polling"
    return mine[0]


async def event_types(pool: asyncpg.Pool, order_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT payload FROM outbox WHERE payload->>'orderId' = $1 ORDER BY created_at", order_id
    )
    return [r["payload"]["type"] for r in rows]


async def timers(pool: asyncpg.Pool, order_id: str) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT kind, due_at, fired_at, extract(epoch FROM due_at - now())::float8 AS in_seconds"
        " FROM timers WHERE order_id = $1",
        order_id,
    )
    return {r["kind"]: r for r in rows}


async def assert_each_status_entered_once(pool: asyncpg.Pool, order_id: str) -> list[str]:
    """The transition log never shows a status entered twice; returns the statuses in order."""
    log = await pool.fetch(
        "SELECT to_status FROM order_transitions WHERE order_id = $1 ORDER BY id", order_id
    )
    entered = [r["to_status"] for r in log]
    counts = Counter(entered)
    assert all(n == 1 for n in counts.values()), f"status entered twice: {entered}"
    return entered


# ----------------------------------------------------------------------------- allocation


async def test_allocate_buys_one_number_and_a_duplicate_event_buys_nothing(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    order_id = await paid_order(worker.pool, worker.settings)

    await acts.allocation.allocate(order_id)

    order = await get(worker.pool, order_id)
    assert order.status == S.WAITING_FOR_SMS
    bought = await sim.activations()
    assert len(bought) == 1
    assert order.activation_id == bought[0]["activationId"]
    assert order.phone_number == bought[0]["phoneNumber"]
    assert (bought[0]["country"], bought[0]["service"]) == (COUNTRY, SERVICE)
    assert bought[0]["status"] == "WAIT_CODE"
    assert order.next_poll_at is not None
    assert await sim.purchases() == 1

    # The same paid event delivered again (and once more, concurrently): nothing is bought.
    await acts.allocation.allocate(order_id)
    await asyncio.gather(acts.allocation.allocate(order_id), acts.allocation.allocate(order_id))
    assert await sim.purchases() == 1
    assert len(await sim.activations()) == 1
    assert (await get(worker.pool, order_id)).activation_id == order.activation_id
    # The poller sees the order at once.
    await claim_for_poll(worker.pool, order_id)
    assert await assert_each_status_entered_once(worker.pool, order_id) == [
        "pending_payment",
        "paid",
        "allocating_number",
        "waiting_for_sms",
    ]


async def test_concurrent_allocations_keep_exactly_one_number(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    order_ids = [await paid_order(worker.pool, worker.settings) for _ in range(4)]

    await asyncio.gather(*(acts.allocation.allocate(o) for o in order_ids for _ in range(3)))

    bought = {a["activationId"]: a for a in await sim.activations()}
    for order_id in order_ids:
        order = await get(worker.pool, order_id)
        assert order.status == S.WAITING_FOR_SMS
        assert bought[order.activation_id]["status"] == "WAIT_CODE"
        await assert_each_status_entered_once(worker.pool, order_id)
    kept = {(await get(worker.pool, o)).activation_id for o in order_ids}
    assert len(kept) == len(order_ids)
    # Any spare number bought by a racing duplicate was handed back to the provider.
    spares = [a for a in bought.values() if a["activationId"] not in kept]
    assert all(a["status"] == "CANCEL" for a in spares), spares


async def test_no_stock_sends_the_order_to_refund(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    await sim.request("POST", "/sim/stock", {"country": COUNTRY, "service": SERVICE, "count": 0})
    order_id = await paid_order(worker.pool, worker.settings)
    assert Timer.SMS_TIMEOUT in await timers(worker.pool, order_id)

    await acts.allocation.allocate(order_id)

    order = await get(worker.pool, order_id)
    assert order.status == S.REFUND_PENDING
    assert order.activation_id is None
    assert await event_types(worker.pool, order_id) == ["refund_requested"]
    assert Timer.SMS_TIMEOUT not in await timers(worker.pool, order_id)
    assert await sim.purchases() == 1
    assert await sim.activations() == []

    # A duplicate paid event or a late timeout changes nothing.
    await acts.allocation.allocate(order_id)
    await acts.cancels.cancel(order_id, "no SMS before the deadline")
    assert (await get(worker.pool, order_id)).status == S.REFUND_PENDING
    assert await event_types(worker.pool, order_id) == ["refund_requested"]
    assert await sim.purchases() == 1
    assert await assert_each_status_entered_once(worker.pool, order_id) == [
        "pending_payment",
        "paid",
        "allocating_number",
        "refund_pending",
    ]


# ----------------------------------------------------------------------------- delivery


async def test_polled_sms_completes_the_order_and_finishes_the_activation(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    order = await waiting_order(worker, acts)
    order_id, activation_id = order.id, order.activation_id

    # Nothing arrived yet: a poll changes nothing.
    await acts.watch.check(await claim_for_poll(worker.pool, order_id))
    assert (await get(worker.pool, order_id)).status == S.WAITING_FOR_SMS

    await sim.deliver(activation_id, "424242")
    await acts.watch.check(await claim_for_poll(worker.pool, order_id))

    done = await get(worker.pool, order_id)
    assert done.status == S.COMPLETED
    assert done.code == "424242"
    assert done.sms_text == "Your Telegram code is 424242"
    assert done.sms_received_at is not None and done.finished_at is not None
    # The order completed first; finishing the activation at the provider follows.
    assert done.finish_due_at is not None
    assert await acts.finisher.finish_due() == 1
    assert (await sim.activation(activation_id))["status"] == "FINISHED"
    assert (await get(worker.pool, order_id)).finish_due_at is None
    assert await acts.finisher.finish_due() == 0
    armed = await timers(worker.pool, order_id)
    assert Timer.SMS_TIMEOUT not in armed
    assert armed[Timer.PURGE_CODE]["fired_at"] is None
    assert armed[Timer.PURGE_CODE]["in_seconds"] == pytest.approx(
        worker.settings.code_retention_seconds, abs=30
    )
    assert await event_types(worker.pool, order_id) == ["completed"]
    # A finished order is no longer polled.
    assert order_id not in [o.id for o in await claimed_for_poll(worker.pool)]
    assert await assert_each_status_entered_once(worker.pool, order_id) == [
        "pending_payment",
        "paid",
        "allocating_number",
        "waiting_for_sms",
        "code_received",
        "completed",
    ]


async def test_poller_loop_delivers_the_code(stage: tuple[Worker, ProviderStage], sim: Sim) -> None:
    worker, acts = stage
    order = await waiting_order(worker, acts)
    loop = asyncio.gather(acts.watch.poll_forever(), acts.finisher.finish_forever())
    try:
        await sim.deliver(order.activation_id, "777001")
        deadline = asyncio.get_running_loop().time() + 5
        while (await get(worker.pool, order.id)).status != S.COMPLETED:
            assert asyncio.get_running_loop().time() < deadline, "poller never completed"
            await asyncio.sleep(0.05)
        # The finisher finishes the activation at the provider after the completion.
        while (await sim.activation(order.activation_id))["status"] != "FINISHED":
            assert asyncio.get_running_loop().time() < deadline, "poller never finished"
            await asyncio.sleep(0.05)
    finally:
        worker.stop.set()
        await asyncio.wait_for(loop, 5)
    assert (await get(worker.pool, order.id)).code == "777001"
    assert (await sim.activation(order.activation_id))["status"] == "FINISHED"
    await assert_each_status_entered_once(worker.pool, order.id)


# ----------------------------------------------------------------------------- cancel


async def test_cancel_without_sms_cancels_at_the_provider_and_refunds(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    balance_before = (await sim.config())["balance"]
    order = await waiting_order(worker, acts)
    order_id, activation_id = order.id, order.activation_id
    assert (await sim.config())["balance"] < balance_before

    await acts.cancels.cancel(order_id, "no SMS before the deadline")

    assert (await sim.activation(activation_id))["status"] == "CANCEL"
    assert (await sim.config())["balance"] == balance_before  # the provider refunded us
    cancelled = await get(worker.pool, order_id)
    assert cancelled.status == S.REFUND_PENDING
    assert cancelled.code is None
    assert await event_types(worker.pool, order_id) == ["refund_requested"]
    assert Timer.SMS_TIMEOUT not in await timers(worker.pool, order_id)

    # A second cancel (timeout after a customer cancel) and a late poll change nothing.
    await acts.cancels.cancel(order_id, "cancelled by the customer")
    await acts.watch.check(order)
    assert (await get(worker.pool, order_id)).status == S.REFUND_PENDING
    assert await event_types(worker.pool, order_id) == ["refund_requested"]
    assert await assert_each_status_entered_once(worker.pool, order_id) == [
        "pending_payment",
        "paid",
        "allocating_number",
        "waiting_for_sms",
        "refund_pending",
    ]


async def test_cancel_after_an_unpolled_sms_delivers_the_code_instead(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    order = await waiting_order(worker, acts)
    order_id, activation_id = order.id, order.activation_id
    await sim.deliver(activation_id, "556677")

    await acts.cancels.cancel(order_id, "cancelled by the customer")

    done = await get(worker.pool, order_id)
    assert done.status == S.COMPLETED
    assert done.code == "556677"
    assert await acts.finisher.finish_due() == 1  # finishing at the provider follows the completion
    assert (await sim.activation(activation_id))["status"] == "FINISHED"
    assert await event_types(worker.pool, order_id) == ["completed"]
    assert Timer.PURGE_CODE in await timers(worker.pool, order_id)
    entered = await assert_each_status_entered_once(worker.pool, order_id)
    assert "refund_pending" not in entered


class SmsRightAfterPoll(HeroSmsClient):
    """The real client, but an SMS reaches the provider right after the next poll answered."""

    def __init__(self, url: str, sim: Sim) -> None:
        super().__init__(url, API_KEY)
        self.sim = sim
        self.arm: tuple[str | None, str] | None = None

    async def poll(self, activation_id: str) -> Any:
        status = await super().poll(activation_id)
        if self.arm is not None and self.arm[0] == activation_id:
            _, code = self.arm
            self.arm = None
            await self.sim.deliver(activation_id, code)
        return status


@pytest.mark.parametrize("style", ["herosms", "smsactivate"])
async def test_sms_arriving_between_cancel_poll_and_provider_cancel_is_delivered(
    settings: Settings, smssim_url: str, sim: Sim, style: str
) -> None:
    await sim.config(errorStyle=style)
    provider = SmsRightAfterPoll(smssim_url, sim)
    try:
        async with open_worker("provider", settings, asyncio.Event()) as worker:
            acts = provider_stage(worker, provider)
            order = await waiting_order(worker, acts)
            order_id, activation_id = order.id, order.activation_id
            provider.arm = (activation_id, "314159")

            await acts.cancels.cancel(order_id, "cancelled by the customer")

            done = await get(worker.pool, order_id)
            assert provider.arm is None  # the SMS really came after cancel's first look
            assert done.status == S.COMPLETED
            assert done.code == "314159"
            assert await acts.finisher.finish_due() == 1
            assert (await sim.activation(activation_id))["status"] == "FINISHED"
            assert await event_types(worker.pool, order_id) == ["completed"]
            entered = await assert_each_status_entered_once(worker.pool, order_id)
            assert "refund_pending" not in entered
    finally:
        await provider.close()


async def test_cancel_too_early_for_the_provider_is_retried(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    await sim.config(earlyCancelSeconds=600)
    order = await waiting_order(worker, acts)
    order_id, activation_id = order.id, order.activation_id

    with pytest.raises(Retry) as raised:
        await acts.cancels.cancel(order_id, "cancelled by the customer")

    assert raised.value.delay > 0
    assert (await get(worker.pool, order_id)).status == S.WAITING_FOR_SMS
    assert (await sim.activation(activation_id))["status"] == "WAIT_CODE"
    assert await event_types(worker.pool, order_id) == []
    assert Timer.SMS_TIMEOUT in await timers(worker.pool, order_id)

    # The redelivery after the provider's minimum age goes through.
    await sim.config(earlyCancelSeconds=0)
    await acts.cancels.cancel(order_id, "cancelled by the customer")
    assert (await get(worker.pool, order_id)).status == S.REFUND_PENDING
    assert (await sim.activation(activation_id))["status"] == "CANCEL"
    await assert_each_status_entered_once(worker.pool, order_id)


async def test_timeout_of_an_order_that_never_got_a_number_refunds_it(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    # Paid, but the paid event was lost: no number was ever bought. Then the deadline fires.
    order_id = await paid_order(worker.pool, worker.settings)
    await worker.pool.execute(
        "UPDATE timers SET fired_at = now() WHERE order_id = $1 AND kind = $2",
        order_id,
        Timer.SMS_TIMEOUT,
    )

    await acts.cancels.cancel(order_id, "no SMS before the deadline")

    order = await get(worker.pool, order_id)
    armed = await timers(worker.pool, order_id)
    await assert_each_status_entered_once(worker.pool, order_id)
    assert [a for a in await sim.activations() if a["status"] == "WAIT_CODE"] == [], (
        "a number was bought after the deadline and kept"
    )
    assert order.status == S.REFUND_PENDING, (
        f"left {order.status} after the deadline; sms_timeout fired_at="
        f"{armed[Timer.SMS_TIMEOUT]['fired_at']}"
    )
    assert await event_types(worker.pool, order_id) == ["refund_requested"]


# ----------------------------------------------------------------------------- races


@pytest.mark.parametrize("sms", ["before", "racing", "none"])
async def test_concurrent_check_and_cancel_end_in_exactly_one_outcome(
    stage: tuple[Worker, ProviderStage], sim: Sim, sms: str
) -> None:
    worker, acts = stage
    rounds = 6
    outcomes: Counter[str] = Counter()
    for i in range(rounds):
        order = await waiting_order(worker, acts)
        order_id, activation_id = order.id, order.activation_id
        code = f"{900000 + i}"
        if sms == "before":
            await sim.deliver(activation_id, code)
        polled = await claim_for_poll(worker.pool, order_id)

        async def deliver_late(
            delay: float, activation_id: str | None = activation_id, code: str = code
        ) -> bool:
            await asyncio.sleep(delay)
            async with sim.session.post(
                f"{sim.url}/sim/activations/{activation_id}/sms", json={"code": code}
            ) as resp:
                return resp.status == 200  # 409 once the activation is cancelled

        jobs: list[Any] = [
            acts.watch.check(polled),
            acts.cancels.cancel(order_id, "race"),
            acts.watch.check(polled),
        ]
        if sms == "racing":
            jobs.insert(i % 3, deliver_late(0.002 * i))
        results = await asyncio.gather(*jobs)
        sms_arrived = sms == "before" or (sms == "racing" and any(r is True for r in results))

        final = await get(worker.pool, order_id)
        await acts.finisher.finish_due()  # a completed order's activation is finished after it
        activation = await sim.activation(activation_id)
        events = await event_types(worker.pool, order_id)
        entered = await assert_each_status_entered_once(worker.pool, order_id)
        outcomes[final.status] += 1
        assert final.status in (S.COMPLETED, S.REFUND_PENDING), final.status
        assert ("completed" in entered) != ("refund_pending" in entered), entered
        if final.status == S.COMPLETED:
            assert final.code == code
            assert activation["status"] == "FINISHED"
            assert events == ["completed"]
        else:
            assert final.code is None
            assert activation["status"] == "CANCEL" and activation["codes"] == []
            assert events == ["refund_requested"]
        # An SMS that reached the provider is always delivered, never refunded.
        assert (final.status == S.COMPLETED) == sms_arrived
    if sms == "before":
        assert outcomes == {S.COMPLETED: rounds}
    if sms == "none":
        assert outcomes == {S.REFUND_PENDING: rounds}


async def test_a_number_dearer_than_the_customer_paid_for_is_not_bought(
    stage: tuple[Worker, ProviderStage], sim: Sim
) -> None:
    worker, acts = stage
    # Quoted at 0.01 USD; the simulator now asks more than 0.01 x PRICE_MULTIPLIER.
    order_id = await paid_order(worker.pool, worker.settings, cost_usd=Decimal("0.01"))
    await acts.allocation.allocate(order_id)
    order = await get(worker.pool, order_id)
    assert order.status == S.REFUND_PENDING
    assert order.activation_id is None
    assert await sim.activations() == []
    refund = await worker.stores.refunds.get(order_id)
    assert refund is not None and refund.amount_sats == order.price_sats
