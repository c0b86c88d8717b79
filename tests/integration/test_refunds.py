"""The payments worker's refund payer against the Lightning simulator and real PostgreSQL/NATS.

Two simulated LND nodes run in-process: the merchant pays refunds, the payer receives them
into zero-amount invoices it created (as a customer's wallet would).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from libs.common.adapters.lightning import LndClient, LndError, Payment, PaymentNotInitiated
from libs.common.core.config import Settings
from libs.common.domain.orders import NewOrder, OrderType, Status
from libs.common.domain.refunds import Refund, RefundStatus
from libs.common.messaging.runtime import Worker, open_worker
from libs.common.persistence.order_store import NOW
from libs.common.persistence.stores import PgStores
from services.payments.hold import HoldInvoices
from services.payments.invoice_watch import InvoiceWatcher
from services.payments.refunds import RefundPayer
from services.payments.service import lnd_client
from tests.integration.conftest import Lightning
from tests.integration.helpers import insert_hold_order, new_order, settings_for

pytestmark = pytest.mark.integration

PRICE = 1_234
S = Status
MACAROON_HEADER = "grpc-metadata-macaroon"


def make_settings(
    database_url: str, nats_url: str, stream: tuple[str, str], **extra: Any
) -> Settings:
    """Settings for the payments worker; fast retries unless a test says otherwise."""
    extra.setdefault("refund_retry_base_seconds", 0.05)
    extra.setdefault("refund_max_attempts", 5)
    return settings_for(database_url, nats_url, stream, **extra)


@asynccontextmanager
async def refund_payer(
    settings: Settings, ln: Lightning
) -> AsyncIterator[tuple[Worker, RefundPayer]]:
    """A payments Worker and its RefundPayer paying from the merchant node."""
    lnd = ln.client("merchant")
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            yield worker, RefundPayer(worker, lnd)
    finally:
        await lnd.close()


# ----------------------------------------------------------------------------- orders


@dataclass
class RefundOrder:
    """An order and the zero-amount refund invoice the payer node created for it."""

    id: str
    price: int
    refund_hash: bytes
    refund_invoice: str


_TO_REFUND_PENDING = [
    (S.PENDING_PAYMENT, S.PAID, {"paid_at": NOW}),
    (S.PAID, S.ALLOCATING_NUMBER, {}),
    (S.ALLOCATING_NUMBER, S.REFUND_PENDING, {}),
]
_TO_COMPLETED = [
    (S.PENDING_PAYMENT, S.PAID, {"paid_at": NOW}),
    (S.PAID, S.ALLOCATING_NUMBER, {}),
    (S.ALLOCATING_NUMBER, S.WAITING_FOR_SMS, {"activation_id": "1", "phone_number": "1555"}),
    (S.WAITING_FOR_SMS, S.CODE_RECEIVED, {"code": "12345"}),
    (S.CODE_RECEIVED, S.COMPLETED, {}),
]
PATHS = {
    S.REFUND_PENDING: _TO_REFUND_PENDING,
    S.COMPLETED: _TO_COMPLETED,
    S.WAITING_FOR_SMS: _TO_COMPLETED[:3],
}


async def make_order(
    pool: asyncpg.Pool,
    ln: Lightning,
    *,
    status: Status = S.REFUND_PENDING,
    price: int = PRICE,
    refund_expiry: int = 3600,
) -> RefundOrder:
    """Insert a receive-sms order with a real refund invoice and walk it to `status`."""
    invoice = await ln.payer.add_invoice(value_msat=0, memo="sms4sats refund", expiry=refund_expiry)
    order_id = str(uuid.uuid4())
    await new_order(
        pool,
        NewOrder(
            id=order_id,
            type=OrderType.RECEIVE_SMS,
            service="tg",
            country_id=187,
            price_sats=price,
            provider_cost_usd=Decimal("0.10"),
            payment_hash=secrets.token_bytes(32),
            payment_request="lnbcrt1fake",
            invoice_expires_at=datetime.now(UTC) + timedelta(minutes=10),
            refund_invoice=invoice.payment_request,
            refund_payment_hash=invoice.r_hash,
        ),
    )
    async with PgStores(pool, "orders").transaction() as tx:
        for expected, target, changes in PATHS[status]:
            moved = await tx.orders.transition(order_id, expected, target, **changes)
            assert moved is not None, f"setup could not move {order_id} to {target}"
    return RefundOrder(order_id, price, invoice.r_hash, invoice.payment_request)


async def order_status(pool: asyncpg.Pool, order_id: str) -> Status:
    order = await PgStores(pool, "orders").orders.get(order_id)
    assert order is not None
    return order.status


async def refund_row(pool: asyncpg.Pool, order_id: str) -> Refund | None:
    return await PgStores(pool, "orders").refunds.get(order_id)


async def event_types(pool: asyncpg.Pool, order_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT payload FROM outbox WHERE payload->>'orderId' = $1 ORDER BY created_at", order_id
    )
    return [r["payload"]["type"] for r in rows]


async def assert_each_status_entered_once(pool: asyncpg.Pool, order_id: str) -> None:
    """The transition log never shows a status entered twice."""
    log = await PgStores(pool, "orders").orders.history(order_id)
    entered = Counter(change.to_status for change in log)
    assert all(n == 1 for n in entered.values()), f"status entered twice: {entered}"


async def assert_invoice_open(ln: Lightning, order: RefundOrder) -> None:
    invoice = await ln.payer.lookup_invoice(order.refund_hash)
    assert invoice.state == "OPEN"
    assert invoice.amt_paid_msat == 0


async def assert_refunded_once(pool: asyncpg.Pool, ln: Lightning, order: RefundOrder) -> None:
    """Order refunded, refund row succeeded, the payer's invoice settled for exactly the price."""
    assert await order_status(pool, order.id) == S.REFUNDED
    refund = await refund_row(pool, order.id)
    assert refund is not None
    assert refund.status is RefundStatus.SUCCEEDED
    assert refund.amount_sats == order.price
    assert refund.paid_at is not None and refund.lease_until is None
    assert refund.fee_sat == 0
    invoice = await ln.payer.lookup_invoice(order.refund_hash)
    assert invoice.state == "SETTLED"
    assert invoice.amt_paid_msat == order.price * 1000
    assert len(invoice.htlc_expiry_heights) == 1  # one HTLC: paid once
    payment = ln.running.nodes["merchant"].state.payments[order.refund_hash.hex()]
    assert payment.status == "SUCCEEDED"
    assert [a.status for a in payment.htlcs] == ["SUCCEEDED"]
    assert (await event_types(pool, order.id)).count("refunded") == 1
    await assert_each_status_entered_once(pool, order.id)


