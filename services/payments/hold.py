"""Hold invoices (classic API): watched until ACCEPTED, settled on delivery, else cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from libs.common import store
from libs.common.bus import Retry
from libs.common.db import Q, transaction
from libs.common.events import Event, EventType
from libs.common.faults import crash_point
from libs.common.lightning import Invoice, InvoiceNotFound, LndClient, LndError
from libs.common.orders import Status
from libs.common.outbox import enqueue
from libs.common.runtime import Worker
from libs.common.store import Timer
from services.payments.invoices import InvoiceWatcher

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0


class HoldInvoices:
    """Money on hold: settled only after the code was delivered, otherwise cancelled."""

    def __init__(self, worker: Worker, lnd: LndClient, invoices: InvoiceWatcher) -> None:
        self._w = worker
        self._lnd = lnd
        self._invoices = invoices
        self._watching: dict[str, asyncio.Task[None]] = {}

    def watch(self, order_id: str, payment_hash: bytes) -> None:
        """Follow one hold invoice until it is accepted (LND's all-invoices stream never says)."""
        if order_id in self._watching:
            return
        task = asyncio.create_task(self._follow(payment_hash), name=f"hold-{order_id}")
        self._watching[order_id] = task
        task.add_done_callback(lambda _t: self._watching.pop(order_id, None))

    async def _follow(self, payment_hash: bytes) -> None:
        """Mark the order paid when its invoice is accepted; the sweep covers lost streams."""
        stream: AsyncIterator[Invoice] = self._lnd.subscribe_invoice(payment_hash)
        try:
            async for invoice in stream:
                if invoice.state in ("ACCEPTED", "SETTLED"):
                    await self._invoices.mark_paid(invoice)
                if invoice.state != "OPEN":
                    return
        except (LndError, OSError) as exc:
            log.info("hold invoice stream ended (%s); the sweep takes over", exc)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def on_created(self, order_id: str) -> None:
        """Start watching a new hold order's invoice."""
        order = await store.get(self._w.pool, order_id)
        if order is not None and order["payment_mode"] == "hold":
            if order["status"] == Status.PENDING_PAYMENT:
                self.watch(order_id, bytes(order["payment_hash"]))

    async def settle(self, order_id: str) -> None:
        """The code was recorded: take the held payment, then complete the order.

        settled_at is written with the completion, and only when the node settled: the
        classic API shows the code from then on, never for a payment that was not taken.
        """
        order = await store.get(self._w.pool, order_id)
        if order is None or order["payment_mode"] != "hold":
            return
        if order["status"] != Status.CODE_RECEIVED or order["sms_received_at"] is None:
            return  # never settle without a delivered code
        settled = True
        try:
            await self._lnd.settle_invoice(bytes(order["preimage"]))
        except InvoiceNotFound:
            settled = False
            # The node lost the invoice: nothing can be collected, so the code is never
            # shown. The order still completes; the invariant checker reports it.
            log.error("hold invoice unknown to the node at settle", extra={"order_id": order_id})
        except LndError as exc:
            invoice = await self._lnd.lookup_invoice(bytes(order["payment_hash"]))
            if invoice.state == "CANCELED":
                # The HTLC timed out before we could settle: nothing was paid, so the code is
                # never shown. The invariant checker reports it; the order still completes.
                settled = False
                log.error("hold invoice canceled before settle", extra={"order_id": order_id})
            elif invoice.state != "SETTLED":
                raise Retry(f"settle failed: {exc.message}", delay=2.0) from exc
        crash_point("payments.hold_settled")
        async with transaction(self._w.pool) as conn:
            if settled:
                await conn.execute(Q.order_mark_settled, order_id)
            done = await store.complete(
                conn,
                order_id,
                code_retention=self._w.settings.code_retention_seconds,
                prefix=self._w.settings.subject_prefix,
            )
        if done:
            log.info("held payment settled; order completed", extra={"order_id": order_id})

    async def release(self, order_id: str) -> None:
        """No code: cancel the hold invoice so the payer's HTLC goes back, then refunded."""
        order = await store.get(self._w.pool, order_id)
        if order is None or order["payment_mode"] != "hold":
            return
        if order["status"] != Status.REFUND_PENDING:
            return
        payment_hash = bytes(order["payment_hash"])
        try:
            await self._lnd.cancel_invoice(payment_hash)
        except InvoiceNotFound:
            pass  # the node no longer knows it: no HTLC is held, nothing to give back
        except LndError as exc:
            invoice = await self._lnd.lookup_invoice(payment_hash)
            if invoice.state == "SETTLED":
                # Must never happen (we settle only after delivery); leave it for operators.
                log.error(
                    "hold invoice settled on an order being refunded", extra={"order_id": order_id}
                )
                return
            if invoice.state != "CANCELED":
                raise Retry(f"cancel failed: {exc.message}", delay=2.0) from exc
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(conn, order_id, Status.REFUND_PENDING, Status.REFUNDED)
            if moved is None:
                return
            await enqueue(
                conn, Event(EventType.REFUNDED, order_id), prefix=self._w.settings.subject_prefix
            )
        log.info("hold invoice canceled; funds back with the payer", extra={"order_id": order_id})

    async def enforce_deadline(self, order_id: str) -> None:
        """Past the hold deadline without a code: release the funds whatever the provider says."""
        order = await store.get(self._w.pool, order_id)
        if order is None or order["payment_mode"] != "hold":
            return
        path = {
            Status.PAID: [Status.ALLOCATING_NUMBER, Status.REFUND_PENDING],
            Status.ALLOCATING_NUMBER: [Status.REFUND_PENDING],
            Status.WAITING_FOR_SMS: [Status.REFUND_PENDING],
        }.get(Status(order["status"]), [])
        async with transaction(self._w.pool) as conn:
            current = Status(order["status"])
            for target in path:
                # Guarded: if the provider delivers a code first, this moves nothing.
                if await store.transition(conn, order_id, current, target) is None:
                    return
                current = target
            if path:
                await store.cancel_timer(conn, order_id, Timer.SMS_TIMEOUT)
        if path:
            log.warning("hold deadline reached without a code", extra={"order_id": order_id})
        await self.release(order_id)

    async def sweep_once(self) -> None:
        """Catch up on every open hold order (lost events, lost streams, restarts)."""
        for row in await self._w.pool.fetch(Q.orders_hold_open, 1000):
            order_id, status = row["id"], row["status"]
            try:
                if status == Status.PENDING_PAYMENT:
                    order = await store.get(self._w.pool, order_id)
                    if order is not None:
                        invoice = await self._lnd.lookup_invoice(bytes(order["payment_hash"]))
                        if not await self._invoices.mark_paid(invoice):
                            self.watch(order_id, bytes(order["payment_hash"]))
                elif status in (Status.PAID, Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS):
                    invoice = await self._lnd.lookup_invoice(bytes(row["payment_hash"]))
                    if invoice.state == "CANCELED":
                        # Drift: the node gave the HTLC back (e.g. near its expiry). Nothing
                        # can be settled any more, so the order ends refunded, loudly.
                        log.error("held HTLC gone at the node", extra={"order_id": order_id})
                        await self.enforce_deadline(order_id)
                elif status == Status.CODE_RECEIVED:
                    await self.settle(order_id)  # the code is recorded: settle at once
                elif status == Status.REFUND_PENDING:
                    await self.release(order_id)
            except (LndError, Retry) as exc:
                log.warning("hold sweep: %s", exc, extra={"order_id": order_id})

    async def sweep_forever(self) -> None:
        """Sweep until stop."""
        while not self._w.stop.is_set():
            try:
                await self.sweep_once()
            except Exception:
                log.exception("hold sweep failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), SWEEP_SECONDS)
            except TimeoutError:
                pass
        for task in list(self._watching.values()):
            task.cancel()
