"""Rentals, reactivations, another SMS and provider faults in the provider worker, against the
simulator and real PostgreSQL/NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings
from libs.common.core.metrics import PROVIDER_NO_BALANCE
from libs.common.domain.alarms import Alarm
from libs.common.domain.orders import Order, Status
from libs.common.domain.refunds import RefundStatus
from libs.common.messaging.bus import Retry
from libs.common.messaging.runtime import Worker, open_worker
from libs.common.persistence.db import Q
from services.provider.service import ProviderStage
from tests.integration.helpers import insert_order
from tests.integration.test_provider_stage import (  # noqa: F401  (fixtures)
    API_KEY,
    Sim,
    assert_each_status_entered_once,
    claim_for_poll,
    get,
    provider_stage,
    settings,
    sim,
    smssim_url,
    timers,
)

pytestmark = pytest.mark.integration
S = Status


class Stage:
    """A provider worker's parts talking to the simulator."""

    def __init__(self, worker: Worker, provider: HeroSmsClient, acts: ProviderStage) -> None:
        self.worker = worker
        self.provider = provider
        self.pool = worker.pool
        self.stores = worker.stores
        self.acts = acts
        self.rentals = acts.rentals


@pytest.fixture
async def stage(settings: Settings, smssim_url: str) -> AsyncIterator[Stage]:  # noqa: F811
    """The worker with a 60 s another-SMS window and a short provider timeout."""
    tuned = replace(settings, another_sms_window_seconds=60.0, balance_check_seconds=0.1)
    provider = HeroSmsClient(smssim_url, API_KEY, timeout=1.0, max_wait=0.5, max_retries=0)
    try:
        async with open_worker("provider", tuned, asyncio.Event()) as worker:
            yield Stage(worker, provider, provider_stage(worker, provider))
    finally:
        await provider.close()


async def paid(stage: Stage, **kind: Any) -> str:
    """An order of the given kind, made paid as the invoice watcher does."""
    order_id = await insert_order(stage.pool, **kind)
    async with stage.stores.transaction() as tx:
        assert await tx.orders.mark_paid(
            order_id, deadline=stage.worker.settings.order_timeout_seconds
        )
    return order_id


async def completed_receive_sms(
    stage: Stage,
    sim: Sim,  # noqa: F811
    *,
    finished: bool = True,
) -> Order:
    """A receive-sms order whose code came and whose window closed (and, unless `finished` is
    false, whose activation the housekeeping already finished at the provider)."""
    order_id = await paid(stage)
    await stage.acts.allocation.allocate(order_id)
    order = await get(stage.pool, order_id)
    await sim.deliver(order.activation_id, "11111")
    await stage.acts.watch.check(await claim_for_poll(stage.pool, order_id))
    await stage.acts.watch.close(order_id)
    if finished:
        await stage.acts.finisher.finish_due()
    order = await get(stage.pool, order_id)
    assert order.status == S.COMPLETED
    return order


async def balance_checks(sim: Sim) -> int:  # noqa: F811
    """How many getBalance calls the simulator answered."""
    return int((await sim.request("GET", "/sim/stats"))["actions"].get("getBalance", 0))


