"""Refund payouts for L402 orders: intent first, track before paying, never pay twice."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from libs.common.adapters.lightning import LndError, Payment, PaymentNotInitiated
from libs.common.core import metrics
from libs.common.core.faults import crash_point
from libs.common.domain.events import Event, EventType
from libs.common.domain.orders import Status
from libs.common.domain.refund_invoices import currency_for_network
from libs.common.domain.refund_policy import (
    GIVE_UP_UNKNOWN_RETRY_SECONDS,
    LastLook,
    Next,
    after_send,
    after_track,
    after_unpaid_attempt,
    before_giving_up,
    fee_limit,
    refund_timing,
    unpayable_reason,
)
from libs.common.domain.refunds import Refund, RefundClaim
from libs.common.messaging import ops
from services.payments.node import Host, Node

log = logging.getLogger(__name__)


class _Unknown(Exception):
    """The node could not tell us how a payment ended (it errored or went silent)."""

    def __init__(self, message: str, *, answered: bool = True) -> None:
        super().__init__(message)
        # False when no answer came from the node at all (no connection in time, a dropped
        # request, silence): such a send, if the node then knows no payment, is no attempt.
        self.answered = answered


class RefundPayer:
    """Pays each refund_pending order's refundInvoice exactly once, with retries.

    The rules that keep money safe: the intent row exists before any payment; one claim at
    a time (a lease); the node is asked about the payment before every send and before
    giving up; an unknown outcome is never counted as a failure.
    """

    def __init__(self, worker: Host, lnd: Node) -> None:
        self._w = worker
        self._lnd = lnd
        settings = worker.settings
        # How long one attempt waits on the node; a payment held longer (a hold invoice,
        # a stuck HTLC) stays in_flight and is tracked again once the lease runs out.
        self._timing = refund_timing(settings.refund_timeout_seconds)
        self._wait = self._timing.wait
        self._running: dict[str, asyncio.Task[None]] = {}
        self._currency = currency_for_network(settings.lnd_network)
        # The pool: at most this many attempts hold a claim and talk to the node at once.
        # A slot is taken before the claim, so no lease runs out while waiting for one.
        self._limit = max(1, settings.refund_concurrency)
        self._slots = asyncio.Semaphore(self._limit)
        # Set when a refund becomes due now or a slot frees up: the retry loop looks again.
        self._wake = asyncio.Event()

    async def request(self, order_id: str, *, wait: bool = True) -> None:
        """Pay a refund_pending order's refund now (its intent row came with the transition).

        With wait=False the event handler returns at once: the intent row is durable and
        due now, and the retry loop starts it as soon as the pool has a free slot, so a burst
        of 1,000 refunds costs `refund_concurrency` tasks, not 1,000.
        """
        async with self._w.stores.transaction() as tx:
            order = await tx.orders.get(order_id)
            if order is None or order.status is not Status.REFUND_PENDING:
                return
            await tx.refunds.insert(order_id)  # no-op unless the row is missing
        if wait:
            await self.start(order_id)
        else:
            self._wake.set()

    def start(self, order_id: str) -> asyncio.Task[None]:
        """Run an attempt as a task, or return the one this process already runs for it.

        The task waits for a slot of the pool before it claims the refund.
        """
        task = self._running.get(order_id)
        if task is None:
            task = asyncio.create_task(self._guarded_attempt(order_id), name=f"refund-{order_id}")
            self._running[order_id] = task
            task.add_done_callback(lambda _t: self._ended(order_id))
        return task

    def _ended(self, order_id: str) -> None:
        """Forget a finished task and let the retry loop fill its slot."""
        self._running.pop(order_id, None)
        self._wake.set()

    async def _guarded_attempt(self, order_id: str) -> None:
        """An attempt in a slot of the pool, whose crash is logged, not lost in a task."""
        try:
            async with self._slots:
                await self.attempt(order_id)
        except Exception:
            log.exception("refund attempt crashed", extra={"order_id": order_id})

    async def start_due(self) -> int:
        """Start as many due refunds as the pool has free slots; returns how many started."""
        room = self._limit - len(self._running)
        if room <= 0:
            return 0
        # Some due rows may be ours already (started, not yet claimed): ask for enough more.
        due = await self._w.stores.refunds.due(room + len(self._running))
        fresh = [order_id for order_id in due if order_id not in self._running][:room]
        for order_id in fresh:
            self.start(order_id)
        return len(fresh)

    async def attempt(self, order_id: str) -> None:
        """Claim the refund and drive one attempt as far as the node lets us."""
        claim_id = uuid.uuid4()
        claim = await self._w.stores.refunds.claim(order_id, self._timing.lease, claim_id)
        if claim is None:
            return  # not due, already paid, or another worker holds it
        refund = claim.refund
        try:
            # Always ask the node first: after a crash the earlier attempt may have gone out.
            known = await self._track(refund.payment_hash)
            if after_track(known.status if known else None) is Next.SEND:
                expired = unpayable_reason(
                    refund.payment_request, currency=self._currency, now=int(time.time())
                )
                if expired is not None:
                    await self._give_up(claim, claim_id, expired)
                    return
                try:
                    known = await self._outcome(self._send(refund))
                except _Unknown as exc:
                    # The send may or may not have left; only the node can tell.
                    known = await self._track(refund.payment_hash)
                    if known is None:
                        # Nothing was paid. A send the node refused counts as an attempt; one
                        # that never reached it (e.g. it waited out the connection pool) does
                        # not, so a busy pool can never end an order refund_failed.
                        await self._retry(
                            claim,
                            claim_id,
                            str(exc),
                            definite=exc.answered,
                            counted=exc.answered,
                        )
                        return
        except _Unknown as exc:
            await self._retry(claim, claim_id, str(exc), definite=False, counted=exc.answered)
            return
        assert known is not None  # a payment the node never saw was sent above
        step = after_send(known.status)
        if step is Next.RECORD_PAID:
            crash_point("payments.refund_sent")
            await self._succeeded(order_id, known)
        elif step is Next.RETRY:
            await self._retry(claim, claim_id, known.failure_reason, definite=True)
        # Still IN_FLIGHT: keep the claim; when the lease runs out the next claim tracks it.

    def _send(self, refund: Refund) -> AsyncIterator[Payment]:
        """Pay the refund invoice the refund amount, within the fee limit and timeout.

        The fee is ours, on top of the amount: the customer gets back exactly what was owed.
        """
        settings = self._w.settings
        return self._lnd.send_payment(
            refund.payment_request,
            amt_sat=refund.amount_sats,
            fee_limit_sat=fee_limit(refund.amount_sats, settings),
            timeout_seconds=settings.refund_timeout_seconds,
        )

    async def _track(self, payment_hash: bytes) -> Payment | None:
        """The node's view of our payment to this hash; None if it never saw one.

        A payment still in flight is looked at, not waited on: the claim's lease brings it
        back. Waiting would let refunds held by their receivers (a customer's hold invoice)
        keep the money connections busy and stall every other customer's refund.
        """
        try:
            return await self._outcome(
                self._lnd.track_payment(payment_hash), wait=self._timing.track_wait
            )
        except PaymentNotInitiated:
            return None

    async def _outcome(self, stream: AsyncIterator[Payment], *, wait: float = 0.0) -> Payment:
        """Follow a payment stream until final, or stop waiting after `wait` (default: the
        attempt's whole wait on the node)."""
        last: Payment | None = None
        try:
            async with asyncio.timeout(wait or self._wait):
                async for update in stream:
                    last = update
                    if update.is_final:
                        break
        except TimeoutError:
            pass
        except PaymentNotInitiated:
            raise
        except (LndError, OSError) as exc:
            # http_status 0: the client failed before any answer (pool wait, connect, reset).
            answered = isinstance(exc, LndError) and exc.http_status != 0
            raise _Unknown(getattr(exc, "message", repr(exc)), answered=answered) from exc
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # ends the HTTP request behind the stream
        if last is None:
            raise _Unknown("the node sent no payment update", answered=False)
        return last

    async def _succeeded(self, order_id: str, payment: Payment) -> None:
        """Record a paid refund and finish the order as refunded."""
        async with self._w.stores.transaction() as tx:
            if not await tx.refunds.succeeded(order_id, payment.fee_sat):
                return
            await tx.orders.transition(order_id, Status.REFUND_PENDING, Status.REFUNDED)
            await tx.outbox.enqueue(Event(EventType.REFUNDED, order_id))
        metrics.REFUNDS.labels("paid").inc()
        log.info("refund paid", extra={"order_id": order_id})

    async def _retry(
        self,
        claim: RefundClaim,
        claim_id: uuid.UUID,
        reason: str,
        *,
        definite: bool,
        counted: bool = True,
    ) -> None:
        """Schedule another attempt with backoff, or give up once the node confirms no payment.

        counted=False gives back the attempt the claim took, if it took one (a re-claim after a
        lease took none): nothing reached the node.
        """
        order_id = claim.refund.order_id
        settings = self._w.settings
        unpaid = after_unpaid_attempt(
            attempts=claim.refund.attempts,
            new_attempt=claim.new_attempt,
            counted=counted,
            definite=definite,
            max_attempts=settings.refund_max_attempts,
            base_seconds=settings.refund_retry_base_seconds,
        )
        if unpaid.give_up:
            await self._give_up(claim, claim_id, reason)
            return
        if unpaid.give_back:
            await self._w.stores.refunds.retry_uncounted(order_id, claim_id, reason, unpaid.delay)
        else:
            await self._w.stores.refunds.retry_later(order_id, claim_id, reason, unpaid.delay)
        metrics.REFUNDS.labels("retried").inc()
        log.warning(
            "refund attempt %d did not pay (%s); retrying in %.1fs",
            unpaid.attempts,
            reason,
            unpaid.delay,
            extra={"order_id": order_id},
        )

    async def _give_up(self, claim: RefundClaim, claim_id: uuid.UUID, reason: str) -> None:
        """End the order refund_failed, but only after the node confirms nothing was paid."""
        order_id = claim.refund.order_id
        try:
            last = await self._track(claim.refund.payment_hash)
        except _Unknown as exc:
            await self._w.stores.refunds.retry_later(
                order_id, claim_id, str(exc), GIVE_UP_UNKNOWN_RETRY_SECONDS
            )
            return
        look = before_giving_up(last.status if last is not None else None)
        if look is LastLook.RECORD_PAID:
            assert last is not None
            await self._succeeded(order_id, last)
            return
        if look is LastLook.WAIT:
            return  # in flight after all: the lease will bring it back
        async with self._w.stores.transaction() as tx:
            if not await tx.refunds.given_up(order_id, claim_id, reason):
                return
            await tx.orders.transition(order_id, Status.REFUND_PENDING, Status.REFUND_FAILED)
            await tx.outbox.enqueue(Event(EventType.REFUND_FAILED, order_id))
        metrics.REFUNDS.labels("failed").inc()
        log.error(
            "refund failed for good after %d attempts: %s",
            claim.refund.attempts,
            reason,
            extra={"order_id": order_id},
        )

    async def retry_due(self) -> None:
        """Start refunds that are due or whose worker died mid-payment, as slots free up.

        Woken by a new refund and by every attempt that ends; otherwise it looks each second.
        """
        stop = asyncio.ensure_future(self._w.stop.wait())
        try:
            while not self._w.stop.is_set():
                ops.beat("refund-retry")
                self._wake.clear()
                try:
                    await self.start_due()
                except Exception:
                    log.exception("refund retry loop failed")
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([stop, wake], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
        finally:
            stop.cancel()
        ops.HEALTH.forget("refund-retry")
        # Let attempts in progress record what the node said before the process exits.
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=self._wait)
