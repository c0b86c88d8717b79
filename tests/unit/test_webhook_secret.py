"""The rent webhook's secret: the header decides when present, and ?token= never reaches a log.

The gateway app is served the way the service serves it (make_runner, its access log on) with
every log line of the process captured as the service writes them (setup_logging), at DEBUG.
There is no database: an authenticated push then fails inside the handler, so the error log
path (an unhandled exception with its traceback) is exercised too.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings
from libs.common.core.logs import setup_logging
from services.gateway.app import init_app, make_runner

SECRET = "Wh-s3cret/with+odd=chars"
PUSH = {"rentId": "7200000123", "sms": {"text": "code 4410", "date": "2026-11-22 10:00:00"}}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line of the process, as the service formats them."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {n: logging.getLogger(n).level for n in ("aiohttp.access", "aiohttp.server")}
    setup_logging("gateway", "DEBUG")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@dataclass
class Gateway:
    """The served app's base URL."""

    url: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    settings = Settings(webhook_secret=SECRET)
    assert settings.access_log  # on by default, as the service runs
    app = init_app(settings, asyncio.Event())
    app.cleanup_ctx.clear()  # no database, NATS or node
    runner = make_runner(app, settings)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield Gateway(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def _push(gw: Gateway, query: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/v2/l402/webhooks/rent{query}", json=PUSH, headers=headers or {}
        ) as resp:
            await resp.read()
            return resp.status


def _assert_no_secret(text: str) -> None:
    for form in (SECRET, quote(SECRET, safe=""), "s3cret"):
        assert form not in text, text


async def test_a_token_in_the_url_leaves_no_trace_in_any_log_line(
    gateway: Gateway, captured: io.StringIO
) -> None:
    token = quote(SECRET, safe="")
    # Accepted (then fails for want of a database: 500, logged with its traceback) ...
    assert await _push(gateway, f"?token={token}") == 500
    # ... refused, in a spelling aiohttp decodes to "token", and next to other parameters.
    assert await _push(gateway, "?token=Wh-s3cret-wrong") == 401
    assert await _push(gateway, f"?tok%65n={token}&x=1") == 500
    assert await _push(gateway, f"?a=1&token={token}") == 500
    await asyncio.sleep(0.1)  # the access log line is written after the answer
    text = captured.getvalue()
    _assert_no_secret(text)
    # The lines are there, redacted: the access log and the error log did run.
    assert text.count("/v2/l402/webhooks/rent?token=REDACTED") >= 2, text
    assert "unhandled error on POST /v2/l402/webhooks/rent" in text


async def test_the_header_decides_when_both_are_sent(
    gateway: Gateway, captured: io.StringIO
) -> None:
    token = quote(SECRET, safe="")
    # A wrong header is refused even with the right token in the URL...
    assert await _push(gateway, f"?token={token}", {"X-Webhook-Secret": "wrong"}) == 401
    assert await _push(gateway, f"?token={token}", {"X-Webhook-Secret": ""}) == 401
    # ... and the right header passes whatever the URL says (500: no database here).
    assert await _push(gateway, "?token=wrong", {"X-Webhook-Secret": SECRET}) == 500
    assert await _push(gateway, "", {"X-Webhook-Secret": SECRET}) == 500
    await asyncio.sleep(0.1)
    _assert_no_secret(captured.getvalue())


async def test_the_provider_client_never_logs_the_webhook_url(
    captured: io.StringIO, unused_upstream: tuple[str, list[str]]
) -> None:
    base_url, _ = unused_upstream
    client = HeroSmsClient(base_url, "unit-key", timeout=2.0, max_retries=0)
    try:
        with pytest.raises(Exception):  # noqa: B017 - any refusal: only the logs matter here
            await client.rent(
                service="tg",
                country=187,
                hours=4,
                webhook_url=f"https://gw.example/v2/l402/webhooks/rent?token={quote(SECRET)}",
            )
    finally:
        await client.close()
    text = captured.getvalue()
    assert "getRentNumber" in text  # the client did log its call
    _assert_no_secret(text)


@pytest.fixture
async def unused_upstream() -> AsyncIterator[tuple[str, list[str]]]:
    """A provider that refuses every rental with an error reply (logged by the client)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(str(await request.post()))
        return web.Response(text="NO_NUMBERS")

    app = web.Application()
    app.router.add_route("*", "/stubs/handler_api.php", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_the_classic_order_id_a_bearer_secret_is_redacted_from_the_access_log(
    gateway: Gateway, captured: io.StringIO
) -> None:
    order_id = "ab" * 32
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/orderstatus", params={"orderId": order_id}) as resp:
            await resp.read()
    await asyncio.sleep(0.1)
    text = captured.getvalue()
    assert "/orderstatus?orderId=REDACTED" in text, text
    assert order_id not in text
