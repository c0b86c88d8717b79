"""The scheduler's timer firing on the in-memory twin: events, housekeeping, once each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from libs.common.domain.events import TIMERS, EventType, Timer
from libs.common.domain.orders import NewOrder, OrderType, Status
from libs.common.persistence.memory import MemoryStores, new_order_id
from libs.common.persistence.order_store import NOW
from services.scheduler.service import (
    HOUSEKEEPING,
    MIN_WAIT_SECONDS,
    check_housekeeping,
    fire_due,
    until_next,
)

START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def _order(stores: MemoryStores) -> str:
    new = NewOrder(
        id=new_order_id(),
        type=OrderType.RECEIVE_SMS,
        service="tg",
        country_id=187,
        price_sats=2500,
        provider_cost_usd=Decimal("0.25"),
        payment_hash=b"h" * 32,
        payment_request="lnbcrt25u1...",
        invoice_expires_at=START + timedelta(minutes=10),
        refund_invoice="lnbcrt1refund",
        refund_payment_hash=b"r" * 32,
    )
    return (await stores.orders.insert(new)).id


async def _completed_with_code(stores: MemoryStores) -> str:
    order_id = await _order(stores)
    await stores.orders.mark_paid(order_id, deadline=600)
    await stores.orders.transition(order_id, Status.PAID, Status.ALLOCATING_NUMBER)
    await stores.orders.transition(order_id, Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS)
    await stores.orders.transition(
        order_id,
        Status.WAITING_FOR_SMS,
        Status.CODE_RECEIVED,
        code="493027",
        sms_text="Your code is 493027",
        sms_received_at=NOW,
    )
    assert await stores.orders.complete(order_id, code_retention=3600)
    await stores.timers.cancel(order_id, Timer.SMS_TIMEOUT)  # only the purge is left armed
    return order_id


@pytest.mark.parametrize("timer", [t for t, event in TIMERS.items() if event is not None])
async def test_a_due_timer_fires_its_event_once(timer: Timer) -> None:
    clock = Clock()
    stores = MemoryStores(clock)
    order_id = await _order(stores)
    await stores.timers.set(order_id, timer, 30)
    assert await fire_due(stores) == 0  # not due yet
    clock.now += timedelta(seconds=30)
    assert await fire_due(stores) == 1
    assert [(e.type, e.order_id) for e in stores.events()] == [(TIMERS[timer], order_id)]
    assert await fire_due(stores) == 0  # fired: never again unless re-armed
    assert stores.timer_due(order_id, timer) is None


async def test_the_code_purge_is_done_by_the_scheduler_itself() -> None:
    clock = Clock()
    stores = MemoryStores(clock)
    order_id = await _completed_with_code(stores)
    events_before = stores.events()
    clock.now += timedelta(seconds=3599)
    assert await fire_due(stores) == 0
    assert (await stores.orders.get(order_id)).code == "493027"  # type: ignore[union-attr]
    clock.now += timedelta(seconds=1)
    assert await fire_due(stores) == 1
    purged = await stores.orders.get(order_id)
    assert purged is not None and (purged.code, purged.sms_text) == (None, None)
    assert stores.events() == events_before  # housekeeping publishes nothing


async def test_a_batch_is_limited_and_the_rest_fires_next() -> None:
    clock = Clock()
    stores = MemoryStores(clock)
    ids = [await _order(stores) for _ in range(5)]
    for order_id in ids:
        await stores.timers.set(order_id, Timer.SMS_TIMEOUT, 0)
    assert await fire_due(stores, limit=2) == 2
    assert await fire_due(stores, limit=2) == 2
    assert await fire_due(stores, limit=2) == 1
    fired = [e.order_id for e in stores.events(EventType.SMS_TIMEOUT)]
    assert sorted(fired) == sorted(ids)


async def test_an_unknown_timer_kind_is_logged_and_set_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stores = MemoryStores(Clock())
    order_id = await _order(stores)
    await stores.timers.set(order_id, "no_such_kind", 0)
    with caplog.at_level("ERROR"):
        assert await fire_due(stores) == 1
    assert "unknown timer kind no_such_kind" in caplog.text
    assert stores.events() == []
    assert await fire_due(stores) == 0


def test_the_housekeeping_table_covers_exactly_the_timers_without_an_event() -> None:
    check_housekeeping(HOUSEKEEPING)  # what the scheduler runs with
    with pytest.raises(ValueError, match="no action for"):
        check_housekeeping({})
    with pytest.raises(ValueError, match="not housekeeping"):
        check_housekeeping({**HOUSEKEEPING, Timer.SMS_TIMEOUT: HOUSEKEEPING[Timer.PURGE_CODE]})


def _lateness_seen(kind: Timer) -> tuple[float, float]:
    """(count, sum) of the lateness histogram for this kind so far."""
    labels = {"kind": kind.value}
    count = REGISTRY.get_sample_value("sms4sats_timer_lateness_seconds_count", labels)
    total = REGISTRY.get_sample_value("sms4sats_timer_lateness_seconds_sum", labels)
    return count or 0.0, total or 0.0


async def test_each_fired_timer_reports_how_late_it_fired() -> None:
    clock = Clock()
    stores = MemoryStores(clock)
    early, late = await _order(stores), await _order(stores)
    await stores.timers.set(early, Timer.CODE_WINDOW, 10)
    await stores.timers.set(late, Timer.CODE_WINDOW, 7)
    count, total = _lateness_seen(Timer.CODE_WINDOW)
    clock.now += timedelta(seconds=12)  # 2 s and 5 s late
    assert await fire_due(stores, now=clock) == 2
    new_count, new_total = _lateness_seen(Timer.CODE_WINDOW)
    assert new_count - count == 2
    assert new_total - total == pytest.approx(7.0)


def test_the_scheduler_sleeps_until_the_next_timer_at_most_a_tick() -> None:
    assert until_next(0.5, None) == 0.5  # nothing armed: a tick
    assert until_next(0.5, 120.0) == 0.5  # far off: a tick (one armed meanwhile may be sooner)
    assert until_next(0.5, 0.2) == pytest.approx(0.2)  # wakes when it is due
    assert until_next(0.5, -3.0) == MIN_WAIT_SECONDS  # held by another replica: no spinning
