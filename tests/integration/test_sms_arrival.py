"""The SMS arrival on PostgreSQL: webhook, bulk poll and getStatus racing store each SMS once."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from libs.common.core.config import Settings
from libs.common.domain.events import EventType
from libs.common.domain.orders import Order, PaymentMode, Status
from libs.common.domain.sms_port import ActivationStatus
from libs.common.persistence.order_store import NOW
from libs.common.persistence.stores import PgStores
from libs.common.usecases.sms_arrival import Outcome, SmsArrival
from services.provider.sms_watch import SmsWatch
from tests.integration.contract import PREFIX, new_order
from tests.unit.provider_kit import Clock, FakeSms

pytestmark = pytest.mark.integration
S = Status


async def waiting(stores: PgStores, activation_id: str, **overrides: object) -> Order:
    """A paid order with its number, waiting for its SMS (due for its first poll)."""
    order = await stores.orders.insert(new_order(**overrides))
    async with stores.transaction() as tx:
        assert await tx.orders.mark_paid(order.id, deadline=600)
    assert await stores.orders.transition(order.id, S.PAID, S.ALLOCATING_NUMBER)
    moved = await stores.orders.transition(
        order.id,
        S.ALLOCATING_NUMBER,
        S.WAITING_FOR_SMS,
        activation_id=activation_id,
        phone_number="+15550001",
        next_poll_at=NOW,
    )
    assert moved is not None
    return moved


async def stored(pool: asyncpg.Pool, order_id: str) -> tuple[int, int, list[str]]:
    """(message rows, transitions into code_received, outbox event types) of one order."""
    messages = await pool.fetchval(
        "SELECT count(*) FROM order_messages WHERE order_id = $1", order_id
    )
    moves = await pool.fetchval(
        "SELECT count(*) FROM order_transitions WHERE order_id = $1 AND to_status = $2",
        order_id,
        S.CODE_RECEIVED.value,
    )
    events = await pool.fetch(
        "SELECT payload->>'type' AS type FROM outbox WHERE payload->>'orderId' = $1 ORDER BY id",
        order_id,
    )
    return messages, moves, [r["type"] for r in events]


@pytest.mark.parametrize("mode", [PaymentMode.STANDARD, PaymentMode.HOLD])
async def test_webhook_replays_and_polls_at_once_store_the_sms_once(
    pool: asyncpg.Pool, mode: PaymentMode
) -> None:
    settings = Settings()
    stores = PgStores(pool, PREFIX)
    extra = {} if mode is PaymentMode.STANDARD else {"payment_mode": mode, "preimage": b"p" * 32}
    order = await waiting(stores, "act-race-1", **extra)
    sim = FakeSms(Clock())
    sim.active.append("act-race-1")
    sim.statuses["act-race-1"] = ActivationStatus("received", "48010", "Telegram code: 48010")
    # Two provider replicas and five pushes of the same SMS, all at once.
    replicas = [SmsWatch(stores, settings, sim, asyncio.Event()) for _ in range(2)]
    arrival = SmsArrival(PgStores(pool, PREFIX), settings)

    outcomes = await asyncio.gather(
        *(
            arrival.for_activation("act-race-1", "48010", "Telegram code: 48010", source="webhook")
            for _ in range(5)
        ),
        *(
            w.arrival.arrived(order, "48010", "Telegram code: 48010", source="bulk")
            for w in replicas
        ),
        *(w.check(order) for w in replicas),
    )

    recorded = [o for o in outcomes if o is Outcome.RECORDED or o is True]
    assert len(recorded) <= 1
    messages, moves, events = await stored(pool, order.id)
    assert (messages, moves) == (1, 1)
    settle = [EventType.CODE_DELIVERED.value] if mode is PaymentMode.HOLD else []
    assert sorted(events) == sorted([EventType.PAID.value, *settle])  # one settle asked for
    got = await stores.orders.get(order.id)
    assert got is not None and got.code == "48010" and got.status is S.CODE_RECEIVED


async def test_another_sms_reported_by_webhook_and_poll_at_once_is_stored_once(
    pool: asyncpg.Pool,
) -> None:
    settings = dataclasses.replace(Settings(), another_sms_window_seconds=300.0)
    stores = PgStores(pool, PREFIX)
    order = await waiting(stores, "act-race-2")
    arrival = SmsArrival(stores, settings)
    assert await arrival.for_activation("act-race-2", "1111", "code 1111", source="webhook") is (
        Outcome.RECORDED
    )
    assert await stores.orders.reopen_for_another_sms(order.id)
    asking = await stores.orders.get(order.id)
    assert asking is not None

    outcomes = await asyncio.gather(
        *(
            arrival.for_activation("act-race-2", "2222", "code 2222", source="webhook")
            for _ in "abc"
        ),
        *(arrival.arrived(asking, "2222", "code 2222", source="bulk") for _ in "ab"),
    )

    assert sum(o is Outcome.RECORDED or o is True for o in outcomes) == 1
    codes = await pool.fetch(
        "SELECT code FROM order_messages WHERE order_id = $1 ORDER BY id", order.id
    )
    assert [r["code"] for r in codes] == ["1111", "2222"]


async def test_one_bulk_round_over_thousands_of_waiting_orders(pool: asyncpg.Pool) -> None:
    """1,000 waiting orders, 100 of them with an SMS: one provider call, one batch query."""
    settings = Settings()
    stores = PgStores(pool, PREFIX)
    sim = FakeSms(Clock())
    orders = []
    for n in range(1000):
        activation_id = f"act-many-{n}"
        orders.append(await waiting(stores, activation_id))
        sim.active.append(activation_id)
    for order in orders[::10]:
        assert order.activation_id is not None
        sim.statuses[order.activation_id] = ActivationStatus("received", "9090", "code 9090")
    watch = SmsWatch(stores, settings, sim, asyncio.Event())

    await watch.poll_round(0.0)
    await watch.poll_round(0.1)  # within the interval: not this replica's turn again

    assert [name for name, _ in sim.calls] == ["active_activations"]
    counts = await pool.fetch(
        "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY status"
    )
    assert {r["status"]: r["n"] for r in counts} == {
        S.CODE_RECEIVED.value: 100,
        S.WAITING_FOR_SMS.value: 900,
    }
    assert await pool.fetchval("SELECT count(*) FROM order_messages") == 100
    # The listed orders stay due but untouched: no row of theirs was rewritten by the round.
    untouched = await pool.fetchval(
        "SELECT count(*) FROM orders WHERE status = 'waiting_for_sms' AND next_poll_at <= now()"
    )
    assert untouched == 900
