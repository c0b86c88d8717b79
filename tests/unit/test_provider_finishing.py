"""Finish and cancel on the twin: the housekeeping finish's backoff and give-up, and a cancel
that refunds, or delivers an SMS that came late."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.common.adapters import sms
from libs.common.domain.events import EventType, Timer
from libs.common.domain.orders import Order, OrderType, PaymentMode, Status
from libs.common.domain.sms_port import ActivationStatus
from libs.common.messaging.bus import Retry
from tests.unit.provider_kit import Twin

S = Status


async def completed(twin: Twin) -> Order:
    """A prepaid order whose code came: completed at once, its finish armed."""
    order = await twin.waiting(mode=PaymentMode.BALANCE, account_id=1)
    twin.sms_arrives(order.activation_id, "818181")
    await twin.poll_once()
    done = await twin.order(order.id)
    assert done.status is S.COMPLETED and done.finish_due_at == twin.clock()
    return done


async def test_a_finish_is_done_once() -> None:
    twin = Twin()
    order = await completed(twin)

    assert await twin.stage.finisher.finish_due() == 1
    assert await twin.stage.finisher.finish_due() == 0

    assert twin.sms.called("finish") == [order.activation_id]
    done = await twin.order(order.id)
    assert done.finish_due_at is None and done.finish_attempts == 1


async def test_a_failing_finish_backs_off_then_gives_up_after_the_deadline_plus_grace() -> None:
    twin = Twin(provider_finish_retry_seconds=2.0, provider_giveup_seconds=120.0)
    order = await completed(twin)
    twin.sms.errors["finish"] = sms.ProviderUnavailable("HTTP_503")

    for attempt, wait in enumerate([2.0, 4.0, 8.0]):
        assert await twin.stage.finisher.finish_due() == 1
        retried = await twin.order(order.id)
        assert retried.finish_attempts == attempt + 1
        assert retried.finish_due_at == twin.clock() + timedelta(seconds=wait)
        assert await twin.stage.finisher.finish_due() == 0  # not due before its wait
        twin.clock.advance(wait)
    assert retried.status is S.COMPLETED  # the outcome never waited for the provider

    # Past the activation's deadline plus the grace, one more failure ends the retries.
    assert order.deadline_at is not None
    twin.clock.at = order.deadline_at + timedelta(seconds=120)
    assert await twin.stage.finisher.finish_due() == 1
    given_up = await twin.order(order.id)
    assert given_up.finish_due_at is None and given_up.finish_attempts == 4
    assert len(twin.sms.called("finish")) == 4


async def test_the_last_finish_retry_is_at_the_give_up_time() -> None:
    twin = Twin(provider_finish_retry_seconds=2.0, provider_giveup_seconds=120.0)
    order = await completed(twin)
    twin.sms.errors["finish"] = sms.ProviderUnavailable("HTTP_503")
    assert order.deadline_at is not None
    twin.clock.at = order.deadline_at + timedelta(seconds=119)

    await twin.stage.finisher.finish_due()

    assert (await twin.order(order.id)).finish_due_at == order.deadline_at + timedelta(seconds=120)


async def test_cancel_without_sms_cancels_at_the_provider_and_refunds() -> None:
    twin = Twin()
    order = await twin.waiting()

    await twin.event(EventType.CANCEL_REQUESTED, order.id)
    await twin.event(EventType.SMS_TIMEOUT, order.id)  # a late timeout changes nothing

    got = await twin.order(order.id)
    assert got.status is S.REFUND_PENDING and got.code is None
    assert twin.sms.called("cancel") == [order.activation_id]
    assert twin.event_types(order.id) == [EventType.PAID, EventType.REFUND_REQUESTED]
    refund = await twin.stores.refunds.get(order.id)
    assert refund is not None and refund.amount_sats == got.price_sats
    assert twin.stores.timer_due(order.id, Timer.SMS_TIMEOUT) is None


async def test_cancel_delivers_an_sms_that_came_before_it_looked() -> None:
    twin = Twin(another_sms_window_seconds=0.0)
    order = await twin.waiting()
    twin.sms_arrives(order.activation_id, "556677")  # not polled yet

    await twin.event(EventType.CANCEL_REQUESTED, order.id)

    got = await twin.order(order.id)
    assert got.status is S.COMPLETED and got.code == "556677"
    assert twin.sms.called("cancel") == []
    assert twin.event_types(order.id) == [EventType.PAID, EventType.COMPLETED]
    assert await twin.stores.refunds.get(order.id) is None


async def test_cancel_delivers_an_sms_that_came_between_its_look_and_the_provider_cancel() -> None:
    twin = Twin(another_sms_window_seconds=0.0)
    order = await twin.waiting()
    assert order.activation_id is not None
    # The SMS reaches the provider right after cancel's first poll answered "waiting": the
    # provider refuses the cancel (code already received) and the code is delivered.
    twin.sms.after_poll[order.activation_id] = ActivationStatus("received", "314159", "code")

    await twin.event(EventType.CANCEL_REQUESTED, order.id)

    got = await twin.order(order.id)
    assert got.status is S.COMPLETED and got.code == "314159"
    assert twin.sms.called("cancel") == [order.activation_id]
    assert await twin.stores.refunds.get(order.id) is None


async def test_an_unreachable_provider_delays_the_refund_only_until_past_the_deadline() -> None:
    twin = Twin(provider_giveup_seconds=120.0)
    order = await twin.waiting()
    twin.sms.errors["poll"] = sms.ProviderUnavailable("HTTP_503")
    assert order.deadline_at is not None
    twin.clock.at = order.deadline_at + timedelta(seconds=119)

    with pytest.raises(Retry):
        await twin.event(EventType.SMS_TIMEOUT, order.id)
    assert (await twin.order(order.id)).status is S.WAITING_FOR_SMS

    twin.clock.advance(1)
    await twin.event(EventType.SMS_TIMEOUT, order.id)
    assert (await twin.order(order.id)).status is S.REFUND_PENDING


async def test_a_cancel_the_provider_finds_too_early_is_retried() -> None:
    twin = Twin()
    order = await twin.waiting()
    twin.sms.errors["cancel"] = sms.TooEarlyToCancel(seconds=42)

    with pytest.raises(Retry) as retry:
        await twin.event(EventType.CANCEL_REQUESTED, order.id)

    assert retry.value.delay == 42.0
    assert (await twin.order(order.id)).status is S.WAITING_FOR_SMS


async def test_a_timeout_before_any_number_refunds_without_buying() -> None:
    twin = Twin()
    order_id = await twin.paid()  # its paid event was lost

    await twin.event(EventType.SMS_TIMEOUT, order_id)
    await twin.event(EventType.PAID, order_id)  # the paid event, late: buys nothing

    assert (await twin.order(order_id)).status is S.REFUND_PENDING
    assert twin.sms.called("buy") == []


async def test_a_reactivation_without_sms_fails_unrefunded() -> None:
    twin = Twin()
    earlier = await completed(twin)
    order_id = await twin.paid(type_=OrderType.RECEIVE_SMS_REACTIVATE, reactivates=earlier.id)
    await twin.event(EventType.PAID, order_id)

    await twin.event(EventType.SMS_TIMEOUT, order_id)

    assert (await twin.order(order_id)).status is S.FAILED
    assert await twin.stores.refunds.get(order_id) is None
    assert twin.event_types(order_id) == [EventType.PAID]
