"""Fixtures of the integration tests: the in-process Lightning network and a bootstrapped stream."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import nats
import pytest

from libs.common.adapters.lightning import LndClient
from libs.common.messaging import bus
from libs.common.persistence.memory import MemoryStores
from libs.common.persistence.stores import PgStores
from sandbox.lnsim import RunningNetwork, start_network
from tests.integration.contract import PREFIX, Backend

# ----------------------------------------------------------------------------- lightning


@dataclass
class Lightning:
    """The in-process simulator with a merchant (pays refunds) and a payer (receives them)."""

    running: RunningNetwork
    merchant: LndClient
    payer: LndClient
    http: aiohttp.ClientSession

    def client(self, name: str) -> LndClient:
        """A fresh REST client for one node (each RefundPayer gets its own)."""
        info = self.running.nodes_info[name]
        return LndClient(info["rest_url"], info["macaroon_hex"], None, timeout=10)

    async def fail_next_payments(self, count: int, reason: str = "FAILURE_REASON_NO_ROUTE") -> int:
        """Make the merchant's next `count` payments fail (0 clears); returns what is pending."""
        url = self.running.nodes_info["merchant"]["rest_url"] + "/sim/fail-next-payments"
        async with self.http.post(url, json={"count": count, "reason": reason}) as resp:
            assert resp.status == 200, await resp.text()
            return int((await resp.json())["pending_failures"])

    async def pending_failures(self) -> int:
        """How many injected failures the merchant still has to hand out."""
        url = self.running.nodes_info["merchant"]["rest_url"] + "/sim/info"
        async with self.http.get(url) as resp:
            return int((await resp.json())["pending_failures"])

    def sends(self) -> int:
        """How many payments the merchant node has started so far (every SendPaymentV2)."""
        return self.running.nodes["merchant"].state.next_payment_index

    async def balances(self) -> tuple[int, int]:
        """(merchant, payer) local channel balances in sat."""
        return await self.merchant.channel_balance_sat(), await self.payer.channel_balance_sat()


@pytest.fixture
async def ln(tmp_path: Path) -> AsyncIterator[Lightning]:
    """A fresh two-node simulated network for one test."""
    running = await start_network(
        tmp_path / "lnsim", [("merchant", 0), ("payer", 0)], block_time_seconds=3600
    )
    merchant_info, payer_info = running.nodes_info["merchant"], running.nodes_info["payer"]
    sim = Lightning(
        running,
        LndClient(merchant_info["rest_url"], merchant_info["macaroon_hex"], None, timeout=10),
        LndClient(payer_info["rest_url"], payer_info["macaroon_hex"], None, timeout=10),
        aiohttp.ClientSession(),
    )
    try:
        yield sim
    finally:
        await sim.merchant.close()
        await sim.payer.close()
        await sim.http.close()
        await running.stop()


@pytest.fixture
async def bootstrapped(nats_url: str, stream_names: tuple[str, str]) -> tuple[str, str]:
    """The test's private stream and consumers exist (the outbox relay publishes there)."""
    nc = await nats.connect(nats_url)
    try:
        await bus.bootstrap(nc.jetstream(), *stream_names)
    finally:
        await nc.drain()
    return stream_names


REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_smssim(state_dir: Path, *args: str) -> Iterator[str]:
    """Run `python -m sandbox.smssim` on a free port with args; it must exit 0 on SIGTERM."""
    ready = state_dir / "ready.json"
    cmd = [sys.executable, "-m", "sandbox.smssim", "--port", "0", "--log-level", "WARNING"]
    proc = subprocess.Popen(
        [*cmd, *args, "--ready-file", str(ready)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"smssim exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                pytest.fail("smssim did not become ready")
            time.sleep(0.05)
        yield str(json.loads(ready.read_text())["url"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stderr:
                proc.stderr.close()
    assert returncode == 0, "smssim did not stop cleanly"


@pytest.fixture(params=["postgres", "memory"])
async def backend(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> AsyncIterator[Backend]:
    """The stores under test: PostgreSQL (a fresh migrated database) or the twin."""
    # Both ask for the pool: a sync session fixture (the template) cannot start in here.
    if request.param == "memory":
        clock = datetime(2026, 1, 1, tzinfo=UTC)
        memory = MemoryStores(lambda: clock, PREFIX)
        yield Backend(memory, "memory", memory=memory)
        return
    yield Backend(PgStores(pool, PREFIX), "postgres", pool=pool)
