"""aiohttp apps speaking LND's REST subset (one app per simulated node)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import marshal
from .model import FAILURE_REASONS, IN_FLIGHT, MACAROON_ACTIONS, MACAROON_ENTITIES
from .network import SimNode, Subscription, decode_payreq
from .util import (
    GRPC_INVALID_ARGUMENT,
    GRPC_NOT_FOUND,
    GRPC_UNIMPLEMENTED,
    RpcError,
    b64,
    b64_decode_any,
    parse_bool,
    parse_int,
    parse_str,
)

log = logging.getLogger("lnsim.http")

NODE_KEY = web.AppKey("node", SimNode)
MACAROON_HEADER = "Grpc-Metadata-macaroon"
JSON_CT = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STREAM_PREFIXES = ("/v2/invoices/subscribe/", "/v2/router/track/")
_STREAM_PATHS = ("/v1/invoices/subscribe", "/v2/router/send")


def _is_stream(path: str) -> bool:
    return path in _STREAM_PATHS or path.startswith(_STREAM_PREFIXES)


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type=JSON_CT)


def _error_response(err: RpcError, *, stream: bool) -> web.Response:
    body: dict[str, Any] = {"error": err.status_json()} if stream else err.status_json()
    text = json.dumps(body) + ("\n" if stream else "")
    return web.Response(text=text, status=err.http_status, content_type=JSON_CT)


def _node(request: web.Request) -> SimNode:
    return request.app[NODE_KEY]


@web.middleware
async def _lnd_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Macaroon check plus LND-shaped errors (google.rpc.Status JSON)."""
    # grpc-gateway answers routing errors before any auth check.
    routing_error = getattr(request.match_info, "http_exception", None)
    if isinstance(routing_error, web.HTTPMethodNotAllowed):
        return _error_response(RpcError("Method Not Allowed", GRPC_UNIMPLEMENTED), stream=False)
    if isinstance(routing_error, web.HTTPException):
        return _error_response(RpcError("Not Found", GRPC_NOT_FOUND), stream=False)
    stream = _is_stream(request.path)
    try:
        if not request.path.startswith("/sim/"):
            _check_macaroon(request)
        return await handler(request)
    except RpcError as err:
        return _error_response(err, stream=stream)


# The permission each route needs, as in LND's rpcserver.go and sub-servers (routerrpc,
# invoicesrpc: LookupInvoiceV2 needs invoices:write there too).
ROUTE_PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/getinfo"): "info:read",
    ("GET", "/v1/balance/channels"): "offchain:read",
    ("POST", "/v1/invoices"): "invoices:write",
    ("GET", "/v1/invoices"): "invoices:read",
    ("GET", "/v1/invoice/{r_hash_str}"): "invoices:read",
    ("GET", "/v1/invoices/subscribe"): "invoices:read",
    ("GET", "/v1/payreq/{pay_req}"): "offchain:read",
    ("POST", "/v1/macaroon"): "macaroon:generate",
    ("POST", "/v2/invoices/hodl"): "invoices:write",
    ("POST", "/v2/invoices/settle"): "invoices:write",
    ("POST", "/v2/invoices/cancel"): "invoices:write",
    ("GET", "/v2/invoices/lookup"): "invoices:write",
    ("GET", "/v2/invoices/subscribe/{r_hash}"): "invoices:read",
    ("POST", "/v2/router/send"): "offchain:write",
    ("GET", "/v2/router/track/{payment_hash}"): "offchain:read",
}


def _check_macaroon(request: web.Request) -> None:
    values = request.headers.getall(MACAROON_HEADER, [])
    if len(values) != 1:
        raise RpcError(f"expected 1 macaroon, got {len(values)}")
    given = values[0].strip().lower()
    try:
        bytes.fromhex(given)
    except ValueError as exc:
        raise RpcError(f"unable to decode macaroon: {exc}") from exc
    granted = _node(request).permissions_of(given)
    if granted is None:
        raise RpcError("verification failed: signature mismatch after caveat verification")
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    needed = ROUTE_PERMISSIONS.get((request.method, path))
    if needed is None or needed not in granted:
        raise RpcError("permission denied")  # LND: gRPC Unknown, HTTP 500


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RpcError(f"proto: syntax error: {exc}", GRPC_INVALID_ARGUMENT) from exc
    if not isinstance(data, dict):
        raise RpcError("proto: syntax error: expected a JSON object", GRPC_INVALID_ARGUMENT)
    return data


def _value_msat(body: dict[str, Any]) -> int:
    value = parse_int(body.get("value"), "value")
    value_msat = parse_int(body.get("value_msat"), "value_msat")
    if value and value_msat:
        raise RpcError("sat and msat arguments are mutually exclusive")
    return value_msat or value * 1000


