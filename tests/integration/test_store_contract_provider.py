"""The provider's store calls, one contract for PostgreSQL and the twin (the `backend` fixture).

Claims for the SMS and rent pollers, another SMS, and the housekeeping finish: the unit tests
of the provider's decisions run on the twin, so the twin must do what PostgreSQL does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from libs.common.domain.orders import Order, OrderType, Status
from libs.common.persistence.order_store import NOW
from tests.integration.contract import Backend, new_order

pytestmark = pytest.mark.integration
S = Status
SIXTY = timedelta(seconds=60)
SLACK = timedelta(seconds=5)  # PostgreSQL's now() moves between statements; the twin's does not


async def paid(backend: Backend, **overrides: Any) -> Order:
    """A paid order the provider worker is allocating a number for."""
    order = await backend.stores.orders.insert(new_order(**overrides))
    moved = await backend.stores.orders.transition(
        order.id, S.PENDING_PAYMENT, S.PAID, paid_at=NOW, deadline_at=timedelta(seconds=600)
    )
    assert moved is not None
    allocating = await backend.stores.orders.transition(order.id, S.PAID, S.ALLOCATING_NUMBER)
    assert allocating is not None
    return allocating


async def waiting(backend: Backend) -> Order:
    """A paid order with its number, due for its first poll."""
    order = await paid(backend)
    moved = await backend.stores.orders.transition(
        order.id,
        S.ALLOCATING_NUMBER,
        S.WAITING_FOR_SMS,
        activation_id=f"act-{order.id[:8]}",
        phone_number="+15550001",
        next_poll_at=NOW,
    )
    assert moved is not None
    return moved


async def with_code(backend: Backend, code: str = "111111") -> Order:
    """An order whose first code arrived (no longer polled)."""
    order = await waiting(backend)
    moved = await backend.stores.orders.transition(
        order.id,
        S.WAITING_FOR_SMS,
        S.CODE_RECEIVED,
        code=code,
        sms_text=f"code {code}",
        sms_received_at=NOW,
        next_poll_at=None,
    )
    assert moved is not None
    return moved


def close_to(at: datetime | None, expected: datetime) -> bool:
    """Whether a time the store wrote is the expected one, give or take PostgreSQL's drift."""
    return at is not None and abs(at - expected) <= SLACK


async def test_now_is_the_clock_the_stores_write_with(backend: Backend) -> None:
    order = await paid(backend)
    now = await backend.stores.orders.now()
    assert now.tzinfo is not None
    assert order.paid_at is not None and order.paid_at <= now
    assert close_to(order.paid_at, now)


async def test_sms_poll_claims_due_orders_once_per_interval(backend: Backend) -> None:
    first, second = await waiting(backend), await waiting(backend)
    await with_code(backend)  # has its code: not polled

    one = await backend.stores.orders.claim_sms_poll(1, 60.0)
    assert len(one) == 1 and isinstance(one[0], Order)
    rest = await backend.stores.orders.claim_sms_poll(50, 60.0)
    assert {o.id for o in one + rest} == {first.id, second.id}
    now = await backend.stores.orders.now()
    for claimed in one + rest:
        assert claimed.status is S.WAITING_FOR_SMS
        assert close_to(claimed.next_poll_at, now + timedelta(seconds=60))
    # Pushed back by the interval: nothing is due any more.
    assert await backend.stores.orders.claim_sms_poll(50, 60.0) == []


async def test_rent_poll_claims_only_active_rentals(backend: Backend) -> None:
    order = await waiting(backend)  # an activation: the SMS poller's, not the rent poller's
    rental = await paid(backend, type=OrderType.RENT_NUMBER, rent_hours=4)
    await backend.stores.orders.transition(
        rental.id,
        S.ALLOCATING_NUMBER,
        S.RENT_ACTIVE,
        activation_id="rent-1",
        phone_number="+15550002",
        rent_ends_at=timedelta(hours=4),
        deadline_at=timedelta(hours=4),
        next_poll_at=NOW,
    )

    # The SMS poller takes the activation only; a rental is never its to poll.
    assert [o.id for o in await backend.stores.orders.claim_sms_poll(50, 10.0)] == [order.id]
    claimed = await backend.stores.orders.claim_rent_poll(50, 10.0)

    assert [(o.id, o.status) for o in claimed] == [(rental.id, S.RENT_ACTIVE)]
    assert close_to(
        claimed[0].next_poll_at, await backend.stores.orders.now() + timedelta(seconds=10)
    )
    assert await backend.stores.orders.claim_rent_poll(50, 10.0) == []


