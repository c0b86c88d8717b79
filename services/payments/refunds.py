"""Refund payouts for L402 orders: intent first, track before paying, never pay twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import asyncpg

from libs.common import store
from libs.common.db import Q, transaction
from libs.common.events import Event, EventType
from libs.common.lightning import LndClient, LndError, Payment, PaymentNotInitiated
from libs.common.orders import Status
from libs.common.outbox import enqueue
from libs.common.runtime import Worker

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0


class RefundPayer:
    """Pays each refund_pending order's refundInvoice exactly once, with retries."""

    def __init__(self, worker: Worker, lnd: LndClient) -> None:
        self._w = worker
        self._lnd = lnd

    async def request(self, order_id: str) -> None:
        """Record the intent to refund an order (idempotent), then try to pay it."""
        async with transaction(self._w.pool) as conn:
            order = await store.get(conn, order_id)
            if order is None or order["status"] != Status.REFUND_PENDING:
                return
            await conn.execute(
                Q.refund_insert,
                order_id,
                order["refund_invoice"],
                order["refund_payment_hash"],
                order["price_sats"],
            )
        await self.attempt(order_id)

    async def attempt(self, order_id: str) -> None:
        """Claim the refund and drive one attempt to an outcome."""
        refund = await self._w.pool.fetchrow(Q.refund_claim, order_id, LEASE_SECONDS)
        if refund is None:
            return  # not due, already paid, or another worker holds it
        payment_hash = bytes(refund["payment_hash"])
        try:
            # Always ask the node first: after a crash the earlier attempt may have gone out.
            final = await self._final(self._lnd.track_payment(payment_hash))
        except PaymentNotInitiated:
            final = None
        except LndError as exc:
            await self._retry(refund, f"track failed: {exc.message}")
            return
        if final is None or final.status == "FAILED":
            try:
                final = await self._final(
                    self._lnd.send_payment(
                        refund["payment_request"],
                        amt_sat=refund["amount_sats"],
                        fee_limit_sat=self._w.settings.refund_fee_limit_sat,
                        timeout_seconds=self._w.settings.refund_timeout_seconds,
                    )
                )
            except LndError as exc:
                await self._retry(refund, exc.message)
                return
        if final is not None and final.status == "SUCCEEDED":
            await self._succeeded(order_id, final)
        elif final is not None and final.status == "FAILED":
            await self._retry(refund, final.failure_reason)
        # IN_FLIGHT with a closed stream: the lease runs out and the next claim tracks it.

    async def _final(self, stream: AsyncIterator[Payment]) -> Payment | None:
        """Drain a payment stream to its last update."""
        last: Payment | None = None
        try:
            async for update in stream:
                last = update
                if update.status in ("SUCCEEDED", "FAILED"):
                    break
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # ends the HTTP request behind the stream
        return last

    async def _succeeded(self, order_id: str, payment: Payment) -> None:
        """Record a paid refund and finish the order as refunded."""
        async with transaction(self._w.pool) as conn:
            if await conn.fetchval(Q.refund_succeeded, order_id, payment.fee_sat) is None:
                return
            await store.transition(conn, order_id, Status.REFUND_PENDING, Status.REFUNDED)
            await enqueue(
                conn, Event(EventType.REFUNDED, order_id), prefix=self._w.settings.subject_prefix
            )
        log.info("refund paid", extra={"order_id": order_id})

    async def _retry(self, refund: asyncpg.Record, reason: str) -> None:
        """Schedule another attempt with backoff, or give up after the configured maximum."""
        order_id: str = refund["order_id"]
        attempts: int = refund["attempts"]
        settings = self._w.settings
        if attempts >= settings.refund_max_attempts:
            async with transaction(self._w.pool) as conn:
                if await conn.fetchval(Q.refund_given_up, order_id, reason) is None:
                    return
                await store.transition(conn, order_id, Status.REFUND_PENDING, Status.REFUND_FAILED)
                await enqueue(
                    conn, Event(EventType.REFUND_FAILED, order_id), prefix=settings.subject_prefix
                )
            log.error(
                "refund failed for good after %d attempts: %s",
                attempts,
                reason,
                extra={"order_id": order_id},
            )
            return
        delay = settings.refund_retry_base_seconds * 2 ** (attempts - 1)
        await self._w.pool.execute(Q.refund_retry_later, order_id, reason, delay)
        log.warning(
            "refund attempt %d failed (%s); retrying in %.0fs",
            attempts,
            reason,
            delay,
            extra={"order_id": order_id},
        )

    async def retry_due(self) -> None:
        """Periodically attempt refunds that are due or whose worker died mid-payment."""
        while not self._w.stop.is_set():
            try:
                for row in await self._w.pool.fetch(Q.refunds_due, 100):
                    await self.attempt(row["order_id"])
            except Exception:
                log.exception("refund retry loop failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), 1.0)
            except TimeoutError:
                pass
