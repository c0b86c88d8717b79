"""The scheduler's store methods, one contract on PostgreSQL and on the twin.

Each test runs once per backend (the `backend` fixture of `tests/integration/conftest.py`).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from libs.common.domain.countries import Country, Offer
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import Order, Status
from libs.common.persistence.catalog_store import CATALOG_JOB, CatalogData, RentPrice, ServiceRow
from libs.common.persistence.order_store import NOW
from tests.integration.contract import Backend, new_order

pytestmark = pytest.mark.integration

CODE = "493027"


async def _with_code(backend: Backend) -> Order:
    """A new order walked to code_received with its code, its SMS text and one message."""
    orders = backend.stores.orders
    order = await orders.insert(new_order())
    await orders.mark_paid(order.id, deadline=600)
    await orders.transition(order.id, Status.PAID, Status.ALLOCATING_NUMBER)
    await orders.transition(order.id, Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS)
    text = f"Your code is {CODE}"
    moved = await orders.transition(
        order.id,
        Status.WAITING_FOR_SMS,
        Status.CODE_RECEIVED,
        code=CODE,
        sms_text=text,
        sms_received_at=NOW,
    )
    assert moved is not None
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert await backend.stores.messages.record(order.id, Message(at, text, phone_from="TG"))
    return moved


async def test_purge_code_forgets_the_codes_of_an_ended_order(backend: Backend) -> None:
    order = await _with_code(backend)
    assert await backend.stores.orders.complete(order.id, code_retention=3600)
    await backend.stores.orders.purge_code(order.id)
    purged = await backend.stores.orders.get(order.id)
    assert purged is not None and purged.status is Status.COMPLETED
    assert (purged.code, purged.sms_text) == (None, None)
    assert purged.sms_received_at is not None  # when it came stays: only the contents go
    [message] = await backend.stores.messages.for_order(order.id)
    assert (message.text, message.code, message.phone_from) == (None, None, "TG")


async def test_purge_code_leaves_an_open_order_its_code(backend: Backend) -> None:
    order = await _with_code(backend)
    await backend.stores.orders.purge_code(order.id)
    kept = await backend.stores.orders.get(order.id)
    assert kept is not None and (kept.code, kept.sms_text) == (CODE, f"Your code is {CODE}")


async def test_due_timers_are_claimed_earliest_first_until_marked_fired(backend: Backend) -> None:
    stores = backend.stores
    ids = [(await stores.orders.insert(new_order())).id for _ in range(4)]
    first, second, third, later = ids
    # Armed in an order that is neither the due order nor its reverse.
    await stores.timers.set(second, Timer.SMS_TIMEOUT, -5)
    await stores.timers.set(first, Timer.INVOICE_EXPIRED, -10)
    await stores.timers.set(third, Timer.CODE_WINDOW, -1)
    await stores.timers.set(later, Timer.SMS_TIMEOUT, 3600)
    async with stores.transaction() as tx:
        [one] = await tx.timers.claim_due(1)
    assert (one.order_id, one.kind) == (first, Timer.INVOICE_EXPIRED.value)

    async with stores.transaction() as tx:
        due = await tx.timers.claim_due(10)
        assert [(t.order_id, t.kind) for t in due] == [
            (first, Timer.INVOICE_EXPIRED.value),
            (second, Timer.SMS_TIMEOUT.value),
            (third, Timer.CODE_WINDOW.value),
        ]
        await tx.timers.mark_fired([t.id for t in due])
    async with stores.transaction() as tx:
        assert await tx.timers.claim_due(10) == []
    # A fired timer is not cancelled any more, but arming it again makes it due again.
    await stores.timers.set(first, Timer.INVOICE_EXPIRED, -1)
    async with stores.transaction() as tx:
        assert [t.order_id for t in await tx.timers.claim_due(10)] == [first]


async def test_a_claim_rolled_back_leaves_the_timers_due(backend: Backend) -> None:
    stores = backend.stores
    order_id = (await stores.orders.insert(new_order())).id
    await stores.timers.set(order_id, Timer.SMS_TIMEOUT, -1)

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with stores.transaction() as tx:
            due = await tx.timers.claim_due(10)
            await tx.timers.mark_fired([t.id for t in due])
            raise Crash
    async with stores.transaction() as tx:
        assert [t.order_id for t in await tx.timers.claim_due(10)] == [order_id]
    assert await backend.timer_in(order_id, Timer.SMS_TIMEOUT) == pytest.approx(-1, abs=5)


async def test_a_claimed_timer_says_when_it_was_due(backend: Backend) -> None:
    stores = backend.stores
    order_id = (await stores.orders.insert(new_order())).id
    await stores.timers.set(order_id, Timer.SMS_TIMEOUT, -30)
    async with stores.transaction() as tx:
        [timer] = await tx.timers.claim_due(10)
        late = await tx_lateness(backend, timer.due_at)
    assert late == pytest.approx(30, abs=5)


async def tx_lateness(backend: Backend, due_at: datetime) -> float:
    """Seconds from due_at to the backend's clock."""
    if backend.memory is not None:
        return (backend.memory.clock() - due_at).total_seconds()
    assert backend.pool is not None
    return float(await backend.pool.fetchval("SELECT extract(epoch FROM now() - $1)", due_at))


