"""The simulated Lightning network: nodes, invoices, payments, a shared chain tip."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bolt11
import coincurve
from bolt11 import Bolt11, Feature, Features, FeatureState, MilliSatoshi, TagChar, Tags

from . import marshal
from .model import (
    ACCEPTED,
    ALL_PERMISSIONS,
    CANCELED,
    FAILED,
    IN_FLIGHT,
    OPEN,
    REASON_INCORRECT_DETAILS,
    REASON_INSUFFICIENT_BALANCE,
    REASON_NO_ROUTE,
    REASON_NONE,
    SETTLED,
    SUCCEEDED,
    ChainState,
    HtlcAttempt,
    InvoiceHtlc,
    InvoiceRec,
    NodeState,
    PaymentRec,
)
from .util import (
    GRPC_ALREADY_EXISTS,
    GRPC_NOT_FOUND,
    RpcError,
    atomic_write_json,
    atomic_write_text,
)

log = logging.getLogger("lnsim")

NETWORK_NAME = "regtest"
CURRENCY = "bcrt"
START_HEIGHT = 1000
HOLD_EXPIRY_DELTA = 18  # LND's invoices.holdexpirydelta
DEFAULT_CLTV_EXPIRY = 80  # LND's default final CLTV delta (bitcoin.timelockdelta)
MIN_CLTV_DELTA = 18  # routing.MinCLTVDelta
MAX_CLTV_DELTA = 65535
DEFAULT_INVOICE_EXPIRY = 86400
MAX_MEMO_LEN = 639
CHANNEL_CAPACITY_SAT = 16_777_215

ERR_INVOICE_NOT_FOUND = "unable to locate invoice"
ERR_DUPLICATE_INVOICE = "invoice with payment hash already exists"
ERR_INVOICE_STILL_OPEN = "invoice still open"
ERR_ALREADY_SETTLED = "invoice already settled"
ERR_ALREADY_CANCELED = "invoice already canceled"
ERR_PAYMENT_IN_FLIGHT = "payment is in transition"
ERR_ALREADY_PAID = "invoice is already paid"
ERR_PAYMENT_NOT_INITIATED = "payment isn't initiated"
ERR_ZERO_AMT = "amount must be specified when paying a zero amount invoice"
ERR_AMT_FORBIDDEN = "amount must not be specified when paying a non-zero amount invoice"
ERR_NO_PAYMENT_ADDR = "payment request must contain either a payment address or blinded paths"
ERR_MUTUALLY_EXCLUSIVE = "sat and msat arguments are mutually exclusive"

Listener = asyncio.Queue[dict[str, Any] | None]


def _now() -> int:
    return int(time.time())


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _go_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(ts))


def _invoice_features() -> Features:
    return Features.from_feature_list(
        {
            Feature.var_onion_optin: FeatureState.supported,
            Feature.payment_secret: FeatureState.required,
            Feature.basic_mpp: FeatureState.supported,
        }
    )


def decode_payreq(pay_req: str) -> Bolt11:
    """Decode and check a BOLT11 string like LND's zpay32.Decode does for regtest."""
    text = pay_req.strip()
    if text.lower().startswith("lightning:"):
        text = text[len("lightning:") :]
    try:
        decoded = bolt11.decode(text)
    except bolt11.Bolt11Exception as exc:
        msg = str(exc)
        if "Bech32" in msg or "bech32" in msg:
            raise RpcError("invalid bech32 string") from exc
        raise RpcError(msg) from exc
    except Exception as exc:  # bech32/bitstring errors on garbage input
        raise RpcError(f"invalid payment request: {exc}") from exc
    if decoded.currency != CURRENCY:
        raise RpcError(f"invoice not for current active network '{NETWORK_NAME}'")
    return decoded


def scid_for(a: str, b: str) -> int:
    """A stable short channel id for the channel between two named nodes."""
    lo, hi = sorted((a, b))
    digest = _sha256(f"lnsim-channel:{lo}:{hi}".encode())
    block = 500 + int.from_bytes(digest[:2], "big") % 400
    tx = int.from_bytes(digest[2:4], "big") % 3000
    out = digest[4] % 2
    return (block << 40) | (tx << 16) | out


