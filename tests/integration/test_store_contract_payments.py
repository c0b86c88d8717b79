"""The payments side of the store contract, run on PostgreSQL and on the twin.

The payments unit tests (`tests/unit/test_payments_*.py`) lean on the twin's refunds, order
scans and accounts; these tests keep it answering as PostgreSQL does.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.common.domain.orders import Order, PaymentMode, Status
from libs.common.domain.refunds import RefundStatus
from libs.common.persistence.order_store import NOW
from libs.common.persistence.ports import AlreadyRecorded, Funding
from tests.integration.contract import Backend, new_order

pytestmark = pytest.mark.integration

S = Status


async def placed(backend: Backend, status: Status = S.PENDING_PAYMENT, **new: Any) -> Order:
    """A new order walked to `status` through the guarded transitions."""
    orders = backend.stores.orders
    order = await orders.insert(new_order(**new))
    if status is S.PENDING_PAYMENT:
        return order
    assert await orders.mark_paid(order.id, deadline=600)
    steps = {
        S.PAID: [],
        S.WAITING_FOR_SMS: [S.ALLOCATING_NUMBER, S.WAITING_FOR_SMS],
        S.CODE_RECEIVED: [S.ALLOCATING_NUMBER, S.WAITING_FOR_SMS, S.CODE_RECEIVED],
        S.COMPLETED: [S.ALLOCATING_NUMBER, S.WAITING_FOR_SMS, S.CODE_RECEIVED, S.COMPLETED],
        S.REFUND_PENDING: [S.ALLOCATING_NUMBER, S.REFUND_PENDING],
        S.REFUNDED: [S.ALLOCATING_NUMBER, S.REFUND_PENDING, S.REFUNDED],
    }[status]
    current = S.PAID
    for target in steps:
        changes: dict[str, Any] = {}
        if target is S.CODE_RECEIVED:
            changes = {"code": "123456", "sms_received_at": NOW}
        assert await orders.transition(order.id, current, target, **changes) is not None
        current = target
    loaded = await orders.get(order.id)
    assert loaded is not None
    return loaded


def hold(**more: Any) -> dict[str, Any]:
    """new_order arguments for a hold-invoice order."""
    preimage = secrets.token_bytes(32)
    return {
        "payment_mode": PaymentMode.HOLD,
        "preimage": preimage,
        "payment_hash": hashlib.sha256(preimage).digest(),
        "refund_invoice": None,
        "refund_payment_hash": None,
        **more,
    }


async def account(backend: Backend, balance: int = 0) -> int:
    """A prepaid account holding `balance` (written behind the store: the gateway opens them)."""
    if backend.memory is not None:
        new_id = len(backend.memory.state.accounts) + 1
        backend.memory.state.accounts[new_id] = balance
        return new_id
    assert backend.pool is not None
    account_id: int = await backend.pool.fetchval(
        "INSERT INTO accounts (key_hash, balance_sats) VALUES ($1, $2) RETURNING id",
        secrets.token_bytes(32),
        balance,
    )
    return account_id


async def funding(backend: Backend, account_id: int, funding_id: str) -> Funding:
    """A pending top-up (written behind the store: the gateway creates them)."""
    preimage = secrets.token_bytes(32)
    top_up = Funding(funding_id, account_id, 1000, hashlib.sha256(preimage).digest(), preimage)
    if backend.memory is not None:
        now = backend.memory.clock() + timedelta(microseconds=len(backend.memory.state.fundings))
        backend.memory.state.fundings[funding_id] = (top_up, "pending", now)
        return top_up
    assert backend.pool is not None
    await backend.pool.execute(
        "INSERT INTO fundings (id, account_id, amount_sats, payment_hash, preimage, "
        "payment_request, expires_at) VALUES ($1, $2, $3, $4, $5, 'lnbcrt10u1', $6)",
        funding_id,
        account_id,
        top_up.amount_sats,
        top_up.payment_hash,
        preimage,
        datetime.now(UTC) + timedelta(hours=1),
    )
    return top_up


# --- orders ---


async def test_by_payment_hash_finds_the_typed_order(backend: Backend) -> None:
    order = await placed(backend)
    assert await backend.stores.orders.by_payment_hash(order.payment_hash) == order
    assert await backend.stores.orders.by_payment_hash(secrets.token_bytes(32)) is None


async def test_the_invoice_scans_name_each_order_by_id_status_and_hash(backend: Backend) -> None:
    orders = backend.stores.orders
    waiting = await placed(backend)
    paid = await placed(backend, S.PAID)
    held = await placed(backend, S.WAITING_FOR_SMS, **hold())
    hold_unpaid = await placed(backend, **hold())

    pending = await orders.pending_payment(10)
    assert {(o.order_id, o.status, o.payment_hash) for o in pending} == {
        (waiting.id, S.PENDING_PAYMENT, waiting.payment_hash),
        (hold_unpaid.id, S.PENDING_PAYMENT, hold_unpaid.payment_hash),
    }
    assert len(await orders.pending_payment(1)) == 1

    by_hash = await orders.awaiting_payment_by_hash(
        [waiting.payment_hash, paid.payment_hash, held.payment_hash, secrets.token_bytes(32)]
    )
    assert [(o.order_id, o.status) for o in by_hash] == [(waiting.id, S.PENDING_PAYMENT)]
    assert await orders.awaiting_payment_by_hash([]) == []


async def test_hold_open_lists_paid_hold_orders_until_settled_or_released(
    backend: Backend,
) -> None:
    orders = backend.stores.orders
    first = await placed(backend, S.PAID, **hold())
    coded = await placed(backend, S.CODE_RECEIVED, **hold())
    releasing = await placed(backend, S.REFUND_PENDING, **hold())
    await placed(backend, **hold())  # unpaid: found through the node's pending list
    await placed(backend, S.REFUNDED, **hold())
    await placed(backend, S.PAID)  # not a hold order

    rows = await orders.hold_open(10)
    assert {(r.order_id, r.status) for r in rows} == {
        (first.id, S.PAID),
        (coded.id, S.CODE_RECEIVED),
        (releasing.id, S.REFUND_PENDING),
    }
    assert [r.order_id for r in await orders.hold_open(1)] == [first.id]  # oldest first


async def test_a_settle_is_recorded_once_and_only_on_hold_orders(backend: Backend) -> None:
    orders = backend.stores.orders
    unsettled = await placed(backend, S.COMPLETED, **hold())
    standard = await placed(backend, S.COMPLETED)

    rows = await orders.hold_completed_unsettled(10)
    assert [(r.order_id, r.status, r.payment_hash) for r in rows] == [
        (unsettled.id, S.COMPLETED, unsettled.payment_hash)
    ]

    await orders.mark_settled(unsettled.id)
    first = await orders.get(unsettled.id)
    assert first is not None and first.settled_at is not None
    await orders.mark_settled(unsettled.id)
    again = await orders.get(unsettled.id)
    assert again is not None and again.settled_at == first.settled_at
    await orders.mark_settled(standard.id)
    plain = await orders.get(standard.id)
    assert plain is not None and plain.settled_at is None
    assert await orders.hold_completed_unsettled(10) == []


async def test_balance_refund_pending_lists_only_balance_orders_to_credit_back(
    backend: Backend,
) -> None:
    owner = await account(backend)
    balance = {
        "payment_mode": PaymentMode.BALANCE,
        "account_id": owner,
        "refund_invoice": None,
        "refund_payment_hash": None,
    }
    due = await placed(backend, S.REFUND_PENDING, **balance)
    await placed(backend, S.PAID, **balance)
    await placed(backend, S.REFUND_PENDING)  # a standard refund: paid out by Lightning

    assert await backend.stores.orders.balance_refund_pending(10) == [due.id]


# --- refunds ---


async def refund_pending(backend: Backend) -> Order:
    order = await placed(backend, S.REFUND_PENDING)
    await backend.stores.refunds.insert(order.id)
    return order


async def test_a_claim_counts_an_attempt_and_holds_the_refund(backend: Backend) -> None:
    refunds = backend.stores.refunds
    order = await refund_pending(backend)
    claim_id = uuid.uuid4()

    assert await refunds.due(10) == [order.id]
    claim = await refunds.claim(order.id, 60.0, claim_id)
    assert claim is not None and claim.new_attempt
    assert claim.refund.status is RefundStatus.IN_FLIGHT
    assert (claim.refund.attempts, claim.refund.claim_id) == (1, claim_id)
    assert claim.refund.lease_until is not None
    assert claim.refund.amount_sats == order.price_sats
    assert claim.refund.payment_hash == order.refund_payment_hash

    assert await refunds.claim(order.id, 60.0, uuid.uuid4()) is None  # held by the lease
    assert await refunds.due(10) == []
    assert await refunds.claim(str(uuid.uuid4()), 60.0, uuid.uuid4()) is None


async def test_a_claim_whose_lease_ran_out_is_taken_over_without_a_new_attempt(
    backend: Backend,
) -> None:
    refunds = backend.stores.refunds
    order = await refund_pending(backend)
    first = uuid.uuid4()
    assert await refunds.claim(order.id, -1.0, first) is not None  # its lease is already over

    assert await refunds.due(10) == [order.id]
    second = uuid.uuid4()
    claim = await refunds.claim(order.id, 60.0, second)
    assert claim is not None and not claim.new_attempt
    assert (claim.refund.attempts, claim.refund.claim_id) == (1, second)

    # The former claimer's late writes change nothing.
    await refunds.retry_later(order.id, first, "late", 0.0)
    assert not await refunds.given_up(order.id, first, "late")
    still = await refunds.get(order.id)
    assert still is not None and (still.status, still.claim_id) == (RefundStatus.IN_FLIGHT, second)


async def test_retry_later_keeps_the_attempt_retry_uncounted_gives_it_back(
    backend: Backend,
) -> None:
    refunds = backend.stores.refunds
    order = await refund_pending(backend)
    claim_id = uuid.uuid4()
    assert await refunds.claim(order.id, 60.0, claim_id) is not None

    await refunds.retry_later(order.id, claim_id, "no route", 0.0)
    later = await refunds.get(order.id)
    assert later is not None
    assert (later.status, later.attempts, later.last_error) == (
        RefundStatus.PENDING,
        1,
        "no route",
    )
    assert later.claim_id is None and later.lease_until is None

    again = uuid.uuid4()
    assert await refunds.claim(order.id, 60.0, again) is not None  # due at once (delay 0)
    await refunds.retry_uncounted(order.id, again, "pool full", 3600.0)
    back = await refunds.get(order.id)
    assert back is not None and (back.status, back.attempts) == (RefundStatus.PENDING, 1)
    assert back.next_attempt_at > back.updated_at + timedelta(minutes=59)
    assert await refunds.due(10) == []  # an hour from now
    assert await refunds.claim(order.id, 60.0, uuid.uuid4()) is None


async def test_success_is_recorded_whoever_holds_the_claim_and_only_once(
    backend: Backend,
) -> None:
    refunds = backend.stores.refunds
    order = await refund_pending(backend)
    assert not await refunds.succeeded(order.id, 1)  # pending: nothing was sent
    assert await refunds.claim(order.id, 60.0, uuid.uuid4()) is not None

    assert await refunds.succeeded(order.id, 1)
    assert not await refunds.succeeded(order.id, 1)
    paid = await refunds.get(order.id)
    assert paid is not None and paid.status is RefundStatus.SUCCEEDED
    assert (paid.fee_sat, paid.claim_id, paid.lease_until) == (1, None, None)
    assert paid.paid_at is not None
    assert await refunds.due(10) == []


async def test_a_given_up_refund_is_listed_for_operators(backend: Backend) -> None:
    refunds = backend.stores.refunds
    order = await refund_pending(backend)
    other = await refund_pending(backend)
    claim_id = uuid.uuid4()
    assert await refunds.claim(order.id, 60.0, claim_id) is not None

    assert not await refunds.given_up(order.id, uuid.uuid4(), "not my claim")
    assert await refunds.given_up(order.id, claim_id, "expired")
    assert not await refunds.given_up(order.id, claim_id, "twice")

    failed = await refunds.failed()
    assert [(r.order_id, r.status, r.last_error) for r in failed] == [
        (order.id, RefundStatus.FAILED, "expired")
    ]
    assert failed[0].payment_request == order.refund_invoice
    assert await refunds.due(10) == [other.id]


# --- accounts ---


async def test_a_movement_is_recorded_once_and_never_overdraws(backend: Backend) -> None:
    accounts = backend.stores.accounts
    owner = await account(backend, 100)

    assert not await accounts.already_recorded("refund", "order-1")
    assert await accounts.move_once(owner, 50, "refund", "order-1") == 150
    assert await accounts.already_recorded("refund", "order-1")
    with pytest.raises(AlreadyRecorded):
        await accounts.move_once(owner, 50, "refund", "order-1")
    assert await accounts.move_once(owner, -151, "order", "order-2") is None
    assert await accounts.move_once(owner, -150, "order", "order-3") == 0


async def test_a_movement_already_recorded_rolls_back_its_transaction(backend: Backend) -> None:
    owner = await account(backend, 0)
    order = await placed(
        backend,
        S.REFUND_PENDING,
        payment_mode=PaymentMode.BALANCE,
        account_id=owner,
        refund_invoice=None,
        refund_payment_hash=None,
    )
    await backend.stores.accounts.move_once(owner, order.price_sats, "refund", order.id)

    with pytest.raises(AlreadyRecorded):
        async with backend.stores.transaction() as tx:
            await tx.orders.transition(order.id, S.REFUND_PENDING, S.REFUNDED)
            await tx.accounts.move_once(owner, order.price_sats, "refund", order.id)

    after = await backend.stores.orders.get(order.id)
    assert after is not None and after.status is S.REFUND_PENDING


async def test_fundings_stay_pending_until_marked_once(backend: Backend) -> None:
    accounts = backend.stores.accounts
    owner = await account(backend)
    first = await funding(backend, owner, "f-1")
    second = await funding(backend, owner, "f-2")

    assert await accounts.fundings_pending(10) == [first, second]  # oldest first
    assert await accounts.fundings_pending(1) == [first]
    assert await accounts.mark_funding(first.id, "credited")
    assert not await accounts.mark_funding(first.id, "expired")
    assert await accounts.mark_funding(second.id, "expired")
    assert await accounts.fundings_pending(10) == []
    assert not await accounts.mark_funding("no-such-funding", "credited")
