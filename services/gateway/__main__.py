"""Entry point: `python -m services.gateway`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from libs.common.config import Settings
from libs.common.runtime import run
from services.gateway.app import init_app


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API until stop."""
    app = init_app(settings, stop)
    # Headers up to 16 KiB reach our code, which answers oversized credentials with JSON.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, max_field_size=16384)
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port, reuse_address=True)
    await site.start()
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    run("gateway", main)