async def refund_rows(pool: asyncpg.Pool, order_id: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM refunds WHERE order_id = $1", order_id))


# ----------------------------------------------------------------------------- rentals


async def test_a_rental_collects_each_sms_once_and_completes_at_its_end(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await paid(stage, order_type="rent-number", rent_hours=4)

    await stage.acts.allocation.allocate(order_id)
    await stage.acts.allocation.allocate(order_id)  # a redelivered paid event rents nothing more

    order = await get(stage.pool, order_id)
    assert order.status == S.RENT_ACTIVE
    rentals = await sim.request("GET", "/sim/rentals")
    assert len(rentals) == 1
    assert order.activation_id == rentals[0]["rentId"]
    assert order.phone_number == rentals[0]["phoneNumber"] and rentals[0]["hours"] == 4
    assert order.rent_ends_at is not None
    hours = (order.rent_ends_at - datetime.now(UTC)).total_seconds() / 3600
    assert 3.9 < hours <= 4.0
    assert order.deadline_at == order.rent_ends_at
    armed = await timers(stage.pool, order_id)
    assert "sms_timeout" not in armed and armed["rent_end"]["in_seconds"] > 3.9 * 3600

    for text in ("Your code is 4711", "Your code is 4712"):
        await sim.request("POST", "/sim/rent-sms", {"rentId": order.activation_id, "text": text})
    # Polled twice (and the webhook would add the same again): each SMS is stored once.
    for _ in range(2):
        assert await stage.rentals.collect(await get(stage.pool, order_id))
    stored = await stage.stores.messages.for_order(order_id)
    # Both arrived within one second: their order between themselves is not defined.
    assert sorted((m.text, m.code) for m in stored) == [
        ("Your code is 4711", "4711"),
        ("Your code is 4712", "4712"),
    ]

    # An end event ahead of this worker's clock is tried again later; after it, it completes.
    with pytest.raises(Retry) as early:
        await stage.rentals.end(order_id)
    assert early.value.delay == 60.0
    assert (await get(stage.pool, order_id)).status == S.RENT_ACTIVE
    await stage.pool.execute(
        "UPDATE orders SET rent_ends_at = now() - interval '1 second' WHERE id = $1", order_id
    )
    await stage.rentals.end(order_id)
    assert (await get(stage.pool, order_id)).status == S.COMPLETED
    assert "purge_code" in await timers(stage.pool, order_id)
    assert await refund_rows(stage.pool, order_id) == 0
    await stage.pool.execute(Q.messages_purge, order_id)
    assert all(
        m.text is None and m.code is None for m in await stage.stores.messages.for_order(order_id)
    )
    assert await assert_each_status_entered_once(stage.pool, order_id) == [
        "pending_payment",
        "paid",
        "allocating_number",
        "rent_active",
        "completed",
    ]


async def run_rent_poller(stage: Stage, order_id: str, until: set[Status]) -> Order:
    """Run the rental poller until the order reaches one of `until` (10 s at most)."""
    poller = asyncio.create_task(stage.rentals.poll_forever())
    try:
        for _ in range(200):
            order = await get(stage.pool, order_id)
            if order.status in until:
                return order
            await asyncio.sleep(0.05)
    finally:
        stage.worker.stop.set()
        await poller
    return await get(stage.pool, order_id)


async def test_a_rental_the_provider_ends_early_is_refunded_the_unused_time(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    # 1,440 sats for 4 hours: one sat per 10 s of rental.
    order_id = await paid(stage, order_type="rent-number", rent_hours=4, price_sats=1_440)
    await stage.acts.allocation.allocate(order_id)
    rent_id = (await get(stage.pool, order_id)).activation_id
    await sim.request("POST", "/sim/rent-sms", {"rentId": rent_id, "text": "Code 12345"})
    assert await stage.rentals.collect(await get(stage.pool, order_id))
    # Half the rental has passed (by our clock) when the provider ends it.
    await stage.pool.execute(
        "UPDATE orders SET rent_ends_at = now() + interval '2 hours' WHERE id = $1", order_id
    )
    await sim.request("POST", f"/sim/rentals/{rent_id}/end", {"status": "cancel"})

    order = await run_rent_poller(stage, order_id, {S.REFUND_PENDING, S.COMPLETED})

    assert order.status == S.REFUND_PENDING
    refund = await stage.stores.refunds.get(order_id)
    assert refund is not None and refund.status is RefundStatus.PENDING
    # ceil(1440 x (2 h + the 10 s poll interval, less the test's few seconds) / 4 h): 721.
    assert 720 < refund.amount_sats <= 721
    assert await refund_rows(stage.pool, order_id) == 1
    # The SMS that came before the end stays the customer's, and is purged on schedule.
    assert [m.text for m in await stage.stores.messages.for_order(order_id)] == ["Code 12345"]
    armed = await timers(stage.pool, order_id)
    assert "rent_end" not in armed and "purge_code" in armed
    # The rent_end timer (or a redelivered event) later changes nothing.
    await stage.rentals.end(order_id, ended_at_provider=True)
    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING
    assert await refund_rows(stage.pool, order_id) == 1
    await assert_each_status_entered_once(stage.pool, order_id)


async def test_a_rental_the_provider_ends_at_its_end_completes_without_refund(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await paid(stage, order_type="rent-number", rent_hours=4)
    await stage.acts.allocation.allocate(order_id)
    rent_id = (await get(stage.pool, order_id)).activation_id
    # The provider's clock is a little ahead of ours: it ends the rental 30 s "early".
    await stage.pool.execute(
        "UPDATE orders SET rent_ends_at = now() + interval '30 seconds' WHERE id = $1", order_id
    )
    await sim.request("POST", f"/sim/rentals/{rent_id}/end", {"status": "finish"})

    order = await run_rent_poller(stage, order_id, {S.REFUND_PENDING, S.COMPLETED})

    assert order.status == S.COMPLETED
    assert await refund_rows(stage.pool, order_id) == 0


async def test_a_rental_that_cannot_be_allocated_is_refunded(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.request(
        "POST", "/sim/faults", {"mode": "error", "code": "NO_NUMBERS", "actions": ["getRentNumber"]}
    )
    order_id = await paid(stage, order_type="rent-number", rent_hours=4)

    await stage.acts.allocation.allocate(order_id)

    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING
    assert await refund_rows(stage.pool, order_id) == 1
    assert await sim.request("GET", "/sim/rentals") == []


# ----------------------------------------------------------------------------- reactivation


async def test_a_reactivation_reuses_the_number_and_is_not_refunded_without_sms(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    earlier = await completed_receive_sms(stage, sim)
    order_id = await paid(stage, order_type="receive-sms-reactivate", reactivates=earlier.id)

    await stage.acts.allocation.allocate(order_id)

    order = await get(stage.pool, order_id)
    assert order.status == S.WAITING_FOR_SMS
    assert order.phone_number == earlier.phone_number
    assert order.activation_id != earlier.activation_id
    assert (await sim.activation(order.activation_id))["phoneNumber"] == earlier.phone_number

    # The SMS deadline passes without a code: cancelled at the provider, not refunded.
    await stage.acts.cancels.cancel(order_id, "no SMS before the deadline")
    assert (await get(stage.pool, order_id)).status == S.FAILED
    assert await refund_rows(stage.pool, order_id) == 0
    assert (await sim.activation(order.activation_id))["status"] == "CANCEL"


async def test_a_reactivation_right_after_completion_finishes_the_earlier_activation_first(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    # The customer asks again before the housekeeping finished the earlier activation; the
    # provider reactivates only a finished one.
    earlier = await completed_receive_sms(stage, sim, finished=False)
    assert (await sim.activation(earlier.activation_id))["status"] != "FINISHED"
    order_id = await paid(stage, order_type="receive-sms-reactivate", reactivates=earlier.id)

    await stage.acts.allocation.allocate(order_id)

    order = await get(stage.pool, order_id)
    assert order.status == S.WAITING_FOR_SMS
    assert order.phone_number == earlier.phone_number
    assert (await sim.activation(earlier.activation_id))["status"] == "FINISHED"
    assert (await get(stage.pool, earlier.id)).finish_due_at is None


async def test_a_reactivation_the_provider_refuses_is_refunded(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    earlier = await completed_receive_sms(stage, sim)
    await sim.request(
        "POST",
        "/sim/faults",
        {"mode": "error", "code": "NO_NUMBERS", "actions": ["reactivate", "getExtraActivation"]},
    )
    order_id = await paid(stage, order_type="receive-sms-reactivate", reactivates=earlier.id)

    await stage.acts.allocation.allocate(order_id)

    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING
    assert await refund_rows(stage.pool, order_id) == 1


# ----------------------------------------------------------------------------- price caps


async def test_a_reactivation_dearer_than_the_quote_is_cancelled_and_refunded(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    earlier = await completed_receive_sms(stage, sim)
    # Quoted at the provider's price then (cap: x1.5 = 0.72 USD); the price rises before
    # the reactivation is bought, and `reactivate` takes no maxPrice.
    order_id = await paid(
        stage,
        order_type="receive-sms-reactivate",
        reactivates=earlier.id,
        cost_usd=Decimal("0.48"),
    )
    await sim.request("POST", "/sim/stock", {"country": 187, "service": "tg", "cost": 0.80})

    await stage.acts.allocation.allocate(order_id)

    order = await get(stage.pool, order_id)
    assert order.status == S.REFUND_PENDING
    assert order.activation_id is None  # the dear number is never shown
    assert await refund_rows(stage.pool, order_id) == 1
    bought = [a for a in await sim.request("GET", "/sim/activations") if a["cost"] == 0.8]
    assert len(bought) == 1 and bought[0]["status"] == "CANCEL"  # cancelled at the provider
    await assert_each_status_entered_once(stage.pool, order_id)


async def test_a_reactivation_within_the_quote_is_bought(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    earlier = await completed_receive_sms(stage, sim)
    order_id = await paid(
        stage,
        order_type="receive-sms-reactivate",
        reactivates=earlier.id,
        cost_usd=Decimal("0.48"),
    )
    # Dearer than the quoted cost, but within cost x PRICE_MULTIPLIER (0.72 USD).
    await sim.request("POST", "/sim/stock", {"country": 187, "service": "tg", "cost": 0.70})

    await stage.acts.allocation.allocate(order_id)

    assert (await get(stage.pool, order_id)).status == S.WAITING_FOR_SMS


async def test_a_rental_dearer_than_the_quote_is_not_rented_and_refunded(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    offers = await stage.provider.rent_offers(4, 187)
    quoted = next(o.cost_usd for o in offers.offers if o.service == "tg")
    order_id = await paid(stage, order_type="rent-number", rent_hours=4, cost_usd=quoted)
    # The pair's price more than doubles after the quote; getRentNumber takes no maxPrice.
    await sim.request("POST", "/sim/stock", {"country": 187, "service": "tg", "cost": 1.00})

    await stage.acts.allocation.allocate(order_id)

    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING
    assert await refund_rows(stage.pool, order_id) == 1
    assert await sim.request("GET", "/sim/rentals") == []  # nothing rented, nothing paid


async def test_a_rental_at_the_quoted_price_is_rented(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    offers = await stage.provider.rent_offers(4, 187)
    quoted = next(o.cost_usd for o in offers.offers if o.service == "tg")
    order_id = await paid(stage, order_type="rent-number", rent_hours=4, cost_usd=quoted)

    await stage.acts.allocation.allocate(order_id)

    assert (await get(stage.pool, order_id)).status == S.RENT_ACTIVE
    assert len(await sim.request("GET", "/sim/rentals")) == 1


# ----------------------------------------------------------------------------- another SMS


async def test_another_sms_on_the_same_number_shows_the_new_code(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await paid(stage)
    await stage.acts.allocation.allocate(order_id)
    activation_id = (await get(stage.pool, order_id)).activation_id
    await sim.deliver(activation_id, "22222")
    await stage.acts.watch.check(await claim_for_poll(stage.pool, order_id))

    order = await get(stage.pool, order_id)
    assert order.status == S.CODE_RECEIVED and order.code == "22222"
    assert order.next_poll_at is None  # nothing to poll until another SMS is asked for
    window = (await timers(stage.pool, order_id))["code_window"]["in_seconds"]
    assert 55 < window <= 60

    await stage.acts.watch.request_another(order_id)
    assert (await sim.activation(activation_id))["status"] == "WAIT_RETRY"
    claimed = await claim_for_poll(stage.pool, order_id)
    await stage.acts.watch.check(claimed)  # still the first code: nothing changes
    assert (await get(stage.pool, order_id)).code == "22222"

    await sim.deliver(activation_id, "33333")
    await stage.acts.watch.check(await claim_for_poll(stage.pool, order_id))
    order = await get(stage.pool, order_id)
    assert order.status == S.CODE_RECEIVED and order.code == "33333"
    assert [m.code for m in await stage.stores.messages.for_order(order_id)] == ["22222", "33333"]

    # The window's end completes the order; the activation is finished at the provider after.
    await stage.acts.watch.close(order_id)
    assert (await get(stage.pool, order_id)).status == S.COMPLETED
    assert await stage.acts.finisher.finish_due() == 1
    assert (await sim.activation(activation_id))["status"] == "FINISHED"
    assert await refund_rows(stage.pool, order_id) == 0


async def test_a_finish_the_provider_fails_still_completes_when_the_window_closes(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await paid(stage)
    await stage.acts.allocation.allocate(order_id)
    activation_id = (await get(stage.pool, order_id)).activation_id
    await sim.deliver(activation_id, "44444")
    await stage.acts.watch.check(await claim_for_poll(stage.pool, order_id))
    fault = {"mode": "error", "actions": ["setStatus"], "times": None}
    await sim.request("POST", "/sim/faults", fault)

    # The code was delivered: an unreachable provider does not keep the order open.
    await stage.acts.watch.close(order_id)
    assert (await get(stage.pool, order_id)).status == S.COMPLETED
    assert await stage.acts.finisher.finish_due() == 1
    assert (await sim.activation(activation_id))["status"] != "FINISHED"
    assert (await get(stage.pool, order_id)).finish_due_at is not None  # tried again later


# ----------------------------------------------------------------------------- provider faults


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "error", "status": 503},
        {"mode": "error", "code": "ERROR_SQL"},
        {"mode": "garbage", "kind": "html"},
        {"mode": "delay", "seconds": 3},  # longer than the client's 1 s timeout
    ],
    ids=["http-503", "error-sql", "garbage", "slow"],
)
async def test_a_failing_provider_is_retried_until_the_allocation_deadline_then_refunded(
    stage: Stage,
    sim: Sim,  # noqa: F811
    fault: dict[str, Any],
) -> None:
    await sim.request("POST", "/sim/faults", {**fault, "actions": ["getNumberV2"], "times": None})
    order_id = await paid(stage)

    with pytest.raises(Retry) as retry:
        await stage.acts.allocation.allocate(order_id)
    assert retry.value.delay >= 1.0  # never a hot loop
    assert (await get(stage.pool, order_id)).status == S.ALLOCATING_NUMBER

    await stage.pool.execute(
        "UPDATE orders SET paid_at = now() - interval '1 hour' WHERE id = $1", order_id
    )
    await stage.acts.allocation.allocate(order_id)
    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING
    assert await refund_rows(stage.pool, order_id) == 1


async def test_an_unreachable_provider_delays_a_refund_only_until_past_the_deadline(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await paid(stage)
    await stage.acts.allocation.allocate(order_id)
    await sim.request("POST", "/sim/faults", {"mode": "error", "status": 503, "times": None})

    with pytest.raises(Retry):
        await stage.acts.cancels.cancel(order_id, "no SMS before the deadline")
    assert (await get(stage.pool, order_id)).status == S.WAITING_FOR_SMS

    giveup = stage.worker.settings.provider_giveup_seconds
    await stage.pool.execute(
        "UPDATE orders SET deadline_at = now() - make_interval(secs => $2) WHERE id = $1",
        order_id,
        giveup + 1,
    )
    await stage.acts.cancels.cancel(order_id, "no SMS before the deadline")
    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING


async def test_no_balance_refunds_raises_the_alarm_and_lifts_it_when_topped_up(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.config(balance=0.01)  # a few cents: less than any number costs
    order_id = await paid(stage)

    await stage.acts.allocation.allocate(order_id)

    assert (await get(stage.pool, order_id)).status == S.REFUND_PENDING
    assert await stage.stores.alarms.active(Alarm.NO_BALANCE) is not None
    assert PROVIDER_NO_BALANCE._value.get() == 1

    watcher = asyncio.create_task(stage.acts.alarm.watch_forever())
    try:
        # Several checks: a balance short of the refused purchase keeps the alarm up.
        checked = await balance_checks(sim)
        for _ in range(200):
            if await balance_checks(sim) >= checked + 2:
                break
            await asyncio.sleep(0.05)
        assert await balance_checks(sim) >= checked + 2
        assert await stage.stores.alarms.active(Alarm.NO_BALANCE) is not None
        await sim.config(balance=50)  # topped up
        for _ in range(100):
            if await stage.stores.alarms.active(Alarm.NO_BALANCE) is None:
                break
            await asyncio.sleep(0.05)
        assert await stage.stores.alarms.active(Alarm.NO_BALANCE) is None
        assert PROVIDER_NO_BALANCE._value.get() == 0
    finally:
        stage.worker.stop.set()
        await watcher
