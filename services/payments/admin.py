"""Operator commands of the payments stage: `python -m services.payments.admin failed-refunds`."""

from __future__ import annotations

import argparse
import asyncio
import json

from libs.common.core.config import load_settings
from libs.common.persistence import db
from libs.common.persistence.stores import PgStores


async def failed_refunds() -> list[dict[str, object]]:
    """Every refund that ended refund_failed, oldest first."""
    settings = load_settings()
    pool = await db.create_pool(settings.database_url, max_size=1)
    try:
        refunds = await PgStores(pool, settings.subject_prefix).refunds.failed()
    finally:
        await pool.close()
    return [
        {
            "orderId": r.order_id,
            "amountSats": r.amount_sats,
            "attempts": r.attempts,
            "lastError": r.last_error,
            "failedAt": r.updated_at.isoformat(),
            # The customer's own no-amount invoice: pay it by hand with this amount.
            "refundInvoice": r.payment_request,
        }
        for r in refunds
    ]


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("failed-refunds", help="list refunds that need a manual payout (JSON lines)")
    parser.parse_args()
    for row in asyncio.run(failed_refunds()):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
