"""The ops server: liveness from heartbeats only, readiness naming what is down, metrics text;
the gateway's request metrics and correlation ids; the shutdown grace arithmetic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from libs.common.core import metrics
from libs.common.core.logs import LOG_CONTEXT
from libs.common.domain.events import CORRELATION_HEADER, Event, EventType
from libs.common.messaging.ops import Health, ops_app
from libs.common.messaging.runtime import Stop, close_reserve, remaining_grace
from libs.common.persistence.outbox_store import PgOutbox
from sandbox.devstack import replica_counts
from services.gateway.app import observe_middleware
from services.gateway.errors import error_middleware


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakePool:
    """Answers SELECT 1, fails, or hangs, as told."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def fetchval(self, _sql: str) -> int:
        if self.mode == "fail":
            raise ConnectionRefusedError("database down")
        if self.mode == "hang":
            await asyncio.sleep(60)
        return 1


class FakeNats:
    """Only the connection flag readiness looks at."""

    def __init__(self, connected: bool) -> None:
        self.is_connected = connected


async def _get(health: Health, path: str) -> tuple[int, Any]:
    async with TestClient(TestServer(ops_app(health))) as client:
        resp = await client.get(path)
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_livez_follows_heartbeats_and_ignores_the_broker_and_database() -> None:
    clock = Clock()
    health = Health(stale_after=30, clock=clock)  # no pool, no NATS attached: both "down"
    health.beat("consumer:provider")
    health.beat("scheduler-tick")
    assert await _get(health, "/livez") == (200, {"status": "ok"})

    clock.now += 20
    health.beat("scheduler-tick")
    clock.now += 15  # the consumer loop last beat 35 s ago
    status, body = await _get(health, "/livez")
    assert status == 503
    assert body["stale_loops"] == {"consumer:provider": 35.0}

    health.forget("consumer:provider")  # a loop that ended on purpose is not "stuck"
    assert (await _get(health, "/livez"))[0] == 200


@pytest.mark.parametrize(
    ("pool", "nc", "database", "nats"),
    [
        (None, None, "not connected yet", "not connected yet"),
        (FakePool("fail"), FakeNats(True), "error: ConnectionRefusedError", "ok"),
        (FakePool("ok"), FakeNats(False), "ok", "disconnected"),
    ],
)
async def test_readyz_names_what_is_down(pool: Any, nc: Any, database: str, nats: str) -> None:
    health = Health()
    health.attach(pool, nc)
    health.beat("x")
    status, body = await _get(health, "/readyz")
    assert status == 503
    assert body == {"status": "unavailable", "database": database, "nats": nats}
    assert (await _get(health, "/livez"))[0] == 200


async def test_readyz_answers_in_time_when_the_database_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("libs.common.messaging.ops.READY_TIMEOUT_SECONDS", 0.1)
    health = Health()
    health.attach(FakePool("hang"), FakeNats(True))  # type: ignore[arg-type]
    status, body = await _get(health, "/readyz")
    assert (status, body["database"]) == (503, "error: TimeoutError")


async def test_readyz_is_ok_when_both_answer() -> None:
    health = Health()
    health.attach(FakePool("ok"), FakeNats(True))  # type: ignore[arg-type]
    assert await _get(health, "/readyz") == (
        200,
        {"status": "ok", "database": "ok", "nats": "ok"},
    )


async def test_metrics_serves_the_prometheus_text_format() -> None:
    registry = CollectorRegistry()
    Counter("sms4sats_test_things", "Things", ["kind"], registry=registry).labels("a").inc(3)
    async with TestClient(TestServer(ops_app(Health(), registry))) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'sms4sats_test_things_total{kind="a"} 3.0' in await resp.text()


