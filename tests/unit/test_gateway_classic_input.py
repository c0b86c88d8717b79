"""Unreadable bodies and impossible API keys on the classic API: 400/401 classic errors, never 500.

The app runs without its database: every one of these requests must be answered before the
handler reaches it (nothing is read or changed). Requests go over a raw socket, so the bytes
are exactly what a hostile client sends.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from libs.common.core.config import Settings
from libs.common.domain.api_keys import key_hash, plausible_key
from services.gateway.app import init_app


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    settings = Settings(rate_challenges_per_minute=10**6, rate_polls_per_minute=10**6)
    app = init_app(settings, asyncio.Event())
    app.cleanup_ctx.clear()  # no database, NATS or node: the answers must come before them
    async with TestServer(app) as srv:
        yield srv


async def _raw(server: TestServer, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Send one request as bytes; the status and the JSON body of the answer."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
    writer.write(head + length + b"Host: t\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


BAD_BODIES = {
    "multipart part without headers": (
        b"Content-Type: multipart/form-data; boundary=zz\r\n",
        b"--zz\r\ngarbage-here\r\n",
    ),
    "multipart without boundary": (b"Content-Type: multipart/form-data\r\n", b"abc"),
    "form in an unknown charset": (
        b"Content-Type: application/x-www-form-urlencoded; charset=nope-9\r\n",
        b"service=tg",
    ),
    "form that is not UTF-8": (
        b"Content-Type: application/x-www-form-urlencoded\r\n",
        b"service=\xff\xfe",
    ),
    "gzip that is not gzip": (
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n",
        b"notgzip!!!",
    ),
    "gzip of a form that is not UTF-8": (
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n",
        gzip.compress(b"service=\xff\xfe"),
    ),
    "JSON in an unknown charset": (b"Content-Type: application/json; charset=nope-9\r\n", b"{}"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_an_unreadable_createorder_body_is_a_classic_400(
    server: TestServer, case: str
) -> None:
    headers, body = BAD_BODIES[case]
    status, answer = await _raw(server, b"POST /createorder HTTP/1.1\r\n" + headers, body)
    assert status == 400, answer
    assert answer["status"] == "error" and answer["reason"]


@pytest.mark.parametrize(
    "request_line",
    [b"GET /balance HTTP/1.1\r\n", b"GET /history HTTP/1.1\r\n", b"POST /fund HTTP/1.1\r\n"],
)
@pytest.mark.parametrize("key", [b"s4s_\xff\xfe", b"\xe9", b"s4s_" + b"a" * 200, b"s4s_a\tb"])
async def test_an_api_key_that_cannot_be_ours_is_a_classic_401(
    server: TestServer, request_line: bytes, key: bytes
) -> None:
    status, answer = await _raw(server, request_line + b"X-API-Key: " + key + b"\r\n")
    assert (status, answer) == (401, {"status": "error", "reason": "unknown or revoked API key"})


async def test_an_immediate_order_with_such_a_key_is_a_classic_401(server: TestServer) -> None:
    body = b'{"immediate": true, "service": "tg"}'
    status, answer = await _raw(
        server,
        b"POST /createorder HTTP/1.1\r\nContent-Type: application/json\r\nX-API-Key: \xe9\r\n",
        body,
    )
    assert status == 401 and answer["status"] == "error"


def test_key_hash_never_raises_and_keys_we_issue_are_plausible() -> None:
    from libs.common.domain.api_keys import new_api_key

    assert len(key_hash("s4s_\udcff")) == 32
    assert plausible_key(new_api_key())
    assert not plausible_key("s4s_\udcff") and not plausible_key("é") and not plausible_key(" ")
