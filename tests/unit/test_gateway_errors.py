"""The error middleware: an unreachable backend is a 503 to retry, a bug stays a 500."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.errors import error_middleware


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
