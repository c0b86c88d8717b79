"""Unit tests of the refund payer on the in-memory stores and a fake node: paid once, retried,
given up only when the node confirms nothing was paid."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from libs.common.adapters.lightning import Payment
from libs.common.domain.events import EventType
from libs.common.domain.orders import Status
from libs.common.domain.refund_policy import GIVE_UP_UNKNOWN_RETRY_SECONDS, fee_limit, refund_timing
from libs.common.domain.refunds import Refund, RefundStatus
from services.payments.refunds import RefundPayer
from tests.unit.payments_kit import (
    FAIL,
    IN_FLIGHT,
    PRICE,
    REFUSED,
    UNREACHED,
    FakeHost,
    FakeNode,
    host,
    place,
)

S = Status


async def refund_of(h: FakeHost, order_id: str) -> Refund:
    refund = await h.stores.refunds.get(order_id)
    assert refund is not None
    return refund


async def status_of(h: FakeHost, order_id: str) -> Status:
    order = await h.stores.orders.get(order_id)
    assert order is not None
    return order.status


async def test_a_refund_is_paid_once_for_the_whole_price_and_the_order_refunded() -> None:
    h, _ = host()
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    payer = RefundPayer(h, node)

    await payer.request(order.id)
    await payer.request(order.id)  # a redelivered refund request
    await payer.attempt(order.id)

    assert order.refund_payment_hash is not None
    assert node.paid[order.refund_payment_hash] == 1
    assert node.sends == [(order.refund_invoice, PRICE, fee_limit(PRICE, h.settings))]
    refund = await refund_of(h, order.id)
    assert refund.status is RefundStatus.SUCCEEDED and refund.paid_at is not None
    assert refund.attempts == 1 and refund.fee_sat == 0
    assert await status_of(h, order.id) is S.REFUNDED
    assert [e.order_id for e in h.stores.events(EventType.REFUNDED)] == [order.id]


async def test_a_payment_the_node_already_made_is_recorded_and_never_sent_again() -> None:
    h, clock = host()
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    payer = RefundPayer(h, node)
    node.plan = [IN_FLIGHT]
    await payer.attempt(order.id)  # sent, then the worker "dies" with the payment in flight
    assert (await refund_of(h, order.id)).status is RefundStatus.IN_FLIGHT

    await payer.attempt(order.id)  # the claim's lease still runs: nobody else touches it
    assert len(node.sends) == 1
    assert order.refund_payment_hash is not None
    # The receiver settles while nobody watches.
    node.payments[order.refund_payment_hash] = Payment(
        order.refund_payment_hash, "SUCCEEDED", None, PRICE, 0, ""
    )
    clock.advance(refund_timing(h.settings.refund_timeout_seconds).lease + 1)
    await payer.attempt(order.id)  # the lease ran out: track, find it paid, record it

    assert len(node.sends) == 1
    refund = await refund_of(h, order.id)
    assert refund.status is RefundStatus.SUCCEEDED and refund.attempts == 1
    assert await status_of(h, order.id) is S.REFUNDED


async def test_failed_payments_are_counted_and_retried_with_a_doubling_backoff() -> None:
    h, clock = host(refund_retry_base_seconds=2.0, refund_max_attempts=5)
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    payer = RefundPayer(h, node)
    node.plan = [FAIL, FAIL]

    await payer.attempt(order.id)
    first = await refund_of(h, order.id)
    assert (first.status, first.attempts) == (RefundStatus.PENDING, 1)
    assert (first.next_attempt_at - clock.now).total_seconds() == 2.0
    await payer.attempt(order.id)  # not due yet: no send
    assert len(node.sends) == 1

    clock.advance(2.0)
    await payer.attempt(order.id)
    second = await refund_of(h, order.id)
    assert (second.status, second.attempts) == (RefundStatus.PENDING, 2)
    assert (second.next_attempt_at - clock.now).total_seconds() == 4.0
    assert second.last_error == "NO_ROUTE"

    clock.advance(4.0)
    await payer.attempt(order.id)
    assert (await refund_of(h, order.id)).status is RefundStatus.SUCCEEDED
    assert order.refund_payment_hash is not None
    assert len(node.sends) == 3 and node.paid[order.refund_payment_hash] == 1
    assert await status_of(h, order.id) is S.REFUNDED


async def test_a_send_that_never_reached_the_node_gives_its_attempt_back() -> None:
    # One attempt allowed: counting a send that never left would end the order refund_failed.
    h, clock = host(refund_max_attempts=1)
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    payer = RefundPayer(h, node)
    node.plan = [UNREACHED]

    await payer.attempt(order.id)
    refund = await refund_of(h, order.id)
    assert (refund.status, refund.attempts) == (RefundStatus.PENDING, 0)
    assert await status_of(h, order.id) is S.REFUND_PENDING

    clock.advance(60)
    await payer.attempt(order.id)
    assert (await refund_of(h, order.id)).status is RefundStatus.SUCCEEDED
    assert await status_of(h, order.id) is S.REFUNDED


async def test_refused_and_failed_sends_count_and_end_refund_failed_after_max_attempts() -> None:
    h, clock = host(refund_max_attempts=2, refund_retry_base_seconds=1.0)
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    payer = RefundPayer(h, node)
    node.plan = [REFUSED, FAIL]

    await payer.attempt(order.id)
    assert (await refund_of(h, order.id)).attempts == 1
    clock.advance(60)
    await payer.attempt(order.id)
    clock.advance(60)
    await payer.attempt(order.id)  # nothing left to try

    refund = await refund_of(h, order.id)
    assert (refund.status, refund.attempts) == (RefundStatus.FAILED, 2)
    assert refund.last_error == "NO_ROUTE"
    assert await status_of(h, order.id) is S.REFUND_FAILED
    assert [e.order_id for e in h.stores.events(EventType.REFUND_FAILED)] == [order.id]
    assert len(node.sends) == 2 and not node.paid
    assert [r.order_id for r in await h.stores.refunds.failed()] == [order.id]


async def test_an_expired_refund_invoice_ends_refund_failed_at_once_without_a_send() -> None:
    h, _ = host(refund_max_attempts=5)
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node, refund_expires_in=-60)
    payer = RefundPayer(h, node)

    await payer.request(order.id)

    refund = await refund_of(h, order.id)
    assert (refund.status, refund.attempts) == (RefundStatus.FAILED, 1)
    assert refund.last_error == "the refund invoice expired"
    assert node.sends == []
    assert await status_of(h, order.id) is S.REFUND_FAILED


async def test_no_give_up_while_the_node_cannot_say_whether_it_paid() -> None:
    h, clock = host(refund_max_attempts=1)
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    payer = RefundPayer(h, node)
    node.plan = [FAIL]
    node.fail_track_at = {2}  # the look before giving up gets no answer

    await payer.attempt(order.id)

    refund = await refund_of(h, order.id)
    assert refund.status is RefundStatus.PENDING
    assert (refund.next_attempt_at - clock.now).total_seconds() == GIVE_UP_UNKNOWN_RETRY_SECONDS
    assert await status_of(h, order.id) is S.REFUND_PENDING

    clock.advance(GIVE_UP_UNKNOWN_RETRY_SECONDS)
    node.plan = [FAIL]
    await payer.attempt(order.id)  # a second failure past the limit: now it gives up
    assert (await refund_of(h, order.id)).status is RefundStatus.FAILED
    assert await status_of(h, order.id) is S.REFUND_FAILED


async def test_no_give_up_while_the_last_payment_is_still_in_flight() -> None:
    h, _ = host(refund_max_attempts=1)
    node = FakeNode()
    order = await place(h.stores, S.REFUND_PENDING, node=node)
    node.plan = [FAIL]
    node.track_status_at = {2: "IN_FLIGHT"}  # the look before giving up finds it in flight

    await RefundPayer(h, node).attempt(order.id)

    refund = await refund_of(h, order.id)
    assert refund.status is RefundStatus.IN_FLIGHT  # the lease brings it back
    assert await status_of(h, order.id) is S.REFUND_PENDING
    assert h.stores.events(EventType.REFUND_FAILED) == []


async def test_the_retry_loop_starts_only_due_refunds() -> None:
    h, clock = host(refund_retry_base_seconds=5.0)
    node = FakeNode()
    due = await place(h.stores, S.REFUND_PENDING, node=node)
    later = await place(h.stores, S.REFUND_PENDING, node=node)
    node.plan = [FAIL]
    await RefundPayer(h, node).attempt(later.id)

    assert await h.stores.refunds.due(100) == [due.id]
    clock.advance(5.0)
    assert sorted(await h.stores.refunds.due(100)) == sorted([due.id, later.id])


class SlowNode(FakeNode):
    """A node whose payment streams take a moment, counting how many are open at once."""

    def __init__(self) -> None:
        super().__init__()
        self.open = 0
        self.peak = 0

    async def _slow(self, stream: AsyncIterator[Payment]) -> AsyncIterator[Payment]:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await asyncio.sleep(0.005)
            async for update in stream:
                yield update
        finally:
            self.open -= 1

    def send_payment(  # type: ignore[override]
        self, payment_request: str, **kwargs: Any
    ) -> AsyncIterator[Payment]:
        """SendPaymentV2, slowly."""
        return self._slow(super().send_payment(payment_request, **kwargs))

    def track_payment(self, payment_hash: bytes) -> AsyncIterator[Payment]:  # type: ignore[override]
        """TrackPaymentV2, slowly."""
        return self._slow(super().track_payment(payment_hash))


async def test_a_burst_of_refunds_is_paid_once_each_never_above_the_pool() -> None:
    h, _ = host(refund_concurrency=4)
    node = SlowNode()
    orders = [await place(h.stores, S.REFUND_PENDING, node=node) for _ in range(40)]
    payer = RefundPayer(h, node)
    loop = asyncio.create_task(payer.retry_due())
    for order in orders:  # the event handler: returns at once, the loop fills the slots
        await payer.request(order.id, wait=False)
    for _ in range(2000):
        if all([await status_of(h, o.id) is S.REFUNDED for o in orders]):
            break
        await asyncio.sleep(0.005)
    h.stop.set()
    await asyncio.wait_for(loop, 5)

    assert [await status_of(h, o.id) for o in orders] == [S.REFUNDED] * 40
    assert all(n == 1 for n in node.paid.values()) and len(node.paid) == 40
    assert node.peak == 4  # the whole pool was used, and never more