def _bytes_field(body: dict[str, Any], name: str) -> bytes:
    raw = body.get(name)
    if raw is None or raw == "":
        return b""
    return b64_decode_any(parse_str(raw, name), name)


# --------------------------------------------------------------------------- lightning


async def get_info(request: web.Request) -> web.StreamResponse:
    """GET /v1/getinfo."""
    return _json_response(_node(request).getinfo_json())


async def channel_balance(request: web.Request) -> web.StreamResponse:
    """GET /v1/balance/channels."""
    return _json_response(_node(request).channel_balance_json())


async def add_invoice(request: web.Request) -> web.StreamResponse:
    """POST /v1/invoices."""
    body = await _body(request)
    node = _node(request)
    preimage = _bytes_field(body, "r_preimage") or None
    inv = node.add_invoice(
        value_msat=_value_msat(body),
        memo=parse_str(body.get("memo"), "memo"),
        expiry=parse_int(body.get("expiry"), "expiry"),
        cltv_expiry=parse_int(body.get("cltv_expiry"), "cltv_expiry"),
        payment_hash=None,
        preimage=preimage,
    )
    return _json_response(
        {
            "r_hash": b64(bytes.fromhex(inv.r_hash)),
            "payment_request": inv.payment_request,
            "add_index": str(inv.add_index),
            "payment_addr": b64(bytes.fromhex(inv.payment_addr)),
        }
    )


async def lookup_invoice_v1(request: web.Request) -> web.StreamResponse:
    """GET /v1/invoice/{r_hash_str} (hex)."""
    text = request.match_info["r_hash_str"]
    try:
        r_hash = bytes.fromhex(text)
    except ValueError as exc:
        raise RpcError(f"encoding/hex: invalid byte in {text!r}") from exc
    if len(r_hash) != 32:
        raise RpcError(f"payment hash must be exactly 32 bytes, is instead {len(r_hash)}")
    inv = _node(request).lookup_invoice(r_hash)
    return _json_response(marshal.invoice_json(inv))


# LND's rpcserver answers the latest 100 when num_max_invoices is unset.
DEFAULT_MAX_INVOICES = 100


async def list_invoices(request: web.Request) -> web.StreamResponse:
    """GET /v1/invoices: a page by add_index (pending_only, index_offset, reversed)."""
    q = request.query
    num_max = parse_int(q.get("num_max_invoices"), "num_max_invoices") or DEFAULT_MAX_INVOICES
    page = _node(request).list_invoices(
        pending_only=parse_bool(q.get("pending_only"), "pending_only"),
        index_offset=parse_int(q.get("index_offset"), "index_offset"),
        num_max=num_max,
        reverse=parse_bool(q.get("reversed"), "reversed"),
    )
    return _json_response(
        {
            "invoices": [marshal.invoice_json(inv) for inv in page],
            # LND leaves both at 0 for an empty page (the end of the pagination).
            "last_index_offset": str(page[-1].add_index if page else 0),
            "first_index_offset": str(page[0].add_index if page else 0),
        }
    )


async def decode_pay_req(request: web.Request) -> web.StreamResponse:
    """GET /v1/payreq/{pay_req}."""
    decoded = decode_payreq(request.match_info["pay_req"])
    return _json_response(marshal.payreq_json(decoded))


# --------------------------------------------------------------------------- invoicesrpc


async def add_hold_invoice(request: web.Request) -> web.StreamResponse:
    """POST /v2/invoices/hodl."""
    body = await _body(request)
    payment_hash = _bytes_field(body, "hash")
    if not payment_hash:
        raise RpcError("invalid hash length of 0, want 32")
    inv = _node(request).add_invoice(
        value_msat=_value_msat(body),
        memo=parse_str(body.get("memo"), "memo"),
        expiry=parse_int(body.get("expiry"), "expiry"),
        cltv_expiry=parse_int(body.get("cltv_expiry"), "cltv_expiry"),
        payment_hash=payment_hash,
        preimage=None,
    )
    return _json_response(
        {
            "payment_request": inv.payment_request,
            "add_index": str(inv.add_index),
            "payment_addr": b64(bytes.fromhex(inv.payment_addr)),
        }
    )


async def settle_invoice(request: web.Request) -> web.StreamResponse:
    """POST /v2/invoices/settle."""
    body = await _body(request)
    _node(request).settle_invoice(_bytes_field(body, "preimage"))
    return _json_response({})


async def cancel_invoice(request: web.Request) -> web.StreamResponse:
    """POST /v2/invoices/cancel."""
    body = await _body(request)
    payment_hash = _bytes_field(body, "payment_hash")
    if len(payment_hash) != 32:
        raise RpcError(f"invalid hash length of {len(payment_hash)}, want 32")
    _node(request).cancel_invoice(payment_hash)
    return _json_response({})


