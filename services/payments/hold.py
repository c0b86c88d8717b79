"""Hold invoices (classic API): found ACCEPTED by a paged scan, settled on delivery or cancelled."""

from __future__ import annotations

import asyncio
import logging

from libs.common.adapters.lightning import Invoice, InvoiceNotFound, LndError
from libs.common.core.faults import crash_point
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.hold_policy import (
    ACCEPTED,
    SETTLED,
    AfterFailedCall,
    Sweep,
    after_failed_call,
    htlc_gone,
    may_settle,
    release_path,
    still_held,
    sweep_step,
)
from libs.common.domain.orders import Status
from libs.common.messaging.bus import Retry
from services.payments.invoice_watch import InvoiceWatcher
from services.payments.node import Host, Node

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0


class HoldInvoices:
    """Money on hold: settled only after the code was delivered, otherwise cancelled."""

    def __init__(self, worker: Host, lnd: Node, invoices: InvoiceWatcher) -> None:
        self._w = worker
        self._lnd = lnd
        self._invoices = invoices

    async def mark_accepted(self, pending: dict[bytes, Invoice]) -> int:
        """Mark paid every unpaid hold order whose invoice the node lists as ACCEPTED.

        LND's all-invoices stream never reports ACCEPTED, and a stream per invoice would let
        every unpaid order hold a connection; the paged scan costs the same for 10 or 10,000.
        """
        accepted = {h: inv for h, inv in pending.items() if inv.state == ACCEPTED}
        if not accepted:
            return 0
        rows = await self._w.stores.orders.awaiting_payment_by_hash(list(accepted))
        paid = 0
        for row in rows:
            if await self._invoices.mark_paid(accepted[row.payment_hash]):
                paid += 1
        return paid

    async def settle(self, order_id: str) -> None:
        """The code was recorded: take the held payment, then complete the order.

        settled_at is written with the completion, and only when the node settled: the
        classic API shows the code from then on, never for a payment that was not taken.
        """
        order = await self._w.stores.orders.get(order_id)
        if order is None or not order.is_hold:
            return
        if not may_settle(order.status, order.sms_received_at):
            return  # never settle without a delivered code
        assert order.preimage is not None  # every hold order has the preimage we chose
        settled = True
        try:
            await self._lnd.settle_invoice(order.preimage)
        except InvoiceNotFound:
            settled = False
            # The node lost the invoice: nothing can be collected, so the code is never
            # shown. The order still completes; the invariant checker reports it.
            log.error("hold invoice unknown to the node at settle", extra={"order_id": order_id})
        except LndError as exc:
            invoice = await self._lnd.lookup_invoice(order.payment_hash)
            after = after_failed_call(invoice.state)
            if after is AfterFailedCall.CANCELED:
                # The HTLC timed out before we could settle: nothing was paid, so the code is
                # never shown. The invariant checker reports it; the order still completes.
                settled = False
                log.error("hold invoice canceled before settle", extra={"order_id": order_id})
            elif after is AfterFailedCall.RETRY:
                raise Retry(f"settle failed: {exc.message}", delay=2.0) from exc
        crash_point("payments.hold_settled")
        async with self._w.stores.transaction() as tx:
            if settled:
                await tx.orders.mark_settled(order_id)
            done = await tx.orders.complete(
                order_id,
                code_retention=self._w.settings.code_retention_seconds,
                current=Status.CODE_RECEIVED,
            )
        if done:
            log.info("held payment settled; order completed", extra={"order_id": order_id})

    async def release(self, order_id: str) -> None:
        """No code: cancel the hold invoice so the payer's HTLC goes back, then refunded."""
        order = await self._w.stores.orders.get(order_id)
        if order is None or not order.is_hold:
            return
        if order.status is not Status.REFUND_PENDING:
            return
        payment_hash = order.payment_hash
        try:
            await self._lnd.cancel_invoice(payment_hash)
        except InvoiceNotFound:
            pass  # the node no longer knows it: no HTLC is held, nothing to give back
        except LndError as exc:
            invoice = await self._lnd.lookup_invoice(payment_hash)
            after = after_failed_call(invoice.state)
            if after is AfterFailedCall.SETTLED:
                # Must never happen (we settle only after delivery); leave it for operators.
                log.error(
                    "hold invoice settled on an order being refunded", extra={"order_id": order_id}
                )
                return
            if after is AfterFailedCall.RETRY:
                raise Retry(f"cancel failed: {exc.message}", delay=2.0) from exc
        async with self._w.stores.transaction() as tx:
            moved = await tx.orders.transition(order_id, Status.REFUND_PENDING, Status.REFUNDED)
            if moved is None:
                return
            await tx.outbox.enqueue(Event(EventType.REFUNDED, order_id))
        log.info("hold invoice canceled; funds back with the payer", extra={"order_id": order_id})

    async def enforce_deadline(self, order_id: str) -> None:
        """Past the hold deadline without a code: release the funds whatever the provider says."""
        order = await self._w.stores.orders.get(order_id)
        if order is None or not order.is_hold:
            return
        path = release_path(order.status)
        async with self._w.stores.transaction() as tx:
            current = order.status
            for target in path:
                # Guarded: if the provider delivers a code first, this moves nothing.
                if await tx.orders.transition(order_id, current, target) is None:
                    return
                current = target
            if path:
                await tx.timers.cancel(order_id, Timer.SMS_TIMEOUT)
        if path:
            log.warning("hold deadline reached without a code", extra={"order_id": order_id})
        await self.release(order_id)

    async def sweep_once(self) -> None:
        """Catch up on every open hold order: newly accepted, drifted, to settle, to cancel."""
        # Rows first, then the scan (see InvoiceWatcher.reconcile): an invoice a row names
        # and the scan misses has really left the pending states.
        rows = await self._w.stores.orders.hold_open(1000)
        pending: dict[bytes, Invoice] | None = None
        try:
            pending = await self._invoices.pending_at_node()
            await self.mark_accepted(pending)
        except LndError as exc:
            log.warning("hold sweep: pending invoice scan failed: %s", exc)
        for row in rows:
            order_id = row.order_id
            try:
                step = sweep_step(row.status)
                if step is Sweep.CHECK_HELD:
                    listed = pending.get(row.payment_hash) if pending is not None else None
                    if still_held(listed.state if listed is not None else None):
                        continue  # still held at the node: nothing to look up
                    invoice = await self._lnd.lookup_invoice(row.payment_hash)
                    if htlc_gone(invoice.state):
                        # Drift: the node gave the HTLC back (e.g. near its expiry). Nothing
                        # can be settled any more, so the order ends refunded, loudly.
                        log.error("held HTLC gone at the node", extra={"order_id": order_id})
                        await self.enforce_deadline(order_id)
                elif step is Sweep.SETTLE:
                    await self.settle(order_id)  # the code is recorded: settle at once
                elif step is Sweep.RELEASE:
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
        for row in await self._w.stores.orders.hold_completed_unsettled(100):
            try:
                invoice = await self._lnd.lookup_invoice(row.payment_hash)
            except LndError as exc:
                log.warning("hold sweep: %s", exc, extra={"order_id": row.order_id})
                continue
            if invoice.state == SETTLED:
                await self._w.stores.orders.mark_settled(row.order_id)
                log.warning(
                    "recorded a settle made without settled_at", extra={"order_id": row.order_id}
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
