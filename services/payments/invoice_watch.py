"""The invoice side of payments: settled invoices make orders paid, expired ones expire them."""

from __future__ import annotations

import asyncio
import logging
import random

from libs.common.adapters.lightning import Invoice, InvoiceNotFound, LndError
from libs.common.core.faults import crash_point
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.hold_policy import hold_deadline_seconds
from libs.common.domain.orders import Status
from libs.common.domain.payment_policy import Paid, may_pay, pays_order
from services.payments.node import Host, Node

log = logging.getLogger(__name__)


class InvoiceWatcher:
    """Keeps each pending order in step with its invoice at the node."""

    def __init__(self, worker: Host, lnd: Node) -> None:
        self._w = worker
        self._lnd = lnd
        self._settle_index = 0

    async def mark_paid(self, invoice: Invoice) -> bool:
        """Move the order with this invoice to paid and start its SMS deadline; idempotent.

        A standard invoice counts once SETTLED; a hold invoice once ACCEPTED (its HTLC is
        locked in and we hold the preimage).
        """
        if not may_pay(invoice.state):
            return False
        settings = self._w.settings
        crash_point("payments.settle_seen")
        async with self._w.stores.transaction() as tx:
            order = await tx.orders.by_payment_hash(invoice.r_hash)
            if order is None:
                return False
            paid = pays_order(
                invoice_state=invoice.state,
                amt_paid_msat=invoice.amt_paid_msat,
                status=order.status,
                payment_mode=order.payment_mode,
                price_sats=order.price_sats,
            )
            if paid is Paid.UNDERPAID:
                log.error("invoice underpaid; leaving order pending", extra={"order_id": order.id})
            if paid is not Paid.YES:
                return False
            timeout = settings.order_timeout_seconds
            if not await tx.orders.mark_paid(
                order.id,
                deadline=timeout,
                amt_paid_msat=invoice.amt_paid_msat,
                htlc_expiry_height=min(invoice.htlc_expiry_heights, default=None),
            ):
                return False
            if order.is_hold:
                # The docs promise the hold is released by 21 minutes at the latest, even if
                # the provider cannot be reached to cancel the activation.
                await tx.timers.set(
                    order.id,
                    Timer.HOLD_DEADLINE,
                    hold_deadline_seconds(timeout, settings.hold_grace_seconds),
                )
        log.info("order paid", extra={"order_id": order.id})
        return True

    async def on_invoice(self, invoice: Invoice) -> None:
        """Handle one invoice update from the node."""
        await self.mark_paid(invoice)

    async def expire(self, order_id: str) -> None:
        """Handle an unpaid order's invoice expiry: cancel the invoice, then expire the order."""
        order = await self._w.stores.orders.get(order_id)
        if order is None or order.status is not Status.PENDING_PAYMENT:
            return
        payment_hash = order.payment_hash
        try:
            invoice = await self._lnd.lookup_invoice(payment_hash)
            if await self.mark_paid(invoice):
                return
            # Cancel first so a payment racing the expiry cannot land on an expired order. No
            # HTLC is held (it was not ACCEPTED just now), so a burst of expiries stays off
            # the money connections.
            await self._lnd.cancel_invoice(payment_hash, money=False)
        except InvoiceNotFound:
            log.warning("node does not know the invoice; expiring", extra={"order_id": order_id})
        except LndError as exc:
            invoice = await self._lnd.lookup_invoice(payment_hash)
            if await self.mark_paid(invoice):
                return
            raise exc
        async with self._w.stores.transaction() as tx:
            moved = await tx.orders.transition(order_id, Status.PENDING_PAYMENT, Status.EXPIRED)
            if moved is None:
                return
            await tx.tokens.delete_for_order(order_id)
            await tx.outbox.enqueue(Event(EventType.EXPIRED, order_id))
        log.info("order expired unpaid", extra={"order_id": order_id})

    async def pending_at_node(self) -> dict[bytes, Invoice]:
        """Every OPEN or ACCEPTED invoice at the node, by payment hash, paged by add_index.

        A handful of calls whatever the count (one per `hold_scan_page_size` invoices), each
        on one connection of the non-money pool; raises LndError if a page fails.
        """
        size = max(1, self._w.settings.hold_scan_page_size)
        found: dict[bytes, Invoice] = {}
        offset = 0
        while True:
            page = await self._lnd.list_invoices(
                pending_only=True, index_offset=offset, num_max_invoices=size
            )
            for invoice in page.invoices:
                found[invoice.r_hash] = invoice
            # LND answers an empty page (offsets 0) past the end; a short page is the last.
            if len(page.invoices) < size or page.last_index_offset <= offset:
                return found
            offset = page.last_index_offset

    async def reconcile(self) -> int:
        """Check every pending order's invoice at the node; returns how many became paid.

        One paged scan of the node's pending invoices answers for all of them; only an
        invoice that left the pending states (settled, canceled, lost) is looked up alone,
        and at most `reconcile_lookups_per_pass` of those per pass, one after the other: a
        backlog (expiries running late, a node that lost invoices) costs a bounded number
        of calls on one connection, never one per order.
        """
        paid = 0
        # Rows first, then the scan: an order's invoice exists before its row, so an invoice
        # missing from the later scan really did leave the pending states.
        rows = await self._w.stores.orders.pending_payment(10_000)
        try:
            pending = await self.pending_at_node()
        except LndError as exc:
            log.warning("pending invoice scan failed: %s", exc)
            return 0
        missing = [row for row in rows if row.payment_hash not in pending]
        bound = max(0, self._w.settings.reconcile_lookups_per_pass)
        if len(missing) > bound:
            # A different sample each pass, so no order is left out for good.
            missing = random.sample(missing, bound)
        for row in rows:
            invoice = pending.get(row.payment_hash)
            if invoice is not None and await self.mark_paid(invoice):
                paid += 1
        for row in missing:
            try:
                invoice = await self._lnd.lookup_invoice(row.payment_hash)
            except LndError as exc:
                log.warning("lookup failed: %s", exc, extra={"order_id": row.order_id})
                continue
            if await self.mark_paid(invoice):
                paid += 1
        return paid

    async def _follow(self) -> None:
        """Reconcile, then follow the node's stream of new and settled invoices."""
        await self.reconcile()
        # After a reconnect LND replays every settle past the last index we handled. A settle
        # between the first reconcile and the first subscription is caught by the periodic
        # reconcile or, at the latest, by the invoice-expiry check.
        async for invoice in self._lnd.subscribe_invoices(settle_index=self._settle_index):
            await self.on_invoice(invoice)
            # Only after it was handled: a failure above replays this settle on reconnect.
            if invoice.settle_index:
                self._settle_index = max(self._settle_index, invoice.settle_index)

    async def watch(self) -> None:
        """Follow the invoice stream until stop, reconnecting with backoff."""
        delay = 1.0
        stop = asyncio.ensure_future(self._w.stop.wait())
        try:
            while not self._w.stop.is_set():
                follow = asyncio.ensure_future(self._follow())
                await asyncio.wait([follow, stop], return_when=asyncio.FIRST_COMPLETED)
                if not follow.done():
                    follow.cancel()
                    break
                exc = follow.exception()
                log.warning("invoice stream ended (%r); reconnecting in %.0fs", exc, delay)
                await asyncio.wait([stop], timeout=delay)
                delay = min(delay * 2, 30.0)
        finally:
            stop.cancel()

    async def reconcile_forever(self) -> None:
        """Reconcile periodically as a safety net under the stream."""
        while not self._w.stop.is_set():
            try:
                await asyncio.wait_for(
                    self._w.stop.wait(), self._w.settings.reconcile_interval_seconds
                )
            except TimeoutError:
                try:
                    await self.reconcile()
                except Exception:
                    log.exception("reconcile failed")