async def test_a_batch_of_events_is_written_in_one_go_with_the_transaction(
    backend: Backend,
) -> None:
    stores = backend.stores
    ids = [(await stores.orders.insert(new_order())).id for _ in range(3)]
    batch = [Event(EventType.SMS_TIMEOUT, i) for i in ids]

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with stores.transaction() as tx:
            await tx.outbox.enqueue_many(batch)
            raise Crash
    assert await backend.events() == []
    async with stores.transaction() as tx:
        await tx.outbox.enqueue_many([])
        await tx.outbox.enqueue_many(batch)
    assert sorted(await backend.events()) == sorted((EventType.SMS_TIMEOUT, i) for i in ids)
    if backend.pool is not None:
        # Row for row what enqueue writes: the dedup id, the subject, the correlation id.
        rows = await backend.pool.fetch("SELECT id, subject, payload, headers FROM outbox")
        by_id = {str(r["id"]): r for r in rows}
        for event in batch:
            row = by_id[event.id]
            assert row["payload"] == event.payload()
            assert row["headers"] == event.headers()
            assert row["subject"].endswith(".sms_timeout")


async def test_history_lists_every_status_change_oldest_first(backend: Backend) -> None:
    order = await _with_code(backend)
    assert await backend.stores.orders.complete(order.id, code_retention=3600)
    stale = await backend.stores.orders.transition(order.id, Status.PAID, Status.ALLOCATING_NUMBER)
    assert stale is None  # a refused transition logs nothing
    log = await backend.stores.orders.history(order.id)
    assert [(c.from_status, c.to_status) for c in log] == [
        (None, Status.PENDING_PAYMENT),
        (Status.PENDING_PAYMENT, Status.PAID),
        (Status.PAID, Status.ALLOCATING_NUMBER),
        (Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS),
        (Status.WAITING_FOR_SMS, Status.CODE_RECEIVED),
        (Status.CODE_RECEIVED, Status.COMPLETED),
    ]
    assert [c.at for c in log] == sorted(c.at for c in log)
    assert await backend.stores.orders.history("no-such-order") == []


def _catalog_data(rent: list[RentPrice] | None) -> CatalogData:
    """A small catalog, listed out of order (the store sorts)."""
    return CatalogData(
        countries=[Country(187, "USA", "US", True, True, None), Country(16, "England", "GB")],
        services=[ServiceRow("wa", "WhatsApp"), ServiceRow("tg", "Telegram")],
        offers=[Offer(187, "tg", Decimal("0.25"), 3), Offer(16, "tg", Decimal("0.1"), 0)],
        rent=rent,
    )