async def drive(
    payer: RefundPayer, pool: asyncpg.Pool, order_id: str, done: Callable[[Refund], bool]
) -> Refund:
    """Call attempt() as the retry loop would, until the refund row satisfies `done`."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        refund = await refund_row(pool, order_id)
        if refund is not None and done(refund):
            return refund
        assert asyncio.get_running_loop().time() < deadline, f"refund stuck: {refund}"
        await payer.attempt(order_id)
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- tests


async def test_request_pays_the_refund_exactly_once(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        sends_before = ln.sends()

        await payer.request(order.id)

        await assert_refunded_once(worker.pool, ln, order)
        refund = await refund_row(worker.pool, order.id)
        assert refund is not None and refund.attempts == 1
        assert refund.payment_request == order.refund_invoice
        assert refund.payment_hash == order.refund_hash
        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)
        assert ln.sends() == sends_before + 1

        # A redelivered refund_requested event and the retry loop change nothing.
        await payer.request(order.id)
        await payer.attempt(order.id)
        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)
        assert ln.sends() == sends_before + 1
        await assert_refunded_once(worker.pool, ln, order)


async def test_concurrent_requests_across_two_workers_pay_once(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    async with (
        refund_payer(settings, ln) as (a, payer_a),
        refund_payer(settings, ln) as (b, payer_b),
    ):
        orders = [await make_order(a.pool, ln, price=PRICE + i) for i in range(3)]
        merchant_before, payer_before = await ln.balances()
        sends_before = ln.sends()
        # Both workers' retry loops run too, as they do in production.
        loops = [asyncio.create_task(p.retry_due()) for p in (payer_a, payer_b)]

        calls = []
        for order in orders:
            for i in range(10):
                payer = (payer_a, payer_b)[i % 2]
                calls.append(payer.request(order.id) if i < 6 else payer.attempt(order.id))
        await asyncio.gather(*calls)
        # Stragglers of the same refunds after they succeeded, and a retry-loop tick.
        await asyncio.gather(*(p.request(o.id) for o in orders for p in (payer_a, payer_b)))
        await asyncio.sleep(1.1)
        a.stop.set()
        b.stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), 5)

        total = sum(o.price for o in orders)
        assert await ln.balances() == (merchant_before - total, payer_before + total)
        assert ln.sends() == sends_before + len(orders)
        for order in orders:
            await assert_refunded_once(a.pool, ln, order)
            refund = await refund_row(a.pool, order.id)
            assert refund is not None and refund.attempts == 1


async def test_crash_after_payment_went_out_is_tracked_not_paid_again(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        # The dead worker: recorded the intent, claimed it, paid, died before writing.
        await worker.stores.refunds.insert(order.id)
        assert await worker.stores.refunds.claim(order.id, 120.0, uuid.uuid4()) is not None
        paid = await ln.merchant.pay(
            order.refund_invoice, amt_sat=order.price, fee_limit_sat=10, timeout_seconds=60
        )
        assert paid.status == "SUCCEEDED"
        sends_before = ln.sends()

        # While the dead worker's lease runs, nobody touches the refund.
        await payer.attempt(order.id)
        await payer.request(order.id)
        refund = await refund_row(worker.pool, order.id)
        assert refund is not None
        assert (refund.status, refund.attempts) == (RefundStatus.IN_FLIGHT, 1)
        assert await order_status(worker.pool, order.id) == S.REFUND_PENDING

        # The lease ran out: the next claimer tracks the payment and records it.
        await worker.pool.execute(
            "UPDATE refunds SET lease_until = now() - interval '1 second' WHERE order_id = $1",
            order.id,
        )
        await payer.attempt(order.id)

        assert ln.sends() == sends_before  # tracked, never sent again
        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)
        await assert_refunded_once(worker.pool, ln, order)
        refund = await refund_row(worker.pool, order.id)
        assert (
            refund is not None and refund.attempts == 1
        )  # re-claiming after a lease is no new attempt


async def test_crash_after_a_failed_payment_sends_again(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        await worker.stores.refunds.insert(order.id)
        await worker.pool.execute(
            "UPDATE refunds SET status = 'in_flight', attempts = 1,"
            " lease_until = now() - interval '1 second' WHERE order_id = $1",
            order.id,
        )
        await ln.fail_next_payments(1)
        failed = await ln.merchant.pay(
            order.refund_invoice, amt_sat=order.price, fee_limit_sat=10, timeout_seconds=60
        )
        assert failed.status == "FAILED"

        await payer.attempt(order.id)

        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)
        await assert_refunded_once(worker.pool, ln, order)


async def test_failed_payments_are_retried_with_backoff_then_paid(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    base = 0.3
    settings = make_settings(
        database_url, nats_url, bootstrapped, refund_retry_base_seconds=base, refund_max_attempts=5
    )
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        sends_before = ln.sends()
        assert await ln.fail_next_payments(2) == 2

        await payer.request(order.id)

        for attempt in (1, 2):
            refund = await worker.pool.fetchrow(
                "SELECT *, extract(epoch FROM next_attempt_at - updated_at)::float8 AS delay"
                " FROM refunds WHERE order_id = $1",
                order.id,
            )
            assert refund is not None
            assert (refund["status"], refund["attempts"]) == ("pending", attempt)
            assert "NO_ROUTE" in refund["last_error"]
            assert refund["lease_until"] is None
            # Exponential backoff: base, then twice the base.
            assert refund["delay"] == pytest.approx(base * 2 ** (attempt - 1), abs=1e-3)
            assert await order_status(worker.pool, order.id) == S.REFUND_PENDING
            assert await ln.balances() == (merchant_before, payer_before)
            assert ln.sends() == sends_before + attempt
            # Not due yet: an immediate attempt (or a redelivered request) is a no-op.
            await payer.attempt(order.id)
            await payer.request(order.id)
            again = await refund_row(worker.pool, order.id)
            assert again is not None and again.attempts == attempt
            assert ln.sends() == sends_before + attempt
            await drive(
                payer,
                worker.pool,
                order.id,
                lambda r, n=attempt: r.attempts > n and r.status is not RefundStatus.IN_FLIGHT,
            )

        await assert_refunded_once(worker.pool, ln, order)
        refund = await refund_row(worker.pool, order.id)
        assert refund is not None and refund.attempts == 3
        assert ln.sends() == sends_before + 3
        assert await ln.pending_failures() == 0
        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)


async def test_more_failures_than_max_attempts_give_up_and_never_pay(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(
        database_url, nats_url, bootstrapped, refund_retry_base_seconds=0.05, refund_max_attempts=3
    )
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        sends_before = ln.sends()
        assert await ln.fail_next_payments(10) == 10

        await payer.request(order.id)
        refund = await drive(
            payer, worker.pool, order.id, lambda r: r.status is RefundStatus.FAILED
        )

        assert refund.attempts == 3
        assert refund.last_error is not None and "NO_ROUTE" in refund.last_error
        assert refund.lease_until is None and refund.paid_at is None
        assert await order_status(worker.pool, order.id) == S.REFUND_FAILED
        assert (await event_types(worker.pool, order.id)).count("refund_failed") == 1
        assert ln.sends() == sends_before + 3  # exactly refund_max_attempts payments sent
        assert await ln.pending_failures() == 7
        assert await ln.balances() == (merchant_before, payer_before)
        await assert_invoice_open(ln, order)

        # The node would pay now; a redelivered request or a late retry still pays nothing.
        await ln.fail_next_payments(0)
        await payer.request(order.id)
        await payer.attempt(order.id)
        await asyncio.sleep(0.1)  # past any backoff
        await payer.attempt(order.id)
        async with refund_payer(settings, ln) as (_, other):
            await asyncio.gather(other.request(order.id), other.attempt(order.id))

        assert ln.sends() == sends_before + 3
        assert await ln.balances() == (merchant_before, payer_before)
        await assert_invoice_open(ln, order)
        after = await refund_row(worker.pool, order.id)
        assert after is not None and (after.status, after.attempts) == (RefundStatus.FAILED, 3)
        assert await order_status(worker.pool, order.id) == S.REFUND_FAILED
        await assert_each_status_entered_once(worker.pool, order.id)


@pytest.mark.parametrize("status", [S.COMPLETED, S.WAITING_FOR_SMS])
async def test_order_not_in_refund_pending_is_never_refunded(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    status: Status,
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln, status=status)
        merchant_before, payer_before = await ln.balances()
        sends_before = ln.sends()

        await payer.request(order.id)
        await payer.attempt(order.id)
        await payer.request("no-such-order")

        assert await refund_row(worker.pool, order.id) is None
        assert await order_status(worker.pool, order.id) == status
        assert ln.sends() == sends_before
        assert await ln.balances() == (merchant_before, payer_before)
        await assert_invoice_open(ln, order)
        with pytest.raises(PaymentNotInitiated):
            async for _ in ln.merchant.track_payment(order.refund_hash):
                pass
        assert "refunded" not in await event_types(worker.pool, order.id)
        await assert_each_status_entered_once(worker.pool, order.id)


# ----------------------------------------------------------------------------- lost answers


class LossyProxy:
    """Forwards LND REST calls to a node; can lose the answer to the next SendPaymentV2 calls.

    The payment itself reaches the node and goes out; only the HTTP answer is replaced by a
    503, as when a connection drops or a load balancer times out after forwarding.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.lose_sends = 0
        self.url = ""
        self._session = aiohttp.ClientSession()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() == MACAROON_HEADER}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            data=await request.read(),
            headers={**headers, "Content-Type": "application/json"},
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
        if request.path == "/v2/router/send" and self.lose_sends > 0:
            self.lose_sends -= 1
            return web.Response(status=503, text="upstream connect error or disconnect/reset")
        return web.Response(status=status, body=body, content_type="application/json")


