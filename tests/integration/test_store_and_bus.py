"""Guarded transitions, the outbox relay, JetStream dedup and the scheduler on real servers."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import nats
import pytest

from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.orders import InvalidTransition, Status
from libs.common.messaging import bus
from libs.common.messaging.outbox import OutboxRelay
from libs.common.messaging.runtime import open_worker
from libs.common.persistence.outbox_store import PgInbox
from libs.common.persistence.stores import PgStores
from services.scheduler.service import fire_due
from tests.integration.helpers import insert_order, settings_for

pytestmark = pytest.mark.integration


async def test_only_one_of_many_concurrent_transitions_wins(pool: asyncpg.Pool) -> None:
    order_id = await insert_order(pool)

    async def attempt() -> bool:
        async with PgStores(pool, "orders").transaction() as tx:
            moved = await tx.orders.transition(order_id, Status.PENDING_PAYMENT, Status.PAID)
            return moved is not None

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    assert results.count(True) == 1
    log = await PgStores(pool, "orders").orders.history(order_id)
    assert [(c.from_status, c.to_status) for c in log] == [
        (None, Status.PENDING_PAYMENT),
        (Status.PENDING_PAYMENT, Status.PAID),
    ]


async def test_transition_outside_the_table_never_reaches_the_database(pool: asyncpg.Pool) -> None:
    order_id = await insert_order(pool)
    orders = PgStores(pool, "orders").orders
    with pytest.raises(InvalidTransition):
        await orders.transition(order_id, Status.PENDING_PAYMENT, Status.REFUND_PENDING)
    order = await orders.get(order_id)
    assert order is not None and order.status is Status.PENDING_PAYMENT


async def _collect(
    js: nats.js.JetStreamContext, subject: str, want: int, wait: float
) -> list[bytes]:
    sub = await js.subscribe(subject, ordered_consumer=True)
    got: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + wait
        while len(got) < want or asyncio.get_running_loop().time() < deadline:
            try:
                msg = await sub.next_msg(timeout=0.2)
                got.append(msg.data)
            except nats.errors.TimeoutError:
                if len(got) >= want and asyncio.get_running_loop().time() >= deadline:
                    break
                if asyncio.get_running_loop().time() >= deadline + 5:
                    break
    finally:
        await sub.unsubscribe()
    return got


async def test_outbox_publishes_committed_events_once_even_when_republished(
    pool: asyncpg.Pool, nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, prefix = stream_names
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.bootstrap(js, stream, prefix)
    order_id = await insert_order(pool)
    kept = Event(EventType.PAID, order_id)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with PgStores(pool, prefix).transaction() as tx:
            await tx.outbox.enqueue(Event(EventType.COMPLETED, order_id))
            raise Boom
    async with PgStores(pool, prefix).transaction() as tx:
        await tx.outbox.enqueue(kept)

    relay = OutboxRelay(PgStores(pool, prefix), js)
    assert await relay.publish_pending() == 1
    # A crash between publish and commit: the row looks unpublished and goes out again.
    await pool.execute("UPDATE outbox SET published_at = NULL")
    assert await relay.publish_pending() == 1
    assert await relay.publish_pending() == 0

    got = await _collect(js, f"{prefix}.>", want=1, wait=0.5)
    await nc.drain()
    assert [json.loads(m)["id"] for m in got] == [kept.id]
    assert json.loads(got[0])["type"] == "paid"


async def test_scheduler_replicas_fire_each_timer_exactly_once(
    database_url: str, nats_url: str, stream_names: tuple[str, str]
) -> None:
    settings = settings_for(database_url, nats_url, stream_names)
    nc = await nats.connect(nats_url)
    await bus.bootstrap(nc.jetstream(), *stream_names)
    await nc.drain()
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    async with (
        open_worker("scheduler", settings, stop_a) as a,
        open_worker("scheduler", settings, stop_b) as b,
    ):
        ids = [await insert_order(a.pool) for _ in range(60)]
        async with a.stores.transaction() as tx:
            for order_id in ids:
                await tx.timers.set(order_id, Timer.SMS_TIMEOUT, 0)
        fired = await asyncio.gather(*(fire_due(w.stores, limit=7) for w in (a, b, a, b, a, b)))
        while sum(fired) < 60 and any(fired):
            fired += await asyncio.gather(fire_due(a.stores, limit=7), fire_due(b.stores, limit=7))
        assert sum(fired) == 60
        events = await a.pool.fetch("SELECT payload FROM outbox")
        per_order = [e["payload"]["orderId"] for e in events]
        assert sorted(per_order) == sorted(ids)
        assert all(e["payload"]["type"] == "sms_timeout" for e in events)
        assert await a.pool.fetchval("SELECT count(*) FROM timers WHERE fired_at IS NULL") == 0


async def test_consumer_retries_then_acks_and_dead_letters_poison(
    pool: asyncpg.Pool, nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, prefix = stream_names
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.bootstrap(js, stream, prefix)
    order_id = "order-1"
    ev = Event(EventType.PAID, order_id)
    await js.publish(ev.subject(prefix), json.dumps(ev.payload()).encode(), headers=ev.headers())
    await js.publish(f"{prefix}.paid", b"not json")
    seen: list[str] = []
    stop = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append(event.id)
        if len(seen) == 1:
            raise bus.Retry("first delivery fails", delay=0.2)
        stop.set()

    consumer = bus.Consumer(
        js, PgInbox(pool), stream=stream, prefix=prefix, durable="provider", handler=handler
    )
    await asyncio.wait_for(consumer.run(stop), 15)
    assert seen == [ev.id, ev.id]
    assert await PgInbox(pool).seen("provider", ev.id)

    # The same event again (a redelivery after a lost ack): recorded, so the handler is skipped.
    await js.publish(f"{prefix}.paid", json.dumps(ev.payload()).encode())
    stop2 = asyncio.Event()
    skipped = bus.Consumer(
        js, PgInbox(pool), stream=stream, prefix=prefix, durable="provider", handler=handler
    )
    runner = asyncio.create_task(skipped.run(stop2))
    info = None
    for _ in range(50):
        info = await js.consumer_info(stream, "provider")
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.1)
    stop2.set()
    await asyncio.wait_for(runner, 5)
    assert info is not None and info.num_pending == 0
    assert seen == [ev.id, ev.id]
    dead = await _collect(js, f"{prefix}.dlq.provider", want=1, wait=0.2)
    await nc.drain()
    assert len(dead) == 1 and json.loads(dead[0])["data"] == "not json"


async def test_overdue_paid_orders_get_their_deadline_fired_again(pool: asyncpg.Pool) -> None:
    stuck, done = await insert_order(pool), await insert_order(pool)
    stores = PgStores(pool, "orders")
    async with stores.transaction() as tx:
        for order_id in (stuck, done):
            await tx.orders.transition(order_id, Status.PENDING_PAYMENT, Status.PAID)
            await tx.timers.set(order_id, Timer.SMS_TIMEOUT, 0)
        await tx.orders.transition(done, Status.PAID, Status.ALLOCATING_NUMBER)
        await tx.orders.transition(done, Status.ALLOCATING_NUMBER, Status.REFUND_PENDING)
    # Both deadlines fired two minutes ago; the message for `stuck` was lost.
    await pool.execute(
        "UPDATE timers SET fired_at = now() - interval '2 minutes',"
        " due_at = now() - interval '3 minutes'"
    )
    await stores.timers.rearm_overdue(60.0)
    rows = {r["order_id"]: r for r in await pool.fetch("SELECT * FROM timers")}
    assert rows[stuck]["fired_at"] is None  # fires again on the next scheduler tick
    assert rows[done]["fired_at"] is not None  # has its outcome: left alone


async def test_a_lost_window_or_rental_end_fires_again_while_the_order_is_open(
    pool: asyncpg.Pool,
) -> None:
    window_open, window_done = await insert_order(pool), await insert_order(pool)
    rent_open = await insert_order(pool, order_type="rent-number", rent_hours=4)
    walk = {
        window_open: [
            Status.PAID,
            Status.ALLOCATING_NUMBER,
            Status.WAITING_FOR_SMS,
            Status.CODE_RECEIVED,
        ],
        window_done: [
            Status.PAID,
            Status.ALLOCATING_NUMBER,
            Status.WAITING_FOR_SMS,
            Status.CODE_RECEIVED,
            Status.COMPLETED,
        ],
        rent_open: [Status.PAID, Status.ALLOCATING_NUMBER, Status.RENT_ACTIVE],
    }
    stores = PgStores(pool, "orders")
    async with stores.transaction() as tx:
        for order_id, path in walk.items():
            current = Status.PENDING_PAYMENT
            for target in path:
                assert await tx.orders.transition(order_id, current, target)
                current = target
        await tx.timers.set(window_open, Timer.CODE_WINDOW, 0)
        await tx.timers.set(window_done, Timer.CODE_WINDOW, 0)
        await tx.timers.set(rent_open, Timer.RENT_END, 0)
        # The SMS deadline of an order that got its code is never fired again.
        await tx.timers.set(window_open, Timer.SMS_TIMEOUT, 0)
    await pool.execute(
        "UPDATE timers SET fired_at = now() - interval '2 minutes',"
        " due_at = now() - interval '3 minutes'"
    )
    await stores.timers.rearm_overdue(60.0)
    rows = {(r["order_id"], r["kind"]): r for r in await pool.fetch("SELECT * FROM timers")}
    assert rows[(window_open, Timer.CODE_WINDOW)]["fired_at"] is None
    assert rows[(rent_open, Timer.RENT_END)]["fired_at"] is None
    assert rows[(window_done, Timer.CODE_WINDOW)]["fired_at"] is not None
    assert rows[(window_open, Timer.SMS_TIMEOUT)]["fired_at"] is not None
