"""What every worker process shares: settings, pool, NATS, the outbox relay, the ops server and
signal handling with one shutdown grace for every step."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings, load_settings
from libs.common.core.logs import setup_logging
from libs.common.messaging import bus, ops
from libs.common.messaging.outbox import OutboxRelay
from libs.common.persistence import db
from libs.common.persistence.ops_store import PgRequestBudget
from libs.common.persistence.stores import PgStores

log = logging.getLogger(__name__)

# Of the shutdown grace, this share (at most CLOSE_RESERVE_MAX seconds) is kept back from the
# loops for draining NATS and closing the pool, so the whole stop fits in the grace.
CLOSE_RESERVE_SHARE = 0.25
CLOSE_RESERVE_MAX = 5.0


class Stop(asyncio.Event):
    """The stop signal; remembers when it was given so every shutdown step shares one grace."""

    def __init__(self, grace: float) -> None:
        super().__init__()
        self.grace = grace
        self._at: float | None = None

    def set(self) -> None:
        """Signal stop (the first call starts the grace period)."""
        if self._at is None:
            self._at = asyncio.get_running_loop().time()
        super().set()

    def remaining(self) -> float:
        """Seconds left of the grace (the whole grace before stop is given)."""
        if self._at is None:
            return self.grace
        return max(0.0, self._at + self.grace - asyncio.get_running_loop().time())


def remaining_grace(stop: asyncio.Event, default: float) -> float:
    """Seconds of shutdown grace left: from a Stop, else the given default."""
    return stop.remaining() if isinstance(stop, Stop) else default


def close_reserve(grace: float) -> float:
    """The part of a grace kept for draining NATS and closing the pool."""
    return min(CLOSE_RESERVE_MAX, grace * CLOSE_RESERVE_SHARE)


@dataclass
class Worker:
    """A running service's connections and its stop signal."""

    name: str
    settings: Settings
    pool: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    stop: asyncio.Event

    @functools.cached_property
    def stores(self) -> PgStores:
        """The stores, bound to this worker's pool and subject prefix."""
        return PgStores(self.pool, self.settings.subject_prefix)

    def consumer(self, handler: bus.Handler) -> bus.Consumer:
        """This worker's durable consumer, running handler on each event."""
        return bus.Consumer(
            self.js,
            self.stores.inbox,
            stream=self.settings.nats_stream,
            prefix=self.settings.subject_prefix,
            durable=self.name,
            handler=handler,
        )


def provider_client(pool: asyncpg.Pool, settings: Settings) -> HeroSmsClient:
    """The provider client of a service: its calls share the account's budget in PostgreSQL
    with every replica of every service (so N replicas together keep the account's pace)."""
    return HeroSmsClient.from_settings(settings, PgRequestBudget.from_settings(pool, settings))


