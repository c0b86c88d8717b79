"""The live gateway against its OpenAPI document: schemathesis fuzzing plus the paid-order paths.

The fuzzer checks every documented operation: no 5xx, a documented status code, the documented
content type, headers and body schema. It cannot pay invoices, so the authenticated answers
(402 challenge, 200 order, 202 cancel, 409 refusals, refunds) are walked through explicitly
below with a real payment and validated by the same schemathesis checks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import string
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.errors import LoaderError

from libs.common.adapters.lightning import LndClient
from libs.common.domain import l402
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e

DOC_PATH = Path(__file__).resolve().parents[2] / "services" / "gateway" / "openapi.json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# 11 operations x (schema examples + coverage cases + 50 fuzzed ones, valid and invalid): ~10 s.
MAX_EXAMPLES = 50
TERMINAL = {"completed", "refunded", "refund_failed", "failed", "expired"}
WEBHOOK_SECRET = E2E_ENV["SMS4SATS_WEBHOOK_SECRET"]

# --------------------------------------------------------------------- Authorization values
# The document's L402 scheme is `http` with scheme "L402"; schemathesis draws its header from
# the "_l402_auth" format. Random text alone would never get past the scheme check, so most
# values are shaped like credentials, and some are genuine macaroons with a matching preimage
# (they pass parsing and the preimage check, then meet an unknown token: 403).
_HEADER_SAFE = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ")
_B64_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "+/-_", min_size=1).map(
    lambda s: s + "=" * (-len(s) % 4)
)
_HEX64 = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
_SCHEME = st.sampled_from(["L402", "LSAT", "l402", "lsat", "Bearer"])


def _minted(
    preimage: bytes, root_key: bytes, token_id: bytes, valid_until: int, scheme: str
) -> str:
    identifier = l402.new_identifier(hashlib.sha256(preimage).digest())
    # A deterministic token id keeps the draw reproducible (new_identifier's is random).
    identifier = identifier[:34] + token_id
    macaroon = l402.mint(
        root_key=root_key,
        identifier=identifier,
        order_id="0b8f6c1e-3f2a-4d6e-9a51-2f0c8f9b7d10",
        valid_until=valid_until,
    )
    return f"{scheme} {macaroon}:{preimage.hex()}"


def _garbled(scheme: str, raw: bytes, preimage_hex: str) -> str:
    """A V2-looking macaroon of random bytes."""
    macaroon = base64.b64encode(b"\x02" + raw).decode()
    return f"{scheme} {macaroon}:{preimage_hex}"


_AUTHORIZATION = st.one_of(
    st.builds(
        _minted,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
        st.integers(min_value=0, max_value=2**40),
        _SCHEME,
    ),
    st.builds(_garbled, _SCHEME, st.binary(max_size=300), _HEX64),
    st.builds(lambda scheme, mac, pre: f"{scheme} {mac}:{pre}", _SCHEME, _B64_TEXT, _HEX64),
    _HEADER_SAFE,
)
schemathesis.openapi.format("_l402_auth", _AUTHORIZATION)


# --------------------------------------------------------------------- the schema
def _config(auth: dict[str, Any] | None = None) -> schemathesis.Config:
    """The fuzzer's settings; `auth` replaces the L402 document's (the webhook secret)."""
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "request-timeout": 10,
            # The webhook's 200/400 answers are only reachable with the shared secret; the
            # 401 answer is checked explicitly below.
            "auth": auth or {"openapi": {"WebhookSecret": {"api_key": WEBHOOK_SECRET}}},
        }
    )


@pytest.fixture(scope="session")
def api_schema(stack: dict[str, Any]) -> Any:
    """The document the gateway serves (the repository's file if it serves none)."""
    base = stack["gateway_url"]
    try:
        schema = schemathesis.openapi.from_url(
            f"{base}/v2/l402/openapi.json", config=_config(), timeout=10
        )
    except LoaderError:
        schema = schemathesis.openapi.from_path(DOC_PATH, config=_config())
    schema.config.update(base_url=base)
    return schema


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _schemathesis_lazy_loader_on_pytest_9(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's from_fixture reads and rewrites `item._nodeid`, gone in pytest 9.

    It only uses it to label subtests; give it the public node id. A no-op once either side
    is fixed (the attribute then exists or is no longer read).
    """
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@lazy_schema.parametrize()
def test_gateway_conforms_to_its_openapi_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)


# --------------------------------------------------------------------- explicit paths
def test_the_served_document_is_the_repository_file(stack: dict[str, Any]) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{stack['gateway_url']}/v2/l402/openapi.json") as resp:
        assert resp.status == 200
        assert json.loads(resp.read()) == json.loads(DOC_PATH.read_text())


async def _validated(
    schema: Any, method: str, path: str, expect: int, **kwargs: Any
) -> dict[str, Any]:
    """Send one request through schemathesis and run the same checks as the fuzzer."""
    case = schema[path][method].Case(**kwargs)
    response = await asyncio.to_thread(case.call_and_validate, checks=CHECKS)
    assert response.status_code == expect, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def _sim(http: aiohttp.ClientSession, stack: dict[str, Any], path: str, body: Any) -> None:
    async with http.post(f"{stack['provider_sim_url']}{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def _paid_order(
    api_schema: Any, payer: LndClient, country: str
) -> tuple[dict[str, Any], str, str]:
    """Create (402, validated) and pay an order; returns the challenge, credential, refund."""
    refund = (await payer.add_invoice(value_msat=0, memo="refund", expiry=3600)).payment_request
    body = {"type": "receive-sms", "country": country, "service": "tg", "refundInvoice": refund}
    challenge = await _validated(api_schema, "POST", "/v2/l402/order", 402, body=body)
    payment = await payer.pay(challenge["invoice"], fee_limit_sat=10, timeout_seconds=30)
    assert payment.status == "SUCCEEDED", payment.failure_reason
    assert payment.preimage is not None
    return challenge, f"L402 {challenge['macaroon']}:{payment.preimage.hex()}", refund


async def _poll(
    api_schema: Any, order_id: str, auth: str, until: set[str], within: float = 40.0
) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + within
    while True:
        order = await _validated(
            api_schema,
            "GET",
            "/v2/l402/order/{orderId}",
            200,
            path_parameters={"orderId": order_id},
            headers={"Authorization": auth},
        )
        if not seen or seen[-1] != order["status"]:
            seen.append(order["status"])
        if order["status"] in until:
            return order, seen
        assert time.monotonic() < deadline, f"order stuck; statuses seen {seen}"
        await asyncio.sleep(0.2)


async def test_a_delivered_order_conforms_at_every_step(
    stack: dict[str, Any], api_schema: Any, http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    challenge, auth, refund = await _paid_order(api_schema, payer, "US")
    order_id = challenge["orderId"]
    order, seen = await _poll(api_schema, order_id, auth, TERMINAL)
    assert order["status"] == "completed", seen
    assert order["messages"] and order["code"]

    # The generic-client re-POST answers the order (200), under the same schema.
    again = await _validated(
        api_schema,
        "POST",
        "/v2/l402/order",
        200,
        body={"type": "receive-sms", "country": "US", "service": "tg", "refundInvoice": refund},
        headers={"Authorization": auth},
    )
    assert again["orderId"] == order_id
    refused = await _validated(
        api_schema,
        "POST",
        "/v2/l402/order/{orderId}/cancel",
        409,
        path_parameters={"orderId": order_id},
        headers={"Authorization": auth},
    )
    assert refused["error"]["code"] == "CANCEL_SMS_RECEIVED"
    # LSAT is the documented synonym.
    lsat = "LSAT" + auth.removeprefix("L402")
    same = await _validated(
        api_schema,
        "GET",
        "/v2/l402/order/{orderId}",
        200,
        path_parameters={"orderId": order_id},
        headers={"Authorization": lsat},
    )
    assert same["orderId"] == order_id


async def test_a_cancelled_order_conforms_at_every_step(
    stack: dict[str, Any], api_schema: Any, http: aiohttp.ClientSession, payer: LndClient
) -> None:
    await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": None})
    try:
        challenge, auth, _ = await _paid_order(api_schema, payer, "DE")
        order_id = challenge["orderId"]
        await _poll(api_schema, order_id, auth, {"waiting_for_sms"})
        cancel: dict[str, Any] = {
            "path_parameters": {"orderId": order_id},
            "headers": {"Authorization": auth},
        }
        # Refused (409 CANCEL_TOO_SOON) until cancelableAt, 3 s after payment in this stack;
        # a slow allocation may already be past it, so the first try may be accepted.
        deadline = time.monotonic() + 20
        while True:
            case = api_schema["/v2/l402/order/{orderId}/cancel"]["POST"].Case(**cancel)
            response = await asyncio.to_thread(case.call_and_validate, checks=CHECKS)
            if response.status_code == 202:
                assert response.json()["cancel"] == "requested"
                break
            assert response.json()["error"]["code"] == "CANCEL_TOO_SOON"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
    finally:
        await _sim(http, stack, "/sim/auto-sms", {"delaySeconds": 1})
    order, seen = await _poll(api_schema, order_id, auth, TERMINAL)
    assert order["status"] == "refunded", seen
    assert order["refund"] is not None and order["refund"]["status"] == "paid"
    late = await _validated(api_schema, "POST", "/v2/l402/order/{orderId}/cancel", 409, **cancel)
    assert late["error"]["code"] == "CANCEL_NOT_ALLOWED"


async def test_documents_and_refusals_conform(api_schema: Any) -> None:
    # schemathesis leaves out the operation serving the schema itself.
    served = await _validated(api_schema, "GET", "/v2/l402/openapi.json", 200)
    assert served["openapi"] == "3.1.0"
    secret = {"X-Webhook-Secret": "not-the-secret"}
    body = {"activationId": "1", "service": "tg", "text": "code 12345", "code": "12345"}
    wrong = await _validated(
        api_schema, "POST", "/v2/l402/webhooks/rent", 401, body=body, headers=secret
    )
    assert wrong["error"]["code"] == "UNAUTHORIZED"
    unknown = await _validated(
        api_schema, "GET", "/v2/l402/catalog", 400, query={"country": "Atlantis"}
    )
    assert unknown["error"]["code"] == "INVALID_COUNTRY"
    huge = {"service": "tg", "refundInvoice": "x" * 20_000}
    too_big = await _validated(api_schema, "POST", "/v2/l402/order", 413, body=huge)
    assert too_big["error"]["code"] == "PAYLOAD_TOO_LARGE"


# Found while writing this suite (not by the fuzzer's bounded run): each once answered
# 500 INTERNAL where the document promises a client error.


async def test_a_non_utf8_webhook_secret_is_a_401(api_schema: Any) -> None:
    # requests sends header values as latin-1, so "é" arrives as the lone byte 0xE9, which
    # aiohttp surrogate-escapes.
    body = {"activationId": "1"}
    wrong = await _validated(
        api_schema,
        "POST",
        "/v2/l402/webhooks/rent",
        401,
        body=body,
        headers={"X-Webhook-Secret": "\u00e9"},
    )
    assert wrong["error"]["code"] == "UNAUTHORIZED"


async def test_an_overlong_numeric_country_is_refused_by_the_catalog(api_schema: Any) -> None:
    # countries.resolve_country calls int() on any ASCII-digit string; past 4300 digits Python
    # raises ValueError (int max_str_digits).
    refused = await _validated(
        api_schema, "GET", "/v2/l402/catalog", 400, query={"country": "9" * 4301}
    )
    assert refused["error"]["code"] == "INVALID_COUNTRY"


async def test_an_overlong_numeric_country_is_refused_by_order_creation(api_schema: Any) -> None:
    body = {"service": "tg", "country": "9" * 4301, "refundInvoice": "lnbcrt1"}
    refused = await _validated(api_schema, "POST", "/v2/l402/order", 400, body=body)
    assert refused["error"]["code"] == "INVALID_COUNTRY"
