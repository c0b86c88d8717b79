"""The ops HTTP server every service runs: /livez (heartbeats), /readyz (PostgreSQL + NATS),
/metrics (Prometheus), plus the collector that samples gauges from PostgreSQL and JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from libs.common.core import metrics
from libs.common.domain.alarms import Alarm
from libs.common.domain.events import CONSUMERS
from libs.common.persistence import db
from libs.common.persistence.stores import PgStores

log = logging.getLogger(__name__)

# A readiness probe must answer well inside the kubelet's timeout even when PostgreSQL hangs.
READY_TIMEOUT_SECONDS = 2.0
# A paid order counts as stuck this long after its deadline (the scheduler re-fires the
# deadline a minute after it passed, so anything older really is stuck).
STUCK_GRACE_SECONDS = 120.0


class Health:
    """What the ops endpoints report on: loop heartbeats and the connections readiness needs."""

    def __init__(
        self, stale_after: float = 150.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self._beats: dict[str, float] = {}
        self.pool: asyncpg.Pool | None = None
        self.nc: NATS | None = None

    def beat(self, name: str) -> None:
        """Record that the loop called name just made progress."""
        self._beats[name] = self._clock()

    def forget(self, name: str) -> None:
        """Stop watching a loop that ended on purpose (shutdown)."""
        self._beats.pop(name, None)

    def stale(self) -> dict[str, float]:
        """Loops whose last beat is older than stale_after, with their age in seconds."""
        now = self._clock()
        return {
            name: round(now - at, 1)
            for name, at in self._beats.items()
            if now - at > self.stale_after
        }

    def attach(self, pool: asyncpg.Pool | None = None, nc: NATS | None = None) -> None:
        """Tell readiness which pool and NATS connection this process serves with."""
        if pool is not None:
            self.pool = pool
        if nc is not None:
            self.nc = nc

    async def readiness(self) -> dict[str, str]:
        """ "ok" or the reason, for PostgreSQL and for NATS."""
        checks = {"database": "ok", "nats": "ok"}
        if self.pool is None:
            checks["database"] = "not connected yet"
        else:
            try:
                async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                    await db.ping(self.pool)
            except Exception as exc:  # any failure means "not ready", whatever its kind
                checks["database"] = f"error: {type(exc).__name__}"
        if self.nc is None:
            checks["nats"] = "not connected yet"
        elif not self.nc.is_connected:
            checks["nats"] = "disconnected"
        return checks


# The process-wide instance: loops beat it, runtime and the gateway attach their connections.
HEALTH = Health()


def beat(name: str) -> None:
    """Beat this process's heartbeat for the named loop."""
    HEALTH.beat(name)


def ops_app(health: Health, registry: CollectorRegistry = REGISTRY) -> web.Application:
    """The ops endpoints as an aiohttp application."""

    async def livez(_request: web.Request) -> web.Response:
        stale = health.stale()
        if stale:
            return web.json_response({"status": "stale", "stale_loops": stale}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = await health.readiness()
        ok = all(v == "ok" for v in checks.values())
        return web.json_response(
            {"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503
        )

    async def prometheus(_request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        # The classic text format: every Prometheus (2.x and 3.x) scrapes it without options.
        resp.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
        return resp

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app


async def start_ops_server(host: str, port: int, health: Health = HEALTH) -> web.AppRunner | None:
    """Serve the ops endpoints on host:port (port 0: disabled); returns the runner to clean up."""
    if not port:
        return None
    runner = web.AppRunner(ops_app(health), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    log.info("ops server on %s:%d", host, port)
    return runner


async def sample_database(stores: PgStores) -> None:
    """Set the gauges sampled from PostgreSQL: orders, invoices, stuck orders, the rate's age
    and whether the last rate fetched was refused."""
    gauges = await stores.metrics.order_gauges(stuck_grace=STUCK_GRACE_SECONDS)
    # Clear first so a status that emptied out reads 0 rather than its last count.
    metrics.ORDERS.clear()
    for (order_type, status), n in gauges.orders.items():
        metrics.ORDERS.labels(order_type, status).set(n)
    metrics.INVOICES.clear()
    for (kind, state), n in gauges.invoices.items():
        metrics.INVOICES.labels(kind, state).set(n)
    metrics.PAID_ORDERS_PAST_DEADLINE.set(gauges.paid_past_deadline)
    # Every process reports the rate's age, so the alert works without order traffic.
    fx_age = await stores.metrics.fx_rate_age()
    if fx_age is not None:
        metrics.FX_RATE_AGE.set(fx_age)
    # From the alarm row, so every replica agrees whichever scheduler fetched last.
    rejected = await stores.alarms.active(Alarm.FX_RATE_JUMP)
    metrics.FX_RATE_REJECTED.set(0 if rejected is None else 1)


async def sample_consumers(js: JetStreamContext, stream: str) -> None:
    """Set each durable consumer's pending and ack-pending counts from JetStream."""
    for consumer in CONSUMERS:
        info = await js.consumer_info(stream, consumer)
        metrics.CONSUMER_PENDING.labels(consumer).set(info.num_pending or 0)
        metrics.CONSUMER_ACK_PENDING.labels(consumer).set(info.num_ack_pending or 0)


async def collect_forever(
    stores: PgStores,
    js: JetStreamContext,
    stream: str,
    stop: asyncio.Event,
    interval: float = 15.0,
) -> None:
    """Sample the gauges every interval until stop; a failed sample keeps the last values."""
    while not stop.is_set():
        for sample in (sample_database(stores), sample_consumers(js, stream)):
            try:
                await sample
            except Exception as exc:  # the broker or database being down is readyz's business
                log.warning("metrics sample failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
