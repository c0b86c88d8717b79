"""The scheduler's store methods, one contract on PostgreSQL and on the twin.

Each test runs once per backend (the `backend` fixture of `tests/integration/conftest.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.domain.events import Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import Order, Status
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
