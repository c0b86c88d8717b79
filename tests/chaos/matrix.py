"""Faults, phases and the money checks of the chaos matrix.

A phase runs the order stream, injects one fault, measures how long the stack takes to
serve a fresh order end to end after the fault ends, waits until every order of the phase
has ended, and checks:

- the invariant checker (`libs.common.tools.invariants.check`) finds nothing;
- every order ended by its deadline (or, unpaid, its invoice's expiry) plus GRACE_SECONDS;
- no refund was paid twice or wrongly: each L402 refund invoice is paid exactly when its
  order is `refunded`, with the refunded amount; the payer node's balance moved by exactly
  what the orders' outcomes say; the prepaid balance moved by exactly the top-ups paid less
  the orders kept;
- no code was shown before its invoice was SETTLED (checked by the customers as they poll).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import bolt11

from libs.common.adapters.lightning import LndClient
from libs.common.core.faults import CRASH_POINTS
from libs.common.tools.invariants import _final_payment_status, check
from tests.chaos.traffic import CLIENT_ERRORS, NO_NUMBER_COUNTRY, Traffic
from tests.e2e.conftest import E2E_ENV, UNMETERED_PROVIDER
from tests.e2e.load import stock_up
from tests.e2e.test_l402_order import TERMINAL, _sim

# The documented grace past a deadline: the invariant checker's default (`--grace`), which
# covers an SMS deadline fired again a minute after it was lost (REARM_AFTER_SECONDS).
GRACE_SECONDS = 120.0
WARMUP_SECONDS = 4.0  # orders in every state when the fault hits
COOLDOWN_SECONDS = 4.0  # orders placed right after recovery too
ROUND_SECONDS = 2.5  # one order of each kind per round
RECOVERY_LIMIT_SECONDS = 240.0

# Short clocks (like the e2e stack) so a phase ends in a minute, not half an hour; the
# rules are the same. Crash points are all armed, and disarmed by their markers until a
# phase deletes one.
CHAOS_ENV = {
    **E2E_ENV,
    **UNMETERED_PROVIDER,
    "SMS4SATS_CRASH_AT": ",".join(CRASH_POINTS),
    "SMS4SATS_ORDER_TIMEOUT_SECONDS": "30",
    "SMS4SATS_ALLOCATION_DEADLINE_SECONDS": "15",
    "SMS4SATS_INVOICE_EXPIRY_SECONDS": "30",
    # Restarts take seconds: quick redelivery and short refund leases, as in test_faults.
    "SMS4SATS_ACK_WAIT_SECONDS": "3",
    "SMS4SATS_REFUND_TIMEOUT_SECONDS": "5",
    # The no-number country keeps its catalog entry while the provider has no stock.
    "SMS4SATS_CATALOG_REFRESH_SECONDS": "86400",
}


def chaos_env(crash_dir: Path) -> dict[str, str]:
    """The stack's environment, with every crash point's marker made (disarmed) in crash_dir."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    for name in CRASH_POINTS:
        (crash_dir / f"crashed-{name}").touch()
    return {**CHAOS_ENV, "SMS4SATS_CRASH_DIR": str(crash_dir)}


@dataclass
class Chaos:
    """What a phase needs: the stack, its clients and the customers."""

    stack: dict[str, Any]
    http: aiohttp.ClientSession
    payer: LndClient
    merchant: LndClient
    pool: asyncpg.Pool
    traffic: Traffic
    crash_dir: Path

    @property
    def state(self) -> Path:
        """The stack's directory."""
        return Path(self.stack["state_dir"])

    def pid(self, name: str) -> int:
        """The current pid of a part (the launcher rewrites stack.json when it restarts one)."""
        if name == "postgres":
            return int((self.state / "pg" / "postmaster.pid").read_text().split()[0])
        return int(json.loads((self.state / "stack.json").read_text())["pids"][name])


# A fault: injects itself and returns when it has ended (monotonic time of the end).
Inject = Callable[[Chaos], Awaitable[float]]


@dataclass(frozen=True)
class Fault:
    """One row of the matrix."""

    name: str
    inject: Inject


def kill(part: str, down_seconds: float) -> Fault:
    """SIGKILL a server or simulator; the launcher starts it again after `down_seconds`."""

    async def inject(chaos: Chaos) -> float:
        hold = chaos.state / "hold" / part
        hold.parent.mkdir(exist_ok=True)
        hold.touch()  # the launcher leaves it down while this exists
        try:
            os.kill(chaos.pid(part), signal.SIGKILL)
            await asyncio.sleep(down_seconds)
        finally:
            hold.unlink()
        return time.monotonic()

    label = f"SIGKILL {part}" + (f", down {down_seconds:g} s" if down_seconds >= 1 else "")
    return Fault(label, inject)


