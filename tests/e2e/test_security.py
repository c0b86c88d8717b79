"""L402 credential security over HTTP: tampering, replay across orders, expiry, forgery, logs.

Everything goes through the gateway's HTTP API. The database is only read, to fetch a token's
root key when a test mints a credential itself (expired, cross-order, re-keyed), and to check
that a refused request created or changed nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from multidict import CIMultiDict
from pymacaroons import Macaroon
from pymacaroons.serializers.binary_serializer import BinarySerializer

from libs.common.adapters.lightning import LndClient
from libs.common.domain import l402
from tests.e2e.conftest import node_client

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "refunded", "refund_failed", "failed", "expired"}
_SERIALIZER = BinarySerializer()

# Every secret handed out by this module, for the log check at the end.
_SECRETS: list[str] = []


@dataclass(frozen=True)
class Order:
    """An order as its customer knows it: the 402 challenge and (if paid) the preimage."""

    order_id: str
    macaroon: str
    invoice: str
    body: dict[str, Any]
    preimage: str = ""

    @property
    def auth(self) -> str:
        return f"L402 {self.macaroon}:{self.preimage}"

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.macaroon, validate=True)

    @property
    def identifier(self) -> bytes:
        return _parse(self.macaroon).identifier_bytes


# ---------------------------------------------------------------------------------------------
# helpers


def _parse(macaroon_b64: str) -> Macaroon:
    return _SERIALIZER.deserialize_raw(base64.b64decode(macaroon_b64, validate=True))


def _encode(macaroon: Macaroon) -> str:
    """V2 binary, standard base64 with padding: exactly what the gateway mints."""
    return base64.b64encode(_SERIALIZER.serialize_raw(macaroon)).decode("ascii")


def _append(macaroon_b64: str, *caveats: str) -> str:
    """A holder attenuating their own macaroon: append first-party caveats, re-serialize."""
    macaroon = _parse(macaroon_b64)
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    return _encode(macaroon)


def _caveat(macaroon_b64: str, condition: str) -> str:
    for caveat in _parse(macaroon_b64).caveats:
        name, _, value = caveat.caveat_id_bytes.decode().partition("=")
        if name == condition:
            return value
    raise AssertionError(f"no {condition} caveat")


async def _root_key(stack: dict[str, Any], identifier: bytes) -> bytes:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        key = await conn.fetchval(
            "SELECT root_key FROM l402_tokens WHERE key_id = $1", l402.root_key_id(identifier)
        )
    finally:
        await conn.close()
    assert key is not None, "token row not found"
    return bytes(key)


async def _db_snapshot(stack: dict[str, Any], order_id: str) -> dict[str, Any]:
    """What a refused request must not change: the order row, its transitions and its events."""
    conn = await asyncpg.connect(stack["database_url"])
    try:
        row = await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)
        transitions = await conn.fetchval(
            "SELECT count(*) FROM order_transitions WHERE order_id = $1", order_id
        )
        events = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE payload::text LIKE '%' || $1 || '%'", order_id
        )
        refunds = await conn.fetchval("SELECT count(*) FROM refunds WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    assert row is not None
    # The provider worker's own bookkeeping (SMS polls, finishing the activation) moves on by
    # itself; everything else must stand still.
    moving = {"next_poll_at", "updated_at", "finish_due_at", "finish_attempts"}
    state = {k: v for k, v in dict(row).items() if k not in moving}
    return {"row": state, "transitions": transitions, "events": events, "refunds": refunds}


async def _counts(stack: dict[str, Any]) -> tuple[int, int]:
    conn = await asyncpg.connect(stack["database_url"])
    try:
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        tokens = await conn.fetchval("SELECT count(*) FROM l402_tokens")
    finally:
        await conn.close()
    return int(orders), int(tokens)


Headers = str | list[tuple[str, str]] | CIMultiDict[str] | None


def _headers(auth: Headers) -> Any:
    if auth is None:
        return None
    if isinstance(auth, str):
        return {"Authorization": auth}
    return auth


async def _request(
    http: aiohttp.ClientSession, method: str, url: str, auth: Headers, **kwargs: Any
) -> tuple[int, Any, str]:
    async with http.request(method, url, headers=_headers(auth), **kwargs) as resp:
        text = await resp.text()
        content_type = resp.content_type
    body: Any = None
    if content_type == "application/json":
        body = json.loads(text)
    return resp.status, body, text


async def _get(
    http: aiohttp.ClientSession, stack: dict[str, Any], order_id: str, auth: Headers
) -> tuple[int, Any, str]:
    return await _request(http, "GET", f"{stack['gateway_url']}/v2/l402/order/{order_id}", auth)


def _assert_ok(result: tuple[int, Any, str], order_id: str) -> dict[str, Any]:
    status, body, text = result
    assert status == 200, text
    assert body["orderId"] == order_id
    return body  # type: ignore[no-any-return]


def _assert_refused(result: tuple[int, Any, str], code: str = l402.INVALID_MACAROON) -> None:
    status, body, text = result
    assert status == 403, f"expected 403 {code}, got {status}: {text[:300]}"
    assert body is not None, f"403 without a JSON body: {text[:300]}"
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    # A refusal never carries order data.
    assert "orderId" not in body and "code" not in body and "phoneNumber" not in body


async def _sim(http: aiohttp.ClientSession, stack: dict[str, Any], path: str, body: Any) -> None:
    async with http.post(f"{stack['provider_sim_url']}{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def _create(
    http: aiohttp.ClientSession, stack: dict[str, Any], payer: LndClient, country: str = "US"
) -> Order:
    refund = await payer.add_invoice(value_msat=0, memo="refund me", expiry=3600)
    body = {
        "type": "receive-sms",
        "country": country,
        "service": "tg",
        "refundInvoice": refund.payment_request,
    }
    async with http.post(f"{stack['gateway_url']}/v2/l402/order", json=body) as resp:
        assert resp.status == 402, await resp.text()
        challenge = await resp.json()
    _SECRETS.append(challenge["macaroon"])
    return Order(challenge["orderId"], challenge["macaroon"], challenge["invoice"], body)


async def _pay(payer: LndClient, order: Order) -> Order:
    payment = await payer.pay(order.invoice, fee_limit_sat=10, timeout_seconds=30)
    assert payment.status == "SUCCEEDED", payment.failure_reason
    assert payment.preimage is not None
    _SECRETS.append(payment.preimage.hex())
    return Order(order.order_id, order.macaroon, order.invoice, order.body, payment.preimage.hex())


async def _poll(
    http: aiohttp.ClientSession,
    stack: dict[str, Any],
    order: Order,
    until: set[str],
    within: float = 20.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        body = _assert_ok(await _get(http, stack, order.order_id, order.auth), order.order_id)
        if body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"order stuck in {body['status']}"
        await asyncio.sleep(0.1)


def _flip_signature(macaroon_b64: str) -> str:
    raw = bytearray(base64.b64decode(macaroon_b64))
    raw[-1] ^= 0x01  # the V2 binary format ends with the 32-byte signature
    return base64.b64encode(bytes(raw)).decode("ascii")


def _random_preimage() -> str:
    return secrets.token_bytes(32).hex()


# ---------------------------------------------------------------------------------------------
# fixtures


@dataclass(frozen=True)
class Orders:
    a: Order  # paid, completed
    b: Order  # paid, completed
    unpaid: Order


@pytest.fixture(scope="module")
async def orders(stack: dict[str, Any]) -> AsyncIterator[Orders]:
    """Two paid and completed orders (A, B) and one unpaid order, shared by the module."""
    payer = node_client(stack["payer_lnd"])
    try:
        async with aiohttp.ClientSession() as http:
            await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
            a = await _pay(payer, await _create(http, stack, payer))
            b = await _pay(payer, await _create(http, stack, payer))
            unpaid = await _create(http, stack, payer)
            # Settle both before the tests start, so "unchanged" means something.
            await asyncio.gather(_poll(http, stack, a, TERMINAL), _poll(http, stack, b, TERMINAL))
            yield Orders(a=a, b=b, unpaid=unpaid)
    finally:
        await payer.close()


# ---------------------------------------------------------------------------------------------
# tampering and malformed credentials


def _malformed(a: Order) -> Iterator[tuple[str, str]]:
    mac, pre = a.macaroon, a.preimage
    yield "flipped signature byte", f"L402 {_flip_signature(mac)}:{pre}"
    yield "truncated macaroon", f"L402 {base64.b64encode(a.raw[:-7]).decode()}:{pre}"
    yield "truncated base64 text", f"L402 {mac[: len(mac) // 2]}:{pre}"
    yield "garbage base64", f"L402 !!not*base64??:{pre}"
    yield "base64 of garbage", f"L402 {base64.b64encode(b'hello world').decode()}:{pre}"
    yield "missing colon", f"L402 {mac}{pre}"
    yield "macaroon only", f"L402 {mac}"
    yield "empty macaroon", f"L402 :{pre}"
    yield "empty credential", "L402 "
    yield "short preimage", f"L402 {mac}:{pre[:62]}"
    yield "long preimage", f"L402 {mac}:{pre}00"
    yield "non-hex preimage", f"L402 {mac}:zz{pre[2:]}"
    yield "0x preimage", f"L402 {mac}:0x{pre[2:]}"
    yield "two macaroons", f"L402 {mac},{mac}:{pre}"
    yield "two credentials in one header", f"L402 {mac}:{pre}, L402 {mac}:{pre}"
    yield "bearer scheme", f"Bearer {mac}:{pre}"
    yield "no scheme", f"{mac}:{pre}"
    yield "space inside credential", f"L402 {mac}: {pre}"


async def test_valid_credential_and_tampered_or_malformed_ones(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a = orders.a
    _assert_ok(await _get(http, stack, a.order_id, a.auth), a.order_id)
    failures = []
    for name, auth in _malformed(a):
        status, body, text = await _get(http, stack, a.order_id, auth)
        code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
        if status != 403 or code != l402.INVALID_MACAROON:
            failures.append(f"{name}: {status} {text[:200]}")
    assert not failures, "\n".join(failures)


async def test_tolerated_credential_variants_are_accepted(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a = orders.a
    variants = {
        "uppercase preimage": f"L402 {a.macaroon}:{a.preimage.upper()}",
        "LSAT scheme": f"LSAT {a.macaroon}:{a.preimage}",
        "lowercase scheme": f"l402 {a.macaroon}:{a.preimage}",
        "mixed-case scheme": f"lSaT {a.macaroon}:{a.preimage}",
        "surrounding whitespace": f"  L402   {a.macaroon}:{a.preimage}  ",
    }
    for name, auth in variants.items():
        status, _body, text = await _get(http, stack, a.order_id, auth)
        assert status == 200, f"{name}: {status} {text[:200]}"


# ---------------------------------------------------------------------------------------------
# caveats appended by the holder


async def test_appended_caveats_attenuate_but_never_extend(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a = orders.a
    original_until = int(_caveat(a.macaroon, l402.COND_VALID_UNTIL))
    assert original_until > time.time()
    pre = a.preimage

    # Unknown conditions (aperture's client appends the preimage) are skipped.
    with_preimage = _append(a.macaroon, f"preimage={pre}")
    assert with_preimage != a.macaroon
    _assert_ok(await _get(http, stack, a.order_id, f"L402 {with_preimage}:{pre}"), a.order_id)

    # A stricter expiry still in the future is fine (control for the two refusals below).
    stricter = _append(a.macaroon, f"{l402.COND_VALID_UNTIL}={int(time.time()) + 600}")
    _assert_ok(await _get(http, stack, a.order_id, f"L402 {stricter}:{pre}"), a.order_id)

    looser = _append(a.macaroon, f"{l402.COND_VALID_UNTIL}={original_until + 86400}")
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {looser}:{pre}"))

    past = _append(a.macaroon, f"{l402.COND_VALID_UNTIL}={int(time.time()) - 60}")
    _assert_refused(
        await _get(http, stack, a.order_id, f"L402 {past}:{pre}"), l402.EXPIRED_MACAROON
    )

    # Re-targeting the token at another order by appending an order caveat.
    retarget = _append(a.macaroon, f"{l402.COND_ORDER}={orders.b.order_id}")
    _assert_refused(await _get(http, stack, orders.b.order_id, f"L402 {retarget}:{pre}"))
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {retarget}:{pre}"))

    # Widening the services caveat.
    wider = _append(a.macaroon, f"{l402.COND_SERVICES}={l402.SERVICE}:0,other:0")
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {wider}:{pre}"))


# ---------------------------------------------------------------------------------------------
# credentials minted with the token's real root key (read from the database)


async def test_expired_credential_with_real_root_key(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a = orders.a
    root_key = await _root_key(stack, a.identifier)
    now = int(time.time())

    def minted(valid_until: int, order_id: str = a.order_id) -> str:
        mac = l402.mint(
            root_key=root_key, identifier=a.identifier, order_id=order_id, valid_until=valid_until
        )
        return f"L402 {mac}:{a.preimage}"

    # Control: the same recipe with a future expiry is accepted, so the refusal is the expiry.
    _assert_ok(await _get(http, stack, a.order_id, minted(now + 600)), a.order_id)
    _assert_refused(await _get(http, stack, a.order_id, minted(now - 60)), l402.EXPIRED_MACAROON)
    _assert_refused(await _get(http, stack, a.order_id, minted(0)), l402.EXPIRED_MACAROON)

    # The real key signing a caveat for order B: neither B's URL nor A's opens.
    _assert_refused(
        await _get(http, stack, orders.b.order_id, minted(now + 600, orders.b.order_id))
    )
    _assert_refused(await _get(http, stack, a.order_id, minted(now + 600, orders.b.order_id)))


async def test_forged_macaroons_are_refused(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a, b = orders.a, orders.b
    until = int(time.time()) + 600

    def forged(root_key: bytes, identifier: bytes) -> str:
        mac = l402.mint(
            root_key=root_key, identifier=identifier, order_id=a.order_id, valid_until=until
        )
        return f"L402 {mac}:{a.preimage}"

    # Same identifier, random root key.
    _assert_refused(await _get(http, stack, a.order_id, forged(l402.new_root_key(), a.identifier)))
    # Same identifier, another token's (B's) real root key.
    b_key = await _root_key(stack, b.identifier)
    _assert_refused(await _get(http, stack, a.order_id, forged(b_key, a.identifier)))
    # A's real root key and payment hash, but a fresh token id: not a token we issued.
    a_key = await _root_key(stack, a.identifier)
    fresh = l402.new_identifier(l402.parse_identifier(a.identifier).payment_hash)
    _assert_refused(await _get(http, stack, a.order_id, forged(a_key, fresh)))


# ---------------------------------------------------------------------------------------------
# several Authorization headers


async def test_several_authorization_headers_are_refused(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a = orders.a
    good = a.auth
    bad = f"LSAT {_flip_signature(a.macaroon)}:{a.preimage}"
    cases = {
        "bad then good": [("Authorization", bad), ("Authorization", good)],
        "good then bad": [("Authorization", good), ("Authorization", bad)],
        "good and good": [("Authorization", good), ("Authorization", good)],
        "LSAT good and L402 good": [
            ("Authorization", f"LSAT {a.macaroon}:{a.preimage}"),
            ("Authorization", good),
        ],
    }
    for name, headers in cases.items():
        multi = CIMultiDict(headers)
        assert len(multi.getall("Authorization")) == 2
        result = await _get(http, stack, a.order_id, multi)
        assert result[0] != 200, f"{name}: accepted"
        _assert_refused(result)
        # The re-POST path reads the header the same way.
        result = await _request(
            http, "POST", f"{stack['gateway_url']}/v2/l402/order", multi, json=a.body
        )
        assert result[0] != 200, f"{name} on re-POST: accepted"
        _assert_refused(result)


# ---------------------------------------------------------------------------------------------
# credentials used against the wrong order or with the wrong preimage


async def test_credential_of_order_a_does_not_open_or_cancel_order_b(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a, b = orders.a, orders.b
    before = await _db_snapshot(stack, b.order_id)
    _assert_refused(await _get(http, stack, b.order_id, a.auth))
    cancel_url = f"{stack['gateway_url']}/v2/l402/order/{b.order_id}/cancel"
    _assert_refused(await _request(http, "POST", cancel_url, a.auth))
    await asyncio.sleep(0.3)  # give a wrongly enqueued cancel time to show
    assert await _db_snapshot(stack, b.order_id) == before
    # B still answers to its own credential, unchanged.
    _assert_ok(await _get(http, stack, b.order_id, b.auth), b.order_id)


async def test_cancel_of_a_cancelable_order_with_another_orders_credential(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient, orders: Orders
) -> None:
    """The victim is waiting for its SMS and past the cancel delay: its own cancel would pass."""
    a = orders.a
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        victim = await _pay(payer, await _create(http, stack, payer))
        waiting = await _poll(http, stack, victim, {"waiting_for_sms"} | TERMINAL)
        assert waiting["status"] == "waiting_for_sms", waiting
        cancelable_at = waiting["cancelableAt"].replace("Z", "+00:00")
        delay = datetime.fromisoformat(cancelable_at).timestamp() - time.time()
        await asyncio.sleep(max(0.0, delay) + 0.3)
        before = await _db_snapshot(stack, victim.order_id)
        assert before["row"]["status"] == "waiting_for_sms"

        cancel_url = f"{stack['gateway_url']}/v2/l402/order/{victim.order_id}/cancel"
        _assert_refused(await _request(http, "POST", cancel_url, a.auth))
        # The victim's own macaroon with A's preimage, and A's macaroon with the victim's.
        _assert_refused(
            await _request(http, "POST", cancel_url, f"L402 {victim.macaroon}:{a.preimage}")
        )
        _assert_refused(
            await _request(http, "POST", cancel_url, f"L402 {a.macaroon}:{victim.preimage}")
        )
        await asyncio.sleep(0.5)
        after = await _db_snapshot(stack, victim.order_id)
        assert after == before
    finally:
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    # Let the victim finish (the restored auto-SMS delivers), so it does not linger.
    await _poll(http, stack, victim, TERMINAL)


async def test_mismatched_preimages_are_refused(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a, b, unpaid = orders.a, orders.b, orders.unpaid
    # B's macaroon with A's preimage, on either order.
    _assert_refused(await _get(http, stack, b.order_id, f"L402 {b.macaroon}:{a.preimage}"))
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {b.macaroon}:{a.preimage}"))
    # A's macaroon with a preimage of another invoice (B's) or random bytes.
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {a.macaroon}:{b.preimage}"))
    _assert_refused(await _get(http, stack, b.order_id, f"L402 {a.macaroon}:{b.preimage}"))
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {a.macaroon}:{_random_preimage()}"))
    # The preimage's hash itself, or all zeros.
    digest = hashlib.sha256(bytes.fromhex(a.preimage)).hexdigest()
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {a.macaroon}:{digest}"))
    _assert_refused(await _get(http, stack, a.order_id, f"L402 {a.macaroon}:{'0' * 64}"))
    # An unpaid order: its macaroon with a random preimage, or with a paid order's preimage.
    _assert_refused(
        await _get(http, stack, unpaid.order_id, f"L402 {unpaid.macaroon}:{_random_preimage()}")
    )
    _assert_refused(
        await _get(http, stack, unpaid.order_id, f"L402 {unpaid.macaroon}:{a.preimage}")
    )
    _assert_refused(await _get(http, stack, unpaid.order_id, a.auth))
    # Controls: the right pairs still work.
    _assert_ok(await _get(http, stack, a.order_id, a.auth), a.order_id)
    _assert_ok(await _get(http, stack, b.order_id, b.auth), b.order_id)


# ---------------------------------------------------------------------------------------------
# re-POST of the original order request


async def test_repost_with_credential(
    stack: dict[str, Any], http: aiohttp.ClientSession, orders: Orders
) -> None:
    a, b = orders.a, orders.b
    url = f"{stack['gateway_url']}/v2/l402/order"
    before = await _counts(stack)

    body = _assert_ok(await _request(http, "POST", url, a.auth, json=a.body), a.order_id)
    assert body["status"] == "completed"
    assert "invoice" not in body and "macaroon" not in body
    assert await _counts(stack) == before

    invalid = {
        "flipped signature": f"L402 {_flip_signature(a.macaroon)}:{a.preimage}",
        "B's macaroon, A's preimage": f"L402 {b.macaroon}:{a.preimage}",
        "random preimage": f"L402 {a.macaroon}:{_random_preimage()}",
        "garbage": "L402 garbage",
        "empty": "L402",
    }
    for name, auth in invalid.items():
        result = await _request(http, "POST", url, auth, json=a.body)
        assert result[0] == 403, f"{name}: {result[0]} {result[2][:200]}"
        _assert_refused(result)
    assert await _counts(stack) == before


# ---------------------------------------------------------------------------------------------
# logs


def _code_pattern(code: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(code)}\b")


def _values(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _values(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _values(value)
    else:
        yield obj


def _line_leaks_code(line: str, code: str) -> bool:
    """True if the code appears in the line as a standalone token (or a JSON number)."""
    pattern = _code_pattern(code)
    if pattern.search(line):
        return True
    try:
        record = json.loads(line)
    except ValueError:
        return False
    for value in _values(record):
        if isinstance(value, str) and pattern.search(value):
            return True
        if isinstance(value, int) and not isinstance(value, bool) and value == int(code):
            return True  # logged as a number: a leading zero would be gone from the text
    return False


def _secret_forms(secret: str) -> list[str]:
    """The text forms a leaked macaroon or preimage could take in a log."""
    forms = [secret]
    if re.fullmatch(r"[0-9a-f]{64}", secret):  # preimage
        raw = bytes.fromhex(secret)
        forms += [secret.upper(), base64.b64encode(raw).decode()]
    else:  # macaroon
        raw = base64.b64decode(secret)
        forms += [
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            secret.rstrip("="),
            raw.hex(),
            raw[-32:].hex(),  # its signature alone is a bearer secret too
        ]
    return forms


def _log_offsets(logs_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in logs_dir.glob("*.log")}


def _scan_logs(
    logs_dir: Path, secret_values: list[str], code: str, offsets: dict[Path, int]
) -> list[str]:
    """Every place in the *.log files where a secret or the code shows up."""
    files = sorted(logs_dir.glob("*.log"))
    assert {p.name for p in files} >= {"gateway.log", "payments.log", "provider.log"}
    leaks = []
    for path in files:
        data = path.read_bytes()
        text = data.decode("utf-8", errors="replace")
        for secret in secret_values:
            for form in _secret_forms(secret):
                if form in text:
                    leaks.append(f"{path.name}: secret {form[:12]}...")
        # The code: only in what was logged since this order was created, so that startup
        # noise (pids, ports) cannot collide with a 5-digit code.
        recent = data[offsets.get(path, 0) :].decode("utf-8", errors="replace")
        for line in recent.splitlines():
            if _line_leaks_code(line, code):
                leaks.append(f"{path.name}: code in {line[:200]}")
    return leaks


async def test_logs_of_a_full_order_contain_no_credential_or_code(
    stack: dict[str, Any], http: aiohttp.ClientSession, payer: LndClient, orders: Orders
) -> None:
    logs_dir = Path(stack["logs_dir"])
    offsets = _log_offsets(logs_dir)
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    order = await _pay(payer, await _create(http, stack, payer))
    done = await _poll(http, stack, order, TERMINAL)
    assert done["status"] == "completed", done
    code = done["code"]
    assert code and re.fullmatch(r"[0-9]{5,6}", code), code
    root_key = (await _root_key(stack, order.identifier)).hex()
    await asyncio.sleep(1.0)  # let the services flush what they log about the order

    # The detectors catch what they are meant to catch (so a clean result means something).
    assert _line_leaks_code(json.dumps({"msg": "sms", "text": f"Your code is {code}."}), code)
    assert _line_leaks_code(json.dumps({"msg": "sms", "code": code}), code)
    assert _line_leaks_code(json.dumps({"msg": "sms", "code": int(code)}), code)
    assert _line_leaks_code(f"2026-01-01 00:00:00,000 INFO sim: code={code} sent", code)
    assert not _line_leaks_code(f"id 9{code}9 and x{code}y", code)
    leaked_line = json.dumps({"msg": "auth", "header": order.auth})
    assert all(form in leaked_line for form in (order.macaroon, order.preimage))

    secrets_ = [*dict.fromkeys(_SECRETS), root_key]
    assert order.macaroon in secrets_ and order.preimage in secrets_
    leaks = _scan_logs(logs_dir, secrets_, code, offsets)
    assert not leaks, "\n".join(leaks)
