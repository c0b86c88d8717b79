"""Unit tests of hold invoices on the in-memory stores and a fake node: settled only with a code,
released by the hold deadline, kept in step with the node by the sweep."""

from __future__ import annotations

import pytest

from libs.common.domain.events import EventType, Timer
from libs.common.domain.hold_policy import hold_deadline_seconds
from libs.common.domain.orders import Order, PaymentMode, Status
from libs.common.messaging.bus import Retry
from services.payments.hold import HoldInvoices
from services.payments.invoice_watch import InvoiceWatcher
from tests.unit.payments_kit import PRICE, FakeHost, FakeNode, host, invoice, place

S = Status
HOLD = PaymentMode.HOLD


def parts(h: FakeHost) -> tuple[FakeNode, InvoiceWatcher, HoldInvoices]:
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    return node, watcher, HoldInvoices(h, node, watcher)


async def reload(h: FakeHost, order: Order) -> Order:
    loaded = await h.stores.orders.get(order.id)
    assert loaded is not None
    return loaded


async def held(h: FakeHost, node: FakeNode, status: Status) -> Order:
    """A hold order in `status` whose HTLC the node holds."""
    order = await place(h.stores, status, mode=HOLD)
    node.add(invoice(order.payment_hash, "ACCEPTED", amt_paid_msat=PRICE * 1000))
    return order


async def test_an_accepted_hold_invoice_pays_the_order_and_arms_the_hold_deadline() -> None:
    h, clock = host(order_timeout_seconds=1200, hold_grace_seconds=60.0)
    node, watcher, _ = parts(h)
    order = await place(h.stores, mode=HOLD)
    accepted = node.add(
        invoice(order.payment_hash, "ACCEPTED", amt_paid_msat=PRICE * 1000, heights=[900, 880])
    )

    assert await watcher.mark_paid(accepted)

    paid = await reload(h, order)
    assert paid.status is S.PAID and paid.htlc_expiry_height == 880
    due = h.stores.timer_due(order.id, Timer.HOLD_DEADLINE)
    assert due is not None and (due - clock.now).total_seconds() == 1260.0
    assert hold_deadline_seconds(1200, 60.0) == 1260.0


async def test_a_hold_is_settled_only_once_a_code_was_delivered() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    waiting = await held(h, node, S.WAITING_FOR_SMS)

    await holds.settle(waiting.id)  # a stale code_delivered event: no code yet
    assert node.settles == []
    assert (await reload(h, waiting)).status is S.WAITING_FOR_SMS

    coded = await held(h, node, S.CODE_RECEIVED)
    await holds.settle(coded.id)
    await holds.settle(coded.id)  # redelivered: settles nothing more

    done = await reload(h, coded)
    assert done.status is S.COMPLETED and done.settled_at is not None
    assert node.settles == [coded.preimage]
    assert h.stores.timer_due(coded.id, Timer.PURGE_CODE) is not None
    assert [e.order_id for e in h.stores.events(EventType.COMPLETED)] == [coded.id]


async def test_an_htlc_gone_before_the_settle_completes_without_showing_the_code() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    coded = await held(h, node, S.CODE_RECEIVED)
    node.fail_settle = True
    node.add(invoice(coded.payment_hash, "CANCELED"))

    await holds.settle(coded.id)

    done = await reload(h, coded)
    assert done.status is S.COMPLETED and done.settled_at is None


async def test_a_settle_that_failed_on_a_still_held_htlc_is_retried() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    coded = await held(h, node, S.CODE_RECEIVED)
    node.fail_settle = True

    with pytest.raises(Retry):
        await holds.settle(coded.id)
    assert (await reload(h, coded)).status is S.CODE_RECEIVED


@pytest.mark.parametrize("status", [S.PAID, S.ALLOCATING_NUMBER, S.WAITING_FOR_SMS])
async def test_the_hold_deadline_releases_an_order_without_a_code(status: Status) -> None:
    h, _ = host()
    node, _, holds = parts(h)
    order = await held(h, node, status)

    await holds.enforce_deadline(order.id)

    assert (await reload(h, order)).status is S.REFUNDED
    assert node.cancels == [order.payment_hash]
    assert h.stores.timer_due(order.id, Timer.SMS_TIMEOUT) is None
    assert [e.order_id for e in h.stores.events(EventType.REFUNDED)] == [order.id]


async def test_the_hold_deadline_leaves_an_order_with_a_code_to_be_settled() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    coded = await held(h, node, S.CODE_RECEIVED)

    await holds.enforce_deadline(coded.id)

    assert (await reload(h, coded)).status is S.CODE_RECEIVED
    assert node.cancels == []


async def test_a_cancel_the_node_refused_on_a_settled_invoice_refunds_nothing() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    order = await place(h.stores, S.REFUND_PENDING, mode=HOLD)
    node.add(invoice(order.payment_hash, "SETTLED"))
    node.fail_cancel = True

    await holds.release(order.id)

    assert (await reload(h, order)).status is S.REFUND_PENDING  # left for operators


async def test_the_sweep_looks_up_only_htlcs_missing_from_the_pending_list() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    still = await held(h, node, S.WAITING_FOR_SMS)
    gone = await held(h, node, S.WAITING_FOR_SMS)
    node.add(invoice(gone.payment_hash, "CANCELED"))  # the node gave the HTLC back

    await holds.sweep_once()

    assert node.lookups == 1
    assert (await reload(h, still)).status is S.WAITING_FOR_SMS
    assert (await reload(h, gone)).status is S.REFUNDED


async def test_the_sweep_marks_accepted_unpaid_orders_paid_and_settles_coded_ones() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    unpaid = await place(h.stores, mode=HOLD)
    node.add(invoice(unpaid.payment_hash, "ACCEPTED", amt_paid_msat=PRICE * 1000))
    coded = await held(h, node, S.CODE_RECEIVED)

    await holds.sweep_once()

    assert (await reload(h, unpaid)).status is S.PAID
    assert (await reload(h, coded)).status is S.COMPLETED


async def test_a_settle_made_without_settled_at_is_recorded_only_if_the_node_settled() -> None:
    h, _ = host()
    node, _, holds = parts(h)
    taken = await held(h, node, S.CODE_RECEIVED)
    given_back = await held(h, node, S.CODE_RECEIVED)
    for order in (taken, given_back):
        # Completed by an older worker that did not record the settle.
        assert await h.stores.orders.complete(order.id, code_retention=3600)
    node.add(invoice(taken.payment_hash, "SETTLED"))
    node.add(invoice(given_back.payment_hash, "CANCELED"))

    await holds.record_missed_settles()

    assert (await reload(h, taken)).settled_at is not None
    assert (await reload(h, given_back)).settled_at is None
