"""Prepaid balances: top-up invoices credited exactly once, balance orders credited back."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from libs.common.adapters.lightning import Invoice, LndClient, LndError
from libs.common.domain.events import Event, EventType
from libs.common.domain.orders import Status
from libs.common.messaging.runtime import Worker
from libs.common.persistence import account_store as accounts
from libs.common.persistence import order_store as store
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.outbox_store import enqueue
from services.payments.invoice_watch import InvoiceWatcher

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0


class Balances:
    """The payments side of prepaid accounts."""

    def __init__(self, worker: Worker, lnd: LndClient, invoices: InvoiceWatcher) -> None:
        self._w = worker
        self._lnd = lnd
        self._invoices = invoices

    async def credit_back(self, order_id: str) -> None:
        """A balance order that got no code: the price goes back to the balance, once."""
        order = await store.get(self._w.pool, order_id)
        if order is None or order["payment_mode"] != "balance":
            return
        if order["status"] != Status.REFUND_PENDING:
            return
        try:
            async with transaction(self._w.pool) as conn:
                await accounts.move(
                    conn, order["account_id"], order["price_sats"], "refund", order_id
                )
                if (
                    await store.transition(conn, order_id, Status.REFUND_PENDING, Status.REFUNDED)
                    is None
                ):
                    raise _Raced
                await enqueue(
                    conn,
                    Event(EventType.REFUNDED, order_id),
                    prefix=self._w.settings.subject_prefix,
                )
        except (_Raced, asyncpg.UniqueViolationError):
            return  # another worker credited it first; the transaction changed nothing
        log.info("balance credited back", extra={"order_id": order_id})

    async def _credit(self, funding: asyncpg.Record) -> None:
        """Credit a paid top-up exactly once."""
        try:
            async with transaction(self._w.pool) as conn:
                await accounts.move(
                    conn, funding["account_id"], funding["amount_sats"], "fund", funding["id"]
                )
                await conn.execute(Q.funding_mark, funding["id"], "credited")
        except asyncpg.UniqueViolationError:
            await self._w.pool.execute(Q.funding_mark, funding["id"], "credited")

    async def sweep_fundings(self) -> None:
        """Settle accepted top-ups (then credit them); expire the ones never paid.

        One paged scan of the node's pending invoices answers for every open top-up, so the
        node calls per sweep do not grow with the number of unpaid top-ups; only a top-up
        whose invoice left the pending states (settled, canceled, lost) is looked up alone.
        """
        # Rows first, then the scan (see InvoiceWatcher.reconcile): a top-up's invoice exists
        # before its row, so one the scan misses has really left the pending states.
        fundings = await self._w.pool.fetch(Q.fundings_pending, 500)
        if not fundings:
            return
        try:
            pending = await self._invoices.pending_at_node()
        except LndError as exc:
            log.warning("top-up sweep: pending invoice scan failed: %s", exc.message)
            return
        for funding in fundings:
            payment_hash = bytes(funding["payment_hash"])
            try:
                invoice: Invoice | None = pending.get(payment_hash)
                if invoice is not None and invoice.state == "OPEN":
                    continue  # not paid yet: nothing to ask the node
                if invoice is None:
                    invoice = await self._lnd.lookup_invoice(payment_hash)
                if invoice.state == "ACCEPTED":
                    # Settle first, then credit: a crash in between is caught next sweep
                    # (SETTLED, not yet credited), and nothing is credited that was not paid.
                    await self._lnd.settle_invoice(bytes(funding["preimage"]))
                    invoice = await self._lnd.lookup_invoice(payment_hash)
                if invoice.state == "SETTLED":
                    await self._credit(funding)
                elif invoice.state == "CANCELED":
                    await self._w.pool.execute(Q.funding_mark, funding["id"], "expired")
            except LndError as exc:
                log.warning("top-up check failed: %s", exc.message)

    async def sweep_forever(self) -> None:
        """Sweep top-ups and balance refunds until stop."""
        while not self._w.stop.is_set():
            try:
                await self.sweep_fundings()
                for row in await self._w.pool.fetch(Q.orders_balance_refund_pending, 500):
                    await self.credit_back(row["id"])
            except Exception:
                log.exception("balance sweep failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), SWEEP_SECONDS)
            except TimeoutError:
                pass


class _Raced(Exception):
    """The order moved on before this transaction; roll it back."""
