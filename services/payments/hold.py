"""Hold invoices (classic API): found ACCEPTED by a paged scan, settled on delivery or cancelled."""

from __future__ import annotations

import asyncio
import logging

from libs.common.adapters.lightning import Invoice, InvoiceNotFound, LndClient, LndError
from libs.common.core.faults import crash_point
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.orders import Status
from libs.common.messaging.bus import Retry
from libs.common.messaging.runtime import Worker
from libs.common.persistence import order_store as store
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.outbox_store import enqueue
from services.payments.invoice_watch import InvoiceWatcher

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0


class HoldInvoices:
    """Money on hold: settled only after the code was delivered, otherwise cancelled."""

    def __init__(self, worker: Worker, lnd: LndClient, invoices: InvoiceWatcher) -> None:
        self._w = worker
        self._lnd = lnd
        self._invoices = invoices

    async def mark_accepted(self, pending: dict[bytes, Invoice]) -> int:
        """Mark paid every unpaid hold order whose invoice the node lists as ACCEPTED.

        LND's all-invoices stream never reports ACCEPTED, and a stream per invoice would let
        every unpaid order hold a connection; the paged scan costs the same for 10 or 10,000.
        """
        accepted = {h: inv for h, inv in pending.items() if inv.state == "ACCEPTED"}
        if not accepted:
            return 0
        rows = await self._w.pool.fetch(Q.orders_awaiting_payment_by_hash, list(accepted))
        paid = 0
        for row in rows:
            if await self._invoices.mark_paid(accepted[bytes(row["payment_hash"])]):
                paid += 1
        return paid

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
        """Catch up on every open hold order: newly accepted, drifted, to settle, to cancel."""
        # Rows first, then the scan (see InvoiceWatcher.reconcile): an invoice a row names
        # and the scan misses has really left the pending states.
        rows = await self._w.pool.fetch(Q.orders_hold_open, 1000)
        pending: dict[bytes, Invoice] | None = None
        try:
            pending = await self._invoices.pending_at_node()
            await self.mark_accepted(pending)
        except LndError as exc:
            log.warning("hold sweep: pending invoice scan failed: %s", exc)
        for row in rows:
            order_id, status = row["id"], row["status"]
            try:
                if status in (Status.PAID, Status.ALLOCATING_NUMBER, Status.WAITING_FOR_SMS):
                    payment_hash = bytes(row["payment_hash"])
                    listed = pending.get(payment_hash) if pending is not None else None
                    if listed is not None and listed.state == "ACCEPTED":
                        continue  # still held at the node: nothing to look up
                    invoice = await self._lnd.lookup_invoice(payment_hash)
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
        await self.record_missed_settles()

    async def record_missed_settles(self) -> None:
        """Record the settle of completed hold orders whose settle the node confirms.

        A payments worker of the release before settled_at existed may still complete orders
        during a rolling deploy; without this their customers, who paid, would never be shown
        the code. An order whose HTLC the node gave back stays hidden (nothing was paid).
        """
        for row in await self._w.pool.fetch(Q.orders_hold_completed_unsettled, 100):
            try:
                invoice = await self._lnd.lookup_invoice(bytes(row["payment_hash"]))
            except LndError as exc:
                log.warning("hold sweep: %s", exc, extra={"order_id": row["id"]})
                continue
            if invoice.state == "SETTLED":
                await self._w.pool.execute(Q.order_mark_settled, row["id"])
                log.warning(
                    "recorded a settle made without settled_at", extra={"order_id": row["id"]}
                )

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
