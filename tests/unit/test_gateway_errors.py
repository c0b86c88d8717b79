"""The error middleware: an unreachable backend is a 503 to retry, a bug stays a 500.

On a route marked as the classic API's, every failure keeps the classic body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.common.core.config import Settings
from services.gateway.app import setup_routes
from services.gateway.errors import CLASSIC_ROUTES, error_middleware, mark_classic
from services.gateway.limits import rate_limit_middleware
from tests.unit.test_openapi_doc import CLASSIC_PATHS


def _app(exc: BaseException) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", handler)
    return app


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConnectionRefusedError(111, "Connect call failed"),
        lambda: ConnectionResetError(104, "reset"),
        lambda: asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        lambda: asyncpg.exceptions.AdminShutdownError("terminating connection"),
        lambda: asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        lambda: asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    ],
)
async def test_an_unreachable_backend_answers_503_unavailable_with_retry_after(
    make: Callable[[], BaseException],
) -> None:
    async with TestClient(TestServer(_app(make()))) as client:
        resp = await client.get("/x")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert (await resp.json())["error"]["code"] == "UNAVAILABLE"


async def test_a_bug_is_still_a_500_internal() -> None:
    async with TestClient(TestServer(_app(KeyError("oops")))) as client:
        resp = await client.get("/x")
        assert resp.status == 500
        assert (await resp.json())["error"]["code"] == "INTERNAL"


def _both(exc: BaseException) -> web.Application:
    """/classic marked as the classic API's, /l402 not; both raise exc."""

    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    mark_classic(app, app.router.add_get("/classic", handler))
    app.router.add_get("/l402", handler)
    return app


def _classic_body(body: Any) -> str:
    """The reason of a classic error body (and nothing else in it)."""
    assert set(body) == {"status", "reason"}, body
    assert body["status"] == "error" and body["reason"], body
    return str(body["reason"])


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConnectionRefusedError(111, "Connect call failed"),
        lambda: asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        lambda: asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    ],
)
async def test_an_unreachable_backend_on_a_classic_route_answers_the_classic_503(
    make: Callable[[], BaseException],
) -> None:
    async with TestClient(TestServer(_both(make()))) as client:
        resp = await client.get("/classic")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert "retry" in _classic_body(await resp.json())
        # Elsewhere the L402 body, as before.
        resp = await client.get("/l402")
        assert (resp.status, resp.headers["Retry-After"]) == (503, "2")
        assert (await resp.json())["error"]["code"] == "UNAVAILABLE"


async def test_a_bug_on_a_classic_route_is_a_classic_500() -> None:
    async with TestClient(TestServer(_both(KeyError("oops")))) as client:
        resp = await client.get("/classic")
        assert resp.status == 500
        _classic_body(await resp.json())
        assert (await (await client.get("/l402")).json())["error"]["code"] == "INTERNAL"


async def test_rate_limit_and_oversized_body_on_classic_routes_answer_the_classic_body() -> None:
    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "OK"})

    settings = replace(Settings(), rate_challenges_per_minute=6)
    app = web.Application(
        middlewares=[error_middleware, rate_limit_middleware(settings)], client_max_size=1024
    )
    mark_classic(app, app.router.add_post("/createorder", create))
    app.router.add_post("/v2/l402/order", create)
    async with TestClient(TestServer(app)) as client:
        too_big = await client.post("/createorder", data=b"x" * 4096)
        assert too_big.status == 413
        _classic_body(await too_big.json())
        # That one took the burst of one that 6 a minute allows.
        limited = await client.post("/createorder")
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        _classic_body(await limited.json())
        # The L402 route shares the client's bucket and keeps its own body.
        other = await client.post("/v2/l402/order")
        assert (await other.json())["error"]["code"] == "RATE_LIMITED"
        # A path that matches no route is nobody's: the gateway's body.
        missing = await client.get("/nope")
        assert (await missing.json())["error"]["code"] == "NOT_FOUND"


def test_every_classic_route_and_only_those_is_marked() -> None:
    app = web.Application()
    setup_routes(app)
    marked = {resource.canonical for resource in app[CLASSIC_ROUTES]}
    assert marked == CLASSIC_PATHS
