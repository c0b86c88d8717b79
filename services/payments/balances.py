"""Prepaid balances: top-up invoices credited exactly once, balance orders credited back."""

from __future__ import annotations

import asyncio
import logging

from libs.common.adapters.lightning import Invoice, LndError
from libs.common.domain.events import Event, EventType
from libs.common.domain.orders import Status
from libs.common.domain.payment_policy import OPEN, TopUp, top_up_step
from libs.common.persistence.ports import AlreadyRecorded, Funding
from services.payments.invoice_watch import InvoiceWatcher
from services.payments.node import Host, Node

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0


class Balances:
    """The payments side of prepaid accounts."""

    def __init__(self, worker: Host, lnd: Node, invoices: InvoiceWatcher) -> None:
        self._w = worker
        self._lnd = lnd
        self._invoices = invoices

    async def credit_back(self, order_id: str) -> None:
        """A balance order that got no code: the price goes back to the balance, once."""
        order = await self._w.stores.orders.get(order_id)
        if order is None or not order.is_balance:
            return
        if order.status is not Status.REFUND_PENDING:
            return
        assert order.account_id is not None  # every balance order names its account
        try:
            async with self._w.stores.transaction() as tx:
                await tx.accounts.move_once(order.account_id, order.price_sats, "refund", order_id)
                if (
                    await tx.orders.transition(order_id, Status.REFUND_PENDING, Status.REFUNDED)
                    is None
                ):
                    raise _Raced
                await tx.outbox.enqueue(Event(EventType.REFUNDED, order_id))
        except (_Raced, AlreadyRecorded):
            return  # another worker credited it first; the transaction changed nothing
        log.info("balance credited back", extra={"order_id": order_id})

    async def _credit(self, funding: Funding) -> None:
        """Credit a paid top-up exactly once."""
        try:
            async with self._w.stores.transaction() as tx:
                await tx.accounts.move_once(
                    funding.account_id, funding.amount_sats, "fund", funding.id
                )
                await tx.accounts.mark_funding(funding.id, "credited")
        except AlreadyRecorded:
            await self._w.stores.accounts.mark_funding(funding.id, "credited")

    async def sweep_fundings(self) -> None:
        """Settle accepted top-ups (then credit them); expire the ones never paid.

        One paged scan of the node's pending invoices answers for every open top-up, so the
        node calls per sweep do not grow with the number of unpaid top-ups; only a top-up
        whose invoice left the pending states (settled, canceled, lost) is looked up alone.
        """
        # Rows first, then the scan (see InvoiceWatcher.reconcile): a top-up's invoice exists
        # before its row, so one the scan misses has really left the pending states.
        fundings = await self._w.stores.accounts.fundings_pending(500)
        if not fundings:
            return
        try:
            pending = await self._invoices.pending_at_node()
        except LndError as exc:
            log.warning("top-up sweep: pending invoice scan failed: %s", exc.message)
            return
        for funding in fundings:
            try:
                invoice: Invoice | None = pending.get(funding.payment_hash)
                if invoice is not None and invoice.state == OPEN:
                    continue  # not paid yet: nothing to ask the node
                if invoice is None:
                    invoice = await self._lnd.lookup_invoice(funding.payment_hash)
                if top_up_step(invoice.state) is TopUp.SETTLE:
                    # Settle first, then credit: a crash in between is caught next sweep
                    # (SETTLED, not yet credited), and nothing is credited that was not paid.
                    await self._lnd.settle_invoice(funding.preimage)
                    invoice = await self._lnd.lookup_invoice(funding.payment_hash)
                step = top_up_step(invoice.state)
                if step is TopUp.CREDIT:
                    await self._credit(funding)
                elif step is TopUp.EXPIRE:
                    await self._w.stores.accounts.mark_funding(funding.id, "expired")
            except LndError as exc:
                log.warning("top-up check failed: %s", exc.message)

    async def sweep_forever(self) -> None:
        """Sweep top-ups and balance refunds until stop."""
        while not self._w.stop.is_set():
            try:
                await self.sweep_fundings()
                for order_id in await self._w.stores.orders.balance_refund_pending(500):
                    await self.credit_back(order_id)
            except Exception:
                log.exception("balance sweep failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), SWEEP_SECONDS)
            except TimeoutError:
                pass


class _Raced(Exception):
    """The order moved on before this transaction; roll it back."""
