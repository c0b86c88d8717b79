"""The payments worker: invoice watcher, reconciler, refund payer and its event handler."""

from __future__ import annotations

import asyncio

from libs.common.config import Settings
from libs.common.events import Event, EventType
from libs.common.lightning import LndClient
from libs.common.runtime import open_worker, run_loops
from services.payments.balances import Balances
from services.payments.hold import HoldInvoices
from services.payments.invoices import InvoiceWatcher
from services.payments.refunds import RefundPayer


def lnd_client(settings: Settings) -> LndClient:
    """The merchant node's REST client from settings."""
    return LndClient(
        settings.lnd_rest_url,
        settings.macaroon_hex(),
        settings.lnd_tls_cert_path or None,
        money_connections=settings.lnd_money_connections,
        settle_connections=settings.lnd_settle_connections,
        other_connections=settings.lnd_other_connections,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the payments worker until stop."""
    lnd = lnd_client(settings)
    try:
        async with open_worker("payments", settings, stop) as worker:
            invoices = InvoiceWatcher(worker, lnd)
            refunds = RefundPayer(worker, lnd)
            holds = HoldInvoices(worker, lnd, invoices)
            balances = Balances(worker, lnd, invoices)

            async def handle(event: Event) -> None:
                # CREATED needs nothing here: the hold sweep's paged scan finds an accepted
                # invoice, so an unpaid order costs no connection and no task.
                if event.type is EventType.REFUND_REQUESTED:
                    # Each is a no-op for the other payment mode.
                    await holds.release(event.order_id)
                    await balances.credit_back(event.order_id)
                    await refunds.request(event.order_id, wait=False)
                elif event.type is EventType.CODE_DELIVERED:
                    await holds.settle(event.order_id)
                elif event.type is EventType.HOLD_DEADLINE:
                    await holds.enforce_deadline(event.order_id)
                elif event.type is EventType.INVOICE_EXPIRED:
                    await invoices.expire(event.order_id)

            await run_loops(
                stop,
                worker.consumer(handle).run(stop),
                invoices.watch(),
                invoices.reconcile_forever(),
                refunds.retry_due(),
                holds.sweep_forever(),
                balances.sweep_forever(),
            )
    finally:
        await lnd.close()
