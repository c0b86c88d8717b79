"""The whole stack as subprocesses (the same launcher as `make run`), reached over HTTP only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.adapters.lightning import LndClient
from libs.common.persistence import db
from libs.common.tools.invariants import Finding, check

ROOT = Path(__file__).resolve().parents[2]

# Short clocks so the unhappy paths finish in seconds; the rules are the same.
E2E_ENV = {
    "SMS4SATS_ORDER_TIMEOUT_SECONDS": "8",
    "SMS4SATS_CANCEL_MIN_AGE_SECONDS": "3",
    "SMS4SATS_CLASSIC_CANCEL_MIN_AGE_SECONDS": "3",
    "SMS4SATS_HOLD_GRACE_SECONDS": "2",
    # A code_received order closes this soon (another SMS has its own tests).
    "SMS4SATS_ANOTHER_SMS_WINDOW_SECONDS": "1",
    "SMS4SATS_RENT_POLL_INTERVAL_SECONDS": "0.5",
    "SMS4SATS_PROVIDER_GIVEUP_SECONDS": "2",
    "SMS4SATS_BALANCE_CHECK_SECONDS": "0.5",
    "SMS4SATS_SMS_POLL_INTERVAL_SECONDS": "0.3",
    "SMS4SATS_REFUND_RETRY_BASE_SECONDS": "0.5",
    "SMSSIM_EARLY_CANCEL_SECONDS": "2",
    "SMSSIM_AUTO_SMS_DELAY": "1",
    # Tests and the API fuzzer send bursts from one address; limits have their own tests.
    "SMS4SATS_RATE_CHALLENGES_PER_MINUTE": "1000000",
    "SMS4SATS_MAX_UNPAID_PER_CLIENT": "0",  # the unpaid cap has its own tests
    "SMS4SATS_RATE_POLLS_PER_MINUTE": "1000000",
    "SMS4SATS_WEBHOOK_SECRET": "e2e-webhook-secret",
    "SMS4SATS_INDEX_VERIFY_TOKEN": "e2e-402index-token",
    # The gateway re-reads the catalog and rate on every request, so a test that ages the rate
    # in PostgreSQL sees the effect at once; the stack's first refresh loads them at start and
    # nothing refreshes the rate again while the tests run.
    "SMS4SATS_CATALOG_TTL_SECONDS": "0",
    "SMS4SATS_FX_REFRESH_SECONDS": "3600",
}

# Load tests measure our workers, not the upstream's budget: hundreds of activations polled
# every 0.3 s need far more than an account's ~50 provider calls/s (the limiter and the
# simulator's limit have their own tests).
UNMETERED_PROVIDER = {
    "SMSSIM_RATE_LIMIT": "off",
    "SMS4SATS_PROVIDER_RATE_PER_SECOND": "100000",
}


def node_client(node: dict[str, Any]) -> LndClient:
    """A REST client for one node of a stack.json (`payer_lnd` or `merchant_lnd`)."""
    return LndClient(node["rest_url"], node["macaroon_hex"], node["tls_cert_path"])


async def _invariants(info: dict[str, Any]) -> list[Finding]:
    """Run the invariant checker against the stack's database and merchant node."""
    pool = await db.create_pool(info["database_url"])
    lnd = node_client(info["merchant_lnd"])
    try:
        return await check(pool, lnd, grace_seconds=30)
    finally:
        await lnd.close()
        await pool.close()


@contextmanager
def running_stack(state: Path, extra_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Run `python -m sandbox.devstack` on free ports; yield its stack.json; check the end.

    On the way out: the money invariants hold, no process outlives the launcher, and every
    service shut down on its own (drained) rather than being killed after the grace.
    """
    env = {**os.environ, **extra_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.devstack", "--dir", str(state), "--auto-ports"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stack_file = state / "stack.json"
    deadline = time.monotonic() + 120
    while not stack_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"dev stack did not start:\n{out}")
        time.sleep(0.1)
    info = json.loads(stack_file.read_text())
    info["state_dir"] = str(state)
    try:
        yield info
        findings = asyncio.run(_invariants(info))
        assert findings == [], f"money invariants broken: {findings}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in info["pids"].values():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            pytest.fail(f"process {pid} survived the stack's shutdown")
        logs = Path(info["logs_dir"])
        for name in ("gateway", "payments", "provider", "scheduler"):
            files = sorted(logs.glob(f"{name}*.log"))  # payments-1.log… with replicas
            assert files, f"no log of {name}"
            for log_file in files:
                text = log_file.read_text()
                assert f'"msg": "{name} stopped"' in text, f"{log_file.name}: no graceful stop"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The whole stack, shared by the e2e tests."""
    with running_stack(tmp_path_factory.mktemp("stack"), E2E_ENV) as info:
        yield info


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def payer(stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's wallet: the payer node's REST API."""
    client = node_client(stack["payer_lnd"])
    yield client
    await client.close()
