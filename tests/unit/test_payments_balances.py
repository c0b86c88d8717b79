"""Unit tests of prepaid balances on the in-memory stores and a fake node: a balance order is
credited back once, a top-up credited once."""

from __future__ import annotations

import hashlib

import pytest

from libs.common.domain.events import EventType
from libs.common.domain.orders import Order, PaymentMode, Status
from libs.common.persistence.ports import Funding
from services.payments.balances import Balances
from services.payments.invoice_watch import InvoiceWatcher
from tests.unit.payments_kit import PRICE, FakeHost, FakeNode, host, invoice, place

S = Status
ACCOUNT = 7


def balances(h: FakeHost, node: FakeNode) -> Balances:
    h.stores.state.accounts.setdefault(ACCOUNT, 0)
    return Balances(h, node, InvoiceWatcher(h, node))


async def test_a_balance_order_without_a_code_is_credited_back_once() -> None:
    h, _ = host()
    node = FakeNode()
    parts = balances(h, node)
    order = await place(h.stores, S.REFUND_PENDING, mode=PaymentMode.BALANCE, account_id=ACCOUNT)

    await parts.credit_back(order.id)
    await parts.credit_back(order.id)  # the sweep and the event both ask

    assert h.stores.state.accounts[ACCOUNT] == PRICE
    assert h.stores.state.ledger == {("refund", order.id): (ACCOUNT, PRICE, PRICE)}
    loaded = await h.stores.orders.get(order.id)
    assert loaded is not None and loaded.status is S.REFUNDED
    assert [e.order_id for e in h.stores.events(EventType.REFUNDED)] == [order.id]


async def test_a_credit_another_worker_recorded_first_changes_nothing() -> None:
    h, _ = host()
    node = FakeNode()
    parts = balances(h, node)
    order = await place(h.stores, S.REFUND_PENDING, mode=PaymentMode.BALANCE, account_id=ACCOUNT)
    await h.stores.accounts.move_once(ACCOUNT, PRICE, "refund", order.id)

    await parts.credit_back(order.id)

    assert h.stores.state.accounts[ACCOUNT] == PRICE  # credited once, not twice
    loaded = await h.stores.orders.get(order.id)
    assert loaded is not None and loaded.status is S.REFUND_PENDING  # rolled back
    assert h.stores.events(EventType.REFUNDED) == []


async def test_a_credit_for_an_order_that_moved_on_meanwhile_is_rolled_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h, _ = host()
    node = FakeNode()
    parts = balances(h, node)
    order = await place(h.stores, S.REFUND_PENDING, mode=PaymentMode.BALANCE, account_id=ACCOUNT)

    async def stale(order_id: str) -> Order:
        return order  # read before another writer ended it

    assert await h.stores.orders.transition(order.id, S.REFUND_PENDING, S.REFUND_FAILED)
    monkeypatch.setattr(h.stores.orders, "get", stale)
    await parts.credit_back(order.id)

    assert h.stores.state.accounts[ACCOUNT] == 0 and h.stores.state.ledger == {}
    assert h.stores.events(EventType.REFUNDED) == []


async def test_only_balance_orders_waiting_for_their_refund_are_credited() -> None:
    h, _ = host()
    node = FakeNode()
    parts = balances(h, node)
    standard = await place(h.stores, S.REFUND_PENDING)
    paid = await place(h.stores, S.PAID, mode=PaymentMode.BALANCE, account_id=ACCOUNT)

    await parts.credit_back(standard.id)
    await parts.credit_back(paid.id)

    assert h.stores.state.accounts[ACCOUNT] == 0 and h.stores.state.ledger == {}
    assert await h.stores.orders.balance_refund_pending(10) == []


def fund(h: FakeHost, node: FakeNode, funding_id: str, state: str) -> Funding:
    preimage = funding_id.encode().ljust(32, b"\0")
    funding = Funding(funding_id, ACCOUNT, 1000, hashlib.sha256(preimage).digest(), preimage)
    h.stores.state.fundings[funding_id] = (funding, "pending", h.stores.clock())
    node.add(invoice(funding.payment_hash, state, amt_paid_msat=1_000_000))
    return funding


async def test_top_ups_are_settled_then_credited_once_and_unpaid_ones_expire() -> None:
    h, _ = host()
    node = FakeNode()
    parts = balances(h, node)
    accepted = fund(h, node, "accepted", "ACCEPTED")
    fund(h, node, "open", "OPEN")
    fund(h, node, "canceled", "CANCELED")

    await parts.sweep_fundings()
    await parts.sweep_fundings()

    assert node.settles == [accepted.preimage]
    # The paged scan answers for the open ones: only the settle's check and the canceled
    # invoice (gone from the pending list) are looked up, once.
    assert node.lookups == 2
    assert h.stores.state.accounts[ACCOUNT] == 1000
    assert list(h.stores.state.ledger) == [("fund", "accepted")]
    statuses = {fid: row[1] for fid, row in h.stores.state.fundings.items()}
    assert statuses == {"accepted": "credited", "open": "pending", "canceled": "expired"}
    assert [f.id for f in await h.stores.accounts.fundings_pending(10)] == ["open"]


async def test_a_top_up_credited_by_another_worker_is_only_marked() -> None:
    h, _ = host()
    node = FakeNode()
    parts = balances(h, node)
    top_up = fund(h, node, "settled", "SETTLED")
    await h.stores.accounts.move_once(ACCOUNT, top_up.amount_sats, "fund", top_up.id)

    await parts.sweep_fundings()

    assert h.stores.state.accounts[ACCOUNT] == 1000  # not twice
    assert h.stores.state.fundings["settled"][1] == "credited"