async def lookup_invoice_v2(request: web.Request) -> web.StreamResponse:
    """GET /v2/invoices/lookup?payment_hash=<base64>."""
    raw = request.query.get("payment_hash", "")
    if not raw:
        raise RpcError("invalid hash length of 0, want 32")
    r_hash = b64_decode_any(raw, "payment_hash")
    if len(r_hash) != 32:
        raise RpcError(f"invalid hash length of {len(r_hash)}, want 32")
    inv = _node(request).lookup_invoice(r_hash)
    return _json_response(marshal.invoice_json(inv))


async def _stream(
    request: web.Request,
    sub: Subscription,
    initial: list[dict[str, Any]],
    *,
    is_final: Callable[[dict[str, Any]], bool],
    skip: Callable[[dict[str, Any]], bool] = lambda _m: False,
) -> web.StreamResponse:
    """Write `{"result": ...}` lines until a final message, shutdown or disconnect."""
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON_CT
    try:
        await resp.prepare(request)
        pending = list(initial)
        while True:
            if pending:
                message: dict[str, Any] | None = pending.pop(0)
            else:
                message = await sub.get()
            if message is None:
                break
            if not skip(message):
                await resp.write((json.dumps({"result": message}) + "\n").encode())
            if is_final(message):
                break
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        sub.close()
    try:
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    return resp


async def subscribe_single_invoice(request: web.Request) -> web.StreamResponse:
    """GET /v2/invoices/subscribe/{r_hash} (URL-safe base64)."""
    r_hash = b64_decode_any(request.match_info["r_hash"], "r_hash")
    if len(r_hash) != 32:
        raise RpcError(f"invalid hash length of {len(r_hash)}, want 32")
    sub = _node(request).subscribe_single_invoice(r_hash.hex())
    return await _stream(
        request, sub, [], is_final=lambda m: m.get("state") in ("SETTLED", "CANCELED")
    )


async def subscribe_invoices(request: web.Request) -> web.StreamResponse:
    """GET /v1/invoices/subscribe?add_index=&settle_index=."""
    add_index = parse_int(request.query.get("add_index"), "add_index")
    settle_index = parse_int(request.query.get("settle_index"), "settle_index")
    sub = _node(request).subscribe_all_invoices(add_index, settle_index)
    return await _stream(request, sub, [], is_final=lambda _m: False)


# --------------------------------------------------------------------------- routerrpc


def _payment_final(message: dict[str, Any]) -> bool:
    return message.get("status") != IN_FLIGHT


def _skip_inflight(no_inflight_updates: bool) -> Callable[[dict[str, Any]], bool]:
    def skip(message: dict[str, Any]) -> bool:
        return no_inflight_updates and message.get("status") == IN_FLIGHT

    return skip


async def send_payment(request: web.Request) -> web.StreamResponse:
    """POST /v2/router/send (SendPaymentV2)."""
    body = await _body(request)
    node = _node(request)
    amt = parse_int(body.get("amt"), "amt")
    amt_msat = parse_int(body.get("amt_msat"), "amt_msat")
    if amt and amt_msat:
        raise RpcError("sat and msat arguments are mutually exclusive")
    fee_limit_sat = parse_int(body.get("fee_limit_sat"), "fee_limit_sat")
    fee_limit_msat = parse_int(body.get("fee_limit_msat"), "fee_limit_msat")
    if fee_limit_sat and fee_limit_msat:
        raise RpcError("sat and msat arguments are mutually exclusive")
    if fee_limit_sat < 0 or fee_limit_msat < 0:
        raise RpcError("fee limit cannot be negative")
    no_inflight = parse_bool(body.get("no_inflight_updates"), "no_inflight_updates")
    payment_request = parse_str(body.get("payment_request"), "payment_request")
    decoded, value_msat = node.validate_send(
        payment_request=payment_request,
        amt_msat=amt_msat or amt * 1000,
        timeout_seconds=parse_int(body.get("timeout_seconds"), "timeout_seconds"),
        allow_self_payment=parse_bool(body.get("allow_self_payment"), "allow_self_payment"),
    )
    sub = node.subscribe_payment(decoded.payment_hash)
    try:
        node.start_payment(decoded, value_msat, payment_request)
    except BaseException:
        sub.close()
        raise
    return await _stream(
        request, sub, [], is_final=_payment_final, skip=_skip_inflight(no_inflight)
    )


