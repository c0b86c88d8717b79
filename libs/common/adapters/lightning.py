"""Async client for the subset of LND's REST API this project uses."""

from __future__ import annotations

import base64
import codecs
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

MACAROON_HEADER = "Grpc-Metadata-macaroon"
_ZERO_PREIMAGE_HEX = "0" * 64
# The client's connection pools: "money" for outgoing payment streams (send, track), "settle"
# for the short calls that take or give back held funds (settle, cancel of a held HTLC),
# "other" for everything else (invoice streams, scans, lookups).
Pool = Literal["money", "settle", "other"]
# Streams may use every pool but "settle": that one only ever waits for short unary calls.
StreamPool = Literal["money", "other"]
FINAL_PAYMENT_STATUSES = frozenset({"SUCCEEDED", "FAILED"})


class LndError(Exception):
    """An error answered by LND."""

    def __init__(self, message: str, http_status: int = 0, grpc_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.grpc_code = grpc_code

    def __str__(self) -> str:
        """Message with HTTP status and gRPC code."""
        return f"{self.message} (http {self.http_status}, grpc code {self.grpc_code})"


class InvoiceNotFound(LndError):
    """LND does not know the invoice ("unable to locate invoice")."""


class InvoiceAlreadyExists(LndError):
    """An invoice with this payment hash exists already."""


class PaymentInTransition(LndError):
    """A payment for this hash is already in flight ("payment is in transition")."""


class AlreadyPaid(LndError):
    """A payment for this hash already succeeded ("invoice is already paid")."""


class PaymentNotInitiated(LndError):
    """No payment for this hash was ever sent ("payment isn't initiated")."""


_ERROR_CLASSES: tuple[tuple[str, type[LndError]], ...] = (
    ("unable to locate invoice", InvoiceNotFound),
    ("there are no existing invoices", InvoiceNotFound),
    ("invoice with payment hash already exists", InvoiceAlreadyExists),
    ("payment is in transition", PaymentInTransition),
    ("invoice is already paid", AlreadyPaid),
    ("payment isn't initiated", PaymentNotInitiated),
)


def make_error(message: str, http_status: int, grpc_code: int | None) -> LndError:
    """Build the LndError subclass matching LND's error text."""
    lowered = message.lower()
    for needle, cls in _ERROR_CLASSES:
        if needle in lowered:
            return cls(message, http_status, grpc_code)
    return LndError(message, http_status, grpc_code)


def error_from_body(body: Any, http_status: int) -> LndError:
    """Turn a grpc-gateway error body (`{code, message}` or `{"error": {...}}`) into an LndError."""
    status = body.get("error") if isinstance(body, dict) and "error" in body else body
    if isinstance(status, dict):
        message = str(status.get("message") or status.get("error") or "unknown LND error")
        code = status.get("code")
        grpc_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        return make_error(message, http_status, grpc_code)
    text = status if isinstance(status, str) and status else f"HTTP {http_status} from LND"
    return make_error(text, http_status, None)


@dataclass(frozen=True)
class AddedInvoice:
    """A newly created invoice."""

    r_hash: bytes
    payment_request: str
    add_index: int
    payment_addr: bytes


@dataclass(frozen=True)
class Invoice:
    """An invoice as LND reports it."""

    r_hash: bytes
    payment_request: str
    state: str
    value_msat: int
    amt_paid_msat: int
    creation_date: int
    settle_date: int
    expiry: int
    add_index: int
    settle_index: int
    htlc_expiry_heights: list[int]
    memo: str


@dataclass(frozen=True)
class InvoicePage:
    """One page of ListInvoices; `last_index_offset` is where the next page starts."""

    invoices: list[Invoice]
    first_index_offset: int
    last_index_offset: int


@dataclass(frozen=True)
class Payment:
    """An outgoing payment's state."""

    payment_hash: bytes
    status: str
    preimage: bytes | None
    value_sat: int
    fee_sat: int
    failure_reason: str

    @property
    def is_final(self) -> bool:
        """True once the payment SUCCEEDED or FAILED."""
        return self.status in FINAL_PAYMENT_STATUSES


@dataclass(frozen=True)
class PayReq:
    """A decoded BOLT11 payment request."""

    payment_hash: bytes
    destination: str
    num_msat: int
    timestamp: int
    expiry: int
    description: str
    payment_addr: bytes


@dataclass(frozen=True)
class NodeInfo:
    """Identity and chain position of the node."""

    pubkey: str
    alias: str
    block_height: int
    network: str


def _int(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return int(str(value), 10)


def _b64decode(value: Any) -> bytes:
    if not value:
        return b""
    text = str(value)
    text += "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(text)
    return base64.b64decode(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _loads_error(text: str) -> Any:
    """Parse a response body: JSON, else the first NDJSON line, else the raw text."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json.loads(text.strip().splitlines()[0])
    except ValueError:
        return text.strip()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def parse_invoice(data: Mapping[str, Any]) -> Invoice:
    """Build an Invoice from lnrpc.Invoice JSON."""
    htlcs = data.get("htlcs") or []
    return Invoice(
        r_hash=_b64decode(data.get("r_hash")),
        payment_request=str(data.get("payment_request") or ""),
        state=str(data.get("state") or "OPEN"),
        value_msat=_int(data.get("value_msat")),
        amt_paid_msat=_int(data.get("amt_paid_msat")),
        creation_date=_int(data.get("creation_date")),
        settle_date=_int(data.get("settle_date")),
        expiry=_int(data.get("expiry")),
        add_index=_int(data.get("add_index")),
        settle_index=_int(data.get("settle_index")),
        htlc_expiry_heights=[_int(h.get("expiry_height")) for h in htlcs if isinstance(h, dict)],
        memo=str(data.get("memo") or ""),
    )


def parse_payment(data: Mapping[str, Any]) -> Payment:
    """Build a Payment from lnrpc.Payment JSON (all-zero preimage means none)."""
    preimage_hex = str(data.get("payment_preimage") or "")
    preimage = (
        bytes.fromhex(preimage_hex) if preimage_hex and preimage_hex != _ZERO_PREIMAGE_HEX else None
    )
    return Payment(
        payment_hash=bytes.fromhex(str(data.get("payment_hash") or "")),
        status=str(data.get("status") or "UNKNOWN"),
        preimage=preimage,
        value_sat=_int(data.get("value_sat")),
        fee_sat=_int(data.get("fee_sat")),
        failure_reason=str(data.get("failure_reason") or "FAILURE_REASON_NONE"),
    )


def parse_payreq(data: Mapping[str, Any]) -> PayReq:
    """Build a PayReq from lnrpc.PayReq JSON."""
    return PayReq(
        payment_hash=bytes.fromhex(str(data.get("payment_hash") or "")),
        destination=str(data.get("destination") or ""),
        num_msat=_int(data.get("num_msat")),
        timestamp=_int(data.get("timestamp")),
        expiry=_int(data.get("expiry")),
        description=str(data.get("description") or ""),
        payment_addr=_b64decode(data.get("payment_addr")),
    )


class LndClient:
    """Async LND REST client (macaroon auth, TLS pinned to the node's cert when given).

    Three connection pools, so that no stream, lookup or sweep, however many, can keep a
    refund or a settle waiting: outgoing payments (send, track) have one; settle and cancel
    of held funds have their own, which only short unary calls use, so even payment streams
    a receiver holds open for minutes cannot keep held funds from being taken or given back.
    """

    def __init__(
        self,
        rest_url: str,
        macaroon_hex: str,
        tls_cert_path: str | None = None,
        *,
        timeout: float = 30.0,
        money_connections: int = 20,
        settle_connections: int = 4,
        other_connections: int = 20,
    ) -> None:
        self._base = rest_url.rstrip("/")
        self._headers = {MACAROON_HEADER: macaroon_hex.strip()}
        self._tls_cert_path = tls_cert_path
        self._timeout = timeout
        self._limits: dict[Pool, int] = {
            "money": money_connections,
            "settle": settle_connections,
            "other": other_connections,
        }
        self._sessions: dict[Pool, aiohttp.ClientSession] = {}

    def __repr__(self) -> str:
        """Show the URL only (never the macaroon)."""
        return f"LndClient({self._base!r})"

    def _ssl(self) -> ssl.SSLContext | bool:
        if self._tls_cert_path:
            ctx = ssl.create_default_context(cafile=self._tls_cert_path)
            # LND's self-signed cert is pinned as the only trust anchor; its SANs often do
            # not list the name a container reaches it by.
            ctx.check_hostname = False
            return ctx
        return True

    def _get_session(self, pool: Pool) -> aiohttp.ClientSession:
        session = self._sessions.get(pool)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self._limits[pool])
            session = aiohttp.ClientSession(connector=connector, headers=self._headers)
            self._sessions[pool] = session
        return session

    def connections(self) -> dict[str, int]:
        """Connections each pool holds open now (in use or idle), for the ops gauge."""
        out: dict[str, int] = {}
        for pool, session in self._sessions.items():
            connector = session.connector
            held = 0
            if connector is not None and not session.closed:
                # aiohttp keeps no public count; the acquired set and the idle pool are it.
                held = len(getattr(connector, "_acquired", ())) + sum(
                    len(v) for v in getattr(connector, "_conns", {}).values()
                )
            out[pool] = held
        return out

    async def close(self) -> None:
        """Close the HTTP sessions."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            if not session.closed:
                await session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        pool: Pool = "other",
    ) -> dict[str, Any]:
        session = self._get_session(pool)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with session.request(
                method,
                self._base + path,
                json=body,
                params=params,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                text = await resp.text()
                data = _loads_error(text)
                if resp.status != 200:
                    raise error_from_body(data, resp.status)
                if not isinstance(data, dict):
                    raise LndError("unexpected non-object JSON from LND", resp.status)
                if "error" in data and len(data) == 1:
                    raise error_from_body(data, resp.status)
                return data
        except aiohttp.ClientError as exc:
            # str(), not repr(): a repr may carry the request headers (the macaroon).
            raise LndError(f"LND request {method} {path} failed: {_describe(exc)}") from exc
        except TimeoutError as exc:
            raise LndError(f"LND request {method} {path} timed out") from exc

    async def _stream(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        pool: StreamPool = "other",
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield each `result` of a grpc-gateway NDJSON stream; raise on `error` lines."""
        session = self._get_session(pool)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._timeout, sock_connect=self._timeout, sock_read=None
        )
        try:
            async with session.request(
                method,
                self._base + path,
                json=body,
                params=params,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise error_from_body(_loads_error(await resp.text()), resp.status)
                decoder = json.JSONDecoder()
                utf8 = codecs.getincrementaldecoder("utf-8")()
                buf = ""
                async for chunk in resp.content.iter_any():
                    buf += utf8.decode(chunk)
                    while True:
                        buf = buf.lstrip()
                        if not buf:
                            break
                        try:
                            obj, end = decoder.raw_decode(buf)
                        except ValueError:
                            break  # incomplete object: wait for more bytes
                        buf = buf[end:]
                        if not isinstance(obj, dict):
                            raise LndError("unexpected stream message from LND", resp.status)
                        if obj.get("error") is not None:
                            raise error_from_body(obj, resp.status)
                        result = obj.get("result")
                        if isinstance(result, dict):
                            yield result
                if buf.strip():
                    raise LndError("LND stream ended with a partial message", resp.status)
        except aiohttp.ClientError as exc:
            raise LndError(f"LND stream {method} {path} failed: {_describe(exc)}") from exc
        except TimeoutError as exc:
            raise LndError(f"LND stream {method} {path} timed out connecting") from exc

    # ------------------------------------------------------------------ node

    async def get_info(self) -> NodeInfo:
        """GetInfo: pubkey, alias, block height and network."""
        data = await self._request("GET", "/v1/getinfo")
        chains = data.get("chains") or []
        network = str(chains[0].get("network", "")) if chains else ""
        return NodeInfo(
            pubkey=str(data.get("identity_pubkey", "")),
            alias=str(data.get("alias", "")),
            block_height=_int(data.get("block_height")),
            network=network,
        )

    async def channel_balance_sat(self) -> int:
        """Local channel balance in sat."""
        data = await self._request("GET", "/v1/balance/channels")
        local = data.get("local_balance")
        if isinstance(local, dict):
            return _int(local.get("sat"))
        return _int(data.get("balance"))

    # ------------------------------------------------------------------ invoices

    async def add_invoice(self, *, value_msat: int, memo: str, expiry: int) -> AddedInvoice:
        """AddInvoice: a standard invoice (value_msat=0 for a zero-amount one)."""
        data = await self._request(
            "POST",
            "/v1/invoices",
            body={"value_msat": str(value_msat), "memo": memo, "expiry": str(expiry)},
        )
        return AddedInvoice(
            r_hash=_b64decode(data.get("r_hash")),
            payment_request=str(data.get("payment_request", "")),
            add_index=_int(data.get("add_index")),
            payment_addr=_b64decode(data.get("payment_addr")),
        )

    async def add_hold_invoice(
        self, *, payment_hash: bytes, value_msat: int, memo: str, expiry: int, cltv_expiry: int
    ) -> AddedInvoice:
        """AddHoldInvoice: an invoice we settle later with our own preimage."""
        data = await self._request(
            "POST",
            "/v2/invoices/hodl",
            body={
                "hash": _b64(payment_hash),
                "value_msat": str(value_msat),
                "memo": memo,
                "expiry": str(expiry),
                "cltv_expiry": str(cltv_expiry),
            },
        )
        return AddedInvoice(
            r_hash=payment_hash,
            payment_request=str(data.get("payment_request", "")),
            add_index=_int(data.get("add_index")),
            payment_addr=_b64decode(data.get("payment_addr")),
        )

    async def lookup_invoice(self, payment_hash: bytes) -> Invoice:
        """LookupInvoiceV2 by payment hash; raises InvoiceNotFound."""
        data = await self._request(
            "GET", "/v2/invoices/lookup", params={"payment_hash": _b64url(payment_hash)}
        )
        return parse_invoice(data)

    async def list_invoices(
        self, *, pending_only: bool, index_offset: int = 0, num_max_invoices: int = 100
    ) -> InvoicePage:
        """ListInvoices: one page of invoices past `index_offset` (by add_index), oldest first.

        With pending_only only OPEN and ACCEPTED invoices; an empty page ends the pagination.
        """
        data = await self._request(
            "GET",
            "/v1/invoices",
            params={
                "pending_only": "true" if pending_only else "false",
                "index_offset": str(index_offset),
                "num_max_invoices": str(num_max_invoices),
                "reversed": "false",
            },
        )
        raw = data.get("invoices") or []
        return InvoicePage(
            invoices=[parse_invoice(i) for i in raw if isinstance(i, dict)],
            first_index_offset=_int(data.get("first_index_offset")),
            last_index_offset=_int(data.get("last_index_offset")),
        )

    async def settle_invoice(self, preimage: bytes) -> None:
        """SettleInvoice (idempotent on LND's side when already settled)."""
        await self._request(
            "POST", "/v2/invoices/settle", body={"preimage": _b64(preimage)}, pool="settle"
        )

    async def cancel_invoice(self, payment_hash: bytes, *, money: bool = True) -> None:
        """CancelInvoice (idempotent when already canceled; fails when settled).

        money=False for an invoice known to hold no HTLC (an unpaid one at its expiry): a
        burst of those must not take the connections that give held funds back.
        """
        await self._request(
            "POST",
            "/v2/invoices/cancel",
            body={"payment_hash": _b64(payment_hash)},
            pool="settle" if money else "other",
        )

    async def subscribe_invoice(self, payment_hash: bytes) -> AsyncIterator[Invoice]:
        """SubscribeSingleInvoice: current state first, then every change until final."""
        path = "/v2/invoices/subscribe/" + quote(_b64url(payment_hash), safe="=")
        async for result in self._stream("GET", path):
            yield parse_invoice(result)

    async def subscribe_invoices(
        self, *, add_index: int = 0, settle_index: int = 0
    ) -> AsyncIterator[Invoice]:
        """SubscribeInvoices: new and settled invoices, replaying after the given indexes."""
        params = {"add_index": str(add_index), "settle_index": str(settle_index)}
        async for result in self._stream("GET", "/v1/invoices/subscribe", params=params):
            yield parse_invoice(result)

    # ------------------------------------------------------------------ payments

    async def decode_payreq(self, payment_request: str) -> PayReq:
        """DecodePayReq: the node's own decoding of a BOLT11 string."""
        data = await self._request("GET", "/v1/payreq/" + quote(payment_request, safe=""))
        return parse_payreq(data)

    async def send_payment(
        self,
        payment_request: str,
        *,
        amt_sat: int | None = None,
        fee_limit_sat: int,
        timeout_seconds: int,
    ) -> AsyncIterator[Payment]:
        """SendPaymentV2: stream of payment updates until SUCCEEDED or FAILED."""
        body: dict[str, Any] = {
            "payment_request": payment_request,
            "fee_limit_sat": str(fee_limit_sat),
            "timeout_seconds": timeout_seconds,
            "no_inflight_updates": False,
        }
        if amt_sat is not None:
            body["amt"] = str(amt_sat)
        async for result in self._stream("POST", "/v2/router/send", body=body, pool="money"):
            yield parse_payment(result)

    async def track_payment(self, payment_hash: bytes) -> AsyncIterator[Payment]:
        """TrackPaymentV2: current state, then updates until final (PaymentNotInitiated)."""
        path = "/v2/router/track/" + quote(_b64url(payment_hash), safe="=")
        async for result in self._stream("GET", path, pool="money"):
            yield parse_payment(result)

    async def pay(
        self,
        payment_request: str,
        *,
        amt_sat: int | None = None,
        fee_limit_sat: int,
        timeout_seconds: int,
    ) -> Payment:
        """Send a payment and return its final state."""
        last: Payment | None = None
        async for update in self.send_payment(
            payment_request,
            amt_sat=amt_sat,
            fee_limit_sat=fee_limit_sat,
            timeout_seconds=timeout_seconds,
        ):
            last = update
            if update.is_final:
                return update
        raise LndError(
            "payment stream ended before a final state"
            + (f" (last status {last.status})" if last is not None else "")
        )