def provider_errors(seconds: float) -> Fault:
    """Every provider action (and the rate) answers HTTP 503 for `seconds`."""

    async def inject(chaos: Chaos) -> float:
        await _sim(chaos.http, chaos.stack, "/sim/faults", {"mode": "error", "times": None})
        try:
            await asyncio.sleep(seconds)
        finally:
            async with chaos.http.delete(f"{chaos.stack['provider_sim_url']}/sim/faults"):
                pass
        return time.monotonic()

    return Fault(f"provider answers 503 for {seconds:g} s", inject)


def provider_hang(seconds: float) -> Fault:
    """The provider takes connections and never answers (SIGSTOP) for `seconds`."""

    async def inject(chaos: Chaos) -> float:
        pid = chaos.pid("smssim")
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.monotonic()

    return Fault(f"provider hangs (SIGSTOP) {seconds:g} s", inject)


def crash(*points: str) -> Fault:
    """Arm crash points; ends once each has killed its process (the launcher restarts it)."""

    async def inject(chaos: Chaos) -> float:
        markers = [chaos.crash_dir / f"crashed-{p}" for p in points]
        for m in markers:
            m.unlink()
        deadline = time.monotonic() + 120
        while not all(m.exists() for m in markers):
            assert time.monotonic() < deadline, f"crash points not reached: {points}"
            await asyncio.sleep(0.1)
        return time.monotonic()

    return Fault("crash at " + ", ".join(points), inject)


async def no_fault(chaos: Chaos) -> float:
    """The baseline row: the same stream, nothing injected."""
    return time.monotonic()


def full_matrix() -> list[Fault]:
    """Every fault of the issue, in turn."""
    return [
        Fault("none (baseline)", no_fault),
        kill("nats", 5),
        kill("postgres", 5),
        kill("lnsim", 30),
        provider_errors(60),
        provider_hang(60),
        *(crash(point) for point in CRASH_POINTS),
    ]


@dataclass
class PhaseResult:
    """One row of the table."""

    fault: str
    orders: int
    refused: int
    outcomes: Counter[str]
    kinds: Counter[str]  # orders placed per kind
    refusals: Counter[int]  # refused requests by HTTP status (0: no answer)
    orphans: int  # invoices left at the node without an order or funding row, new this phase
    recovered_in: float | None
    findings: list[str] = field(default_factory=list)


async def setup(chaos: Chaos, initial_funds: int = 20_000) -> None:
    """Stock the provider, empty the no-number country, fund the prepaid account."""
    await stock_up(chaos.http, chaos.stack)
    country = NO_NUMBER_COUNTRY[1]
    await _sim(
        chaos.http, chaos.stack, "/sim/stock", {"country": country, "service": "tg", "count": 0}
    )
    chaos.traffic.reset()
    await chaos.traffic.fund(initial_funds)
    deadline = time.monotonic() + 30
    while await account_balance(chaos) < initial_funds:
        assert time.monotonic() < deadline, "the first top-up was not credited"
        await asyncio.sleep(0.2)


async def account_balance(chaos: Chaos) -> int:
    """The prepaid account's balance, as its owner reads it."""
    async with chaos.http.get(
        f"{chaos.stack['gateway_url']}/balance", headers={"X-API-Key": chaos.traffic.api_key}
    ) as resp:
        return int((await resp.json())["balance"])


