"""The invariant checker finds each kind of broken money state (and nothing in a clean one)."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from libs.common.domain.orders import Status
from libs.common.persistence.order_store import NOW
from libs.common.persistence.stores import PgStores
from libs.common.tools.invariants import check
from tests.integration.conftest import Lightning
from tests.integration.helpers import insert_order

pytestmark = pytest.mark.integration
S = Status


async def _walk(pool: asyncpg.Pool, order_id: str, *path: Status, **changes: object) -> None:
    async with PgStores(pool, "orders").transaction() as tx:
        current = S.PENDING_PAYMENT
        for target in path:
            extra = changes if target is S.PAID else {}
            assert await tx.orders.transition(order_id, current, target, **extra) is not None
            current = target


async def test_clean_database_has_no_findings(pool: asyncpg.Pool) -> None:
    await insert_order(pool)
    assert await check(pool, None) == []


async def test_each_broken_state_is_reported(pool: asyncpg.Pool) -> None:
    stuck = await insert_order(pool)
    await _walk(pool, stuck, S.PAID, paid_at=NOW, deadline_at=NOW)

    refunded_without_payment = await insert_order(pool)
    await _walk(
        pool,
        refunded_without_payment,
        S.PAID,
        S.ALLOCATING_NUMBER,
        S.REFUND_PENDING,
        S.REFUNDED,
        paid_at=NOW,
    )

    refund_after_code = await insert_order(pool)
    await _walk(
        pool,
        refund_after_code,
        S.PAID,
        S.ALLOCATING_NUMBER,
        S.WAITING_FOR_SMS,
        S.CODE_RECEIVED,
        S.COMPLETED,
        paid_at=NOW,
    )
    await pool.execute("UPDATE orders SET sms_received_at = now() WHERE id = $1", refund_after_code)
    await PgStores(pool, "orders").refunds.insert(refund_after_code)

    completed_without_code = await insert_order(pool)
    await _walk(
        pool,
        completed_without_code,
        S.PAID,
        S.ALLOCATING_NUMBER,
        S.WAITING_FOR_SMS,
        S.CODE_RECEIVED,
        S.COMPLETED,
        paid_at=NOW,
    )

    twice = await insert_order(pool)
    await _walk(pool, twice, S.EXPIRED)
    await pool.execute(
        "INSERT INTO order_transitions (order_id, from_status, to_status)"
        " VALUES ($1, 'x', 'completed')",
        twice,
    )

    found = {(f.kind, f.order_id) for f in await check(pool, None, grace_seconds=-5)}
    assert found == {
        ("paid_order_stuck", stuck),
        ("refund_state_mismatch", refunded_without_payment),
        ("refund_after_code", refund_after_code),
        ("completed_without_code", completed_without_code),
        ("terminal_entered_twice", twice),
    }


async def test_node_checks_compare_with_the_lightning_node(
    pool: asyncpg.Pool, ln: Lightning
) -> None:
    # A paid order whose invoice the node never settled (money not actually received).
    unpaid_invoice = await ln.merchant.add_invoice(value_msat=150_000, memo="x", expiry=600)
    fake_paid = await insert_order(pool)
    await pool.execute(
        "UPDATE orders SET payment_hash = $2 WHERE id = $1", fake_paid, unpaid_invoice.r_hash
    )
    await _walk(pool, fake_paid, S.PAID, paid_at=NOW, deadline_at=NOW)
    # An order the node knows nothing about.
    unknown = await insert_order(pool)
    await _walk(pool, unknown, S.PAID, paid_at=NOW, deadline_at=NOW)
    # A settled invoice whose order was expired anyway.
    settled = await ln.merchant.add_invoice(value_msat=150_000, memo="y", expiry=600)
    await ln.payer.pay(settled.payment_request, fee_limit_sat=0, timeout_seconds=10)
    expired = await insert_order(pool)
    await pool.execute("UPDATE orders SET payment_hash = $2 WHERE id = $1", expired, settled.r_hash)
    await _walk(pool, expired, S.EXPIRED)
    # A refund recorded as paid that the node never sent.
    ghost = await insert_order(pool)
    await _walk(pool, ghost, S.PAID, S.ALLOCATING_NUMBER, S.REFUND_PENDING, paid_at=NOW)
    refund = await ln.payer.add_invoice(value_msat=0, memo="r", expiry=3600)
    await pool.execute(
        "UPDATE orders SET refund_invoice = $2, refund_payment_hash = $3 WHERE id = $1",
        ghost,
        refund.payment_request,
        secrets.token_bytes(32),
    )
    await PgStores(pool, "orders").refunds.insert(ghost)
    await pool.execute("UPDATE refunds SET status = 'succeeded' WHERE order_id = $1", ghost)
    await pool.execute("UPDATE orders SET status = 'refunded' WHERE id = $1", ghost)

    kinds = {(f.kind, f.order_id) for f in await check(pool, ln.merchant, grace_seconds=3600)}
    assert ("paid_but_not_settled", fake_paid) in kinds
    assert ("paid_invoice_unknown", unknown) in kinds
    assert ("settled_but_expired", expired) in kinds
    assert ("refund_not_at_node", ghost) in kinds


async def test_a_rental_refunded_for_unused_time_is_clean_but_never_above_its_price(
    pool: asyncpg.Pool,
) -> None:
    path = (S.PAID, S.ALLOCATING_NUMBER, S.RENT_ACTIVE, S.REFUND_PENDING)
    partial = await insert_order(pool, order_type="rent-number", rent_hours=4, price_sats=150)
    await _walk(pool, partial, *path, paid_at=NOW)
    # Its SMS came before the provider ended it: the refund is for the time, not the SMS.
    await pool.execute("UPDATE orders SET sms_received_at = now() WHERE id = $1", partial)
    await PgStores(pool, "orders").refunds.insert(partial, 75)
    assert await check(pool, None) == []

    too_much = await insert_order(pool, order_type="rent-number", rent_hours=4, price_sats=150)
    await _walk(pool, too_much, *path, paid_at=NOW)
    await PgStores(pool, "orders").refunds.insert(too_much, 151)
    found = {(f.kind, f.order_id) for f in await check(pool, None)}
    assert found == {("refund_above_price", too_much)}
