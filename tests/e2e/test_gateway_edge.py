"""The gateway's edge on a stack with production clocks and a small order-creation limit:
forged credentials buy no extra orders, refund invoices must outlive the latest refund,
provider dates out of range are stored once, and the webhook secret never reaches a log."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from libs.common.adapters.lightning import LndClient
from libs.common.core.config import load_settings
from libs.common.domain.refund_invoices import refund_min_validity_seconds
from tests.e2e.conftest import E2E_ENV, node_client, running_stack
from tests.e2e.test_l402_order import TERMINAL, _pay, _poll
from tests.e2e.test_openapi_fuzz import _minted

pytestmark = pytest.mark.e2e

# The e2e clocks are shortened; refund validity is derived from them, so these tests run
# with the defaults (the derived minimum is then above the old fixed 30 minutes).
SHORT_CLOCKS = {
    "SMS4SATS_ORDER_TIMEOUT_SECONDS",
    "SMS4SATS_HOLD_GRACE_SECONDS",
    "SMS4SATS_PROVIDER_GIVEUP_SECONDS",
    "SMS4SATS_REFUND_RETRY_BASE_SECONDS",
}
CHALLENGES_PER_MINUTE = 30  # a burst of 5, then one every 2 s
EDGE_ENV = {
    **{k: v for k, v in E2E_ENV.items() if k not in SHORT_CLOCKS},
    "SMS4SATS_RATE_CHALLENGES_PER_MINUTE": str(CHALLENGES_PER_MINUTE),
}
SECRET = EDGE_ENV["SMS4SATS_WEBHOOK_SECRET"]


@pytest.fixture(scope="module")
def edge_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with the default clocks and a small order-creation limit."""
    with running_stack(tmp_path_factory.mktemp("edge-stack"), EDGE_ENV) as info:
        yield info


@pytest.fixture
async def wallet(edge_stack: dict[str, Any]) -> AsyncIterator[LndClient]:
    """The customer's node."""
    client = node_client(edge_stack["payer_lnd"])
    yield client
    await client.close()


async def _refund(wallet: LndClient, expiry: int = 3600) -> str:
    return (await wallet.add_invoice(value_msat=0, memo="refund", expiry=expiry)).payment_request