@asynccontextmanager
async def lossy_refund_payer(
    settings: Settings, ln: Lightning
) -> AsyncIterator[tuple[Worker, RefundPayer, LossyProxy]]:
    """A RefundPayer that reaches the merchant node through a LossyProxy."""
    info = ln.running.nodes_info["merchant"]
    proxy = LossyProxy(info["rest_url"])
    await proxy.start()
    lnd = LndClient(proxy.url, info["macaroon_hex"], None, timeout=10)
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            yield worker, RefundPayer(worker, lnd), proxy
    finally:
        await lnd.close()
        await proxy.close()


async def test_lost_answer_to_a_sent_payment_is_tracked_not_paid_again(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped, refund_max_attempts=5)
    async with lossy_refund_payer(settings, ln) as (worker, payer, proxy):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        sends_before = ln.sends()
        proxy.lose_sends = 1

        await payer.request(order.id)

        # The answer to the send was lost; asking the node right away shows it was paid.
        refund = await refund_row(worker.pool, order.id)
        assert refund is not None
        assert (refund.status, refund.attempts) == (RefundStatus.SUCCEEDED, 1)
        assert ln.sends() == sends_before + 1
        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)
        await assert_refunded_once(worker.pool, ln, order)


async def test_lost_answer_on_the_last_attempt_does_not_end_refund_failed_when_paid(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped, refund_max_attempts=1)
    async with lossy_refund_payer(settings, ln) as (worker, payer, proxy):
        order = await make_order(worker.pool, ln)
        merchant_before, payer_before = await ln.balances()
        proxy.lose_sends = 1

        await payer.request(order.id)
        await asyncio.sleep(0.1)
        await payer.attempt(order.id)

        # The refund did go out (exactly once) ...
        assert await ln.balances() == (merchant_before - PRICE, payer_before + PRICE)
        invoice = await ln.payer.lookup_invoice(order.refund_hash)
        assert invoice.state == "SETTLED"
        # ... so the order must not be reported as a refund that failed.
        refund = await refund_row(worker.pool, order.id)
        assert refund is not None
        assert refund.status is not RefundStatus.FAILED, f"refund marked failed but paid: {refund}"
        assert await order_status(worker.pool, order.id) != S.REFUND_FAILED


