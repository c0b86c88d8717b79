"""Metrics and correlation ids on real PostgreSQL and NATS: transitions, stage latencies, the
sampled gauges, consumer lag, events handled, readiness, and a nak on a cut-short handler."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import asyncpg
import nats
import pytest
from prometheus_client import REGISTRY

from libs.common.domain.events import CORRELATION_HEADER, Event, EventType
from libs.common.domain.orders import Status
from libs.common.messaging import bus, ops
from libs.common.persistence.order_store import NOW
from libs.common.persistence.outbox_store import PgInbox
from libs.common.persistence.stores import PgStores
from tests.integration.helpers import insert_order

pytestmark = pytest.mark.integration


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _walk(pool: asyncpg.Pool, order_id: str, *path: Status) -> None:
    """Move the order along path, one transaction per step (each step is a stage boundary)."""
    for expected, target in itertools.pairwise(path):
        async with PgStores(pool, "orders").transaction() as tx:
            assert await tx.orders.transition(order_id, expected, target) is not None


async def test_transitions_and_stage_latencies_are_recorded(pool: asyncpg.Pool) -> None:
    s = Status
    before = {
        "moves": _value(
            "sms4sats_order_transitions_total", from_status="paid", to_status="allocating_number"
        ),
        **{
            stage: _value("sms4sats_stage_seconds_count", stage=stage)
            for stage in ("payment", "allocation", "sms", "refund")
        },
    }
    sms_sum = _value("sms4sats_stage_seconds_sum", stage="sms")
    completed, refunded = await insert_order(pool), await insert_order(pool)
    # The order waited 30 s for its SMS: backdate the status log's entry.
    await _walk(pool, completed, s.PENDING_PAYMENT, s.PAID, s.ALLOCATING_NUMBER, s.WAITING_FOR_SMS)
    await pool.execute(
        "UPDATE order_transitions SET at = at - interval '30 seconds'"
        " WHERE order_id = $1 AND to_status = 'waiting_for_sms'",
        completed,
    )
    await _walk(pool, completed, s.WAITING_FOR_SMS, s.CODE_RECEIVED, s.COMPLETED)
    await _walk(
        pool, refunded, s.PENDING_PAYMENT, s.PAID, s.ALLOCATING_NUMBER, s.REFUND_PENDING, s.REFUNDED
    )
    # A refused (stale) transition changes no metric.
    async with PgStores(pool, "orders").transaction() as tx:
        assert await tx.orders.transition(refunded, s.PAID, s.ALLOCATING_NUMBER) is None

    moves = _value(
        "sms4sats_order_transitions_total", from_status="paid", to_status="allocating_number"
    )
    assert moves - before["moves"] == 2
    counts = {
        stage: _value("sms4sats_stage_seconds_count", stage=stage) - before[stage]
        for stage in ("payment", "allocation", "sms", "refund")
    }
    assert counts == {"payment": 2, "allocation": 1, "sms": 1, "refund": 1}
    assert _value("sms4sats_stage_seconds_sum", stage="sms") - sms_sum >= 30


async def test_gauges_sampled_from_the_database(pool: asyncpg.Pool) -> None:
    s = Status
    waiting, stuck, _unpaid = [await insert_order(pool) for _ in range(3)]
    await _walk(pool, waiting, s.PENDING_PAYMENT, s.PAID, s.ALLOCATING_NUMBER)
    async with PgStores(pool, "orders").transaction() as tx:
        await tx.orders.transition(stuck, s.PENDING_PAYMENT, s.PAID, paid_at=NOW, deadline_at=None)
    await pool.execute(
        "UPDATE orders SET deadline_at = now() - interval '10 minutes' WHERE id = $1", stuck
    )
    await ops.sample_database(PgStores(pool, "orders"))
    assert _value("sms4sats_orders", type="receive-sms", status="pending_payment") == 1
    assert _value("sms4sats_orders", type="receive-sms", status="paid") == 1
    assert _value("sms4sats_orders", type="receive-sms", status="allocating_number") == 1
    assert _value("sms4sats_invoices", kind="standard", state="open") == 1
    assert _value("sms4sats_invoices", kind="standard", state="settled") == 2
    assert _value("sms4sats_paid_orders_past_deadline") == 1

    await _walk(pool, waiting, s.ALLOCATING_NUMBER, s.REFUND_PENDING)
    await ops.sample_database(PgStores(pool, "orders"))
    # A status that emptied out reads as absent (0), not its last count.
    assert _value("sms4sats_orders", type="receive-sms", status="allocating_number") == 0
    assert _value("sms4sats_orders", type="receive-sms", status="refund_pending") == 1


async def test_consumer_lag_handled_events_and_correlation_ids(
    pool: asyncpg.Pool, nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, prefix = stream_names
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.bootstrap(js, stream, prefix)
    order_id = await insert_order(pool)
    events = [Event(EventType.PAID, order_id, correlation_id=f"req-{i}") for i in range(3)]
    for ev in events:
        body = json.dumps(ev.payload()).encode()
        await js.publish(ev.subject(prefix), body, headers=ev.headers())
    await ops.sample_consumers(js, stream)
    assert _value("sms4sats_consumer_pending", consumer="provider") == 3
    assert _value("sms4sats_consumer_ack_pending", consumer="provider") == 0

    ok_before = _value(
        "sms4sats_events_handled_total", consumer="provider", type="paid", outcome="ok"
    )
    stop = asyncio.Event()
    handled: list[str] = []

    async def handler(event: Event) -> None:
        # What a handler enqueues carries the correlation id of the event it handles.
        async with PgStores(pool, prefix).transaction() as tx:
            await tx.outbox.enqueue(Event(EventType.REFUND_REQUESTED, event.order_id))
        handled.append(event.correlation_id)
        if len(handled) == 3:
            stop.set()

    consumer = bus.Consumer(
        js, PgInbox(pool), stream=stream, prefix=prefix, durable="provider", handler=handler
    )
    await asyncio.wait_for(consumer.run(stop), 15)
    assert sorted(handled) == ["req-0", "req-1", "req-2"]
    headers = await pool.fetch("SELECT headers FROM outbox ORDER BY created_at")
    assert sorted(h["headers"][CORRELATION_HEADER] for h in headers) == sorted(handled)
    assert (
        _value("sms4sats_events_handled_total", consumer="provider", type="paid", outcome="ok")
        - ok_before
        == 3
    )
    await ops.sample_consumers(js, stream)
    assert _value("sms4sats_consumer_pending", consumer="provider") == 0
    await nc.drain()


async def test_a_handler_cut_short_by_shutdown_is_nakked_at_once(
    pool: asyncpg.Pool, nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, prefix = stream_names
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.bootstrap(js, stream, prefix)  # ack wait 120 s: a redelivery now means a nak
    ev = Event(EventType.PAID, "order-1")
    await js.publish(ev.subject(prefix), json.dumps(ev.payload()).encode(), headers=ev.headers())
    started = asyncio.Event()
    deliveries: list[str] = []

    async def slow(event: Event) -> None:
        deliveries.append(event.id)
        started.set()
        await asyncio.sleep(60)

    stop = asyncio.Event()
    first = asyncio.create_task(
        bus.Consumer(
            js, PgInbox(pool), stream=stream, prefix=prefix, durable="provider", handler=slow
        ).run(stop)
    )
    await asyncio.wait_for(started.wait(), 10)
    first.cancel()  # what run_loops does when the grace runs out
    with pytest.raises(asyncio.CancelledError):
        await first

    again = asyncio.Event()

    async def quick(event: Event) -> None:
        deliveries.append(event.id)
        again.set()

    stop2 = asyncio.Event()
    second = asyncio.create_task(
        bus.Consumer(
            js, PgInbox(pool), stream=stream, prefix=prefix, durable="provider", handler=quick
        ).run(stop2)
    )
    await asyncio.wait_for(again.wait(), 10)  # far sooner than the 120 s ack wait
    stop2.set()
    await asyncio.wait_for(second, 5)
    assert deliveries == [ev.id, ev.id]
    await nc.drain()


async def test_readiness_against_real_servers(pool: asyncpg.Pool, nats_url: str) -> None:
    health = ops.Health()
    nc = await nats.connect(nats_url)
    health.attach(pool, nc)
    assert await health.readiness() == {"database": "ok", "nats": "ok"}
    await nc.close()
    checks: dict[str, Any] = await health.readiness()
    assert checks == {"database": "ok", "nats": "disconnected"}
