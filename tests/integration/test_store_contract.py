"""One contract, two implementations: the PostgreSQL stores and their in-memory twin.

Every test here runs twice, once per backend (the `stores` fixture). A store method added to
`libs.common.persistence.ports` gets its contract test here, so the twin that the unit tests
of the workers lean on can never drift from what PostgreSQL does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from libs.common.domain.events import EventType, Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import (
    InvalidTransition,
    Order,
    OrderType,
    PaymentMode,
    Status,
)
from libs.common.domain.refunds import RefundStatus
from libs.common.persistence.order_store import NOW
from tests.integration.contract import Backend, new_order

pytestmark = pytest.mark.integration

PREFIX = "orders"


async def test_insert_then_get_returns_the_typed_order(backend: Backend) -> None:
    new = new_order()
    created = await backend.stores.orders.insert(new)
    loaded = await backend.stores.orders.get(new.id)
    assert loaded == created
    assert isinstance(loaded, Order)
    assert loaded.status is Status.PENDING_PAYMENT
    assert loaded.type is OrderType.RECEIVE_SMS
    assert loaded.payment_mode is PaymentMode.STANDARD
    assert loaded.price_sats == 2500 and loaded.provider_cost_usd == Decimal("0.25")
    assert loaded.payment_hash == new.payment_hash
    assert loaded.paid_at is None and loaded.finish_attempts == 0
    assert await backend.stores.orders.get(str(uuid.uuid4())) is None


async def test_balance_order_without_invoice_expiry_gets_now(backend: Backend) -> None:
    new = new_order(
        invoice_expires_at=None,
        payment_mode=PaymentMode.BALANCE,
        refund_invoice=None,
        refund_payment_hash=None,
        payment_request="paid",
    )
    if backend.pool is not None:  # balance orders need their account row
        account = await backend.pool.fetchval(
            "INSERT INTO accounts (key_hash) VALUES ($1) RETURNING id", uuid.uuid4().bytes
        )
        new = dataclasses.replace(new, account_id=account)
    else:
        new = dataclasses.replace(new, account_id=1)
    order = await backend.stores.orders.insert(new)
    assert order.is_balance
    assert abs((order.invoice_expires_at - order.created_at).total_seconds()) < 1


async def test_transition_moves_only_from_the_expected_status(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    moved = await backend.stores.orders.transition(
        order.id,
        Status.PENDING_PAYMENT,
        Status.PAID,
        paid_at=NOW,
        deadline_at=timedelta(seconds=600),
    )
    assert moved is not None and moved.status is Status.PAID
    assert moved.paid_at is not None and moved.deadline_at is not None
    assert (moved.deadline_at - moved.paid_at).total_seconds() == pytest.approx(600, abs=1)
    # A second, stale attempt finds it no longer pending: None, and nothing changes.
    again = await backend.stores.orders.transition(order.id, Status.PENDING_PAYMENT, Status.PAID)
    assert again is None
    assert await backend.stores.orders.get(order.id) == moved


async def test_transition_refuses_what_the_table_forbids(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    with pytest.raises(InvalidTransition):
        await backend.stores.orders.transition(order.id, Status.PENDING_PAYMENT, Status.COMPLETED)
    with pytest.raises(ValueError, match="cannot set"):
        await backend.stores.orders.transition(
            order.id, Status.PENDING_PAYMENT, Status.PAID, price_sats=1
        )
    assert (await backend.stores.orders.get(order.id)) == order


async def test_terminal_transition_sets_finished_at(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    expired = await backend.stores.orders.transition(
        order.id, Status.PENDING_PAYMENT, Status.EXPIRED
    )
    assert expired is not None and expired.is_terminal and expired.finished_at is not None


async def test_only_one_of_concurrent_transitions_wins(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())

    async def attempt() -> bool:
        async with backend.stores.transaction() as tx:
            return (
                await tx.orders.transition(order.id, Status.PENDING_PAYMENT, Status.PAID)
                is not None
            )

    results = await asyncio.gather(*(attempt() for _ in range(8)))
    assert sum(results) == 1


async def test_mark_paid_arms_the_deadline_and_tells_the_provider(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    await backend.stores.timers.set(order.id, Timer.INVOICE_EXPIRED, 600)
    async with backend.stores.transaction() as tx:
        assert await tx.orders.mark_paid(order.id, deadline=900)
    assert await backend.timer_in(order.id, Timer.INVOICE_EXPIRED) is None
    assert await backend.timer_in(order.id, Timer.SMS_TIMEOUT) == pytest.approx(900, abs=2)
    assert await backend.events() == [(EventType.PAID, order.id)]
    async with backend.stores.transaction() as tx:
        assert not await tx.orders.mark_paid(order.id, deadline=900)  # duplicate: nothing
    assert await backend.events() == [(EventType.PAID, order.id)]


async def test_complete_arms_the_code_purge(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    orders = backend.stores.orders
    await orders.transition(order.id, Status.PENDING_PAYMENT, Status.PAID)
    await orders.transition(order.id, Status.PAID, Status.ALLOCATING_NUMBER)
    await orders.transition(order.id, Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS)
    await orders.transition(order.id, Status.WAITING_FOR_SMS, Status.CODE_RECEIVED, code="12345")
    async with backend.stores.transaction() as tx:
        assert await tx.orders.complete(order.id, code_retention=3600, current=Status.CODE_RECEIVED)
    done = await orders.get(order.id)
    assert done is not None and done.status is Status.COMPLETED and done.code == "12345"
    assert await backend.timer_in(order.id, Timer.PURGE_CODE) == pytest.approx(3600, abs=2)
    assert await backend.events() == [(EventType.COMPLETED, order.id)]


async def test_a_failed_transaction_leaves_nothing(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    with pytest.raises(RuntimeError):
        async with backend.stores.transaction() as tx:
            assert await tx.orders.mark_paid(order.id, deadline=900)
            raise RuntimeError("crash after the write")
    assert (await backend.stores.orders.get(order.id)) == order
    assert await backend.events() == []
    assert await backend.timer_in(order.id, Timer.SMS_TIMEOUT) is None


async def test_timer_rearm_and_cancel(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    timers = backend.stores.timers
    await timers.set(order.id, Timer.SMS_TIMEOUT, 100)
    await timers.set(order.id, Timer.SMS_TIMEOUT, 500)
    assert await backend.timer_in(order.id, Timer.SMS_TIMEOUT) == pytest.approx(500, abs=2)
    await timers.cancel(order.id, Timer.SMS_TIMEOUT)
    assert await backend.timer_in(order.id, Timer.SMS_TIMEOUT) is None


async def test_inbox_remembers_per_consumer(backend: Backend) -> None:
    inbox = backend.stores.inbox
    message = str(uuid.uuid4())
    assert not await inbox.seen("payments", message)
    await inbox.record("payments", message)
    await inbox.record("payments", message)  # a redelivery records nothing new
    assert await inbox.seen("payments", message)
    assert not await inbox.seen("provider", message)


async def test_order_type_holds_every_column(pool: asyncpg.Pool) -> None:
    """The typed Order and the orders table agree: a new column must be typed too."""
    columns = {
        r["column_name"]
        for r in await pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'"
        )
    }
    assert columns == {f.name for f in dataclasses.fields(Order)}


async def test_messages_are_stored_once_and_listed_oldest_first(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    later = Message(at + timedelta(seconds=5), "Your code is 222-333", phone_from="Telegram")
    first = Message(at, "Your code is 11111", phone_from="Telegram")
    messages = backend.stores.messages
    assert await messages.record(order.id, later)
    assert await messages.record(order.id, first)
    assert not await messages.record(order.id, first)  # the poll saw it after the webhook
    stored = await messages.for_order(order.id)
    assert [m.code for m in stored] == ["11111", "222333"]
    assert [m.received_at for m in stored] == [at, at + timedelta(seconds=5)]
    assert stored[0].text == "Your code is 11111" and stored[0].phone_from == "Telegram"


async def test_refund_intent_is_written_once_for_the_whole_price(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    await backend.stores.refunds.insert(order.id)
    await backend.stores.refunds.insert(order.id, 100)  # a second intent changes nothing
    refund = await backend.stores.refunds.get(order.id)
    assert refund is not None
    assert refund.amount_sats == order.price_sats and refund.attempts == 0
    assert refund.status is RefundStatus.PENDING
    assert refund.payment_hash == order.refund_payment_hash
    assert await backend.stores.refunds.get(str(uuid.uuid4())) is None


async def test_refund_intent_for_part_of_the_price(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    await backend.stores.refunds.insert(order.id, 700)
    refund = await backend.stores.refunds.get(order.id)
    assert refund is not None and refund.amount_sats == 700


async def test_hold_orders_get_no_refund_row(backend: Backend) -> None:
    order = await backend.stores.orders.insert(
        new_order(payment_mode=PaymentMode.HOLD, preimage=b"p" * 32)
    )
    await backend.stores.refunds.insert(order.id)
    assert await backend.stores.refunds.get(order.id) is None


async def test_tokens_are_forgotten_with_their_order(backend: Backend) -> None:
    order = await backend.stores.orders.insert(new_order())
    await backend.stores.tokens.insert(b"k" * 32, b"r" * 32, order.id)
    await backend.stores.tokens.delete_for_order(order.id)
    # The same key id can be stored again once forgotten (it is the primary key).
    await backend.stores.tokens.insert(b"k" * 32, b"r" * 32, order.id)