# ----------------------------------------------------------------------------- busy pool


HOG_HASH = b"\x01" * 32


class PoolHoggingProxy(LossyProxy):
    """Forwards calls; holds a track of HOG_HASH for `hold` seconds, as a slow money call."""

    def __init__(self, target: str, hold: float) -> None:
        super().__init__(target)
        self.hog_path = "/v2/router/track/" + base64.urlsafe_b64encode(HOG_HASH).decode()
        self.hold = hold
        self.hog_arrived = asyncio.Event()
        self.sends = 0

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/router/send":
            self.sends += 1
        if request.path == self.hog_path:
            self.hog_arrived.set()
            await asyncio.sleep(self.hold)
        return await super()._forward(request)


async def _hog(lnd: LndClient) -> None:
    """A money call that holds a connection until the proxy lets it through."""
    with pytest.raises(PaymentNotInitiated):
        async for _ in lnd.track_payment(HOG_HASH):
            pass


async def test_a_send_that_waited_out_the_pool_is_not_counted_as_a_failed_attempt(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    # One attempt allowed: counting the send that never reached the node would end the order
    # refund_failed although no payment was ever tried.
    settings = make_settings(database_url, nats_url, bootstrapped, refund_max_attempts=1)
    info = ln.running.nodes_info["merchant"]
    proxy = PoolHoggingProxy(info["rest_url"], hold=3.0)
    await proxy.start()
    # One money connection; waiting for it times out after 2 s; the hog holds it for 3 s.
    lnd = LndClient(proxy.url, info["macaroon_hex"], None, timeout=2, money_connections=1)
    hogs: list[asyncio.Task[None]] = []
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            order = await make_order(worker.pool, ln)
            payer = RefundPayer(worker, lnd)
            send = payer._send

            async def send_into_a_full_pool(refund: Refund) -> AsyncIterator[Payment]:
                # Just before the send, another money call takes the only connection.
                hogs.append(asyncio.create_task(_hog(lnd)))
                await proxy.hog_arrived.wait()
                async for update in send(refund):
                    yield update

            payer._send = send_into_a_full_pool  # type: ignore[method-assign,assignment]
            await payer.request(order.id)
            await asyncio.gather(*hogs)

            refund = await refund_row(worker.pool, order.id)
            assert refund is not None
            assert proxy.sends == 0, "the send was meant to wait out the pool"
            assert (refund.status, refund.attempts) == (RefundStatus.PENDING, 0), refund
            assert await order_status(worker.pool, order.id) == S.REFUND_PENDING

            payer._send = send  # type: ignore[method-assign]
            await worker.pool.execute(
                "UPDATE refunds SET next_attempt_at = now() WHERE order_id = $1", order.id
            )
            await payer.attempt(order.id)
            await assert_refunded_once(worker.pool, ln, order)
    finally:
        await lnd.close()
        await proxy.close()


# ----------------------------------------------------------------------------- held payments


async def make_held_refund_order(pool: asyncpg.Pool, ln: Lightning) -> tuple[RefundOrder, bytes]:
    """A refund_pending order whose refund invoice is a hold invoice the customer sits on.

    Returns the order and the preimage only the customer's wallet (the payer node) knows.
    """
    preimage = secrets.token_bytes(32)
    held_invoice = await ln.payer.add_hold_invoice(
        payment_hash=hashlib.sha256(preimage).digest(),
        value_msat=0,
        memo="held refund",
        expiry=3600,
        cltv_expiry=80,
    )
    order = await make_order(pool, ln)
    await pool.execute(
        "UPDATE orders SET refund_invoice = $2, refund_payment_hash = $3 WHERE id = $1",
        order.id,
        held_invoice.payment_request,
        held_invoice.r_hash,
    )
    return RefundOrder(order.id, order.price, held_invoice.r_hash, held_invoice.payment_request), (
        preimage
    )


async def test_a_held_refund_payment_does_not_block_other_refunds(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    async with refund_payer(settings, ln) as (worker, payer):
        # The customer's wallet answers the first refund with a hold invoice and sits on it.
        held, preimage = await make_held_refund_order(worker.pool, ln)
        other = await make_order(worker.pool, ln)
        for order, age in ((held, 2), (other, 1)):  # both due; the held one first
            await worker.stores.refunds.insert(order.id)
            await worker.pool.execute(
                "UPDATE refunds SET next_attempt_at = now() - make_interval(secs => $2)"
                " WHERE order_id = $1",
                order.id,
                float(age),
            )

        loop = asyncio.create_task(payer.retry_due())
        other_paid_while_held = False
        try:
            deadline = asyncio.get_running_loop().time() + 3
            while asyncio.get_running_loop().time() < deadline:
                if await order_status(worker.pool, other.id) == S.REFUNDED:
                    other_paid_while_held = True
                    break
                await asyncio.sleep(0.1)
            held_state = (await ln.payer.lookup_invoice(held.refund_hash)).state
        finally:
            await ln.payer.settle_invoice(preimage)
            await asyncio.sleep(0.3)
            worker.stop.set()
            try:
                await asyncio.wait_for(loop, 5)
            except TimeoutError:
                loop.cancel()

        assert held_state == "ACCEPTED"  # the receiver really was holding the HTLC
        assert other_paid_while_held, "a held HTLC stalled the refund retry loop"


# What the refund side may use of the payments worker's LND connections: all of its
# payment pool. Settles and hold cancels have their own pool, which no payment stream takes.
REFUND_SLOTS = 3


async def _until(check: Callable[[], Any], what: str, seconds: float = 10.0) -> None:
    """Wait until the async `check` answers true; fail naming `what` after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_refunds_held_by_their_receivers_never_keep_a_settle_waiting(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    info = ln.running.nodes_info["merchant"]
    settings = make_settings(
        database_url,
        nats_url,
        bootstrapped,
        lnd_rest_url=info["rest_url"],
        lnd_macaroon_hex=info["macaroon_hex"],
        lnd_money_connections=REFUND_SLOTS,
        lnd_settle_connections=1,
        refund_timeout_seconds=30,
    )
    lnd = lnd_client(settings)  # the payments worker's own client, its pools as configured
    preimages: list[bytes] = []
    attempts: list[asyncio.Task[None]] = []
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            try:
                await _settle_while_refunds_are_held(worker, lnd, ln, preimages, attempts)
            finally:
                # Never leave a refund held, nor an attempt running past its worker.
                for preimage in preimages:
                    with contextlib.suppress(Exception):
                        await ln.payer.settle_invoice(preimage)
                if attempts:
                    await asyncio.wait(attempts, timeout=15)
                for task in attempts:
                    task.cancel()
    finally:
        await lnd.close()


async def _settle_while_refunds_are_held(
    worker: Worker,
    lnd: LndClient,
    ln: Lightning,
    preimages: list[bytes],
    attempts: list[asyncio.Task[None]],
) -> None:
    """Fill every refund slot with a held payment, then settle a classic order's HTLC."""
    payer = RefundPayer(worker, lnd)
    watcher = InvoiceWatcher(worker, lnd)
    holds = HoldInvoices(worker, lnd, watcher)
    # Customers answer refunds with hold invoices they never settle: each refund's send
    # stream stays open, IN_FLIGHT, on one of the worker's connections.
    held: list[RefundOrder] = []
    for _ in range(REFUND_SLOTS):
        order, preimage = await make_held_refund_order(worker.pool, ln)
        held.append(order)
        preimages.append(preimage)
        attempts.append(asyncio.create_task(payer.request(order.id)))

    async def all_held() -> bool:
        states = [(await ln.payer.lookup_invoice(o.refund_hash)).state for o in held]
        return states == ["ACCEPTED"] * REFUND_SLOTS

    await _until(all_held, "the customers to hold every refund HTLC")
    assert lnd.connections()["money"] == REFUND_SLOTS  # every payment slot taken

    # Meanwhile a classic order is paid with a hold invoice and its code arrives.
    order_id, payreq, payment_hash = await insert_hold_order(worker.pool, ln.merchant)
    paying = asyncio.create_task(ln.payer.pay(payreq, fee_limit_sat=0, timeout_seconds=30))

    async def accepted() -> bool:
        return (await ln.merchant.lookup_invoice(payment_hash)).state == "ACCEPTED"

    await _until(accepted, "the classic order's HTLC")
    assert await watcher.mark_paid(await ln.merchant.lookup_invoice(payment_hash))
    async with worker.stores.transaction() as tx:
        assert await tx.orders.transition(order_id, S.PAID, S.ALLOCATING_NUMBER)
        assert await tx.orders.transition(
            order_id,
            S.ALLOCATING_NUMBER,
            S.WAITING_FOR_SMS,
            activation_id="1",
            phone_number="1555",
        )
        assert await tx.orders.transition(
            order_id, S.WAITING_FOR_SMS, S.CODE_RECEIVED, code="12345", sms_received_at=NOW
        )

    # The settle goes through at once although every refund stream is still held.
    await asyncio.wait_for(holds.settle(order_id), 5)
    assert await order_status(worker.pool, order_id) == S.COMPLETED
    assert (await asyncio.wait_for(paying, 5)).status == "SUCCEEDED"
    assert await all_held(), "the refunds were meant to be held throughout"

    # The customers let go: every held refund completes.
    for preimage in preimages:
        await ln.payer.settle_invoice(preimage)
    await asyncio.wait_for(asyncio.gather(*attempts), 15)
    for order in held:
        assert await order_status(worker.pool, order.id) == S.REFUNDED


async def test_an_expired_refund_invoice_ends_refund_failed_at_once_and_pays_nothing(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped, refund_max_attempts=5)
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln, refund_expiry=1)
        balances = await ln.balances()
        sends_before = ln.sends()
        await asyncio.sleep(2.1)  # BOLT11 times are whole seconds

        await payer.request(order.id)

        # Retrying cannot help: no backoff loop, an operator-visible refund_failed instead.
        assert await order_status(worker.pool, order.id) == S.REFUND_FAILED
        refund = await refund_row(worker.pool, order.id)
        assert refund is not None and refund.status is RefundStatus.FAILED
        assert refund.last_error is not None and "expired" in refund.last_error
        assert ln.sends() == sends_before
        assert await ln.balances() == balances


async def test_failed_refunds_are_listed_for_operators(
    database_url: str,
    nats_url: str,
    bootstrapped: tuple[str, str],
    ln: Lightning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.payments.admin import failed_refunds

    settings = make_settings(database_url, nats_url, bootstrapped, refund_max_attempts=1)
    async with refund_payer(settings, ln) as (worker, payer):
        order = await make_order(worker.pool, ln)
        await ln.fail_next_payments(1)
        await payer.request(order.id)
        assert await order_status(worker.pool, order.id) == S.REFUND_FAILED
    monkeypatch.setenv("SMS4SATS_DATABASE_URL", database_url)
    listed = await failed_refunds()
    assert [(r["orderId"], r["amountSats"]) for r in listed] == [(order.id, order.price)]
    assert listed[0]["refundInvoice"] == order.refund_invoice


class FeeRecordingLnd(LndClient):
    """The merchant's real client, noting the fee limit of every payment it sends.

    The simulator charges no fees and does not keep the limit it was sent; the payer's
    decision is observed where it leaves our code, and the payment still goes to the node.
    """

    def __init__(self, rest_url: str, macaroon_hex: str) -> None:
        super().__init__(rest_url, macaroon_hex, None, timeout=10)
        self.fee_limits: list[int] = []

    def send_payment(
        self,
        payment_request: str,
        *,
        amt_sat: int | None = None,
        fee_limit_sat: int,
        timeout_seconds: int,
    ) -> AsyncIterator[Payment]:
        """Record the fee limit, then send as the real client does."""
        self.fee_limits.append(fee_limit_sat)
        return super().send_payment(
            payment_request,
            amt_sat=amt_sat,
            fee_limit_sat=fee_limit_sat,
            timeout_seconds=timeout_seconds,
        )


async def test_a_small_refund_is_sent_with_a_fee_limit_that_is_a_share_of_it(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(
        database_url,
        nats_url,
        bootstrapped,
        refund_fee_limit_sat=10,
        refund_fee_limit_ppm=20_000,
    )
    info = ln.running.nodes_info["merchant"]
    lnd = FeeRecordingLnd(info["rest_url"], info["macaroon_hex"])
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            payer = RefundPayer(worker, lnd)
            small = await make_order(worker.pool, ln, price=150)
            large = await make_order(worker.pool, ln, price=5_000)

            await payer.request(small.id)
            await payer.request(large.id)

            # 2 % of 150 sat is 3 sat, not the flat 10; a large refund keeps the flat ceiling.
            assert lnd.fee_limits == [3, 10]
            await assert_refunded_once(worker.pool, ln, small)
            await assert_refunded_once(worker.pool, ln, large)
    finally:
        await lnd.close()


async def test_refunds_held_by_their_receivers_are_tracked_briefly_so_others_still_get_paid(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    info = ln.running.nodes_info["merchant"]
    settings = make_settings(
        database_url,
        nats_url,
        bootstrapped,
        lnd_rest_url=info["rest_url"],
        lnd_macaroon_hex=info["macaroon_hex"],
        lnd_money_connections=REFUND_SLOTS,
        refund_timeout_seconds=30,  # an attempt may wait 35 s on the node for a final state
    )
    lnd = lnd_client(settings)
    preimages: list[bytes] = []
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            try:
                await _pay_beside_held_refunds(worker, lnd, ln, preimages)
            finally:
                for preimage in preimages:
                    with contextlib.suppress(Exception):
                        await ln.payer.settle_invoice(preimage)
    finally:
        await lnd.close()


async def _pay_beside_held_refunds(
    worker: Worker, lnd: LndClient, ln: Lightning, preimages: list[bytes]
) -> None:
    """Every money connection's worth of refunds held IN_FLIGHT and re-tracked as their
    leases run out; another customer's refund must still be paid promptly."""
    payer = RefundPayer(worker, lnd)
    held: list[RefundOrder] = []
    sends: list[asyncio.Task[None]] = []
    for _ in range(REFUND_SLOTS):
        order, preimage = await make_held_refund_order(worker.pool, ln)
        held.append(order)
        preimages.append(preimage)
        sends.append(asyncio.create_task(payer.request(order.id)))

    async def all_held() -> bool:
        states = [(await ln.payer.lookup_invoice(o.refund_hash)).state for o in held]
        return states == ["ACCEPTED"] * REFUND_SLOTS

    await _until(all_held, "the customers to hold every refund HTLC")
    # The first attempts are over (their payments stay in flight at the node); their leases
    # run out, and the payer claims each again, as its retry loop does.
    for task in sends:
        task.cancel()
    await asyncio.gather(*sends, return_exceptions=True)
    await worker.pool.execute(
        "UPDATE refunds SET lease_until = now() - interval '1 second' WHERE status = 'in_flight'"
    )
    retracks = [asyncio.create_task(payer.attempt(o.id)) for o in held]

    async def pool_full() -> bool:
        return lnd.connections()["money"] == REFUND_SLOTS

    await _until(pool_full, "the re-tracks to hold every payment connection")

    other = await make_order(worker.pool, ln)
    await asyncio.wait_for(payer.request(other.id), 15)
    assert await order_status(worker.pool, other.id) == S.REFUNDED
    await asyncio.gather(*retracks)
    assert await all_held(), "the refunds were meant to be held throughout"
    for order in held:
        assert await order_status(worker.pool, order.id) == S.REFUND_PENDING


class _TrackNeverAnswers(LndClient):
    """A client whose track never reaches the node (as when it waits out the pool)."""

    async def track_payment(self, payment_hash: bytes) -> AsyncIterator[Payment]:
        """Fail before any answer, as aiohttp does when no connection frees up."""
        raise LndError("LND stream GET /v2/router/track failed: pool wait timed out")
        yield  # an async generator, like the real one


async def test_a_reclaim_after_a_lease_gives_back_no_attempt_it_did_not_take(
    database_url: str, nats_url: str, bootstrapped: tuple[str, str], ln: Lightning
) -> None:
    settings = make_settings(database_url, nats_url, bootstrapped)
    info = ln.running.nodes_info["merchant"]
    client = _TrackNeverAnswers(info["rest_url"], info["macaroon_hex"], None, timeout=10)
    try:
        async with open_worker("payments", settings, asyncio.Event()) as worker:
            payer = RefundPayer(worker, client)
            order = await make_order(worker.pool, ln)
            await worker.stores.refunds.insert(order.id)
            # A worker claimed it (attempt 1) and died; its lease ran out.
            first = await worker.stores.refunds.claim(order.id, 120.0, uuid.uuid4())
            assert first is not None and first.new_attempt and first.refund.attempts == 1
            await worker.pool.execute(
                "UPDATE refunds SET lease_until = now() - interval '1 second' WHERE order_id = $1",
                order.id,
            )

            await payer.attempt(order.id)  # the re-claim's track never reaches the node

            refund = await refund_row(worker.pool, order.id)
            assert refund is not None
            # Retried without counting, and without un-counting the dead worker's attempt.
            assert (refund.status, refund.attempts) == (RefundStatus.PENDING, 1)
    finally:
        await client.close()