async def _retry(what: Callable[..., Awaitable[Any]], *args: Any, within: float = 60) -> Any:
    """Run a read that may hit a server still coming back."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await what(*args)
        except (*CLIENT_ERRORS, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def probe(chaos: Chaos, since: float) -> float | None:
    """Seconds from `since` until a fresh L402 order is served end to end (None: never)."""
    while time.monotonic() - since < RECOVERY_LIMIT_SECONDS:
        before = len(chaos.traffic.placed)
        await chaos.traffic.l402("probe", {"country": "US", "service": "tg"})
        mine = chaos.traffic.placed[before:]
        probe_orders = [p for p in mine if p.kind == "probe"]
        if probe_orders and probe_orders[-1].final == "completed":
            return time.monotonic() - since
        await asyncio.sleep(1)
    return None


async def run_phase(chaos: Chaos, fault: Fault) -> PhaseResult:
    """Stream orders, inject the fault, wait for every order to end, check the money."""
    traffic = chaos.traffic
    traffic.reset()
    payer_before = await _retry(chaos.payer.channel_balance_sat)
    account_before = await _retry(account_balance, chaos)
    started = await _retry(lambda: chaos.pool.fetchval("SELECT now()"))
    orphans_before, _ = await orphan_invoices(chaos)
    stop = asyncio.Event()
    stream = asyncio.ensure_future(traffic.run(stop, ROUND_SECONDS))
    try:
        await traffic.rent()  # active when the fault hits: its poller and webhook live on
        await asyncio.sleep(WARMUP_SECONDS)
        ended = await fault.inject(chaos)
        recovered = await probe(chaos, ended)
        await asyncio.sleep(COOLDOWN_SECONDS)
    finally:
        stop.set()
        await stream
    await traffic.drain(within=GRACE_SECONDS + 200)
    rows, findings = await settle(chaos, started)
    findings += await money_checks(chaos, rows, payer_before, account_before)
    findings += traffic.violations
    # A fault may refuse requests (503, or no answer from a killed gateway), never crash them.
    findings += [
        f"HTTP {status} answered {n} time(s) during the fault"
        for status, n in sorted(traffic.refusal_statuses.items())
        if status >= 500 and status != 503
    ]
    findings += [
        f"invariant: {f.kind} {f.order_id} {f.detail}"
        for f in await _retry(
            lambda: check(chaos.pool, chaos.merchant, grace_seconds=GRACE_SECONDS)
        )
    ]
    orphans, orphan_findings = await orphan_invoices(chaos)
    findings += orphan_findings
    outcomes: Counter[str] = Counter(r["status"] for r in rows.values())
    return PhaseResult(
        fault=fault.name,
        orders=len(rows),
        refused=sum(traffic.refused.values()),
        outcomes=outcomes,
        kinds=Counter(p.kind for p in traffic.placed),
        refusals=Counter(traffic.refusal_statuses),
        orphans=len(orphans - orphans_before),
        recovered_in=recovered,
        findings=findings,
    )


ROWS = """
SELECT o.id, o.status, o.type, o.payment_mode, o.price_sats, o.paid_at,
       extract(epoch FROM coalesce(o.deadline_at, o.invoice_expires_at)) AS bound,
       (SELECT extract(epoch FROM max(t.at)) FROM order_transitions t
         WHERE t.order_id = o.id AND t.to_status = ANY($2)) AS ended_at,
       r.status AS refund_status, r.amount_sats AS refund_sats
FROM orders o LEFT JOIN refunds r ON r.order_id = o.id WHERE o.id = ANY($1)
"""


def _done(row: asyncpg.Record) -> bool:
    """An order has ended (a rental is done with money once active)."""
    return bool(row["status"] in TERMINAL or row["status"] == "rent_active")


# Prepaid orders committed in the phase whose answer never reached the customer (the gateway
# was killed while it sent it): the account paid for them all the same, so they count.
UNSEEN_PREPAID = "SELECT id FROM orders WHERE payment_mode = 'balance' AND created_at >= $1"


async def settle(chaos: Chaos, started: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Wait until every order of the phase (placed, or prepaid and debited but never answered)
    ended or passed its deadline plus grace."""
    ids = [p.order_id for p in chaos.traffic.placed]
    unseen = await _retry(lambda: chaos.pool.fetch(UNSEEN_PREPAID, started))
    ids += [r["id"] for r in unseen if r["id"] not in set(ids)]
    terminal = sorted(TERMINAL)
    while True:
        records = await _retry(lambda: chaos.pool.fetch(ROWS, ids, terminal))
        rows = {r["id"]: dict(r) for r in records}
        for row in rows.values():
            row["bound"] = float(row["bound"]) if row["bound"] is not None else None
            row["ended_at"] = float(row["ended_at"]) if row["ended_at"] is not None else None
        open_ = [r for r in rows.values() if not _done(r)]
        overdue = [r for r in open_ if time.time() > (r["bound"] or 0) + GRACE_SECONDS]
        if len(rows) == len(ids) and len(open_) == len(overdue):
            break
        await asyncio.sleep(1)
    findings = [f"missing order {i}" for i in ids if i not in rows]
    for r in rows.values():
        if not _done(r):
            findings.append(f"not ended by deadline + grace: {r['type']} {r['id']} {r['status']}")
        elif r["status"] in TERMINAL and r["ended_at"] > (r["bound"] or 0) + GRACE_SECONDS:
            late = r["ended_at"] - r["bound"]
            findings.append(f"ended {late:.0f} s after its deadline: {r['id']} {r['status']}")
    return rows, findings


