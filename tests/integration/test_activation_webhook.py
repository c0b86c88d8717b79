"""The activation webhook over HTTP on PostgreSQL: auth, replays, garbage, and the poll racing.

The gateway app is served as the service serves it, over the test's database (no NATS, node
or provider: the webhook needs none of them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from libs.common.core.config import Settings
from libs.common.domain.orders import Order, Status
from libs.common.domain.sms_port import ActivationStatus
from libs.common.persistence.order_store import NOW
from libs.common.persistence.stores import PgStores
from libs.common.usecases.sms_arrival import provider_account
from services.gateway.app import init_app, make_runner
from services.gateway.keys import STORES
from services.provider.sms_watch import SmsWatch
from tests.integration.contract import PREFIX, new_order
from tests.unit.provider_kit import Clock, FakeSms

pytestmark = pytest.mark.integration
S = Status
SECRET = "act-webhook-s3cret"
CODE = "48010"
PATHS = ["/v2/l402/webhooks/sms", "/v2/l402/webhooks/rent"]


@dataclass
class Gateway:
    """The served app, its stores and an HTTP session."""

    url: str
    stores: PgStores
    pool: asyncpg.Pool
    http: aiohttp.ClientSession

    async def push(
        self,
        body: Any,
        *,
        path: str = PATHS[0],
        query: str = f"?token={SECRET}",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """POST one push; (status, JSON answer)."""
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.http.post(
            f"{self.url}{path}{query}",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def waiting(self, activation_id: str) -> Order:
        """A paid order with its number, waiting for its SMS."""
        order = await self.stores.orders.insert(new_order())
        async with self.stores.transaction() as tx:
            assert await tx.orders.mark_paid(order.id, deadline=600)
        assert await self.stores.orders.transition(order.id, S.PAID, S.ALLOCATING_NUMBER)
        moved = await self.stores.orders.transition(
            order.id,
            S.ALLOCATING_NUMBER,
            S.WAITING_FOR_SMS,
            activation_id=activation_id,
            phone_number="+15550001",
            next_poll_at=NOW,
        )
        assert moved is not None
        return moved

    async def state(self, order_id: str) -> tuple[Status, str | None, int, int]:
        """(status, code, message rows, transitions into code_received) of one order."""
        order = await self.stores.orders.get(order_id)
        assert order is not None
        messages = await self.pool.fetchval(
            "SELECT count(*) FROM order_messages WHERE order_id = $1", order_id
        )
        moves = await self.pool.fetchval(
            "SELECT count(*) FROM order_transitions WHERE order_id = $1 AND to_status = $2",
            order_id,
            S.CODE_RECEIVED.value,
        )
        return order.status, order.code, messages, moves


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def gw(pool: asyncpg.Pool) -> AsyncIterator[Gateway]:
    """The gateway app over the test's database."""
    settings = Settings(webhook_secret=SECRET)
    app = init_app(settings, asyncio.Event())
    app.cleanup_ctx.clear()  # no NATS, node or provider: the webhook uses the database only
    stores = PgStores(pool, PREFIX)
    app[STORES] = stores
    runner = make_runner(app, settings)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        try:
            yield Gateway(f"http://127.0.0.1:{port}", stores, pool, http)
        finally:
            await runner.cleanup()


def arrivals(source: str) -> float:
    """The process's count of SMS recorded with this first source (the metric)."""
    return REGISTRY.get_sample_value("sms4sats_sms_arrivals_total", {"source": source}) or 0.0


def push_of(activation_id: Any, code: Any = CODE, **more: Any) -> dict[str, Any]:
    """The provider's activation push (reference body)."""
    return {
        "activationId": activation_id,
        "service": "tg",
        "text": f"Telegram code: {code}",
        "code": code,
        "country": 187,
        "receivedAt": "2026-05-08 12:03:10",
        **more,
    }


@pytest.mark.parametrize("path", PATHS)
async def test_a_push_without_the_secret_is_refused_and_changes_nothing(
    gw: Gateway, path: str
) -> None:
    order = await gw.waiting("9001")
    for query, headers in (
        ("", {}),
        ("?token=wrong", {}),
        (f"?token={SECRET}", {"X-Webhook-Secret": "wrong"}),
    ):
        status, body = await gw.push(push_of("9001"), path=path, query=query, headers=headers)
        assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    assert await gw.state(order.id) == (S.WAITING_FOR_SMS, None, 0, 0)


