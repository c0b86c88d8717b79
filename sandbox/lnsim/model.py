"""Persisted state of simulated nodes and the shared chain (plain dataclasses, JSON files)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

OPEN = "OPEN"
ACCEPTED = "ACCEPTED"
SETTLED = "SETTLED"
CANCELED = "CANCELED"

IN_FLIGHT = "IN_FLIGHT"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"

# Macaroon permissions as LND names them (BakeMacaroon's valid entities and actions).
MACAROON_ENTITIES = (
    "onchain",
    "offchain",
    "address",
    "message",
    "peers",
    "info",
    "invoices",
    "signer",
    "macaroon",
)
MACAROON_ACTIONS = ("read", "write", "generate")
# The admin macaroon's: every entity with every action.
ALL_PERMISSIONS = frozenset(f"{e}:{a}" for e in MACAROON_ENTITIES for a in MACAROON_ACTIONS)

REASON_NONE = "FAILURE_REASON_NONE"
REASON_TIMEOUT = "FAILURE_REASON_TIMEOUT"
REASON_NO_ROUTE = "FAILURE_REASON_NO_ROUTE"
REASON_ERROR = "FAILURE_REASON_ERROR"
REASON_INCORRECT_DETAILS = "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"
REASON_INSUFFICIENT_BALANCE = "FAILURE_REASON_INSUFFICIENT_BALANCE"
REASON_CANCELED = "FAILURE_REASON_CANCELED"

FAILURE_REASONS = (
    REASON_TIMEOUT,
    REASON_NO_ROUTE,
    REASON_ERROR,
    REASON_INCORRECT_DETAILS,
    REASON_INSUFFICIENT_BALANCE,
    REASON_CANCELED,
)


@dataclass
class InvoiceHtlc:
    """One incoming HTLC of an invoice."""

    htlc_index: int
    chan_id: int
    amt_msat: int
    accept_height: int
    accept_time: int
    expiry_height: int
    state: str
    resolve_time: int = 0
    sender: str = ""
    attempt_id: int = 0


@dataclass
class InvoiceRec:
    """An invoice as the receiving node stores it (bytes as hex)."""

    r_hash: str
    preimage: str  # "" while unknown (hold invoice before settle)
    memo: str
    value_msat: int
    creation_date: int
    payment_request: str
    expiry: int
    cltv_expiry: int
    add_index: int
    payment_addr: str
    is_hold: bool
    state: str = OPEN
    settle_date: int = 0
    settle_index: int = 0
    htlcs: list[InvoiceHtlc] = field(default_factory=list)

    @property
    def amt_paid_msat(self) -> int:
        """Sum of the HTLCs that are accepted or settled."""
        return sum(h.amt_msat for h in self.htlcs if h.state != CANCELED)

    def to_dict(self) -> dict[str, Any]:
        """Serialize to JSON-able data."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> InvoiceRec:
        """Rebuild from JSON."""
        htlcs = [InvoiceHtlc(**h) for h in data.get("htlcs", [])]
        rest = {k: v for k, v in data.items() if k != "htlcs"}
        return InvoiceRec(htlcs=htlcs, **rest)


@dataclass
class HtlcAttempt:
    """One outgoing HTLC attempt of a payment."""

    attempt_id: int
    amt_msat: int
    attempt_time_ns: int
    chan_id: int
    dest_pubkey: str
    total_time_lock: int
    payment_addr: str
    status: str = IN_FLIGHT
    resolve_time_ns: int = 0
    preimage: str = ""
    failure_code: str = ""
    failure_height: int = 0


@dataclass
class PaymentRec:
    """An outgoing payment as the sending node stores it (bytes as hex)."""

    payment_hash: str
    value_msat: int
    creation_time_ns: int
    payment_request: str
    payment_index: int
    status: str = IN_FLIGHT
    preimage: str = ""
    failure_reason: str = REASON_NONE
    dest_node: str = ""
    htlcs: list[HtlcAttempt] = field(default_factory=list)

    @property
    def in_flight_msat(self) -> int:
        """Amount locked by attempts still in flight."""
        return sum(a.amt_msat for a in self.htlcs if a.status == IN_FLIGHT)

    def to_dict(self) -> dict[str, Any]:
        """Serialize to JSON-able data."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PaymentRec:
        """Rebuild from JSON."""
        htlcs = [HtlcAttempt(**h) for h in data.get("htlcs", [])]
        rest = {k: v for k, v in data.items() if k != "htlcs"}
        return PaymentRec(htlcs=htlcs, **rest)


@dataclass
class NodeState:
    """Everything a simulated node persists besides its key and macaroon."""

    local_msat: int
    remote_msat: int
    next_add_index: int = 1
    next_settle_index: int = 1
    next_payment_index: int = 1
    next_htlc_index: int = 0
    next_attempt_id: int = 1
    fail_next: list[str] = field(default_factory=list)
    invoices: dict[str, InvoiceRec] = field(default_factory=dict)
    payments: dict[str, PaymentRec] = field(default_factory=dict)

    def meta_dict(self) -> dict[str, Any]:
        """Balances, counters and test hooks (invoices and payments are stored apart)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("invoices", "payments")
        }

    @staticmethod
    def from_meta(data: dict[str, Any]) -> NodeState:
        """Rebuild balances and counters from JSON."""
        return NodeState(**data)


@dataclass
class ChainState:
    """The shared simulated chain tip."""

    height: int
    last_block_time: float
