"""Render simulator records as LND REST JSON (snake_case, int64 as strings, every field)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bolt11 import Bolt11, FeatureState

from .model import CANCELED, FAILED, SETTLED, HtlcAttempt, InvoiceHtlc, InvoiceRec, PaymentRec
from .util import b64

# LND's names for feature bit pairs (feature/default_sets.go, lnwire/features.go).
_FEATURE_NAMES = {
    0: "data-loss-protect",
    2: "initial-routing-sync",
    4: "upfront-shutdown-script",
    6: "gossip-queries",
    8: "tlv-onion",
    10: "ext-gossip-queries",
    12: "static-remote-key",
    14: "payment-addr",
    16: "multi-path-payments",
    18: "wumbo-channels",
    20: "anchor-commitments",
    22: "anchors-zero-fee-htlc-tx",
    24: "route-blinding",
    26: "shutdown-any-segwit",
    44: "explicit-commitment-type",
    46: "scid-alias",
    50: "zero-conf",
    30: "amp",
}

# Bits LND sets in the invoices it creates: tlv-onion (opt), payment-addr (req), mpp (opt).
INVOICE_FEATURE_BITS = (9, 14, 17)
# A plausible feature set for getinfo.
NODE_FEATURE_BITS = (0, 5, 7, 9, 12, 14, 17, 23, 25, 27, 45, 47, 51)

ZERO_HASH_HEX = "0" * 64


def features_json(bits: Iterable[int]) -> dict[str, Any]:
    """Map of feature bit -> lnrpc.Feature, as LND renders it."""
    out: dict[str, Any] = {}
    for bit in sorted(bits):
        name = _FEATURE_NAMES.get(bit - bit % 2)
        out[str(bit)] = {
            "name": name or "unknown",
            "is_required": bit % 2 == 0,
            "is_known": name is not None,
        }
    return out


def invoice_feature_bits(decoded: Bolt11) -> list[int]:
    """Feature bits encoded in a BOLT11 invoice."""
    feats = decoded.features
    if feats is None:
        return []
    bits = []
    for feature, state in feats.feature_list.items():
        bits.append(feature.value * 2 + (1 if state == FeatureState.supported else 0))
    return bits


def _invoice_htlc_json(h: InvoiceHtlc) -> dict[str, Any]:
    return {
        "chan_id": str(h.chan_id),
        "htlc_index": str(h.htlc_index),
        "amt_msat": str(h.amt_msat),
        "accept_height": h.accept_height,
        "accept_time": str(h.accept_time),
        "resolve_time": str(h.resolve_time),
        "expiry_height": h.expiry_height,
        "state": h.state,
        "custom_records": {},
        "mpp_total_amt_msat": str(h.amt_msat),
        "amp": None,
        "custom_channel_data": "",
    }


def invoice_json(inv: InvoiceRec) -> dict[str, Any]:
    """lnrpc.Invoice."""
    amt_paid = inv.amt_paid_msat if inv.state != CANCELED else 0
    preimage = bytes.fromhex(inv.preimage) if inv.preimage else b""
    return {
        "memo": inv.memo,
        "r_preimage": b64(preimage),
        "r_hash": b64(bytes.fromhex(inv.r_hash)),
        "value": str(inv.value_msat // 1000),
        "value_msat": str(inv.value_msat),
        "settled": inv.state == SETTLED,
        "creation_date": str(inv.creation_date),
        "settle_date": str(inv.settle_date),
        "payment_request": inv.payment_request,
        "description_hash": "",
        "expiry": str(inv.expiry),
        "fallback_addr": "",
        "cltv_expiry": str(inv.cltv_expiry),
        "route_hints": [],
        "private": False,
        "add_index": str(inv.add_index),
        "settle_index": str(inv.settle_index),
        # LND quirk: the deprecated amt_paid carries millisatoshis.
        "amt_paid": str(amt_paid),
        "amt_paid_sat": str(amt_paid // 1000),
        "amt_paid_msat": str(amt_paid),
        "state": inv.state,
        "htlcs": [_invoice_htlc_json(h) for h in inv.htlcs],
        "features": features_json(INVOICE_FEATURE_BITS),
        "is_keysend": False,
        "payment_addr": b64(bytes.fromhex(inv.payment_addr)),
        "is_amp": False,
        "amp_invoice_state": {},
        "is_blinded": False,
        "blinded_path_config": None,
    }


def _route_json(a: HtlcAttempt, capacity_sat: int) -> dict[str, Any]:
    hop = {
        "chan_id": str(a.chan_id),
        "chan_capacity": str(capacity_sat),
        "amt_to_forward": str(a.amt_msat // 1000),
        "fee": "0",
        "expiry": a.total_time_lock,
        "amt_to_forward_msat": str(a.amt_msat),
        "fee_msat": "0",
        "pub_key": a.dest_pubkey,
        "tlv_payload": True,
        "mpp_record": {
            "payment_addr": b64(bytes.fromhex(a.payment_addr)),
            "total_amt_msat": str(a.amt_msat),
        },
        "amp_record": None,
        "custom_records": {},
        "metadata": "",
        "blinding_point": "",
        "encrypted_data": "",
        "total_amt_msat": "0",
    }
    return {
        "total_time_lock": a.total_time_lock,
        "total_fees": "0",
        "total_amt": str(a.amt_msat // 1000),
        "hops": [hop],
        "total_fees_msat": "0",
        "total_amt_msat": str(a.amt_msat),
        "first_hop_amount_msat": "0",
        "custom_channel_data": "",
    }


def _attempt_json(a: HtlcAttempt, capacity_sat: int) -> dict[str, Any]:
    failure: dict[str, Any] | None = None
    if a.status == FAILED:
        failure = {
            "code": a.failure_code or "INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS",
            "channel_update": None,
            "htlc_msat": str(a.amt_msat),
            "onion_sha_256": "",
            "cltv_expiry": 0,
            "flags": 0,
            "failure_source_index": 1,
            "height": a.failure_height,
        }
    return {
        "attempt_id": str(a.attempt_id),
        "status": a.status,
        "route": _route_json(a, capacity_sat),
        "attempt_time_ns": str(a.attempt_time_ns),
        "resolve_time_ns": str(a.resolve_time_ns),
        "failure": failure,
        "preimage": b64(bytes.fromhex(a.preimage)) if a.preimage else "",
    }


def payment_json(p: PaymentRec, capacity_sat: int) -> dict[str, Any]:
    """lnrpc.Payment."""
    return {
        "payment_hash": p.payment_hash,
        "value": str(p.value_msat // 1000),
        "creation_date": str(p.creation_time_ns // 1_000_000_000),
        "fee": "0",
        "payment_preimage": p.preimage or ZERO_HASH_HEX,
        "value_sat": str(p.value_msat // 1000),
        "value_msat": str(p.value_msat),
        "payment_request": p.payment_request,
        "status": p.status,
        "fee_sat": "0",
        "fee_msat": "0",
        "creation_time_ns": str(p.creation_time_ns),
        "htlcs": [_attempt_json(a, capacity_sat) for a in p.htlcs],
        "payment_index": str(p.payment_index),
        "failure_reason": p.failure_reason,
        "first_hop_custom_records": {},
    }


def payreq_json(decoded: Bolt11) -> dict[str, Any]:
    """lnrpc.PayReq."""
    msat = int(decoded.amount_msat or 0)
    secret = decoded.payment_secret
    return {
        "destination": decoded.payee or "",
        "payment_hash": decoded.payment_hash,
        "num_satoshis": str(msat // 1000),
        "timestamp": str(decoded.date),
        "expiry": str(decoded.expiry),
        "description": decoded.description or "",
        "description_hash": decoded.description_hash or "",
        "fallback_addr": "",
        "cltv_expiry": str(decoded.min_final_cltv_expiry),
        "route_hints": [],
        "payment_addr": b64(bytes.fromhex(secret)) if secret else "",
        "num_msat": str(msat),
        "features": features_json(invoice_feature_bits(decoded)),
        "blinded_paths": [],
    }


def amount_json(msat: int) -> dict[str, str]:
    """lnrpc.Amount."""
    msat = max(msat, 0)
    return {"sat": str(msat // 1000), "msat": str(msat)}