@pytest.mark.parametrize("path", PATHS)
async def test_the_same_push_five_times_stores_one_sms(
    gw: Gateway, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    order = await gw.waiting("9002")
    before = arrivals("webhook")

    answers = [await gw.push(push_of(9002), path=path) for _ in range(5)]  # a number id

    assert answers == [(200, {"status": "ok", "matched": True})] * 5
    assert arrivals("webhook") == before + 1
    assert await gw.state(order.id) == (S.CODE_RECEIVED, CODE, 1, 1)
    assert CODE not in caplog.text  # codes never reach a log line
    assert any("code received (webhook)" in r.getMessage() for r in caplog.records)


async def test_an_unknown_activation_is_acknowledged_unmatched(gw: Gateway) -> None:
    order = await gw.waiting("9003")

    assert await gw.push(push_of("nope-1")) == (200, {"status": "ok", "matched": False})

    assert await gw.state(order.id) == (S.WAITING_FOR_SMS, None, 0, 0)


async def test_a_push_without_a_code_makes_the_poller_look_now(gw: Gateway) -> None:
    order = await gw.waiting("9004")
    await gw.pool.execute(
        "UPDATE orders SET next_poll_at = now() + interval '1 hour' WHERE id = $1", order.id
    )
    body = push_of("9004")
    del body["code"]
    account = provider_account(Settings(webhook_secret=SECRET))
    assert await gw.stores.orders.claim_bulk_poll(account, 60.0)
    assert not await gw.stores.orders.claim_bulk_poll(account, 0.0)

    assert await gw.push(body) == (200, {"status": "ok", "matched": True})

    assert await gw.state(order.id) == (S.WAITING_FOR_SMS, None, 0, 0)
    due = await gw.pool.fetchval("SELECT next_poll_at <= now() FROM orders WHERE id = $1", order.id)
    assert due is True
    # The account's bulk poll, taken for a minute, is due again now too.
    assert await gw.stores.orders.claim_bulk_poll(account, 0.0)


GARBAGE: list[tuple[str, Any]] = [
    ("list body", [push_of("9005")]),
    ("no id", {"code": CODE}),
    ("id true", push_of(True)),
    ("id list", push_of(["9005"])),
    ("id null", push_of(None)),
    ("id empty", push_of("  ")),
    ("id with NUL", push_of("9005\x00")),
    ("id too long", push_of("9" * 65)),
    ("code list", push_of("9005", code=[CODE])),
    ("code true", push_of("9005", code=True)),
    ("code object", push_of("9005", code={"v": CODE})),
    ("code with NUL", push_of("9005", code="480\x0010")),
    ("code too long", push_of("9005", code="1" * 33)),
    ("text object", push_of("9005", text={"t": 1})),
    ("text too long", push_of("9005", text="x" * 2001)),
    ("service list", push_of("9005", service=["tg"])),
    ("country object", push_of("9005", country={"id": 187})),
    ("receivedAt list", push_of("9005", receivedAt=[1])),
]


async def test_garbage_is_a_400_and_changes_nothing(gw: Gateway) -> None:
    order = await gw.waiting("9005")
    for name, body in GARBAGE:
        status, answer = await gw.push(body)
        assert status == 400, name
        assert answer["error"]["code"] == "VALIDATION_ERROR", name
    for raw in (b"{", b"\xff\xfe", b'{"activationId": "9005", "code": "1"', b"null", b"\x00"):
        status, answer = await gw.push(None, raw=raw)
        assert status == 400 and answer["error"]["code"] == "VALIDATION_ERROR", raw
    status, answer = await gw.push(None, raw=json.dumps(push_of("9005", pad="x" * 40000)).encode())
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert await gw.state(order.id) == (S.WAITING_FOR_SMS, None, 0, 0)


async def test_text_the_database_cannot_store_is_cleaned_not_refused(gw: Gateway) -> None:
    order = await gw.waiting("9006")

    status, _ = await gw.push(push_of("9006", text="Telegram code:\x00 48010"))

    assert status == 200
    assert await gw.state(order.id) == (S.CODE_RECEIVED, CODE, 1, 1)


async def test_webhook_pushes_and_two_pollers_racing_store_the_sms_once(gw: Gateway) -> None:
    orders = [await gw.waiting(f"race-{n}") for n in range(10)]
    sim = FakeSms(Clock())
    for n in range(10):
        sim.active.append(f"race-{n}")
        sim.statuses[f"race-{n}"] = ActivationStatus("received", CODE, f"Telegram code: {CODE}")
    replicas = [SmsWatch(gw.stores, Settings(), sim, asyncio.Event()) for _ in range(2)]

    results = await asyncio.gather(
        *(gw.push(push_of(f"race-{n}")) for n in range(10) for _ in range(3)),
        *(w.poll_round(0.0) for w in replicas),
        *(w.check(o) for w in replicas for o in orders),
    )

    assert all(r is None or r == (200, {"status": "ok", "matched": True}) for r in results)
    for order in orders:
        assert await gw.state(order.id) == (S.CODE_RECEIVED, CODE, 1, 1)