async def test_another_sms_reopens_polling_and_the_new_code_replaces_the_first(
    backend: Backend,
) -> None:
    order = await with_code(backend, "111111")
    assert await backend.stores.orders.claim_sms_poll(50, 60.0) == []

    assert await backend.stores.orders.reopen_for_another_sms(order.id)

    reopened = await backend.stores.orders.get(order.id)
    assert reopened is not None and reopened.another_sms_at is not None
    assert [o.id for o in await backend.stores.orders.claim_sms_poll(50, 60.0)] == [order.id]
    updated = await backend.stores.orders.record_new_code(order.id, "222222", "code 222222")
    assert updated is not None and updated.status is S.CODE_RECEIVED
    assert (updated.code, updated.sms_text) == ("222222", "code 222222")
    assert updated.another_sms_at is None
    assert close_to(updated.sms_received_at, await backend.stores.orders.now())
    await backend.stores.orders.stop_polling(order.id)
    stopped = await backend.stores.orders.get(order.id)
    assert stopped is not None and stopped.next_poll_at is None and stopped.code == "222222"


async def test_another_sms_calls_change_nothing_outside_code_received(backend: Backend) -> None:
    order = await waiting(backend)

    assert not await backend.stores.orders.reopen_for_another_sms(order.id)
    assert await backend.stores.orders.record_new_code(order.id, "9999", "code 9999") is None
    await backend.stores.orders.stop_polling(order.id)

    after = await backend.stores.orders.get(order.id)
    assert after is not None and after.code is None and after.another_sms_at is None
    assert after.next_poll_at == order.next_poll_at  # still polled


async def test_finish_is_armed_claimed_under_a_lease_retried_and_done(backend: Backend) -> None:
    order = await with_code(backend)
    no_number = await paid(backend)
    await backend.stores.orders.arm_finish(no_number.id)  # nothing to finish at the provider

    await backend.stores.orders.arm_finish(order.id)

    armed = await backend.stores.orders.get(order.id)
    assert armed is not None and armed.finish_attempts == 0
    assert close_to(armed.finish_due_at, await backend.stores.orders.now())
    claimed = await backend.stores.orders.claim_finish(50, 120.0)
    assert [o.id for o in claimed] == [order.id]
    assert claimed[0].activation_id == order.activation_id
    assert claimed[0].deadline_at == order.deadline_at
    assert close_to(
        claimed[0].finish_due_at, await backend.stores.orders.now() + timedelta(seconds=120)
    )
    assert await backend.stores.orders.claim_finish(50, 120.0) == []  # leased

    await backend.stores.orders.retry_finish(order.id, 0.0)  # a failure; due again now
    retried = await backend.stores.orders.claim_finish(50, 120.0)
    assert [(o.id, o.finish_attempts) for o in retried] == [(order.id, 1)]
    await backend.stores.orders.retry_finish(order.id, 300.0)
    later = await backend.stores.orders.get(order.id)
    assert later is not None and later.finish_attempts == 2
    assert close_to(later.finish_due_at, await backend.stores.orders.now() + timedelta(seconds=300))

    await backend.stores.orders.finish_done(order.id)

    done = await backend.stores.orders.get(order.id)
    assert done is not None and done.finish_due_at is None and done.finish_attempts == 3
    assert await backend.stores.orders.claim_finish(50, 0.0) == []
    untouched = await backend.stores.orders.get(no_number.id)
    assert untouched is not None and untouched.finish_due_at is None


# --- issue 12: the bulk poll and the SMS arrival ---


async def test_the_bulk_poll_turn_goes_to_one_caller_per_interval(backend: Backend) -> None:
    orders = backend.stores.orders

    assert await orders.claim_bulk_poll("https://provider#k1", 60.0)
    assert not await orders.claim_bulk_poll("https://provider#k1", 60.0)  # taken
    assert await orders.claim_bulk_poll("https://provider#k2", 60.0)  # another account
    # A turn that is due again (no interval left) goes to the next caller.
    assert await orders.claim_bulk_poll("https://provider#k3", 0.0)
    assert await orders.claim_bulk_poll("https://provider#k3", 0.0)


