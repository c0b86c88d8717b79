"""Entry point: `python -m services.gateway`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from libs.common.core.config import Settings
from libs.common.messaging.runtime import close_reserve, run
from services.gateway.app import init_app, make_runner


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API until stop (the ops server on its own port is started by `run`)."""
    app = init_app(settings, stop)
    runner = make_runner(app, settings)
    await runner.setup()
    grace = settings.shutdown_grace_seconds
    # In-flight requests get the grace, less what closing the connections afterwards needs.
    site = web.TCPSite(
        runner,
        settings.gateway_host,
        settings.gateway_port,
        reuse_address=True,
        shutdown_timeout=max(1.0, grace - 2 * close_reserve(grace)),
    )
    await site.start()
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    run("gateway", main)
