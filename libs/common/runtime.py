"""What every worker process shares: settings, pool, NATS, the outbox relay and signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common import bus, db
from libs.common.config import Settings, load_settings
from libs.common.logs import setup_logging
from libs.common.outbox import OutboxRelay

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """A running service's connections and its stop signal."""

    name: str
    settings: Settings
    pool: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    stop: asyncio.Event

    def consumer(self, handler: bus.Handler) -> bus.Consumer:
        """This worker's durable consumer, running handler on each event."""
        return bus.Consumer(
            self.js,
            self.pool,
            stream=self.settings.nats_stream,
            prefix=self.settings.subject_prefix,
            durable=self.name,
            handler=handler,
        )


@asynccontextmanager
async def open_worker(name: str, settings: Settings, stop: asyncio.Event) -> AsyncIterator[Worker]:
    """Open the pool and NATS, run the outbox relay, and close everything on exit."""
    pool = await db.create_pool(settings.database_url)
    nc = await bus.connect(settings.nats_url, name)
    worker = Worker(name, settings, pool, nc, nc.jetstream(), stop)
    relay = OutboxRelay(pool, worker.js, tick=settings.outbox_tick_seconds)
    relay_task = asyncio.create_task(relay.run(worker.stop), name="outbox-relay")
    try:
        yield worker
    finally:
        worker.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay_task, 10)
        await close_nats(nc)
        await pool.close()


async def close_nats(nc: NATS, grace: float = 5.0) -> None:
    """Drain the connection (flushing what was published), or close it if draining hangs."""
    try:
        await asyncio.wait_for(nc.drain(), grace)
    except Exception:
        log.warning("NATS drain did not finish; closing")
        with contextlib.suppress(Exception):
            await nc.close()


def run(name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """Run a service's main coroutine until SIGINT/SIGTERM sets the stop event."""
    settings = load_settings()
    setup_logging(name, settings.log_level)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("%s starting", name)
        await main(settings, stop)
        log.info("%s stopped", name)

    asyncio.run(_main())


async def run_loops(stop: asyncio.Event, *loops: Awaitable[None], grace: float = 20.0) -> None:
    """Run a worker's loops until stop is set; if one crashes, stop the rest and re-raise."""
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                stop.set()
                raise task.exception()  # type: ignore[misc]
        stop.set()
        # Loops watch the stop event and finish their in-flight work; give them a grace period.
        await asyncio.wait(tasks, timeout=grace)
    finally:
        stopper.cancel()
        for task in tasks:
            task.cancel()
