"""Rentals on the twin: SMS collected once, the end on time, and an early end's partial refund."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from libs.common.domain.events import EventType, Timer
from libs.common.domain.orders import Order, OrderType, PaymentMode, Status
from libs.common.domain.sms_port import RentMessage
from libs.common.messaging.bus import Retry
from tests.unit.provider_kit import Twin

S = Status


async def rented(twin: Twin, **kind: Any) -> Order:
    """A rent-number order for 4 hours, rented (1,440 sats: one sat per 10 s)."""
    order_id = await twin.paid(
        type_=OrderType.RENT_NUMBER, rent_hours=4, cost_usd="0.50", price_sats=1440, **kind
    )
    await twin.event(EventType.PAID, order_id)
    order = await twin.order(order_id)
    assert order.status is S.RENT_ACTIVE and order.activation_id is not None
    return order


async def test_a_rental_stores_each_sms_once_and_completes_at_its_end() -> None:
    twin = Twin()
    order = await rented(twin)
    assert order.activation_id is not None and order.rent_ends_at is not None
    twin.sms.rent_inbox[order.activation_id] = [
        RentMessage("+1555", "Your code is 4711", twin.clock(), "tg")
    ]
    for _ in range(2):  # polled twice: stored once
        assert await twin.stage.rentals.collect(await twin.order(order.id))
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["4711"]

    # Before its end by the database clock, the end event is tried again later.
    twin.clock.advance(4 * 3600 - 30)
    with pytest.raises(Retry) as early:
        await twin.event(EventType.RENT_ENDED, order.id)
    assert early.value.delay == 31.0
    twin.clock.at = order.rent_ends_at

    await twin.event(EventType.RENT_ENDED, order.id)

    assert (await twin.order(order.id)).status is S.COMPLETED
    assert twin.stores.timer_due(order.id, Timer.PURGE_CODE) is not None
    assert await twin.stores.refunds.get(order.id) is None
    assert twin.event_types(order.id) == [EventType.PAID, EventType.COMPLETED]


async def test_a_rental_the_provider_ends_early_is_refunded_the_unused_share() -> None:
    twin = Twin(rent_poll_interval_seconds=10.0)
    order = await rented(twin)
    assert order.activation_id is not None
    twin.clock.advance(2 * 3600)  # half the rental has passed
    twin.sms.ended_rentals.add(order.activation_id)

    # The rent poller finds it over at the provider and ends it.
    poller = asyncio.create_task(twin.stage.rentals.poll_forever())
    for _ in range(100):
        if (await twin.order(order.id)).status is not S.RENT_ACTIVE:
            break
        await asyncio.sleep(0.01)
    twin.stop.set()
    await asyncio.wait_for(poller, 5)

    ended = await twin.order(order.id)
    assert ended.status is S.REFUND_PENDING
    refund = await twin.stores.refunds.get(order.id)
    # 2 h unused, plus the poll interval in which it may have ended unseen: 7,210 s of
    # 14,400, rounded up: 721 of 1,440 sats.
    assert refund is not None and refund.amount_sats == 721
    assert twin.event_types(order.id) == [EventType.PAID, EventType.REFUND_REQUESTED]
    assert twin.stores.timer_due(order.id, Timer.RENT_END) is None
    assert twin.stores.timer_due(order.id, Timer.PURGE_CODE) is not None
    # Its end timer later changes nothing.
    await twin.stage.rentals.end(order.id, ended_at_provider=True)
    assert (await twin.order(order.id)).status is S.REFUND_PENDING


async def test_a_rental_the_provider_ends_within_the_tolerance_completes_unrefunded() -> None:
    twin = Twin()
    order = await rented(twin)
    assert order.rent_ends_at is not None
    twin.clock.at = order.rent_ends_at - timedelta(seconds=30)  # its clock a little ahead

    await twin.stage.rentals.end(order.id, ended_at_provider=True)

    assert (await twin.order(order.id)).status is S.COMPLETED
    assert await twin.stores.refunds.get(order.id) is None


async def test_a_classic_rental_ended_early_completes_without_a_refund_payment() -> None:
    twin = Twin()
    order = await rented(twin, mode=PaymentMode.BALANCE, account_id=1)
    twin.clock.advance(3600)

    await twin.stage.rentals.end(order.id, ended_at_provider=True)

    assert (await twin.order(order.id)).status is S.COMPLETED
    assert await twin.stores.refunds.get(order.id) is None