async def test_a_replaced_catalog_reads_back_sorted_once_its_job_succeeded(
    backend: Backend,
) -> None:
    store = backend.stores.catalog
    empty = await store.load()
    assert not empty.loaded and empty.countries.all() == [] and empty.offers == []
    rent = [RentPrice(187, "tg", 24, Decimal("2.5"), 4), RentPrice(16, "tg", 4, Decimal("1"), 1)]
    async with backend.stores.transaction() as tx:
        await tx.catalog.replace(_catalog_data(rent))
        await tx.catalog.job_ok(CATALOG_JOB, {"countries": 2}, 3600)
    loaded = await store.load()
    assert loaded.loaded
    assert [(c.id, c.name, c.iso, c.rent) for c in loaded.countries.all()] == [
        (16, "England", "GB", False),
        (187, "USA", "US", True),
    ]
    assert [s.code for s in loaded.services] == ["tg", "wa"]
    assert [(o.country_id, o.cost_usd, o.count) for o in loaded.offers] == [
        (16, Decimal("0.1"), 0),
        (187, Decimal("0.25"), 3),
    ]
    assert [(r.country_id, r.hours) for r in loaded.rent] == [(16, 4), (187, 24)]

    # No rent answer at all: the stored rent prices stay; everything else is replaced.
    await backend.stores.catalog.replace(
        dataclasses.replace(_catalog_data(None), offers=[Offer(16, "wa", Decimal("0.05"), 9)])
    )
    again = await store.load()
    assert [(o.country_id, o.service) for o in again.offers] == [(16, "wa")]
    assert [(r.country_id, r.hours) for r in again.rent] == [(16, 4), (187, 24)]


async def test_read_reuses_the_known_catalog_until_a_refresh(backend: Backend) -> None:
    store = backend.stores.catalog
    await store.replace(_catalog_data([]))
    await store.job_ok(CATALOG_JOB, {}, 3600)
    first, no_rate = await store.read()
    assert first.loaded and no_rate is None
    same, _ = await store.read(first)
    assert same is first  # nothing re-read
    await store.replace(dataclasses.replace(_catalog_data([]), services=[]))
    if backend.memory is not None:
        backend.memory.clock = lambda: datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    await store.job_ok(CATALOG_JOB, {}, 3600)  # the refresh's success changes the version
    fresh, _ = await store.read(first)
    assert fresh is not first and fresh.services == []


async def test_the_rate_is_stored_with_its_age(backend: Backend) -> None:
    store = backend.stores.catalog
    assert await store.rate() is None
    await store.store_rate(Decimal("97000.5"), "rates.example")
    cached = await store.rate()
    assert cached is not None
    assert (cached.rate, cached.source) == (Decimal("97000.5"), "rates.example")
    assert 0 <= cached.age_seconds < 60
    await store.store_rate(Decimal("65432.1"), "other.example")
    newer = await store.rate()
    assert newer is not None and (newer.rate, newer.source) == (Decimal("65432.1"), "other.example")
    _, read_rate = await store.read()
    assert read_rate is not None and read_rate.rate == Decimal("65432.1")


async def test_a_job_is_claimed_once_per_interval_and_retried_soon_after_failing(
    backend: Backend,
) -> None:
    store = backend.stores.catalog
    assert await store.claim_job("test-job", 3600)
    assert not await store.claim_job("test-job", 3600)
    await store.job_failed("test-job", "source down", 0)
    assert await store.claim_job("test-job", 3600)  # due again at once
    await store.job_failed("test-job", "source down", 0)
    await store.job_ok("test-job", {"rate": "1"}, 3600)  # a success postpones the next run
    assert not await store.claim_job("test-job", 3600)
    await store.job_failed("no-such-job", "x", 0)  # nothing to update
    assert await store.claim_job("no-such-job", 3600)


async def test_only_one_holder_of_the_refresh_lock(backend: Backend) -> None:
    store = backend.stores.catalog
    async with store.single_flight(wait=False) as mine:
        assert mine
        async with store.single_flight(wait=False) as other:
            assert not other
    async with store.single_flight(wait=False) as after:
        assert after
