"""The gateway's rate-limit middleware on the real routes' shapes (no database needed)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace
from typing import cast
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from libs.common.core.config import Settings
from services.gateway.errors import error_middleware
from services.gateway.limits import (
    address_key,
    charge_challenge,
    client_address,
    rate_limit_middleware,
)


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


def _request(peer: str, *forwarded: str) -> web.Request:
    headers = CIMultiDict[str]()
    for value in forwarded:
        headers.add("X-Forwarded-For", value)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 4242) if name == "peername" else default
    )
    return make_mocked_request("GET", "/", headers=headers, transport=transport)


def _hops(n: int, *, legacy: bool = False) -> Settings:
    return replace(Settings(), trusted_proxy_hops=n, trust_forwarded_for=legacy)


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        # No proxy of ours: the header is the client's own words, ignored.
        (0, ("6.6.6.6",), "10.0.0.9"),
        # One proxy: it appended what it saw; the client's own entries are to the left.
        (1, ("6.6.6.6, 1.1.1.1",), "1.1.1.1"),
        (1, ("1.1.1.1",), "1.1.1.1"),
        # Two proxies: the outer one saw the client, the inner one saw the outer proxy.
        (2, ("6.6.6.6, 7.7.7.7, 1.1.1.1, 10.0.0.2",), "1.1.1.1"),
        (2, ("1.1.1.1, 10.0.0.2",), "1.1.1.1"),
        # Several headers are one list, in order.
        (2, ("6.6.6.6, 1.1.1.1", "10.0.0.2"), "1.1.1.1"),
        # Fewer entries than hops: every entry is still one of ours; the leftmost is the client.
        (3, ("1.1.1.1, 10.0.0.2",), "1.1.1.1"),
        # No header at all: the request reached us directly.
        (2, (), "10.0.0.9"),
        # Junk in our slot falls back to the peer; surrounding spaces are ignored.
        (1, ("6.6.6.6,  ",), "10.0.0.9"),
        (1, ("6.6.6.6,  1.1.1.1 ",), "1.1.1.1"),
    ],
)
def test_client_address_counts_trusted_hops_from_the_right(
    hops: int, forwarded: tuple[str, ...], expected: str
) -> None:
    assert client_address(_request("10.0.0.9", *forwarded), _hops(hops)) == expected


@pytest.mark.parametrize(
    "entry",
    [
        "junk",
        "unknown",
        "1.2.3.4.5",
        "01.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:port",
        "1.2.3.4:123456",
        "[1.2.3.4",
        "2001:db8::1]:80",
        "[not-an-address]:80",
        "\udcff\udcfe",  # undecodable header bytes, as aiohttp hands them over
        "1.2.3.4\udcff",
        "x" * 500,
    ],
)
def test_an_entry_that_is_not_an_address_falls_back_to_the_peer(entry: str) -> None:
    # One hop: the chosen entry is the rightmost, which a client that skipped our proxy wrote.
    assert client_address(_decoded_request("10.0.0.9", entry), _hops(1)) == "10.0.0.9"
    # Fewer entries than hops: the leftmost, which the client may have written too.
    two = _decoded_request("10.0.0.9", f"{entry}, 1.1.1.1")
    assert client_address(two, _hops(3)) == "10.0.0.9"


def _decoded_request(peer: str, forwarded: str) -> web.Request:
    """A request as the handler sees it once aiohttp decoded its headers (surrogates kept).

    make_mocked_request re-encodes headers as strict UTF-8, which lone surrogates cannot pass.
    """
    headers = CIMultiDictProxy(CIMultiDict({"X-Forwarded-For": forwarded}))
    return cast(web.Request, SimpleNamespace(remote=peer, headers=headers))


async def test_undecodable_forwarded_bytes_on_the_wire_never_reach_the_key() -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        key = client_address(request, _hops(1))
        key.encode()  # what asyncpg does with it: a lone surrogate raises here
        seen.append(key)
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", record)
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"X-Forwarded-For: 6.6.6.6, \xff\xfe1.2.3.4\r\n\r\n"
        )
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert seen == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4:8080 ", "1.2.3.4"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::5]", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::5]:443", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::5", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("[::ffff:1.2.3.4]:80", "1.2.3.4"),
        ("::1", "::/64"),
    ],
)
def test_an_address_entry_is_keyed_ipv4_by_address_and_ipv6_by_its_64(
    entry: str, expected: str
) -> None:
    assert address_key(entry) == expected
    assert client_address(_request("10.0.0.9", f"6.6.6.6, {entry}"), _hops(1)) == expected


def test_rotating_ipv6_addresses_in_one_64_is_one_client() -> None:
    seen = {
        client_address(_request("10.0.0.2", f"2001:db8:1:2::{n:x}"), _hops(1))
        for n in range(1, 200, 7)
    }
    assert seen == {"2001:db8:1:2::/64"}
    # The neighbouring /64 is another client.
    assert client_address(_request("10.0.0.2", "2001:db8:1:3::1"), _hops(1)) != seen.pop()


def test_the_socket_peer_is_keyed_the_same_way() -> None:
    assert client_address(_request("2001:db8:1:2::7"), _hops(0)) == "2001:db8:1:2::/64"
    assert client_address(_request("::ffff:10.0.0.9"), _hops(0)) == "10.0.0.9"
    # An invalid entry falls back to the peer's key, not its raw text.
    assert client_address(_request("2001:db8:1:2::7", "junk"), _hops(1)) == "2001:db8:1:2::/64"


def test_a_spoofed_leftmost_entry_never_becomes_the_client() -> None:
    settings = _hops(1)
    seen = {
        client_address(_request("10.0.0.2", f"{spoof}, 1.1.1.1"), settings)
        for spoof in ("6.6.6.6", "2.2.2.2", "1.1.1.1, 3.3.3.3")
    }
    assert seen == {"1.1.1.1"}


def test_the_deprecated_boolean_means_one_hop() -> None:
    request = _request("10.0.0.2", "6.6.6.6, 1.1.1.1, 10.0.0.3")
    assert client_address(request, _hops(0, legacy=True)) == "10.0.0.3"
    # The count wins when both are set.
    assert client_address(request, _hops(2, legacy=True)) == "1.1.1.1"


async def _mints(request: web.Request) -> web.Response:
    """Stands for create_order falling through to minting (unknown or stale credential)."""
    charge_challenge(request)
    return web.json_response({"minted": True}, status=402)


async def test_a_credentialed_post_that_mints_pays_the_challenge_bucket() -> None:
    settings = replace(Settings(), rate_challenges_per_minute=6, rate_polls_per_minute=6000)
    app = web.Application(middlewares=[error_middleware, rate_limit_middleware(settings)])
    app.router.add_post("/v2/l402/order", _mints)
    async with TestClient(TestServer(app)) as client:
        forged = {"Authorization": "L402 forged:00"}
        statuses = [(await client.post("/v2/l402/order", headers=forged)).status for _ in range(4)]
        # 6 per minute allows a burst of one, as for plain POSTs; a plain one is refused too.
        assert statuses == [402, 429, 429, 429]
        resp = await client.post("/v2/l402/order")
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