async def test_awaiting_sms_finds_the_orders_still_waiting_for_an_sms(backend: Backend) -> None:
    waits = await waiting(backend)
    done = await with_code(backend)
    asks = await with_code(backend)
    assert await backend.stores.orders.reopen_for_another_sms(asks.id)
    rental = await paid(backend, type=OrderType.RENT_NUMBER, rent_hours=4)
    await backend.stores.orders.transition(
        rental.id, S.ALLOCATING_NUMBER, S.RENT_ACTIVE, activation_id="rent-77"
    )
    ids = [o.activation_id or "" for o in (waits, done, asks)] + ["rent-77", "unknown"]

    found = await backend.stores.orders.awaiting_sms(ids)

    assert sorted(o.id for o in found) == sorted([waits.id, asks.id])
    assert all(isinstance(o, Order) for o in found)
    assert await backend.stores.orders.awaiting_sms([]) == []


async def test_by_activation_finds_a_one_time_order_whatever_its_status(backend: Backend) -> None:
    done = await with_code(backend)
    rental = await paid(backend, type=OrderType.RENT_NUMBER, rent_hours=4)
    await backend.stores.orders.transition(
        rental.id, S.ALLOCATING_NUMBER, S.RENT_ACTIVE, activation_id="rent-78"
    )
    assert done.activation_id is not None

    found = await backend.stores.orders.by_activation(done.activation_id)

    assert found is not None and found.id == done.id and found.status is S.CODE_RECEIVED
    assert await backend.stores.orders.by_activation("rent-78") is None  # a rental's id
    assert await backend.stores.orders.by_activation("unknown") is None


async def test_the_bulk_fallback_claims_only_orders_the_answer_lacked(backend: Backend) -> None:
    listed, lacking = await waiting(backend), await waiting(backend)
    assert listed.activation_id is not None

    claimed = await backend.stores.orders.claim_sms_poll_missing(
        50, 60.0, [listed.activation_id, "other"]
    )

    assert [o.id for o in claimed] == [lacking.id]
    assert close_to(claimed[0].next_poll_at, await backend.stores.orders.now() + SIXTY)
    # The listed one stays due (not rewritten); the claimed one is pushed back.
    assert await backend.stores.orders.claim_sms_poll_missing(50, 60.0, []) == [
        await backend.stores.orders.get(listed.id)
    ]


async def test_a_new_code_is_taken_once_per_ask_and_never_the_code_shown(
    backend: Backend,
) -> None:
    order = await with_code(backend, "111111")
    orders = backend.stores.orders
    assert await orders.record_new_code(order.id, "222222", "code 222222") is None  # no ask
    assert await orders.reopen_for_another_sms(order.id)

    assert await orders.record_new_code(order.id, "111111", "code 111111") is None  # old SMS
    first = await orders.record_new_code(order.id, "222222", "code 222222")
    second = await orders.record_new_code(order.id, "333333", "code 333333")

    assert first is not None and first.code == "222222"
    assert second is None  # the ask was used: a racing report of any SMS changes nothing
    after = await orders.get(order.id)
    assert after is not None and after.code == "222222"


async def test_a_hurried_bulk_turn_is_due_at_once(backend: Backend) -> None:
    orders = backend.stores.orders
    assert await orders.claim_bulk_poll("https://provider#k4", 60.0)
    assert not await orders.claim_bulk_poll("https://provider#k4", 60.0)

    await orders.hurry_bulk_poll("https://provider#k4")
    await orders.hurry_bulk_poll("https://provider#k5")  # no turn yet: nothing to hurry

    assert await orders.claim_bulk_poll("https://provider#k4", 60.0)
    assert not await orders.claim_bulk_poll("https://provider#k4", 60.0)
    assert await orders.claim_bulk_poll("https://provider#k5", 60.0)


async def test_poll_now_makes_a_polled_order_due_at_once(backend: Backend) -> None:
    order = await waiting(backend)
    done = await with_code(backend)  # not polled: nothing to hurry
    assert order.activation_id is not None and done.activation_id is not None
    assert [o.id for o in await backend.stores.orders.claim_sms_poll(50, 60.0)] == [order.id]
    assert await backend.stores.orders.claim_sms_poll(50, 60.0) == []

    assert await backend.stores.orders.poll_now(order.activation_id) == order.id
    assert await backend.stores.orders.poll_now(done.activation_id) is None
    assert await backend.stores.orders.poll_now("unknown") is None

    assert [o.id for o in await backend.stores.orders.claim_sms_poll(50, 60.0)] == [order.id]
