"""The payments worker: invoice watcher, reconciler, refund payer and its event handler."""

from __future__ import annotations

import asyncio

from libs.common.adapters.lightning import LndClient
from libs.common.core.config import Settings
from libs.common.domain.events import EventType
from libs.common.messaging.bus import dispatch
from libs.common.messaging.runtime import open_worker, run_loops
from services.payments.balances import Balances
from services.payments.hold import HoldInvoices
from services.payments.invoice_watch import InvoiceWatcher
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

            async def refund(order_id: str) -> None:
                # Each is a no-op for the other payment modes.
                await holds.release(order_id)
                await balances.credit_back(order_id)
                await refunds.request(order_id, wait=False)

            async def nothing(_order_id: str) -> None:
                # The hold sweep's paged scan finds an accepted invoice, so an unpaid order
                # costs no connection and no task.
                return None

            handle = dispatch(
                "payments",
                {
                    EventType.CREATED: nothing,
                    EventType.REFUND_REQUESTED: refund,
                    EventType.CODE_DELIVERED: holds.settle,
                    EventType.HOLD_DEADLINE: holds.enforce_deadline,
                    EventType.INVOICE_EXPIRED: invoices.expire,
                },
            )

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