def start_background(
    pool: asyncpg.Pool, nc: NATS, settings: Settings, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Attach the connections to readiness; start the outbox relay and the metrics collector."""
    ops.HEALTH.attach(pool, nc)
    js = nc.jetstream()
    stores = PgStores(pool, settings.subject_prefix)
    relay = OutboxRelay(
        stores, js, tick=settings.outbox_tick_seconds, batch=settings.outbox_batch_size
    )
    return [
        asyncio.create_task(relay.run(stop), name="outbox-relay"),
        asyncio.create_task(
            ops.collect_forever(stores, js, settings.nats_stream, stop), name="metrics-collector"
        ),
    ]


async def stop_background(tasks: list[asyncio.Task[None]], within: float) -> None:
    """Wait for background tasks to see the stop, cancelling whatever outlives `within` seconds."""
    _done, pending = await asyncio.wait(tasks, timeout=max(0.1, within))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)


@asynccontextmanager
async def open_worker(name: str, settings: Settings, stop: asyncio.Event) -> AsyncIterator[Worker]:
    """Open the pool and NATS, run the outbox relay, and close everything on exit."""
    pool = await db.create_pool(settings.database_url)
    nc = await bus.connect(settings.nats_url, name)
    worker = Worker(name, settings, pool, nc, nc.jetstream(), stop)
    background = start_background(pool, nc, settings, stop)
    try:
        yield worker
    finally:
        worker.stop.set()
        await close_all(background, nc, pool, stop, settings.shutdown_grace_seconds)


async def close_all(
    background: list[asyncio.Task[None]],
    nc: NATS,
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    grace: float,
) -> None:
    """Stop the background tasks, drain NATS and close the pool within what is left of grace."""
    left = remaining_grace(stop, grace)
    reserve = close_reserve(grace)
    # The relay publishes what the loops wrote on their way out, if time allows.
    await stop_background(background, left - reserve)
    left = remaining_grace(stop, grace)
    await close_nats(nc, max(1.0, left / 2))
    await close_pool(pool, max(1.0, remaining_grace(stop, grace)))


async def close_nats(nc: NATS, grace: float = 5.0) -> None:
    """Drain the connection (flushing what was published), or close it if draining hangs."""
    try:
        await asyncio.wait_for(nc.drain(), grace)
    except Exception:
        log.warning("NATS drain did not finish; closing")
        with contextlib.suppress(Exception):
            await nc.close()


async def close_pool(pool: asyncpg.Pool, grace: float = 5.0) -> None:
    """Close the pool gracefully, or terminate its connections if a query hangs past grace."""
    try:
        await asyncio.wait_for(pool.close(), grace)
    except Exception:
        log.warning("the database pool did not close in time; terminating it")
        pool.terminate()


async def _heartbeat_forever(stop: asyncio.Event, interval: float = 1.0) -> None:
    """Beat the `event-loop` heart: proves the loop runs (the gateway's only main loop)."""
    while not stop.is_set():
        ops.beat("event-loop")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    ops.HEALTH.forget("event-loop")


def run(name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """Run a service's main coroutine until SIGINT/SIGTERM sets the stop event.

    The ops server (/livez, /readyz, /metrics) starts first, so liveness answers even while
    PostgreSQL or NATS are still out of reach. After the signal, main gets the shutdown grace
    (plus a second for the log line) before it is cancelled.
    """
    settings = load_settings()
    setup_logging(name, settings.log_level)
    ops.HEALTH.stale_after = settings.liveness_stale_seconds

    async def _main() -> None:
        stop = Stop(settings.shutdown_grace_seconds)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ops_runner = await ops.start_ops_server(settings.ops_host, settings.ops_port)
        heart = asyncio.create_task(_heartbeat_forever(stop))
        log.info("%s starting", name)
        task: asyncio.Future[Any] = asyncio.ensure_future(main(settings, stop))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait([task], timeout=stop.remaining() + 1.0)
            if not task.done():
                log.error("%s did not stop within the grace; cutting it short", name)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
            task.result()  # a crash propagates: the process exits non-zero
            log.info("%s stopped", name)
        finally:
            stop.set()
            await asyncio.wait([heart, stopped])
            if ops_runner is not None:
                await ops_runner.cleanup()

    asyncio.run(_main())


async def run_loops(stop: asyncio.Event, *loops: Awaitable[None], grace: float = 20.0) -> None:
    """Run a worker's loops until stop is set; if one crashes, stop the rest and re-raise.

    After stop the loops finish their in-flight work within the shutdown grace (less what
    closing the connections needs); loops still running then are cancelled, and the
    consumer naks what it had not finished.
    """
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                stop.set()
                raise task.exception()  # type: ignore[misc]
        stop.set()
        total = stop.grace if isinstance(stop, Stop) else grace
        await asyncio.wait(tasks, timeout=remaining_grace(stop, grace) - close_reserve(total))
    finally:
        stopper.cancel()
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d loop(s) outlived the shutdown grace; cancelled", len(pending))
            # Let cancelled consumers nak their messages before NATS is drained.
            await asyncio.wait(pending, timeout=2.0)
