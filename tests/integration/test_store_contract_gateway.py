"""The gateway's store methods, one contract for PostgreSQL and the twin (`backend` fixture).

The gateway's use cases are unit-tested on the twin; these tests hold the twin to what
PostgreSQL does for the reads and locks they lean on: the unpaid cap, refund invoices in use,
reactivations in progress and the authenticated poll.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.domain.messages import Message
from libs.common.domain.orders import Status
from libs.common.domain.refunds import RefundStatus
from libs.common.persistence.order_store import NOW
from libs.common.persistence.ports import RefundState
from tests.integration.contract import Backend, new_order

pytestmark = pytest.mark.integration

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


async def test_a_refund_invoice_is_in_use_once_an_order_names_it(backend: Backend) -> None:
    new = new_order()
    assert new.refund_payment_hash is not None
    assert not await backend.stores.orders.refund_invoice_in_use(new.refund_payment_hash)
    await backend.stores.orders.insert(new)
    assert await backend.stores.orders.refund_invoice_in_use(new.refund_payment_hash)
    assert not await backend.stores.orders.refund_invoice_in_use(b"x" * 32)


async def test_a_reactivation_is_in_progress_from_paid_until_it_ends(backend: Backend) -> None:
    orders = backend.stores.orders
    earlier = await orders.insert(new_order())
    again = await orders.insert(new_order(reactivates=earlier.id))
    assert not await orders.reactivation_in_progress(earlier.id)  # unpaid: may race
    async with backend.stores.transaction() as tx:
        assert await tx.orders.mark_paid(again.id, deadline=600)
    assert await orders.reactivation_in_progress(earlier.id)
    assert not await orders.reactivation_in_progress(again.id)
    async with backend.stores.transaction() as tx:
        assert await tx.orders.transition(again.id, Status.PAID, Status.ALLOCATING_NUMBER)
        assert await tx.orders.transition(again.id, Status.ALLOCATING_NUMBER, Status.FAILED)
    assert not await orders.reactivation_in_progress(earlier.id)


async def test_the_unpaid_cap_counts_a_clients_payable_orders(backend: Backend) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    later = soon + timedelta(minutes=5)
    async with backend.stores.transaction() as tx:
        await tx.orders.tag_client("192.0.2.7")
        await tx.orders.lock_client("192.0.2.7")
        await tx.orders.insert(new_order(invoice_expires_at=later))
        first = await tx.orders.insert(new_order(invoice_expires_at=soon))
        # Its invoice expired: it can no longer be paid, so it holds no slot.
        await tx.orders.insert(new_order(invoice_expires_at=LONG_AGO))
        paid = await tx.orders.insert(new_order(invoice_expires_at=later))
        assert await tx.orders.mark_paid(paid.id, deadline=600)
    loaded = await backend.stores.orders.get(first.id)
    assert loaded is not None and loaded.client_addr == "192.0.2.7"
    unpaid = await backend.stores.orders.unpaid_of_client("192.0.2.7")
    assert (unpaid.count, unpaid.first_expiry) == (2, soon)
    other = await backend.stores.orders.unpaid_of_client("192.0.2.8")
    assert (other.count, other.first_expiry) == (0, None)


async def test_a_credential_key_reads_its_order_refund_and_messages(backend: Backend) -> None:
    stores = backend.stores
    order = await stores.orders.insert(new_order())
    await stores.tokens.insert(b"k" * 32, b"r" * 32, order.id)
    found = await stores.tokens.order_for_key(b"k" * 32)
    assert found is not None
    assert (found.order, found.root_key, found.refund, found.messages) == (
        order,
        b"r" * 32,
        None,
        [],
    )
    at = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
    await stores.messages.record(order.id, Message(at, "Code 4321", phone_from="Telegram"))
    await stores.messages.record(order.id, Message(at + timedelta(seconds=1), "again"))
    async with stores.transaction() as tx:
        assert await tx.orders.mark_paid(order.id, deadline=600)
        assert await tx.orders.transition(order.id, Status.PAID, Status.ALLOCATING_NUMBER)
        moved = await tx.orders.transition(
            order.id, Status.ALLOCATING_NUMBER, Status.REFUND_PENDING, deadline_at=NOW
        )
        assert moved is not None
        await tx.refunds.insert(order.id)
    found = await stores.tokens.order_for_key(b"k" * 32)
    assert found is not None
    assert found.order.status is Status.REFUND_PENDING
    assert found.refund == RefundState(RefundStatus.PENDING, order.price_sats, None)
    assert [(m.text, m.code, m.received_at) for m in found.messages] == [
        ("Code 4321", "4321", at),
        ("again", None, at + timedelta(seconds=1)),
    ]
    assert await stores.tokens.order_for_key(b"u" * 32) is None
