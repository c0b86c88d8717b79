"""The SMS arrival use case on the twin: whoever reports an SMS first, it is recorded once."""

from __future__ import annotations

import asyncio

from libs.common.domain.events import EventType
from libs.common.domain.orders import PaymentMode, Status
from libs.common.usecases.sms_arrival import Outcome, SmsArrival
from tests.unit.provider_kit import Twin

S = Status


def arrival(twin: Twin) -> SmsArrival:
    """The use case as the gateway builds it: stores and settings, no provider."""
    return SmsArrival(twin.stores, twin.settings)


async def test_a_pushed_sms_is_recorded_once_however_often_it_is_pushed() -> None:
    twin = Twin()
    order = await twin.waiting()
    assert order.activation_id is not None
    use = arrival(twin)

    outcomes = [
        await use.for_activation(order.activation_id, "4321", "code 4321", source="webhook")
        for _ in range(5)
    ]

    assert outcomes == [Outcome.RECORDED] + [Outcome.KNOWN] * 4
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["4321"]
    history = [c.to_status for c in await twin.stores.orders.history(order.id)]
    assert history.count(S.CODE_RECEIVED) == 1
    assert [name for name, _ in twin.sms.calls] == ["buy"]  # no provider call: the gateway has none


async def test_an_unknown_activation_is_unknown_and_changes_nothing() -> None:
    twin = Twin()
    order = await twin.waiting()
    before = twin.stores.state.orders[order.id]

    assert await arrival(twin).for_activation("nope", "1", None, source="webhook") is (
        Outcome.UNKNOWN
    )

    assert twin.stores.state.orders[order.id] == before
    assert await twin.stores.messages.for_order(order.id) == []


async def test_the_webhook_and_the_poll_at_once_record_one_sms() -> None:
    twin = Twin()
    order = await twin.waiting()
    assert order.activation_id is not None
    twin.sms_arrives(order.activation_id, "8080")

    await asyncio.gather(
        arrival(twin).for_activation(
            order.activation_id, "8080", "Your code 8080", source="webhook"
        ),
        twin.bulk_round(),
        twin.poll_once(),
    )

    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["8080"]
    assert twin.event_types(order.id) == [EventType.PAID]  # the window timer, no second event


async def test_a_hold_order_asks_for_its_settle_once() -> None:
    twin = Twin()
    order = await twin.waiting(mode=PaymentMode.HOLD)
    assert order.activation_id is not None
    for _ in range(3):
        await arrival(twin).for_activation(order.activation_id, "5555", None, source="webhook")
    assert twin.event_types(order.id) == [EventType.PAID, EventType.CODE_DELIVERED]


async def test_another_sms_is_taken_once_and_never_the_old_one() -> None:
    twin = Twin(another_sms_window_seconds=300.0)
    order = await twin.waiting()
    assert order.activation_id is not None
    use = arrival(twin)
    await use.for_activation(order.activation_id, "1111", "code 1111", source="webhook")
    await twin.event(EventType.ANOTHER_SMS_REQUESTED, order.id)

    old = await use.for_activation(order.activation_id, "1111", "code 1111", source="webhook")
    new = await asyncio.gather(
        *(
            use.for_activation(order.activation_id, "2222", "code 2222", source="webhook")
            for _ in "ab"
        )
    )

    assert old is Outcome.KNOWN
    assert sorted(new) == sorted([Outcome.RECORDED, Outcome.KNOWN])
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["1111", "2222"]


async def test_a_code_for_an_order_already_refunded_changes_nothing() -> None:
    twin = Twin()
    order = await twin.waiting()
    assert order.activation_id is not None
    twin.clock.advance(twin.settings.order_timeout_seconds + 1)
    await twin.event(EventType.SMS_TIMEOUT, order.id)
    assert (await twin.order(order.id)).status is S.REFUND_PENDING

    got = await arrival(twin).for_activation(order.activation_id, "9", "9", source="webhook")

    assert got is Outcome.KNOWN
    assert (await twin.order(order.id)).code is None
    assert await twin.stores.messages.for_order(order.id) == []


async def test_provider_text_that_postgres_cannot_store_is_cleaned() -> None:
    twin = Twin()
    order = await twin.waiting()
    assert order.activation_id is not None
    await arrival(twin).for_activation(
        order.activation_id, "12\x0034", "code\x00 1234 \ud800", source="webhook"
    )
    got = await twin.order(order.id)
    assert got.code == "1234" and got.sms_text is not None and "\x00" not in got.sms_text
