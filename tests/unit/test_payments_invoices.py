"""Unit tests of the invoice watcher on the in-memory stores and a fake node: paid and expired
transitions, exactly once."""

from __future__ import annotations

from datetime import timedelta

from libs.common.domain.events import EventType, Timer
from libs.common.domain.orders import Order, PaymentMode, Status
from services.payments.invoice_watch import InvoiceWatcher
from tests.unit.payments_kit import PRICE, FakeHost, FakeNode, host, invoice, place

S = Status


async def reload(h: FakeHost, order: Order) -> Order:
    loaded = await h.stores.orders.get(order.id)
    assert loaded is not None
    return loaded


async def test_a_settled_invoice_pays_its_order_once_and_starts_the_sms_deadline() -> None:
    h, clock = host(order_timeout_seconds=1200)
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    order = await place(h.stores)
    await h.stores.timers.set(order.id, Timer.INVOICE_EXPIRED, 600)
    settled = node.add(invoice(order.payment_hash, "SETTLED", amt_paid_msat=PRICE * 1000))

    assert await watcher.mark_paid(settled)
    assert not await watcher.mark_paid(settled)  # the stream replays it

    paid = await reload(h, order)
    assert paid.status is S.PAID and paid.amt_paid_msat == PRICE * 1000
    assert paid.paid_at == clock.now and paid.deadline_at == clock.now + timedelta(seconds=1200)
    due = h.stores.timer_due(order.id, Timer.SMS_TIMEOUT)
    assert due is not None and (due - clock.now).total_seconds() == 1200
    assert h.stores.timer_due(order.id, Timer.INVOICE_EXPIRED) is None
    assert h.stores.timer_due(order.id, Timer.HOLD_DEADLINE) is None  # not a hold
    assert [e.order_id for e in h.stores.events(EventType.PAID)] == [order.id]


async def test_an_accepted_standard_invoice_or_an_underpaid_one_pays_nothing() -> None:
    h, _ = host()
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    accepted = await place(h.stores)
    underpaid = await place(h.stores)

    assert not await watcher.mark_paid(
        invoice(accepted.payment_hash, "ACCEPTED", amt_paid_msat=PRICE * 1000)
    )
    assert not await watcher.mark_paid(
        invoice(underpaid.payment_hash, "SETTLED", amt_paid_msat=PRICE * 1000 - 1)
    )
    assert not await watcher.mark_paid(invoice(b"\x00" * 32, "SETTLED", amt_paid_msat=1))

    assert (await reload(h, accepted)).status is S.PENDING_PAYMENT
    assert (await reload(h, underpaid)).status is S.PENDING_PAYMENT
    assert h.stores.events(EventType.PAID) == []


async def test_an_unpaid_invoice_at_its_expiry_is_cancelled_and_the_order_expired() -> None:
    h, _ = host()
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    order = await place(h.stores)
    node.add(invoice(order.payment_hash, "OPEN"))
    await h.stores.tokens.insert(b"key", b"root", order.id)

    await watcher.expire(order.id)
    await watcher.expire(order.id)  # a re-fired timer changes nothing

    assert (await reload(h, order)).status is S.EXPIRED
    assert node.cancels == [order.payment_hash]
    assert h.stores.state.tokens == {}
    assert [e.order_id for e in h.stores.events(EventType.EXPIRED)] == [order.id]


async def test_an_invoice_paid_just_before_its_expiry_pays_the_order_instead() -> None:
    h, _ = host()
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    order = await place(h.stores)
    node.add(invoice(order.payment_hash, "SETTLED", amt_paid_msat=PRICE * 1000))

    await watcher.expire(order.id)

    assert (await reload(h, order)).status is S.PAID
    assert node.cancels == []


async def test_an_invoice_the_node_lost_expires_its_order() -> None:
    h, _ = host()
    watcher = InvoiceWatcher(h, FakeNode())
    order = await place(h.stores)

    await watcher.expire(order.id)

    assert (await reload(h, order)).status is S.EXPIRED


async def test_reconcile_finds_payments_the_stream_missed() -> None:
    h, _ = host()
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    missed = await place(h.stores)
    waiting = await place(h.stores)
    hold = await place(h.stores, mode=PaymentMode.HOLD)
    node.add(invoice(missed.payment_hash, "SETTLED", amt_paid_msat=PRICE * 1000))
    node.add(invoice(waiting.payment_hash, "OPEN"))
    node.add(invoice(hold.payment_hash, "ACCEPTED", amt_paid_msat=PRICE * 1000))

    assert await watcher.reconcile() == 2
    assert await watcher.reconcile() == 0

    assert node.lookups == 1  # only the settled one left the pending list
    assert (await reload(h, missed)).status is S.PAID
    assert (await reload(h, waiting)).status is S.PENDING_PAYMENT
    assert (await reload(h, hold)).status is S.PAID


async def test_reconcile_looks_up_a_bounded_number_of_orders_per_pass() -> None:
    h, _ = host(reconcile_lookups_per_pass=10)
    node = FakeNode()
    watcher = InvoiceWatcher(h, node)
    # 60 orders whose invoices left the pending list: 55 canceled, 5 settled the stream missed.
    orders = [await place(h.stores) for _ in range(60)]
    for i, order in enumerate(orders):
        if i < 5:
            node.add(invoice(order.payment_hash, "SETTLED", amt_paid_msat=PRICE * 1000))
        else:
            node.add(invoice(order.payment_hash, "CANCELED"))

    paid, passes = 0, 0
    while paid < 5 and passes < 200:
        before = node.lookups
        paid += await watcher.reconcile()
        passes += 1
        assert node.lookups - before <= 10  # bounded, whatever the backlog
    # Each pass samples afresh, so every missed payment is found within a few passes.
    assert paid == 5
    assert passes > 1
    for order in orders[:5]:
        assert (await reload(h, order)).status is S.PAID