async def _post(
    http: aiohttp.ClientSession,
    stack: dict[str, Any],
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(
        f"{stack['gateway_url']}/v2/l402/order", json=body, headers=headers or {}
    ) as resp:
        return resp.status, await resp.json()


async def _order_count(stack: dict[str, Any]) -> int:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()


async def _wait_for_tokens(count: int) -> None:
    """Wait until the client's creation bucket holds `count` tokens, whatever came before."""
    await asyncio.sleep(count * 60 / CHALLENGES_PER_MINUTE)


def _read_logs(logs_dir: str) -> dict[str, str]:
    """Every log file of the stack (services and simulators) by name."""
    return {p.name: p.read_text() for p in Path(logs_dir).glob("*.log")}


def _forged() -> dict[str, str]:
    """A well-formed credential for a token that does not exist, and a made-up client."""
    credential = _minted(
        secrets.token_bytes(32),
        secrets.token_bytes(32),
        secrets.token_bytes(32),
        int(time.time()) + 3600,
        "L402",
    )
    return {"Authorization": credential, "X-Forwarded-For": f"10.{secrets.randbelow(250)}.0.1"}


async def test_forged_credentials_are_charged_like_plain_order_creation(
    edge_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    refunds = [await _refund(wallet) for _ in range(15)]
    await _wait_for_tokens(CHALLENGES_PER_MINUTE // 6)  # the whole burst
    before = await _order_count(edge_stack)
    started = time.monotonic()
    statuses = []
    for refund in refunds:
        body = {"country": "US", "service": "tg", "refundInvoice": refund}
        status, answer = await _post(http, edge_stack, body, _forged())
        assert status in (402, 429), answer
        statuses.append(status)
    elapsed = time.monotonic() - started
    minted = statuses.count(402)
    # The burst of 5, plus what refilled while they ran; before the fix all 15 minted.
    allowed = CHALLENGES_PER_MINUTE // 6 + int(elapsed * CHALLENGES_PER_MINUTE / 60) + 1
    assert 1 <= minted <= allowed, (statuses, elapsed)
    assert 429 in statuses, statuses
    assert await _order_count(edge_stack) - before == minted
    # The same bucket as plain creation: plain POSTs right after are refused too (at most one
    # token can refill while three go out).
    plain_statuses = []
    for _ in range(3):
        plain = {"country": "US", "service": "tg", "refundInvoice": "lnbcrt1invalid"}
        async with http.post(f"{edge_stack['gateway_url']}/v2/l402/order", json=plain) as resp:
            plain_statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
    assert plain_statuses.count(429) >= 2, plain_statuses


async def test_a_refund_invoice_valid_for_the_old_minimum_is_refused(
    edge_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    needed = refund_min_validity_seconds(load_settings(EDGE_ENV))
    assert needed > 1800  # the default clocks need more than the old fixed 30 minutes
    minutes = -(-needed // 60)
    await _wait_for_tokens(3)
    for order in (
        {"country": "US", "service": "tg"},
        {"type": "rent-number", "country": "US", "service": "tg", "durationMinutes": 120},
    ):
        body = {**order, "refundInvoice": await _refund(wallet, expiry=1800 + 120)}
        status, answer = await _post(http, edge_stack, body)
        assert status == 400, answer
        assert answer["error"]["code"] == "REFUND_INVOICE_EXPIRES_TOO_SOON"
        assert f"at least {minutes} more minutes" in answer["error"]["message"]
    # Long enough is accepted.
    body = {"country": "US", "service": "tg", "refundInvoice": await _refund(wallet, needed + 120)}
    status, answer = await _post(http, edge_stack, body)
    assert status == 402, answer


async def _rental(
    http: aiohttp.ClientSession, stack: dict[str, Any], wallet: LndClient
) -> tuple[str, str, str]:
    """A paid, active rental: its order id, credential and the provider's rent id."""
    await _wait_for_tokens(1)
    body = {
        "type": "rent-number",
        "country": "US",
        "service": "tg",
        "durationMinutes": 120,
        "refundInvoice": await _refund(wallet),
    }
    status, challenge = await _post(http, stack, body)
    assert status == 402, challenge
    auth = f"L402 {challenge['macaroon']}:{await _pay(wallet, challenge['invoice'])}"
    order, seen = await _poll(http, stack, challenge["orderId"], auth, {"rent_active"} | TERMINAL)
    assert order["status"] == "rent_active", seen
    async with http.get(f"{stack['provider_sim_url']}/sim/rentals") as resp:
        rentals = await resp.json()
    rent_id = next(r["rentId"] for r in rentals if r["phoneNumber"] == order["phoneNumber"][1:])
    return challenge["orderId"], auth, str(rent_id)


EDGE_DATES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+23:59",
    "2026-05-08T10:20:00+99:00",
    # Exists in UTC, but read back as an epoch float it rounds into year 10000.
    "9999-12-31T23:59:59.999999Z",
]


async def test_provider_dates_out_of_range_are_stored_once_and_the_rental_goes_on(
    edge_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    order_id, auth, rent_id = await _rental(http, edge_stack, wallet)
    url = f"{edge_stack['gateway_url']}/v2/l402/webhooks/rent"
    header = {"X-Webhook-Secret": SECRET}
    for n, date in enumerate(EDGE_DATES):
        sms = {"phoneFrom": "T", "text": f"edge {n} code 7{n}31", "date": date}
        push = {"rentId": rent_id, "sms": sms}
        for _ in range(2):  # a retried push
            async with http.post(url, json=push, headers=header) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["matched"] is True
    # The rental still stores what comes next.
    later = {"rentId": rent_id, "sms": {"text": "after code 86420", "date": "2026-11-22 10:00:00"}}
    async with http.post(url, json=later, headers=header) as resp:
        assert resp.status == 200
    order, _ = await _poll(http, edge_stack, order_id, auth, {"rent_active"})
    texts = [m["text"] for m in order["messages"]]
    for n in range(len(EDGE_DATES)):
        assert texts.count(f"edge {n} code 7{n}31") == 1, texts
    assert texts.count("after code 86420") == 1, texts
    # An unusable date is shown as when we received it, not a year-1 or year-9999 time.
    edge = [m for m in order["messages"] if m["text"].startswith("edge ")]
    assert all(m["receivedAt"].startswith(time.strftime("%Y", time.gmtime())) for m in edge)


async def test_the_webhook_secret_leaves_no_trace_in_any_log(
    edge_stack: dict[str, Any], http: aiohttp.ClientSession, wallet: LndClient
) -> None:
    _, _, rent_id = await _rental(http, edge_stack, wallet)
    url = f"{edge_stack['gateway_url']}/v2/l402/webhooks/rent"
    token = quote(SECRET, safe="")
    push = {"rentId": rent_id, "sms": {"text": "via url code 55110", "date": "2026-11-22 11:00:00"}}
    async with http.post(f"{url}?token={token}", json=push) as resp:
        assert resp.status == 200
    async with http.post(f"{url}?token=wrong-{token}", json=push) as resp:
        assert resp.status == 401
    # The header decides when both are sent.
    wrong_header = {"X-Webhook-Secret": "no"}
    async with http.post(f"{url}?token={token}", json=push, headers=wrong_header) as resp:
        assert resp.status == 401
    # The simulator's own pushes (auto-SMS on the new rental) use the ?token= URL too.
    async with http.get(f"{edge_stack['provider_sim_url']}/sim/webhooks") as resp:
        pushes = await resp.json()
    assert any("token=" in p["url"] and p["delivered"] for p in pushes), pushes
    await asyncio.sleep(0.5)  # log lines are flushed as written; give the gateway a moment
    logs = _read_logs(edge_stack["logs_dir"])
    gateway = "".join(text for name, text in logs.items() if name.startswith("gateway"))
    # The access log runs as the service runs it, and shows the webhook calls redacted.
    assert "/v2/l402/webhooks/rent?token=REDACTED" in gateway
    for name, text in logs.items():
        assert SECRET not in text and token not in text, name
