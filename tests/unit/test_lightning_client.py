"""Unit tests of adapters.lightning: JSON parsing, error mapping and NDJSON stream reading."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from libs.common.adapters.lightning import (
    AlreadyPaid,
    InvoiceNotFound,
    LndClient,
    LndError,
    PaymentInTransition,
    PaymentNotInitiated,
    error_from_body,
    parse_invoice,
    parse_payment,
)

MACAROON = "ab" * 32


def test_error_mapping() -> None:
    cases = [
        ({"code": 5, "message": "unable to locate invoice", "details": []}, InvoiceNotFound),
        ({"code": 2, "message": "there are no existing invoices"}, InvoiceNotFound),
        ({"error": {"code": 6, "message": "payment is in transition"}}, PaymentInTransition),
        ({"error": {"code": 6, "message": "invoice is already paid"}}, AlreadyPaid),
        ({"error": {"code": 5, "message": "payment isn't initiated"}}, PaymentNotInitiated),
    ]
    for body, cls in cases:
        err = error_from_body(body, 409)
        assert type(err) is cls and err.http_status == 409
    other = error_from_body({"code": 2, "message": "invoice still open"}, 500)
    assert (
        type(other) is LndError and other.grpc_code == 2 and other.message == "invoice still open"
    )
    assert error_from_body("bad gateway", 502).message == "bad gateway"


def test_parse_payment_and_invoice() -> None:
    in_flight = parse_payment(
        {"payment_hash": "11" * 32, "status": "IN_FLIGHT", "payment_preimage": "0" * 64}
    )
    assert in_flight.preimage is None and not in_flight.is_final
    done = parse_payment(
        {
            "payment_hash": "11" * 32,
            "status": "SUCCEEDED",
            "payment_preimage": "22" * 32,
            "value_sat": "5",
            "fee_sat": "0",
            "failure_reason": "FAILURE_REASON_NONE",
        }
    )
    assert done.preimage == bytes.fromhex("22" * 32) and done.value_sat == 5 and done.is_final
    inv = parse_invoice(
        {
            "r_hash": base64.b64encode(b"\x01" * 32).decode(),
            "state": "ACCEPTED",
            "value_msat": "1000",
            "amt_paid_msat": "1000",
            "htlcs": [{"expiry_height": 1120}, {"expiry_height": 1130}],
        }
    )
    assert inv.r_hash == b"\x01" * 32 and inv.htlc_expiry_heights == [1120, 1130]


async def _stream_server() -> TestServer:
    async def track(request: web.Request) -> web.StreamResponse:
        assert request.headers["Grpc-Metadata-macaroon"] == MACAROON
        resp = web.StreamResponse()
        await resp.prepare(request)
        first = json.dumps({"result": {"payment_hash": "11" * 32, "status": "IN_FLIGHT"}})
        # Split one message across writes, then a pretty-printed one, then an error line.
        await resp.write(first[:10].encode())
        await resp.write((first[10:] + "\n").encode())
        second = {"result": {"payment_hash": "11" * 32, "status": "IN_FLIGHT"}}
        await resp.write(json.dumps(second, indent=2).encode() + b"\n")
        error = {"error": {"code": 2, "message": "payment is in transition", "details": []}}
        await resp.write(json.dumps(error).encode() + b"\n")
        return resp

    async def not_found(request: web.Request) -> web.StreamResponse:
        body = {"error": {"code": 5, "message": "payment isn't initiated", "details": []}}
        return web.json_response(body, status=404)

    app = web.Application()
    app.router.add_get("/v2/router/track/{hash}", track)
    app.router.add_get("/v2/invoices/subscribe/{hash}", not_found)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.fixture
async def stream_server() -> AsyncIterator[TestServer]:
    server = await _stream_server()
    yield server
    await server.close()


async def test_stream_parsing_and_errors(stream_server: TestServer) -> None:
    client = LndClient(str(stream_server.make_url("")), MACAROON)
    try:
        seen = []
        with pytest.raises(PaymentInTransition) as exc:
            async for update in client.track_payment(b"\x11" * 32):
                seen.append(update.status)
        assert seen == ["IN_FLIGHT", "IN_FLIGHT"] and exc.value.http_status == 200
        with pytest.raises(PaymentNotInitiated) as exc2:
            async for _ in client.subscribe_invoice(b"\x11" * 32):
                pass
        assert exc2.value.http_status == 404 and exc2.value.grpc_code == 5
        assert MACAROON not in repr(client)
    finally:
        await client.close()
