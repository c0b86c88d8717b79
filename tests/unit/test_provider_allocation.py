"""The allocation policy on the twin: buy, reactivate and rent, refund, retry until the deadline."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from libs.common.adapters import sms
from libs.common.domain.alarms import Alarm
from libs.common.domain.events import EventType, Timer
from libs.common.domain.orders import OrderType, Status
from libs.common.messaging.bus import Retry
from tests.unit.provider_kit import Twin

S = Status


async def assert_refunded_in_full(twin: Twin, order_id: str) -> None:
    """refund_pending, with an intent for the whole price and its event, deadline disarmed."""
    order = await twin.order(order_id)
    assert order.status is S.REFUND_PENDING
    refund = await twin.stores.refunds.get(order_id)
    assert refund is not None and refund.amount_sats == order.price_sats
    assert twin.event_types(order_id) == [EventType.PAID, EventType.REFUND_REQUESTED]
    assert twin.stores.timer_due(order_id, Timer.SMS_TIMEOUT) is None


async def test_a_number_is_bought_once_within_the_price_cap() -> None:
    twin = Twin()
    order_id = await twin.paid(cost_usd="0.48")

    await twin.event(EventType.PAID, order_id)
    await twin.event(EventType.PAID, order_id)  # a redelivery buys nothing more

    order = await twin.order(order_id)
    assert order.status is S.WAITING_FOR_SMS and order.activation_id == "act-1"
    assert twin.sms.called("buy") == [Decimal("0.72")]  # the quote x PRICE_MULTIPLIER
    assert order.next_poll_at == twin.clock()  # polled at once


async def test_no_stock_refunds() -> None:
    twin = Twin()
    twin.sms.errors["buy"] = sms.NoNumbers()
    order_id = await twin.paid()

    await twin.event(EventType.PAID, order_id)

    await assert_refunded_in_full(twin, order_id)
    assert (await twin.order(order_id)).activation_id is None


async def test_a_number_dearer_than_the_quote_is_not_bought_and_refunds() -> None:
    twin = Twin()
    twin.sms.price_usd = Decimal("0.50")
    order_id = await twin.paid(cost_usd="0.01")  # cap 0.015 USD

    await twin.event(EventType.PAID, order_id)

    await assert_refunded_in_full(twin, order_id)


async def test_a_transient_error_is_retried_until_the_allocation_deadline_then_refunds() -> None:
    twin = Twin(allocation_deadline_seconds=120)
    twin.sms.errors["buy"] = sms.ProviderUnavailable("HTTP_503")
    order_id = await twin.paid()

    for _ in range(3):
        with pytest.raises(Retry) as retry:
            await twin.event(EventType.PAID, order_id)
        assert retry.value.delay >= 1.0  # never a hot loop
        assert (await twin.order(order_id)).status is S.ALLOCATING_NUMBER
        twin.clock.advance(39)
    twin.clock.advance(2)  # 119 s after payment: still retried
    with pytest.raises(Retry):
        await twin.event(EventType.PAID, order_id)
    twin.clock.advance(1)  # the deadline, by the database clock

    await twin.event(EventType.PAID, order_id)

    await assert_refunded_in_full(twin, order_id)
    assert len(twin.sms.called("buy")) == 5


async def test_the_deadline_is_judged_by_the_database_clock_not_the_workers() -> None:
    twin = Twin(allocation_deadline_seconds=120)
    # The database's clock is years behind this worker's: its deadline is not over.
    twin.clock.at = datetime(2020, 1, 1, tzinfo=UTC)
    twin.sms.errors["buy"] = sms.ProviderUnavailable("HTTP_503")
    order_id = await twin.paid()

    with pytest.raises(Retry):
        await twin.event(EventType.PAID, order_id)
    assert (await twin.order(order_id)).status is S.ALLOCATING_NUMBER


async def test_no_balance_refunds_raises_the_alarm_until_the_balance_covers_it() -> None:
    twin = Twin()
    twin.sms.errors["buy"] = sms.InsufficientBalance()
    order_id = await twin.paid(cost_usd="0.75")

    await twin.event(EventType.PAID, order_id)

    await assert_refunded_in_full(twin, order_id)
    assert await twin.stores.alarms.active(Alarm.NO_BALANCE) == ("0.75", twin.clock())
    twin.sms.balance = Decimal("0.50")  # short of the refused purchase: stays up
    await twin.stage.alarm.check()
    assert await twin.stores.alarms.active(Alarm.NO_BALANCE) is not None
    twin.sms.balance = Decimal("0.75")
    await twin.stage.alarm.check()
    assert await twin.stores.alarms.active(Alarm.NO_BALANCE) is None


async def test_a_reactivation_dearer_than_the_quote_is_cancelled_and_refunded() -> None:
    twin = Twin()
    earlier = await twin.waiting()
    twin.sms_arrives(earlier.activation_id, "1111")
    await twin.poll_once()
    await twin.event(EventType.CODE_WINDOW_ENDED, earlier.id)
    assert (await twin.order(earlier.id)).status is S.COMPLETED
    twin.sms.price_usd = Decimal("0.80")  # the price rose; reactivate takes no maxPrice
    order_id = await twin.paid(
        type_=OrderType.RECEIVE_SMS_REACTIVATE, cost_usd="0.48", reactivates=earlier.id
    )

    await twin.event(EventType.PAID, order_id)

    await assert_refunded_in_full(twin, order_id)
    assert (await twin.order(order_id)).activation_id is None
    # The earlier activation was finished first (the provider reactivates only finished
    # ones), and the dear new one was cancelled at the provider.
    assert twin.sms.called("finish") == [earlier.activation_id]
    assert twin.sms.called("reactivate") == [earlier.activation_id]
    assert twin.sms.called("cancel") == ["act-2"]
    assert (await twin.order(earlier.id)).finish_due_at is None


async def test_a_reactivation_within_the_quote_reuses_the_number() -> None:
    twin = Twin()
    earlier = await twin.waiting()
    twin.sms_arrives(earlier.activation_id, "1111")
    await twin.poll_once()
    await twin.event(EventType.CODE_WINDOW_ENDED, earlier.id)
    twin.sms.price_usd = Decimal("0.70")  # within 0.48 x 1.5
    order_id = await twin.paid(
        type_=OrderType.RECEIVE_SMS_REACTIVATE, cost_usd="0.48", reactivates=earlier.id
    )

    await twin.event(EventType.PAID, order_id)

    order = await twin.order(order_id)
    assert order.status is S.WAITING_FOR_SMS and order.phone_number == earlier.phone_number


async def test_a_rental_is_rented_at_the_quote_with_its_end_timer() -> None:
    twin = Twin()
    order_id = await twin.paid(type_=OrderType.RENT_NUMBER, rent_hours=4, cost_usd="0.50")

    await twin.event(EventType.PAID, order_id)

    order = await twin.order(order_id)
    assert order.status is S.RENT_ACTIVE and order.rent_ends_at is not None
    assert order.deadline_at == order.rent_ends_at
    assert twin.stores.timer_due(order_id, Timer.RENT_END) == order.rent_ends_at
    assert twin.stores.timer_due(order_id, Timer.SMS_TIMEOUT) is None


@pytest.mark.parametrize("why", ["dearer", "unlisted"])
async def test_a_rental_dearer_than_the_quote_or_unlisted_is_not_rented_and_refunds(
    why: str,
) -> None:
    twin = Twin()
    if why == "dearer":
        twin.sms.price_usd = Decimal("1.00")  # cap 0.75
    else:
        twin.sms.rent_offers_listed = False
    order_id = await twin.paid(type_=OrderType.RENT_NUMBER, rent_hours=4, cost_usd="0.50")

    await twin.event(EventType.PAID, order_id)

    await assert_refunded_in_full(twin, order_id)
    assert twin.sms.called("rent") == []
