"""SMS watching on the twin: delivering the code, the another-SMS window, another code."""

from __future__ import annotations

from datetime import timedelta

from libs.common.domain.events import EventType, Timer
from libs.common.domain.orders import PaymentMode, Status
from libs.common.domain.sms_port import ActivationStatus
from tests.unit.provider_kit import Twin

S = Status


async def test_an_l402_code_opens_the_another_sms_window() -> None:
    twin = Twin(another_sms_window_seconds=300.0, order_timeout_seconds=1200)
    order = await twin.waiting()
    assert await twin.poll_once() == [order.id]  # nothing yet
    assert (await twin.order(order.id)).status is S.WAITING_FOR_SMS
    twin.clock.advance(60)
    twin.sms_arrives(order.activation_id, "424242")

    await twin.poll_once()

    got = await twin.order(order.id)
    assert got.status is S.CODE_RECEIVED and got.code == "424242"
    assert got.next_poll_at is None and got.finish_due_at is None  # the number stays open
    assert twin.stores.timer_due(order.id, Timer.CODE_WINDOW) == twin.clock() + timedelta(
        seconds=300
    )
    assert twin.stores.timer_due(order.id, Timer.SMS_TIMEOUT) is None
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["424242"]
    assert await twin.poll_once() == []  # nothing to poll until another SMS is asked for


async def test_the_window_is_cut_at_the_deadline_and_absent_at_it() -> None:
    twin = Twin(another_sms_window_seconds=300.0, order_timeout_seconds=1200)
    near, at_deadline = await twin.waiting(), await twin.waiting()
    twin.clock.advance(1100)  # 100 s left
    twin.sms_arrives(near.activation_id, "1111")
    await twin.poll_once()
    assert twin.stores.timer_due(near.id, Timer.CODE_WINDOW) == twin.clock() + timedelta(
        seconds=100
    )
    twin.clock.advance(100)  # at the deadline: no time left for another SMS
    twin.sms_arrives(at_deadline.activation_id, "2222")

    await twin.poll_once()

    done = await twin.order(at_deadline.id)
    assert done.status is S.COMPLETED and done.code == "2222"
    assert done.finish_due_at == twin.clock()  # finishing at the provider follows
    assert twin.stores.timer_due(at_deadline.id, Timer.CODE_WINDOW) is None
    assert twin.event_types(at_deadline.id) == [EventType.PAID, EventType.COMPLETED]


async def test_another_sms_shows_the_new_code_and_keeps_both() -> None:
    twin = Twin(another_sms_window_seconds=300.0)
    order = await twin.waiting()
    twin.sms_arrives(order.activation_id, "22222")
    await twin.poll_once()

    await twin.event(EventType.ANOTHER_SMS_REQUESTED, order.id)

    assert twin.sms.called("request_another") == [order.activation_id]
    twin.clock.advance(5)
    twin.sms_arrives(order.activation_id, "22222")  # the provider still reports the first
    assert await twin.poll_once() == [order.id]
    assert (await twin.order(order.id)).code == "22222"
    twin.clock.advance(5)
    twin.sms_arrives(order.activation_id, "33333")
    await twin.poll_once()
    got = await twin.order(order.id)
    assert got.status is S.CODE_RECEIVED and got.code == "33333"
    assert got.sms_received_at == twin.clock() and got.next_poll_at is None
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["22222", "33333"]

    await twin.event(EventType.CODE_WINDOW_ENDED, order.id)

    done = await twin.order(order.id)
    assert done.status is S.COMPLETED and done.finish_due_at is not None
    assert twin.stores.timer_due(order.id, Timer.PURGE_CODE) is not None
    assert await twin.stores.refunds.get(order.id) is None


async def test_a_hold_code_asks_for_the_settle_and_arms_the_finish() -> None:
    twin = Twin()
    order = await twin.waiting(mode=PaymentMode.HOLD)
    twin.sms_arrives(order.activation_id, "515151")

    await twin.poll_once()

    got = await twin.order(order.id)
    assert got.status is S.CODE_RECEIVED  # the payments worker completes it after the settle
    assert twin.event_types(order.id) == [EventType.PAID, EventType.CODE_DELIVERED]
    assert got.finish_due_at == twin.clock()
    assert twin.stores.timer_due(order.id, Timer.CODE_WINDOW) is None
    # Its window event (if any) only stops the polling; it never completes a hold order.
    await twin.event(EventType.CODE_WINDOW_ENDED, order.id)
    assert (await twin.order(order.id)).status is S.CODE_RECEIVED


async def test_an_activation_the_provider_ended_without_sms_refunds() -> None:
    twin = Twin()
    order = await twin.waiting()
    assert order.activation_id is not None
    twin.sms.statuses[order.activation_id] = ActivationStatus("cancelled")  # expired there

    await twin.poll_once()

    assert (await twin.order(order.id)).status is S.REFUND_PENDING
    assert twin.event_types(order.id) == [EventType.PAID, EventType.REFUND_REQUESTED]