async def test_the_default_registry_exports_the_contract_metrics() -> None:
    metrics.TRANSITIONS.labels("paid", "allocating_number").inc()
    _, text = await _get(Health(), "/metrics")
    for name in (
        "sms4sats_orders",
        "sms4sats_order_transitions_total",
        "sms4sats_stage_seconds",
        "sms4sats_consumer_pending",
        "sms4sats_refunds_total",
        "sms4sats_fx_rate_age_seconds",
        "sms4sats_http_requests_total",
    ):
        assert f"# TYPE {name} " in text, name


async def _echo_context(request: web.Request) -> web.Response:
    if request.match_info.get("n") == "boom":
        raise RuntimeError("boom")
    return web.json_response(LOG_CONTEXT.get())


def _sample(route: str, status: str) -> float:
    value = metrics.HTTP_REQUESTS.labels(route, status)._value.get()
    return float(value)


async def test_gateway_requests_are_counted_by_route_template_with_a_correlation_id() -> None:
    app = web.Application(middlewares=[observe_middleware, error_middleware])
    app.router.add_get("/things/{n}", _echo_context)
    before = _sample("/things/{n}", "200"), _sample("/things/{n}", "500")
    before_unmatched = _sample("unmatched", "404")
    async with TestClient(TestServer(app)) as client:
        first = await client.get("/things/1")
        second = await client.get("/things/2", headers={CORRELATION_HEADER: "req-42"})
        bad = await client.get("/things/3", headers={CORRELATION_HEADER: "no spaces\tor tabs"})
        await client.get("/things/boom")
        await client.get("/elsewhere/1")
        # Generated when absent or unusable, echoed in the response and the log context.
        generated = first.headers[CORRELATION_HEADER]
        assert len(generated) == 32 and (await first.json()) == {"correlation_id": generated}
        assert second.headers[CORRELATION_HEADER] == "req-42"
        assert (await second.json()) == {"correlation_id": "req-42"}
        assert bad.headers[CORRELATION_HEADER] != "no spaces\tor tabs"
    assert _sample("/things/{n}", "200") - before[0] == 3  # one label for every id
    assert _sample("/things/{n}", "500") - before[1] == 1
    assert _sample("unmatched", "404") - before_unmatched == 1


class RecordingConn:
    """Captures what the outbox's enqueue writes."""

    def __init__(self) -> None:
        self.args: tuple[Any, ...] = ()

    async def execute(self, _sql: str, *args: Any) -> None:
        self.args = args


async def test_enqueued_events_carry_the_correlation_id_being_handled() -> None:
    conn = RecordingConn()
    outbox = PgOutbox(conn, "p")
    await outbox.enqueue(Event(EventType.PAID, "o1"))
    assert conn.args[3][CORRELATION_HEADER] == "o1"  # nothing in context: the order id
    token = LOG_CONTEXT.set({"order_id": "o0", "correlation_id": "req-7"})
    try:
        await outbox.enqueue(Event(EventType.PAID, "o1"))
        assert conn.args[3][CORRELATION_HEADER] == "req-7"
        own = Event(EventType.PAID, "o1", correlation_id="mine")
        await outbox.enqueue(own)
        assert conn.args[3][CORRELATION_HEADER] == "mine"
    finally:
        LOG_CONTEXT.reset(token)


async def test_one_grace_is_shared_by_every_shutdown_step() -> None:
    stop = Stop(grace=20.0)
    assert stop.remaining() == 20.0  # not started before the signal
    stop.set()
    await asyncio.sleep(0.05)
    assert 19.0 < stop.remaining() < 20.0
    stop.set()  # a second signal does not restart the clock
    assert stop.remaining() < 20.0
    assert remaining_grace(asyncio.Event(), 7.0) == 7.0
    assert close_reserve(20.0) == 5.0 and close_reserve(4.0) == 1.0


def test_replica_counts_per_worker() -> None:
    assert replica_counts(2, {"REPLICAS_PROVIDER": "3"}) == {
        "gateway": 1,
        "payments": 2,
        "provider": 3,
        "scheduler": 2,
    }
    with pytest.raises(ValueError, match="REPLICAS_SCHEDULER"):
        replica_counts(1, {"REPLICAS_SCHEDULER": "0"})
