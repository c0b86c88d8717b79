"""The bulk poll on the twin: one provider call per round, new SMS once, and its fallbacks."""

from __future__ import annotations

import asyncio

from libs.common.adapters import sms
from libs.common.domain.events import EventType
from libs.common.domain.orders import Order, Status
from libs.common.domain.sms_port import ActivationStatus
from libs.common.usecases.sms_arrival import SmsArrival
from services.provider.sms_watch import BULK_UNSUPPORTED_SECONDS, MISSING_PER_ROUND, SmsWatch
from tests.unit.provider_kit import Twin

S = Status


def activation(order: Order) -> str:
    """The order's activation id (every waiting order has one)."""
    assert order.activation_id is not None
    return order.activation_id


async def test_a_new_sms_in_the_bulk_answer_is_delivered_once() -> None:
    twin = Twin()
    order = await twin.waiting()
    await twin.bulk_round()
    assert (await twin.order(order.id)).status is S.WAITING_FOR_SMS  # nothing yet
    twin.sms_arrives(order.activation_id, "424242")

    await twin.bulk_round()
    await twin.bulk_round()  # the provider keeps listing it: nothing new

    got = await twin.order(order.id)
    assert got.status is S.CODE_RECEIVED and got.code == "424242"
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["424242"]
    assert [c.to_status for c in await twin.stores.orders.history(order.id)].count(
        S.CODE_RECEIVED
    ) == 1
    assert twin.sms.called("poll") == []  # the bulk answer covered it
    assert len(twin.sms.called("active_activations")) == 3


async def test_a_round_costs_one_provider_call_whatever_the_number_of_orders() -> None:
    twin = Twin()
    orders = [await twin.waiting() for _ in range(120)]
    for order in orders[::3]:
        twin.sms_arrives(order.activation_id, "5150")
    twin.sms.calls.clear()

    await twin.bulk_round()

    assert [name for name, _ in twin.sms.calls] == ["active_activations"]
    got = [await twin.order(o.id) for o in orders]
    assert sum(o.status is S.CODE_RECEIVED for o in got) == 40
    assert sum(o.status is S.WAITING_FOR_SMS for o in got) == 80


async def test_an_activation_the_answer_lacks_is_polled_by_itself_a_few_per_round() -> None:
    twin = Twin()
    lacking = [await twin.waiting() for _ in range(MISSING_PER_ROUND + 3)]
    listed = await twin.waiting()
    for order in lacking:
        twin.sms.unlisted.add(activation(order))
    twin.sms_arrives(lacking[0].activation_id, "777777")

    await twin.bulk_round()

    polled = twin.sms.called("poll")
    assert len(polled) == MISSING_PER_ROUND  # bounded per round
    assert activation(listed) not in polled
    assert set(polled) <= {activation(o) for o in lacking}
    assert (await twin.order(lacking[0].id)).code == "777777"  # getStatus found its SMS
    twin.sms.calls.clear()

    await twin.bulk_round()

    # The rest get their turn next round (each polled one is pushed back by the interval).
    assert len(twin.sms.called("poll")) == MISSING_PER_ROUND


async def test_an_activation_cancelled_at_the_provider_is_refunded() -> None:
    twin = Twin()
    order = await twin.waiting()
    twin.sms.statuses[activation(order)] = ActivationStatus("cancelled")  # leaves the list

    await twin.bulk_round()

    assert twin.sms.called("poll") == [order.activation_id]
    assert (await twin.order(order.id)).status is S.REFUND_PENDING
    assert twin.event_types(order.id) == [EventType.PAID, EventType.REFUND_REQUESTED]
    assert await twin.stores.refunds.get(order.id) is not None