class Subscription:
    """A queue of JSON messages fed by a node; None means the network is closing."""

    def __init__(self, on_close: Callable[[Subscription], None]) -> None:
        self.queue: Listener = asyncio.Queue()
        self._on_close = on_close

    def push(self, message: dict[str, Any] | None) -> None:
        """Queue a message."""
        self.queue.put_nowait(message)

    async def get(self) -> dict[str, Any] | None:
        """Next message, or None when the simulator shuts down."""
        return await self.queue.get()

    def close(self) -> None:
        """Stop receiving messages."""
        self._on_close(self)


@dataclass
class _AllInvoicesSub:
    sub: Subscription
    add_index: int
    settle_index: int


class SimNode:
    """One simulated LND node."""

    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name
        state_dir = network.state_dir
        self._key_path = state_dir / f"{name}.key"
        self._node_dir = state_dir / name
        self._meta_path = self._node_dir / "node.json"
        self.macaroon_path = state_dir / f"{name}.macaroon"
        self.privkey = self._load_key()
        self.pubkey = self.privkey.public_key.format(compressed=True).hex()
        self.macaroon_hex = self._load_macaroon()
        self._baked_path = self._node_dir / "macaroons.json"
        self.baked = self._load_baked()
        self.state = self._load_state()
        self.alias = name
        self.rest_url = ""
        self._single_subs: dict[str, set[Subscription]] = {}
        self._all_subs: list[_AllInvoicesSub] = []
        self._payment_subs: dict[str, set[Subscription]] = {}

    # ----------------------------------------------------------------- persistence

    def _load_key(self) -> coincurve.PrivateKey:
        if self._key_path.exists():
            return coincurve.PrivateKey(bytes.fromhex(self._key_path.read_text().strip()))
        key = coincurve.PrivateKey()
        atomic_write_text(self._key_path, key.secret.hex() + "\n", mode=0o600)
        return key

    def _load_macaroon(self) -> str:
        if self.macaroon_path.exists():
            text = self.macaroon_path.read_text().strip().lower()
            if text:
                bytes.fromhex(text)  # must be hex
                return text
        mac = secrets.token_bytes(64).hex()
        atomic_write_text(self.macaroon_path, mac, mode=0o600)
        return mac

    def _load_baked(self) -> dict[str, frozenset[str]]:
        """Macaroons baked with BakeMacaroon: hex -> "entity:action" permissions."""
        if not self._baked_path.exists():
            return {}
        data = json.loads(self._baked_path.read_text())
        return {mac: frozenset(perms) for mac, perms in data.items()}

    def bake_macaroon(self, permissions: frozenset[str]) -> str:
        """A new macaroon granting exactly `permissions` (kept across restarts)."""
        mac = secrets.token_bytes(64).hex()
        self.baked[mac] = permissions
        self._node_dir.mkdir(parents=True, exist_ok=True)
        data = {m: sorted(p) for m, p in self.baked.items()}
        atomic_write_text(self._baked_path, json.dumps(data, indent=1), mode=0o600)
        return mac

    def permissions_of(self, macaroon_hex: str) -> frozenset[str] | None:
        """What a macaroon may do: None if this node never issued it; the admin one may all."""
        if hmac.compare_digest(macaroon_hex.encode(), self.macaroon_hex.encode()):
            return ALL_PERMISSIONS
        return self.baked.get(macaroon_hex)

    def _load_state(self) -> NodeState:
        if self._meta_path.exists():
            state = NodeState.from_meta(json.loads(self._meta_path.read_text()))
            for path in sorted((self._node_dir / "invoices").glob("*.json")):
                inv = InvoiceRec.from_dict(json.loads(path.read_text()))
                state.invoices[inv.r_hash] = inv
            for path in sorted((self._node_dir / "payments").glob("*.json")):
                pay = PaymentRec.from_dict(json.loads(path.read_text()))
                state.payments[pay.payment_hash] = pay
            return state
        initial = self.network.initial_balance_sat * 1000
        state = NodeState(local_msat=initial, remote_msat=initial)
        atomic_write_json(self._meta_path, state.meta_dict())
        return state

    def save(self, *, invoice: InvoiceRec | None = None, payment: PaymentRec | None = None) -> None:
        """Persist the touched invoice/payment (one file each) and the node's counters."""
        if invoice is not None:
            atomic_write_json(
                self._node_dir / "invoices" / f"{invoice.r_hash}.json", invoice.to_dict()
            )
        if payment is not None:
            atomic_write_json(
                self._node_dir / "payments" / f"{payment.payment_hash}.json", payment.to_dict()
            )
        atomic_write_json(self._meta_path, self.state.meta_dict())

    # ----------------------------------------------------------------- balances

    @property
    def locked_msat(self) -> int:
        """Outgoing amount held by in-flight HTLCs."""
        return sum(p.in_flight_msat for p in self.state.payments.values())

    @property
    def incoming_pending_msat(self) -> int:
        """Incoming amount of accepted (held) HTLCs."""
        return sum(
            h.amt_msat
            for inv in self.state.invoices.values()
            for h in inv.htlcs
            if h.state == ACCEPTED
        )

    def channel_balance_json(self) -> dict[str, Any]:
        """lnrpc.ChannelBalanceResponse."""
        local = self.state.local_msat - self.locked_msat
        return {
            "balance": str(max(local, 0) // 1000),
            "pending_open_balance": "0",
            "local_balance": marshal.amount_json(local),
            "remote_balance": marshal.amount_json(self.state.remote_msat),
            "unsettled_local_balance": marshal.amount_json(self.locked_msat),
            "unsettled_remote_balance": marshal.amount_json(self.incoming_pending_msat),
            "pending_open_local_balance": marshal.amount_json(0),
            "pending_open_remote_balance": marshal.amount_json(0),
            "custom_channel_data": "",
        }

    def getinfo_json(self) -> dict[str, Any]:
        """lnrpc.GetInfoResponse."""
        chain = self.network.chain
        peers = len(self.network.nodes) - 1
        return {
            "version": "0.18.5-beta commit=lnsim",
            "commit_hash": "lnsim",
            "identity_pubkey": self.pubkey,
            "alias": self.alias,
            "color": "#3399ff",
            "num_pending_channels": 0,
            "num_active_channels": peers,
            "num_inactive_channels": 0,
            "num_peers": peers,
            "block_height": chain.height,
            "block_hash": self.network.block_hash(chain.height),
            "best_header_timestamp": str(int(chain.last_block_time)),
            "synced_to_chain": True,
            "synced_to_graph": True,
            "testnet": False,
            "chains": [{"chain": "bitcoin", "network": NETWORK_NAME}],
            "uris": [],
            "features": marshal.features_json(marshal.NODE_FEATURE_BITS),
            "require_htlc_interceptor": False,
            "store_final_htlc_resolutions": False,
            "wallet_synced": True,
            "graph_cache_status": "GRAPH_CACHE_STATUS_LOADED",
        }

    # ----------------------------------------------------------------- subscriptions

    def subscribe_single_invoice(self, r_hash_hex: str) -> Subscription:
        """Subscribe to one invoice; the current state is queued first if it exists."""

        def on_close(sub: Subscription) -> None:
            subs = self._single_subs.get(r_hash_hex)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._single_subs[r_hash_hex]

        sub = Subscription(on_close)
        self._single_subs.setdefault(r_hash_hex, set()).add(sub)
        inv = self.state.invoices.get(r_hash_hex)
        if inv is not None:
            sub.push(marshal.invoice_json(inv))
        return sub

    def subscribe_all_invoices(self, add_index: int, settle_index: int) -> Subscription:
        """Subscribe to added and settled invoices, replaying the backlog like LND."""
        entry: _AllInvoicesSub

        def on_close(sub: Subscription) -> None:
            self._all_subs[:] = [e for e in self._all_subs if e.sub is not sub]

        sub = Subscription(on_close)
        entry = _AllInvoicesSub(sub, add_index, settle_index)
        invoices = sorted(self.state.invoices.values(), key=lambda i: i.add_index)
        if add_index > 0:
            for inv in invoices:
                if inv.add_index > add_index:
                    sub.push(marshal.invoice_json(inv))
                    entry.add_index = max(entry.add_index, inv.add_index)
        if settle_index > 0:
            settled = sorted(
                (i for i in invoices if i.state == SETTLED and i.settle_index > settle_index),
                key=lambda i: i.settle_index,
            )
            for inv in settled:
                sub.push(marshal.invoice_json(inv))
                entry.settle_index = max(entry.settle_index, inv.settle_index)
        self._all_subs.append(entry)
        return sub

    def subscribe_payment(self, payment_hash_hex: str) -> Subscription:
        """Subscribe to updates of one outgoing payment (nothing is queued up front)."""

        def on_close(sub: Subscription) -> None:
            subs = self._payment_subs.get(payment_hash_hex)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._payment_subs[payment_hash_hex]

        sub = Subscription(on_close)
        self._payment_subs.setdefault(payment_hash_hex, set()).add(sub)
        return sub

    def close_subscriptions(self) -> None:
        """Wake every stream so it can end (shutdown)."""
        for subs in list(self._single_subs.values()):
            for sub in list(subs):
                sub.push(None)
        for entry in list(self._all_subs):
            entry.sub.push(None)
        for subs in list(self._payment_subs.values()):
            for sub in list(subs):
                sub.push(None)

    def _notify_invoice(self, inv: InvoiceRec, *, added: bool = False) -> None:
        message = marshal.invoice_json(inv)
        for sub in list(self._single_subs.get(inv.r_hash, ())):
            sub.push(message)
        for entry in self._all_subs:
            if added and inv.add_index > entry.add_index:
                entry.add_index = inv.add_index
                entry.sub.push(message)
            elif inv.state == SETTLED and inv.settle_index > entry.settle_index:
                entry.settle_index = inv.settle_index
                entry.sub.push(message)

    def payment_json(self, p: PaymentRec) -> dict[str, Any]:
        """lnrpc.Payment for one of this node's payments."""
        return marshal.payment_json(p, CHANNEL_CAPACITY_SAT)

    def _notify_payment(self, p: PaymentRec) -> None:
        message = self.payment_json(p)
        for sub in list(self._payment_subs.get(p.payment_hash, ())):
            sub.push(message)

    # ----------------------------------------------------------------- invoices

    def _encode_invoice(
        self,
        *,
        payment_hash: bytes,
        payment_addr: bytes,
        value_msat: int,
        memo: str,
        expiry: int,
        cltv_expiry: int,
        date: int,
    ) -> str:
        tags = Tags()
        tags.add(TagChar.payment_hash, payment_hash.hex())
        tags.add(TagChar.payment_secret, payment_addr.hex())
        tags.add(TagChar.description, memo)
        tags.add(TagChar.expire_time, expiry)
        tags.add(TagChar.min_final_cltv_expiry, cltv_expiry)
        tags.add(TagChar.features, _invoice_features())
        invoice = Bolt11(
            currency=CURRENCY,
            date=date,
            amount_msat=MilliSatoshi(value_msat) if value_msat else None,
            tags=tags,
        )
        return bolt11.encode(invoice, self.privkey.secret.hex())

    def add_invoice(
        self,
        *,
        value_msat: int,
        memo: str,
        expiry: int,
        cltv_expiry: int,
        payment_hash: bytes | None,
        preimage: bytes | None,
    ) -> InvoiceRec:
        """Create a standard invoice (payment_hash None) or a hold invoice."""
        if value_msat < 0:
            raise RpcError(
                f"payments of negative value are not allowed, value is {value_msat} mSAT"
            )
        if len(memo.encode()) > MAX_MEMO_LEN:
            raise RpcError(f"memo too large: {len(memo.encode())} bytes (maxlen={MAX_MEMO_LEN})")
        if expiry < 0:
            raise RpcError("expiry must be non-negative")
        if expiry == 0:
            expiry = DEFAULT_INVOICE_EXPIRY
        if cltv_expiry > MAX_CLTV_DELTA:
            raise RpcError(
                f"CLTV delta of {cltv_expiry} is too large, max accepted is: {MAX_CLTV_DELTA}"
            )
        if cltv_expiry == 0:
            cltv_expiry = DEFAULT_CLTV_EXPIRY
        elif cltv_expiry < MIN_CLTV_DELTA:
            raise RpcError(
                f"CLTV delta of {cltv_expiry} must be greater than minimum of {MIN_CLTV_DELTA}"
            )
        is_hold = payment_hash is not None
        if payment_hash is None:
            if preimage is None:
                preimage = secrets.token_bytes(32)
            elif len(preimage) != 32:
                raise RpcError(f"invalid preimage length of {len(preimage)}, want 32")
            payment_hash = _sha256(preimage)
        elif len(payment_hash) != 32:
            raise RpcError(f"invalid hash length of {len(payment_hash)}, want 32")
        r_hash_hex = payment_hash.hex()
        if r_hash_hex in self.state.invoices:
            raise RpcError(ERR_DUPLICATE_INVOICE)
        payment_addr = secrets.token_bytes(32)
        now = _now()
        payment_request = self._encode_invoice(
            payment_hash=payment_hash,
            payment_addr=payment_addr,
            value_msat=value_msat,
            memo=memo,
            expiry=expiry,
            cltv_expiry=cltv_expiry,
            date=now,
        )
        inv = InvoiceRec(
            r_hash=r_hash_hex,
            preimage=preimage.hex() if preimage is not None and not is_hold else "",
            memo=memo,
            value_msat=value_msat,
            creation_date=now,
            payment_request=payment_request,
            expiry=expiry,
            cltv_expiry=cltv_expiry,
            add_index=self.state.next_add_index,
            payment_addr=payment_addr.hex(),
            is_hold=is_hold,
        )
        self.state.next_add_index += 1
        self.state.invoices[r_hash_hex] = inv
        self.save(invoice=inv)
        self._notify_invoice(inv, added=True)
        return inv

    def list_invoices(
        self, *, pending_only: bool, index_offset: int, num_max: int, reverse: bool
    ) -> list[InvoiceRec]:
        """ListInvoices: a page of invoices by add_index, as LND's invoice registry answers.

        Forward: the first `num_max` past `index_offset`. Reversed: the last `num_max` before
        `index_offset` (0: from the newest), still returned oldest first. `pending_only`
        keeps OPEN and ACCEPTED invoices, and the page counts only those.
        """
        invoices = sorted(self.state.invoices.values(), key=lambda i: i.add_index)
        if pending_only:
            invoices = [i for i in invoices if i.state in (OPEN, ACCEPTED)]
        if reverse:
            if index_offset:
                invoices = [i for i in invoices if i.add_index < index_offset]
            return invoices[-num_max:] if num_max else []
        return [i for i in invoices if i.add_index > index_offset][:num_max]

    def lookup_invoice(self, r_hash: bytes, *, not_found_code: int = GRPC_NOT_FOUND) -> InvoiceRec:
        """Find an invoice by payment hash."""
        inv = self.state.invoices.get(r_hash.hex())
        if inv is None:
            raise RpcError(ERR_INVOICE_NOT_FOUND, not_found_code)
        return inv

    def settle_invoice(self, preimage: bytes) -> None:
        """Settle an accepted hold invoice (idempotent when already settled)."""
        if len(preimage) != 32:
            raise RpcError(f"invalid preimage length of {len(preimage)}, want 32")
        inv = self.state.invoices.get(_sha256(preimage).hex())
        if inv is None:
            raise RpcError(ERR_INVOICE_NOT_FOUND)
        if inv.state == SETTLED:
            return
        if inv.state == CANCELED:
            raise RpcError(ERR_ALREADY_CANCELED)
        if inv.state == OPEN:
            raise RpcError(ERR_INVOICE_STILL_OPEN)
        now = _now()
        inv.preimage = preimage.hex()
        received = 0
        settled_htlcs: list[InvoiceHtlc] = []
        for h in inv.htlcs:
            if h.state == ACCEPTED:
                h.state = SETTLED
                h.resolve_time = now
                received += h.amt_msat
                settled_htlcs.append(h)
        self._mark_settled(inv, now, received)
        self.save(invoice=inv)
        self._notify_invoice(inv)
        for h in settled_htlcs:
            sender = self.network.nodes.get(h.sender)
            if sender is not None:
                sender.resolve_outgoing(inv.r_hash, h.attempt_id, preimage=preimage)

    def _mark_settled(self, inv: InvoiceRec, now: int, received_msat: int) -> None:
        inv.state = SETTLED
        inv.settle_date = now
        inv.settle_index = self.state.next_settle_index
        self.state.next_settle_index += 1
        self.state.local_msat += received_msat
        self.state.remote_msat -= received_msat

    def cancel_invoice(self, r_hash: bytes) -> None:
        """Cancel an open or accepted invoice (idempotent when already canceled)."""
        inv = self.state.invoices.get(r_hash.hex())
        if inv is None:
            raise RpcError(ERR_INVOICE_NOT_FOUND)
        if inv.state == CANCELED:
            return
        if inv.state == SETTLED:
            raise RpcError(ERR_ALREADY_SETTLED)
        self._cancel(inv)

    def _cancel(self, inv: InvoiceRec) -> None:
        now = _now()
        canceled: list[InvoiceHtlc] = []
        for h in inv.htlcs:
            if h.state == ACCEPTED:
                h.state = CANCELED
                h.resolve_time = now
                canceled.append(h)
        inv.state = CANCELED
        self.save(invoice=inv)
        self._notify_invoice(inv)
        for h in canceled:
            sender = self.network.nodes.get(h.sender)
            if sender is not None:
                sender.resolve_outgoing(inv.r_hash, h.attempt_id, preimage=None)

    def expire_invoices(self, now: int) -> None:
        """Cancel open invoices past their expiry, as LND's invoice expiry watcher does."""
        for inv in list(self.state.invoices.values()):
            if inv.state == OPEN and now >= inv.creation_date + inv.expiry:
                log.info("%s: invoice %s expired, canceling", self.name, inv.r_hash[:16])
                self._cancel(inv)

    def on_block(self, height: int) -> None:
        """Cancel accepted hold invoices whose HTLCs come within holdexpirydelta of expiry."""
        for inv in list(self.state.invoices.values()):
            if inv.state != ACCEPTED:
                continue
            if any(
                h.state == ACCEPTED and height >= h.expiry_height - HOLD_EXPIRY_DELTA
                for h in inv.htlcs
            ):
                log.info(
                    "%s: hold invoice %s near HTLC expiry, canceling", self.name, inv.r_hash[:16]
                )
                self._cancel(inv)

    def receive_htlc(
        self, *, sender: str, payment_hash_hex: str, attempt: HtlcAttempt
    ) -> tuple[str, bytes | None]:
        """Handle an incoming HTLC: ("settled", preimage), ("held", None) or ("failed", None)."""
        inv = self.state.invoices.get(payment_hash_hex)
        now = _now()
        if inv is None or inv.state != OPEN:
            return "failed", None
        if attempt.payment_addr != inv.payment_addr:
            return "failed", None
        if now >= inv.creation_date + inv.expiry:
            return "failed", None
        if inv.value_msat and not (inv.value_msat <= attempt.amt_msat <= 2 * inv.value_msat):
            return "failed", None
        height = self.network.chain.height
        htlc = InvoiceHtlc(
            htlc_index=self.state.next_htlc_index,
            chan_id=attempt.chan_id,
            amt_msat=attempt.amt_msat,
            accept_height=height,
            accept_time=now,
            expiry_height=attempt.total_time_lock,
            state=ACCEPTED,
            sender=sender,
            attempt_id=attempt.attempt_id,
        )
        self.state.next_htlc_index += 1
        inv.htlcs.append(htlc)
        if inv.is_hold:
            inv.state = ACCEPTED
            self.save(invoice=inv)
            self._notify_invoice(inv)
            return "held", None
        htlc.state = SETTLED
        htlc.resolve_time = now
        self._mark_settled(inv, now, attempt.amt_msat)
        self.save(invoice=inv)
        self._notify_invoice(inv)
        return "settled", bytes.fromhex(inv.preimage)

    # ----------------------------------------------------------------- payments

    def lookup_payment(self, payment_hash: bytes) -> PaymentRec:
        """Find an outgoing payment."""
        p = self.state.payments.get(payment_hash.hex())
        if p is None:
            raise RpcError(ERR_PAYMENT_NOT_INITIATED, GRPC_NOT_FOUND)
        return p

    def validate_send(
        self,
        *,
        payment_request: str,
        amt_msat: int,
        timeout_seconds: int,
        allow_self_payment: bool,
    ) -> tuple[Bolt11, int]:
        """Validate a SendPaymentV2 request like LND's router backend; returns (invoice, msat)."""
        if not payment_request:
            raise RpcError("lnsim supports only payments to a payment_request")
        if timeout_seconds <= 0:
            raise RpcError("timeout_seconds must be specified")
        decoded = decode_payreq(payment_request)
        if decoded.amount_msat is None or int(decoded.amount_msat) == 0:
            if amt_msat == 0:
                raise RpcError(ERR_ZERO_AMT)
            value_msat = amt_msat
        else:
            if amt_msat != 0:
                raise RpcError(ERR_AMT_FORBIDDEN)
            value_msat = int(decoded.amount_msat)
        if value_msat < 0:
            raise RpcError("amount must be positive")
        if decoded.has_expired():
            raise RpcError(f"invoice expired. Valid until {_go_time(decoded.expiry_time)}")
        if not decoded.payment_secret:
            raise RpcError(ERR_NO_PAYMENT_ADDR)
        if decoded.payee == self.pubkey and not allow_self_payment:
            raise RpcError("self-payments not allowed")
        existing = self.state.payments.get(decoded.payment_hash)
        if existing is not None:
            if existing.status == IN_FLIGHT:
                raise RpcError(ERR_PAYMENT_IN_FLIGHT, GRPC_ALREADY_EXISTS)
            if existing.status == SUCCEEDED:
                raise RpcError(ERR_ALREADY_PAID, GRPC_ALREADY_EXISTS)
        return decoded, value_msat

    def start_payment(self, decoded: Bolt11, value_msat: int, payment_request: str) -> PaymentRec:
        """Create and run a payment; updates are pushed to payment subscribers."""
        payment_hash_hex = decoded.payment_hash
        p = PaymentRec(
            payment_hash=payment_hash_hex,
            value_msat=value_msat,
            creation_time_ns=time.time_ns(),
            payment_request=payment_request,
            payment_index=self.state.next_payment_index,
        )
        self.state.next_payment_index += 1
        self.state.payments[payment_hash_hex] = p

        if self.state.fail_next:
            reason = self.state.fail_next.pop(0)
            self._fail_without_attempt(p, reason)
            return p
        dest = self.network.by_pubkey.get(decoded.payee or "")
        if dest is None or dest is self:
            self._fail_without_attempt(p, REASON_NO_ROUTE)
            return p
        if value_msat > self.state.local_msat - self.locked_msat:
            self._fail_without_attempt(p, REASON_INSUFFICIENT_BALANCE)
            return p
        p.dest_node = dest.name
        attempt = HtlcAttempt(
            attempt_id=self.state.next_attempt_id,
            amt_msat=value_msat,
            attempt_time_ns=time.time_ns(),
            chan_id=scid_for(self.name, dest.name),
            dest_pubkey=dest.pubkey,
            total_time_lock=self.network.chain.height + decoded.min_final_cltv_expiry,
            payment_addr=decoded.payment_secret or "",
        )
        self.state.next_attempt_id += 1
        p.htlcs.append(attempt)
        self.save(payment=p)
        self._notify_payment(p)
        outcome, preimage = dest.receive_htlc(
            sender=self.name, payment_hash_hex=payment_hash_hex, attempt=attempt
        )
        if outcome == "settled":
            self.resolve_outgoing(payment_hash_hex, attempt.attempt_id, preimage=preimage)
        elif outcome == "failed":
            self.resolve_outgoing(payment_hash_hex, attempt.attempt_id, preimage=None)
        return p

    def _fail_without_attempt(self, p: PaymentRec, reason: str) -> None:
        self.save(payment=p)
        self._notify_payment(p)  # the initial IN_FLIGHT update
        p.status = FAILED
        p.failure_reason = reason
        self.save(payment=p)
        self._notify_payment(p)

    def resolve_outgoing(
        self, payment_hash_hex: str, attempt_id: int, *, preimage: bytes | None
    ) -> None:
        """Settle (preimage given) or fail an outgoing HTLC attempt and its payment."""
        p = self.state.payments.get(payment_hash_hex)
        if p is None or p.status != IN_FLIGHT:
            return
        attempt = next((a for a in p.htlcs if a.attempt_id == attempt_id), None)
        if attempt is None or attempt.status != IN_FLIGHT:
            return
        attempt.resolve_time_ns = time.time_ns()
        if preimage is not None:
            attempt.status = SUCCEEDED
            attempt.preimage = preimage.hex()
            self.state.local_msat -= attempt.amt_msat
            self.state.remote_msat += attempt.amt_msat
            p.status = SUCCEEDED
            p.preimage = preimage.hex()
            p.failure_reason = REASON_NONE
        else:
            attempt.status = FAILED
            attempt.failure_code = "INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS"
            attempt.failure_height = self.network.chain.height
            p.status = FAILED
            p.failure_reason = REASON_INCORRECT_DETAILS
        self.save(payment=p)
        self._notify_payment(p)

    def fail_next_payments(self, count: int, reason: str) -> int:
        """Make the next `count` outgoing payments fail with `reason` (count 0 clears)."""
        if count <= 0:
            self.state.fail_next.clear()
        else:
            self.state.fail_next.extend([reason] * count)
        self.save()
        return len(self.state.fail_next)


class Network:
    """All simulated nodes of one process plus the shared chain."""

    def __init__(
        self,
        state_dir: Path,
        *,
        block_time_seconds: float = 600.0,
        initial_balance_sat: int = 10_000_000,
    ) -> None:
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.block_time_seconds = block_time_seconds
        self.initial_balance_sat = initial_balance_sat
        self.nodes: dict[str, SimNode] = {}
        self.by_pubkey: dict[str, SimNode] = {}
        self._chain_path = state_dir / "chain.json"
        self.chain = self._load_chain()
        self._tasks: list[asyncio.Task[None]] = []

    def _load_chain(self) -> ChainState:
        if self._chain_path.exists():
            data = json.loads(self._chain_path.read_text())
            return ChainState(
                height=int(data["height"]), last_block_time=float(data["last_block_time"])
            )
        chain = ChainState(height=START_HEIGHT, last_block_time=time.time())
        atomic_write_json(
            self._chain_path, {"height": chain.height, "last_block_time": chain.last_block_time}
        )
        return chain

    def add_node(self, name: str) -> SimNode:
        """Create (or reload) a node by name."""
        if name in self.nodes:
            raise ValueError(f"duplicate node name {name!r}")
        node = SimNode(self, name)
        self.nodes[name] = node
        self.by_pubkey[node.pubkey] = node
        return node

    @staticmethod
    def block_hash(height: int) -> str:
        """A deterministic fake block hash."""
        return _sha256(f"lnsim-block:{height}".encode())[::-1].hex()

    def mine(self, blocks: int = 1, *, at: float | None = None) -> int:
        """Advance the chain tip and run per-block duties; returns the new height."""
        if blocks <= 0:
            return self.chain.height
        self.chain.height += blocks
        self.chain.last_block_time = time.time() if at is None else at
        atomic_write_json(
            self._chain_path,
            {"height": self.chain.height, "last_block_time": self.chain.last_block_time},
        )
        for node in list(self.nodes.values()):
            node.on_block(self.chain.height)
        return self.chain.height

    def tick(self) -> None:
        """Mine due blocks and expire invoices."""
        now = time.time()
        if self.block_time_seconds > 0:
            elapsed = now - self.chain.last_block_time
            due = int(elapsed // self.block_time_seconds)
            if due > 0:
                self.mine(due, at=self.chain.last_block_time + due * self.block_time_seconds)
        for node in list(self.nodes.values()):
            node.expire_invoices(int(now))

    async def _ticker(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # keep the simulator alive
                log.exception("tick failed")
            delay = 1.0
            if self.block_time_seconds > 0:
                next_block = self.chain.last_block_time + self.block_time_seconds
                delay = min(delay, max(next_block - time.time(), 0.02))
            await asyncio.sleep(delay)

    def start(self) -> None:
        """Start the background ticker (blocks, invoice expiry)."""
        self.tick()
        self._tasks.append(asyncio.get_running_loop().create_task(self._ticker()))

    async def stop(self) -> None:
        """Stop background work and end all streams."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for node in self.nodes.values():
            node.close_subscriptions()