async def track_payment(request: web.Request) -> web.StreamResponse:
    """GET /v2/router/track/{payment_hash} (URL-safe base64)."""
    payment_hash = b64_decode_any(request.match_info["payment_hash"], "payment_hash")
    if len(payment_hash) != 32:
        raise RpcError(f"invalid hash length of {len(payment_hash)}, want 32")
    no_inflight = parse_bool(request.query.get("no_inflight_updates"), "no_inflight_updates")
    node = _node(request)
    payment = node.lookup_payment(payment_hash)
    sub = node.subscribe_payment(payment_hash.hex())
    return await _stream(
        request,
        sub,
        [node.payment_json(payment)],
        is_final=_payment_final,
        skip=_skip_inflight(no_inflight),
    )


# --------------------------------------------------------------------------- /sim control


async def sim_fail_next_payments(request: web.Request) -> web.StreamResponse:
    """POST /sim/fail-next-payments {"count": N, "reason": "FAILURE_REASON_NO_ROUTE"}."""
    body = await _body(request)
    count = parse_int(body.get("count", 1), "count")
    reason = parse_str(body.get("reason"), "reason") or "FAILURE_REASON_NO_ROUTE"
    if reason not in FAILURE_REASONS:
        raise RpcError(f"reason must be one of {', '.join(FAILURE_REASONS)}", GRPC_INVALID_ARGUMENT)
    pending = _node(request).fail_next_payments(count, reason)
    return _json_response({"pending_failures": pending})


async def sim_mine(request: web.Request) -> web.StreamResponse:
    """POST /sim/mine {"blocks": N}: advance the shared chain tip."""
    body = await _body(request)
    blocks = parse_int(body.get("blocks", 1), "blocks")
    height = _node(request).network.mine(blocks)
    return _json_response({"block_height": height})


async def bake_macaroon(request: web.Request) -> web.StreamResponse:
    """POST /v1/macaroon (BakeMacaroon): a macaroon with exactly the permissions asked for."""
    body = await _body(request)
    raw = body.get("permissions")
    if not isinstance(raw, list) or not raw:
        raise RpcError("permission list cannot be empty", GRPC_INVALID_ARGUMENT)
    help_msg = (
        f"supported actions are [{' '.join(MACAROON_ACTIONS)}], supported entities are "
        f"[{' '.join(MACAROON_ENTITIES)}]"
    )
    granted: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise RpcError("proto: syntax error: permissions", GRPC_INVALID_ARGUMENT)
        entity, action = item.get("entity"), item.get("action")
        if action not in MACAROON_ACTIONS:
            raise RpcError(f"invalid permission action. {help_msg}")
        if entity not in MACAROON_ENTITIES:
            raise RpcError(f"invalid permission entity. {help_msg}")
        granted.add(f"{entity}:{action}")
    return _json_response({"macaroon": _node(request).bake_macaroon(frozenset(granted))})


async def sim_info(request: web.Request) -> web.StreamResponse:
    """GET /sim/info: name, pubkey, balances (no macaroon needed)."""
    node = _node(request)
    return _json_response(
        {
            "name": node.name,
            "pubkey": node.pubkey,
            "block_height": node.network.chain.height,
            "local_balance_msat": node.state.local_msat - node.locked_msat,
            "locked_msat": node.locked_msat,
            "pending_failures": len(node.state.fail_next),
        }
    )


def make_app(node: SimNode) -> web.Application:
    """Build the aiohttp app of one simulated node."""
    app = web.Application(middlewares=[_lnd_middleware])
    app[NODE_KEY] = node
    r = app.router
    r.add_get("/v1/getinfo", get_info)
    r.add_get("/v1/balance/channels", channel_balance)
    r.add_post("/v1/invoices", add_invoice)
    r.add_get("/v1/invoices", list_invoices)
    r.add_get("/v1/invoice/{r_hash_str}", lookup_invoice_v1)
    r.add_get("/v1/invoices/subscribe", subscribe_invoices)
    r.add_get("/v1/payreq/{pay_req}", decode_pay_req)
    r.add_post("/v2/invoices/hodl", add_hold_invoice)
    r.add_post("/v2/invoices/settle", settle_invoice)
    r.add_post("/v2/invoices/cancel", cancel_invoice)
    r.add_get("/v2/invoices/lookup", lookup_invoice_v2)
    r.add_get("/v2/invoices/subscribe/{r_hash}", subscribe_single_invoice)
    r.add_post("/v2/router/send", send_payment)
    r.add_get("/v2/router/track/{payment_hash}", track_payment)
    r.add_post("/v1/macaroon", bake_macaroon)
    r.add_post("/sim/fail-next-payments", sim_fail_next_payments)
    r.add_post("/sim/mine", sim_mine)
    r.add_get("/sim/info", sim_info)
    return app