async def test_a_provider_without_the_bulk_action_is_polled_per_order_for_a_while() -> None:
    twin = Twin()
    first, second = await twin.waiting(), await twin.waiting()
    twin.sms.errors["active_activations"] = sms.BadAction()
    twin.sms_arrives(first.activation_id, "31337")

    await twin.bulk_round()

    assert sorted(twin.sms.called("poll")) == sorted([activation(first), activation(second)])
    assert (await twin.order(first.id)).code == "31337"
    await twin.bulk_round()
    assert len(twin.sms.called("active_activations")) == 1  # remembered: not asked again
    assert twin.sms.called("poll").count(activation(second)) == 2

    del twin.sms.errors["active_activations"]
    twin.monotonic += BULK_UNSUPPORTED_SECONDS
    twin.sms.calls.clear()
    await twin.bulk_round()
    assert [name for name, _ in twin.sms.calls] == ["active_activations"]  # tried again


async def test_a_failed_bulk_call_waits_for_the_next_round() -> None:
    twin = Twin()
    order = await twin.waiting()
    twin.sms.errors["active_activations"] = sms.ProviderUnavailable()

    await twin.bulk_round()

    assert twin.sms.called("poll") == []  # no burst of getStatus calls on a transient error
    assert (await twin.order(order.id)).status is S.WAITING_FOR_SMS


async def test_another_sms_from_the_bulk_answer() -> None:
    twin = Twin(another_sms_window_seconds=300.0)
    order = await twin.waiting()
    twin.sms_arrives(order.activation_id, "22222")
    await twin.bulk_round()
    await twin.event(EventType.ANOTHER_SMS_REQUESTED, order.id)
    twin.sms_arrives(order.activation_id, "22222")  # the provider still lists the first

    await twin.bulk_round()

    assert (await twin.order(order.id)).code == "22222"
    assert len(await twin.stores.messages.for_order(order.id)) == 1
    twin.sms_arrives(order.activation_id, "33333")
    await twin.bulk_round()
    await twin.bulk_round()
    got = await twin.order(order.id)
    assert got.status is S.CODE_RECEIVED and got.code == "33333" and got.another_sms_at is None
    assert [m.code for m in await twin.stores.messages.for_order(order.id)] == ["22222", "33333"]
    assert twin.sms.called("poll") == []


async def test_two_replicas_share_one_bulk_call_per_interval() -> None:
    twin = Twin(sms_poll_interval_seconds=2.0)
    await twin.waiting()
    other = SmsWatch(twin.stores, twin.settings, twin.sms, twin.stop)
    twin.clock.advance(10)

    await asyncio.gather(twin.stage.watch.poll_round(0.0), other.poll_round(0.0))
    twin.clock.advance(1)
    await asyncio.gather(twin.stage.watch.poll_round(1.0), other.poll_round(1.0))
    assert len(twin.sms.called("active_activations")) == 1
    twin.clock.advance(1)
    await asyncio.gather(twin.stage.watch.poll_round(2.0), other.poll_round(2.0))
    assert len(twin.sms.called("active_activations")) == 2


async def test_with_webhooks_on_the_bulk_poll_is_a_slow_safety_net() -> None:
    twin = Twin(activation_webhooks=True, sms_safety_poll_seconds=30.0)
    await twin.waiting()
    twin.clock.advance(10)
    await twin.stage.watch.poll_round(0.0)
    for second in range(1, 30):
        twin.clock.advance(1)
        await twin.stage.watch.poll_round(float(second))
    assert len(twin.sms.called("active_activations")) == 1
    twin.clock.advance(1)
    await twin.stage.watch.poll_round(30.0)
    assert len(twin.sms.called("active_activations")) == 2


async def test_a_push_without_its_code_brings_the_bulk_poll_forward() -> None:
    twin = Twin(activation_webhooks=True, sms_safety_poll_seconds=30.0)
    order = await twin.waiting()
    await twin.bulk_round()
    twin.sms_arrives(order.activation_id, "6060")
    twin.clock.advance(1)
    await twin.stage.watch.poll_round(twin.monotonic + 1)
    assert len(twin.sms.called("active_activations")) == 1  # the safety net waits 30 s

    assert await SmsArrival(twin.stores, twin.settings).look_now(activation(order))
    assert not await SmsArrival(twin.stores, twin.settings).look_now("unknown")
    await twin.stage.watch.poll_round(twin.monotonic + 2)

    assert len(twin.sms.called("active_activations")) == 2
    assert (await twin.order(order.id)).code == "6060"
