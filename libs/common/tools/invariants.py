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
from libs.common.persistence import db
from libs.common.persistence.db import Q


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
    found: list[Finding] = []
    for r in await pool.fetch(Q.invariant_stuck_paid, grace_seconds):
        found.append(Finding("paid_order_stuck", r["id"], f"{r['status']} past its deadline"))
    for r in await pool.fetch(Q.invariant_refund_state_mismatch):
        found.append(
            Finding(
                "refund_state_mismatch",
                r["id"],
                f"order {r['status']}, refund {r['refund_status']}",
            )
        )
    for r in await pool.fetch(Q.invariant_refund_after_code):
        found.append(Finding("refund_after_code", r["id"], f"code delivered, order {r['status']}"))
    for r in await pool.fetch(Q.invariant_refund_above_price):
        found.append(
            Finding(
                "refund_above_price",
                r["id"],
                f"refund of {r['amount_sats']} sats on a price of {r['price_sats']}",
            )
        )
    for r in await pool.fetch(Q.invariant_completed_without_code):
        found.append(Finding("completed_without_code", r["id"], "completed, no SMS recorded"))
    for r in await pool.fetch(Q.invariant_terminal_entered_twice):
        found.append(Finding("terminal_entered_twice", r["order_id"], f"{r['n']} terminal entries"))
    for r in await pool.fetch(Q.invariant_ledger_mismatch):
        found.append(
            Finding(
                "ledger_mismatch",
                f"account:{r['id']}",
                f"balance {r['balance_sats']} but ledger sums to {r['ledger_sum']}",
            )
        )
    for r in await pool.fetch(Q.invariant_balance_orders):
        credited_back = r["status"] == "refunded"
        if r["debits"] != 1 or r["credits"] != (1 if credited_back else 0):
            found.append(
                Finding(
                    "balance_order_ledger",
                    r["id"],
                    f"{r['status']}: {r['debits']} debit(s), {r['credits']} credit(s)",
                )
            )
    return found


async def check_node(pool: asyncpg.Pool, lnd: LndClient, *, limit: int = 10_000) -> list[Finding]:
    """Invariants that compare the database with the node's invoices and payments."""
    found: list[Finding] = []
    for r in await pool.fetch(Q.invariant_paid_orders, limit):
        try:
            invoice = await lnd.lookup_invoice(bytes(r["payment_hash"]))
        except LndError as exc:
            found.append(Finding("paid_invoice_unknown", r["id"], exc.message))
            continue
        held = invoice.state in ("SETTLED", "ACCEPTED")  # a cancelled HTLC reports 0 paid
        if held and invoice.amt_paid_msat < r["price_sats"] * 1000:
            found.append(Finding("underpaid", r["id"], f"{invoice.amt_paid_msat} msat paid"))
        if r["payment_mode"] == "standard":
            if invoice.state != "SETTLED":
                found.append(
                    Finding("paid_but_not_settled", r["id"], f"invoice {invoice.state} at the node")
                )
            continue
        # Hold invoices: settled exactly when a code was delivered, cancelled when paid back.
        if invoice.state == "SETTLED" and r["sms_received_at"] is None:
            found.append(Finding("settled_without_code", r["id"], f"order {r['status']}"))
        if r["status"] == "completed" and invoice.state != "SETTLED":
            found.append(Finding("hold_not_settled", r["id"], f"invoice {invoice.state}"))
        if r["status"] in ("refunded", "refund_failed") and invoice.state != "CANCELED":
            found.append(Finding("hold_not_released", r["id"], f"invoice {invoice.state}"))
    for r in await pool.fetch(Q.invariant_unpaid_orders, limit):
        try:
            invoice = await lnd.lookup_invoice(bytes(r["payment_hash"]))
        except LndError:
            continue
        if invoice.state == "SETTLED" and r["status"] == "expired":
            found.append(Finding("settled_but_expired", r["id"], "money taken, order expired"))
    for r in await pool.fetch(Q.invariant_refunds_paid, limit):
        status = await _final_payment_status(lnd, bytes(r["payment_hash"]))
        if status != "SUCCEEDED":
            found.append(Finding("refund_not_at_node", r["order_id"], f"node says {status}"))
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