async def money_checks(
    chaos: Chaos, rows: dict[str, dict[str, Any]], payer_before: int, account_before: int
) -> list[str]:
    """Refunds paid exactly once and right; both balances moved by what the outcomes say."""
    findings: list[str] = []
    expected_payer = 0
    expected_account = 0
    placed_ids = {p.order_id for p in chaos.traffic.placed}
    for order_id, unseen in rows.items():
        if order_id not in placed_ids and unseen["payment_mode"] == "balance":
            if unseen["status"] != "refunded":  # debited although its answer was lost
                expected_account -= int(unseen["price_sats"])
    for placed in chaos.traffic.placed:
        row = rows.get(placed.order_id)
        if row is None:
            continue
        price = int(row["price_sats"])
        if row["payment_mode"] == "standard":
            if row["paid_at"] is not None:
                expected_payer -= price
            assert placed.refund_hash is not None
            refund = await _retry(chaos.payer.lookup_invoice, placed.refund_hash)
            if row["status"] == "refunded":
                if refund.state != "SETTLED" or refund.amt_paid_msat != row["refund_sats"] * 1000:
                    findings.append(
                        f"refunded but refund invoice {refund.state}: {placed.order_id}"
                    )
                elif row["refund_sats"] > price:
                    findings.append(f"refund above the price: {placed.order_id}")
                expected_payer += refund.amt_paid_msat // 1000
            elif refund.state == "SETTLED":
                findings.append(f"refund paid on a {row['status']} order: {placed.order_id}")
        elif row["payment_mode"] == "hold":
            if row["status"] == "completed":
                expected_payer -= price
        elif row["status"] != "refunded":  # balance: debited, credited back when refunded
            expected_account -= price
    for funding in chaos.traffic.fundings:
        payment_hash = bytes.fromhex(bolt11.decode(funding.payreq).payment_hash)
        status = await _retry(_final_payment_status, chaos.payer, payment_hash)
        if status == "SUCCEEDED":
            expected_payer -= funding.amount
            expected_account += funding.amount
        elif status == "IN_FLIGHT":
            findings.append(f"top-up still held at the node: {payment_hash.hex()}")
    payer_after = await _retry(chaos.payer.channel_balance_sat)
    if payer_after - payer_before != expected_payer:
        findings.append(
            f"payer balance moved {payer_after - payer_before} sat, outcomes say {expected_payer}"
        )
    # A top-up is credited right after it settles: give the credit a moment.
    deadline = time.monotonic() + 30
    while True:
        moved = await _retry(account_balance, chaos) - account_before
        if moved == expected_account or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    if moved != expected_account:
        findings.append(f"prepaid balance moved {moved} sat, outcomes say {expected_account}")
    return findings


async def orphan_invoices(chaos: Chaos) -> tuple[set[str], list[str]]:
    """Invoices the database does not know (a gateway killed after making them), and a
    finding for each that holds money.

    Read from the Lightning simulator's state files, written atomically: the simulator does
    not serve LND's invoice listing (`GET /v1/invoices`).
    """
    known = {
        bytes(r["payment_hash"]).hex()
        for r in await _retry(
            lambda: chaos.pool.fetch(
                "SELECT payment_hash FROM orders UNION ALL SELECT payment_hash FROM fundings"
            )
        )
    }
    orphans, findings = set(), []
    for path in (chaos.state / "lnsim" / "merchant" / "invoices").glob("*.json"):
        invoice = json.loads(path.read_text())
        if invoice["r_hash"] in known:
            continue
        orphans.add(invoice["r_hash"])
        if invoice["state"] in ("ACCEPTED", "SETTLED"):
            findings.append(f"money on an invoice without an order: {invoice['r_hash']}")
    return orphans, findings


def table(results: list[PhaseResult]) -> str:
    """The matrix as a Markdown table."""
    head = (
        "| fault | orders | refused | completed | refunded | failed | expired | rent_active"
        " | other | recovered in s | findings |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        known = ("completed", "refunded", "failed", "expired", "rent_active")
        other = sum(n for s, n in r.outcomes.items() if s not in known)
        recovered = "never" if r.recovered_in is None else f"{r.recovered_in:.1f}"
        cells = [r.fault, r.orders, r.refused, *(r.outcomes.get(s, 0) for s in known)]
        cells += [other, recovered, len(r.findings)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
