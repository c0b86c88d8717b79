"""The gateway's rate-limit middleware on the real routes' shapes (no database needed)."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.common.config import Settings
from services.gateway.errors import error_middleware
from services.gateway.limits import rate_limit_middleware


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _app(**limits: object) -> web.Application:
    settings = replace(Settings(), **limits)  # type: ignore[arg-type]
    app = web.Application(middlewares=[error_middleware, rate_limit_middleware(settings)])
    app.router.add_post("/v2/l402/order", _ok)
    app.router.add_get("/v2/l402/order/{order_id}", _ok)
    app.router.add_get("/v2/l402/catalog", _ok)
    return app


async def test_challenges_are_limited_per_client_with_retry_after() -> None:
    app = _app(rate_challenges_per_minute=6, rate_polls_per_minute=6000)
    async with TestClient(TestServer(app)) as client:
        # 6 per minute allows a burst of one.
        statuses = [(await client.post("/v2/l402/order")).status for _ in range(3)]
        assert statuses == [200, 429, 429]
        resp = await client.post("/v2/l402/order")
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "RATE_LIMITED"
        # Polls have their own budget; unlimited routes are untouched.
        assert (await client.get("/v2/l402/order/x")).status == 200
        assert (await client.get("/v2/l402/catalog")).status == 200


async def test_polls_are_limited() -> None:
    app = _app(rate_challenges_per_minute=6000, rate_polls_per_minute=6)
    async with TestClient(TestServer(app)) as client:
        statuses = [(await client.get("/v2/l402/order/abc")).status for _ in range(3)]
        assert statuses == [200, 429, 429]
        # A credential-carrying re-POST reads an order, so it spends the poll budget.
        resp = await client.post("/v2/l402/order", headers={"Authorization": "L402 x:y"})
        assert resp.status == 429


async def test_forwarded_for_only_when_trusted() -> None:
    for trusted, expect_second in ((False, 429), (True, 200)):
        app = _app(rate_polls_per_minute=6, trust_forwarded_for=trusted)
        async with TestClient(TestServer(app)) as client:
            await client.get("/v2/l402/order/a", headers={"X-Forwarded-For": "10.0.0.1"})
            resp = await client.get("/v2/l402/order/a", headers={"X-Forwarded-For": "10.0.0.2"})
            assert resp.status == expect_second


async def test_forwarded_for_counts_the_address_our_proxy_appended() -> None:
    app = _app(rate_polls_per_minute=6, trust_forwarded_for=True)
    async with TestClient(TestServer(app)) as client:
        first = await client.get(
            "/v2/l402/order/a", headers={"X-Forwarded-For": "1.1.1.1, 9.9.9.9"}
        )
        # A client inventing a new leftmost address does not get a fresh bucket.
        again = await client.get(
            "/v2/l402/order/a", headers={"X-Forwarded-For": "2.2.2.2, 9.9.9.9"}
        )
        assert (first.status, again.status) == (200, 429)
