"""`make chaos`: run the whole fault matrix against one dev stack and print the table.

Usage: python -m tests.chaos [--only TEXT]... [--dir DIR]. Exit status 1 when any phase
found a problem (they are listed under the table).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from libs.common.persistence import db
from tests.chaos.matrix import Chaos, Fault, PhaseResult, chaos_env, full_matrix, run_phase, table
from tests.chaos.matrix import setup as setup_chaos
from tests.chaos.traffic import Traffic
from tests.e2e.conftest import node_client, running_stack
from tests.e2e.test_prepaid import _new_account


async def run_matrix(
    stack: dict[str, Any], crash_dir: Path, faults: list[Fault]
) -> list[PhaseResult]:
    """Run every fault in turn against one stack; print each row as it finishes."""
    results: list[PhaseResult] = []
    api_key = _new_account(stack)
    payer, merchant = node_client(stack["payer_lnd"]), node_client(stack["merchant_lnd"])
    pool = await db.create_pool(stack["database_url"], min_size=0)  # no floor to refill mid-outage
    try:
        async with aiohttp.ClientSession() as http:
            traffic = Traffic(http, stack, payer, merchant, api_key)
            chaos = Chaos(stack, http, payer, merchant, pool, traffic, crash_dir)
            await setup_chaos(chaos)
            for fault in faults:
                started = time.monotonic()
                result = await run_phase(chaos, fault)
                results.append(result)
                took = time.monotonic() - started
                print(
                    f"{fault.name}: {result.orders} orders, {len(result.findings)} "
                    f"finding(s), {took:.0f} s; placed {dict(result.kinds)}, "
                    f"refused by status {dict(result.refusals)}, "
                    f"{result.orphans} invoice(s) without an order",
                    flush=True,
                )
    finally:
        await pool.close()
        await payer.close()
        await merchant.close()
    return results


def main() -> None:
    """Start the stack, run the matrix, print the table; exit 1 on any finding."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", default=[], help="faults whose name has this")
    parser.add_argument("--dir", help="state directory (default: a new temporary one)")
    args = parser.parse_args()
    faults = [f for f in full_matrix() if not args.only or any(o in f.name for o in args.only)]
    root = Path(args.dir or tempfile.mkdtemp(prefix="sms4sats-chaos-")).resolve()
    crash_dir = root / "crashes"
    started = time.monotonic()
    results: list[PhaseResult] = []
    with running_stack(root / "stack", chaos_env(crash_dir)) as stack:
        results = asyncio.run(run_matrix(stack, crash_dir, faults))
        print("\n" + table(results) + "\n", flush=True)
        for r in results:
            for finding in r.findings:
                print(f"- {r.fault}: {finding}", flush=True)
    print(f"{len(results)} fault(s) in {time.monotonic() - started:.0f} s; stack in {root}")
    sys.exit(1 if any(r.findings for r in results) else 0)


if __name__ == "__main__":
    main()
