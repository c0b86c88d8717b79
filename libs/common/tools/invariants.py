"""The money invariants, checked against the database and the Lightning node.

Run `python -m libs.common.tools.invariants` (exit status 1 when anything is found); tests call
`check()` at the end of their scenarios and require zero findings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass

import asyncpg

from libs.common.adapters.lightning import LndClient, LndError, PaymentNotInitiated
from libs.common.core.config import load_settings
from libs.common.domain.orders import PaymentMode, Status
from libs.common.persistence import db
from libs.common.persistence.ops_store import PgInvariants


@dataclass(frozen=True)
class Finding:
    """One broken invariant."""

    kind: str
    order_id: str
    detail: str


async def _final_payment_status(lnd: LndClient, payment_hash: bytes) -> str:
    """The node's last word on our payment to this hash ("NONE" if it never saw one)."""
    stream = lnd.track_payment(payment_hash)
    last = "NONE"
    try:
        async for update in stream:
            last = update.status
            if last in ("SUCCEEDED", "FAILED"):
                break
    except PaymentNotInitiated:
        return "NONE"
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    return last


async def check_database(pool: asyncpg.Pool, *, grace_seconds: float = 120.0) -> list[Finding]:
    """Invariants the database alone can prove."""
    q = PgInvariants(pool)
    found: list[Finding] = []
    for order_id, status in await q.stuck_paid(grace_seconds):
        found.append(Finding("paid_order_stuck", order_id, f"{status} past its deadline"))
    for order_id, status, refund_status in await q.refund_state_mismatch():
        found.append(
            Finding("refund_state_mismatch", order_id, f"order {status}, refund {refund_status}")
        )
    for order_id, status in await q.refund_after_code():
        found.append(Finding("refund_after_code", order_id, f"code delivered, order {status}"))
    for order_id, amount, price in await q.refund_above_price():
        found.append(
            Finding(
                "refund_above_price", order_id, f"refund of {amount} sats on a price of {price}"
            )
        )
    for order_id in await q.completed_without_code():
        found.append(Finding("completed_without_code", order_id, "completed, no SMS recorded"))
    for order_id, n in await q.terminal_entered_twice():
        found.append(Finding("terminal_entered_twice", order_id, f"{n} terminal entries"))
    for account_id, balance, ledger_sum in await q.ledger_mismatch():
        found.append(
            Finding(
                "ledger_mismatch",
                f"account:{account_id}",
                f"balance {balance} but ledger sums to {ledger_sum}",
            )
        )
    for o in await q.balance_orders():
        credited_back = o.status == "refunded"
        if o.debits != 1 or o.credits != (1 if credited_back else 0):
            found.append(
                Finding(
                    "balance_order_ledger",
                    o.id,
                    f"{o.status}: {o.debits} debit(s), {o.credits} credit(s)",
                )
            )
    return found


async def check_node(pool: asyncpg.Pool, lnd: LndClient, *, limit: int = 10_000) -> list[Finding]:
    """Invariants that compare the database with the node's invoices and payments."""
    q = PgInvariants(pool)
    found: list[Finding] = []
    for o in await q.paid_orders(limit):
        try:
            invoice = await lnd.lookup_invoice(o.payment_hash)
        except LndError as exc:
            found.append(Finding("paid_invoice_unknown", o.id, exc.message))
            continue
        held = invoice.state in ("SETTLED", "ACCEPTED")  # a cancelled HTLC reports 0 paid
        if held and invoice.amt_paid_msat < o.price_sats * 1000:
            found.append(Finding("underpaid", o.id, f"{invoice.amt_paid_msat} msat paid"))
        if o.payment_mode == PaymentMode.STANDARD:
            if invoice.state != "SETTLED":
                found.append(
                    Finding("paid_but_not_settled", o.id, f"invoice {invoice.state} at the node")
                )
            continue
        # Hold invoices: settled exactly when a code was delivered, cancelled when paid back.
        if invoice.state == "SETTLED" and o.sms_received_at is None:
            found.append(Finding("settled_without_code", o.id, f"order {o.status}"))
        if o.status == Status.COMPLETED and invoice.state != "SETTLED":
            found.append(Finding("hold_not_settled", o.id, f"invoice {invoice.state}"))
        if o.status in (Status.REFUNDED, Status.REFUND_FAILED) and invoice.state != "CANCELED":
            found.append(Finding("hold_not_released", o.id, f"invoice {invoice.state}"))
    for order_id, payment_hash, status in await q.unpaid_orders(limit):
        try:
            invoice = await lnd.lookup_invoice(payment_hash)
        except LndError:
            continue
        if invoice.state == "SETTLED" and status == Status.EXPIRED:
            found.append(Finding("settled_but_expired", order_id, "money taken, order expired"))
    for order_id, payment_hash in await q.refunds_paid(limit):
        node_status = await _final_payment_status(lnd, payment_hash)
        if node_status != "SUCCEEDED":
            found.append(Finding("refund_not_at_node", order_id, f"node says {node_status}"))
    return found


async def check(
    pool: asyncpg.Pool, lnd: LndClient | None, *, grace_seconds: float = 120.0
) -> list[Finding]:
    """Every invariant; node checks are skipped without a node client."""
    found = await check_database(pool, grace_seconds=grace_seconds)
    if lnd is not None:
        found += await check_node(pool, lnd)
    return found


async def _main(grace: float) -> int:
    """Check against the configured database and merchant node; print findings as JSON."""
    settings = load_settings()
    pool = await db.create_pool(settings.database_url)
    lnd = LndClient(
        settings.lnd_rest_url, settings.macaroon_hex(), settings.lnd_tls_cert_path or None
    )
    try:
        findings = await check(pool, lnd, grace_seconds=grace)
    finally:
        await lnd.close()
        await pool.close()
    for f in findings:
        print(json.dumps(asdict(f)))
    print(f"{len(findings)} finding(s)", file=sys.stderr)
    return 1 if findings else 0


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grace", type=float, default=120.0, help="seconds past a deadline")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(_main(args.grace)))


if __name__ == "__main__":
    main()
