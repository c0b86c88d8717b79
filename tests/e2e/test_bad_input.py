"""Bad input gets a clear JSON error with the seed's codes and creates nothing."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

pytestmark = pytest.mark.e2e


async def _orders(stack: dict[str, Any]) -> int:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"[" * 8000, {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
        (
            b'{"service": "tg"}',
            {"Content-Type": "application/json; charset=foo"},
            400,
            "VALIDATION_ERROR",
        ),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
        (b'["a list"]', {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
        (b'{"service": "tg", "country": "\\u00b2"}', {}, 400, "INVALID_COUNTRY"),
        (b'{"service": "tg", "country": "Atlantis"}', {}, 400, "INVALID_COUNTRY"),
        (b'{"service": "tg", "country": true}', {}, 400, "INVALID_COUNTRY"),
        (b'{"service": 5, "country": "US"}', {}, 400, "VALIDATION_ERROR"),
        (b'{"service": "tg", "country": "US", "bogus": 1}', {}, 400, "VALIDATION_ERROR"),
        (b'{"service": "tg", "country": "US"}', {}, 400, "VALIDATION_ERROR"),
        (
            b'{"service": "tg", "country": "US", "refundInvoice": "lnbc1garbage"}',
            {},
            400,
            "INVALID_REFUND_INVOICE",
        ),
        (
            b'{"service": "tg", "country": "US", "refundInvoice": 7}',
            {},
            400,
            "INVALID_REFUND_INVOICE",
        ),
        (b'{"type": "rent-number", "service": "tg"}', {}, 400, "VALIDATION_ERROR"),
        (
            b'{"service": "zz", "country": "US", "refundInvoice": "x"}',
            {},
            400,
            "INVALID_REFUND_INVOICE",
        ),
        (
            b"not gzip",
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            400,
            "VALIDATION_ERROR",
        ),
        (
            b"not deflate",
            {"Content-Type": "application/json", "Content-Encoding": "deflate"},
            400,
            "VALIDATION_ERROR",
        ),
        (b'{"service": "tg", "pad": "' + b"x" * 20_000 + b'"}', {}, 413, "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_bad_order_requests_are_refused_and_create_nothing(
    stack: dict[str, Any],
    http: aiohttp.ClientSession,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    before = await _orders(stack)
    async with http.post(
        f"{stack['gateway_url']}/v2/l402/order", data=body, headers=headers
    ) as resp:
        assert resp.status == status, await resp.text()
        error = (await resp.json())["error"]
    assert error["code"] == code
    assert error["message"]
    assert await _orders(stack) == before


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/nope", {}, 404, "NOT_FOUND"),
        ("DELETE", "/v2/l402/order", {}, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/v2/l402/order/x", {}, 403, "INVALID_MACAROON"),
        ("GET", "/v2/l402/order/x", {"Authorization": "L402 abc"}, 403, "INVALID_MACAROON"),
        ("GET", "/v2/l402/order/x", {"Authorization": "Bearer x:y"}, 403, "INVALID_MACAROON"),
        ("POST", "/v2/l402/order/x/cancel", {}, 403, "INVALID_MACAROON"),
    ],
)
async def test_routes_answer_json_errors(
    stack: dict[str, Any],
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    async with http.request(method, f"{stack['gateway_url']}{path}", headers=headers) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code


async def test_health(stack: dict[str, Any], http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stack['gateway_url']}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "database": "ok", "nats": "ok"}
