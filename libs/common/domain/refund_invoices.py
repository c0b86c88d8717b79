"""Pure BOLT11 checks of the no-amount refund invoices customers hand us."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import bolt11

from libs.common.core.config import Settings

INVALID_REFUND_INVOICE: Final = "INVALID_REFUND_INVOICE"
REFUND_INVOICE_EXPIRES_TOO_SOON: Final = "REFUND_INVOICE_EXPIRES_TOO_SOON"

# BOLT11 human-readable-part currency prefixes, as LND names its networks.
_CURRENCY_BY_NETWORK: Final = {
    "mainnet": "bc",
    "testnet": "tb",
    "testnet4": "tb",  # LND >= 0.19 names it so; same BOLT11 prefix as testnet3
    "signet": "tbs",
    "regtest": "bcrt",
    "simnet": "sb",
}
_NETWORK_BY_CURRENCY: Final = {
    "bc": "mainnet",
    "tb": "testnet",
    "tbs": "signet",
    "bcrt": "regtest",
    "sb": "simnet",
}

_PREFIX: Final = "lightning:"
# Invoices with many route hints stay below 2 KiB; the cap bounds decoding work (~1.7 ms/KiB).
MAX_INVOICE_LENGTH: Final = 4096


# How long a refund attempt waits on the node beyond the payment timeout, and how much longer
# its claim lasts before another worker may take it over (services/payments/refunds.py).
REFUND_NODE_WAIT_SLACK_SECONDS: Final = 5.0
REFUND_LEASE_SLACK_SECONDS: Final = 10.0
REFUND_ATTEMPT_SLACK_SECONDS: Final = REFUND_NODE_WAIT_SLACK_SECONDS + REFUND_LEASE_SLACK_SECONDS
# The longest backoff between two refund attempts.
REFUND_MAX_BACKOFF_SECONDS: Final = 600.0
# Room for what no setting bounds exactly: a deadline re-fired after a lost message (a minute
# plus the 10 s check), a worker restart, a redelivery, clock skew with the customer's node.
REFUND_VALIDITY_MARGIN_SECONDS: Final = 300


def refund_min_validity_seconds(settings: Settings) -> int:
    """How long a refund invoice must stay valid from order creation (pure, from the settings).

    The latest automatic refund of any order type: its invoice is paid at the end of its
    window; without a number (allocation retried until its deadline) or an SMS (the order
    timeout) it is cancelled at the provider, which may take until the give-up (or the hold
    grace) past the deadline; then every refund attempt may run to its timeout and lease,
    with the doubling backoff in between; plus a margin. A rental or a reactivation is
    refunded in full only until it gets its number, so the allocation deadline bounds that;
    a rental the provider ends early later is paid back only while the customer's invoice is
    still valid (the README asks for one that outlives the rental). The configured
    SMS4SATS_REFUND_MIN_VALIDITY_SECONDS is a floor.
    """
    outcome = max(settings.order_timeout_seconds, settings.allocation_deadline_seconds)
    cancel = max(settings.provider_giveup_seconds, settings.hold_grace_seconds)
    attempts = max(1, settings.refund_max_attempts)
    paying = attempts * (settings.refund_timeout_seconds + REFUND_ATTEMPT_SLACK_SECONDS)
    backoff: float = sum(
        min(settings.refund_retry_base_seconds * 2 ** (n - 1), REFUND_MAX_BACKOFF_SECONDS)
        for n in range(1, attempts)
    )
    derived: float = (
        settings.invoice_expiry_seconds
        + outcome
        + cancel
        + paying
        + backoff
        + REFUND_VALIDITY_MARGIN_SECONDS
    )
    return max(settings.refund_min_validity_seconds, math.ceil(derived))


class RefundInvoiceError(Exception):
    """A refund invoice was refused; `code` is the API error code, `message` is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"RefundInvoiceError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class RefundInvoice:
    """What we keep of an accepted refund invoice; `payment_request` is normalised lowercase."""

    payment_request: str
    payment_hash: bytes
    expires_at: int
    payee: str


def currency_for_network(network: str) -> str:
    """Map an LND network name (mainnet, testnet, signet, regtest, simnet) to its BOLT11 prefix."""
    try:
        return _CURRENCY_BY_NETWORK[network.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown network {network!r}") from None


def _network_name(currency: str) -> str:
    return _NETWORK_BY_CURRENCY.get(currency, currency)


def _invalid(message: str) -> RefundInvoiceError:
    return RefundInvoiceError(INVALID_REFUND_INVOICE, message)


def check_refund_invoice(
    payment_request: str, *, currency: str, now: int, min_validity_seconds: int = 1800
) -> RefundInvoice:
    """Accept a signed no-amount invoice for our network with enough validity left, or raise."""
    if not isinstance(payment_request, str):
        raise _invalid("refundInvoice must be a BOLT11 string")
    text = payment_request.strip()
    if text[: len(_PREFIX)].lower() == _PREFIX:
        text = text[len(_PREFIX) :].strip()
    # Stored lowercase: bech32 forbids mixed case, and LND refuses it when we pay later.
    text = text.lower()
    if not text:
        raise _invalid("refundInvoice is empty")
    if len(text) > MAX_INVOICE_LENGTH:
        raise _invalid("refundInvoice is too long")

    try:
        invoice = bolt11.decode(text)
        payment_hash = bytes.fromhex(invoice.payment_hash)
        payee = invoice.payee
        expires_at = invoice.date + invoice.expiry
    except Exception:
        # bolt11/bech32/bitstring/coincurve raise a zoo of types on hostile input;
        # every one of them is the customer's 400, never our 500.
        raise _invalid("refundInvoice is not a valid BOLT11 invoice") from None

    if invoice.currency != currency:
        raise _invalid(
            f"refundInvoice is for {_network_name(invoice.currency)}, "
            f"this service runs on {_network_name(currency)}"
        )
    # bolt11 matches the prefix loosely ("lnbcrt-x" reads as bcrt); demand the exact HRP
    # of a no-amount invoice so what we accept is what LND will parse when we pay.
    if invoice.amount_msat is not None:
        raise _invalid("refundInvoice must not specify an amount")
    if text[: text.rfind("1")] != "ln" + currency:
        raise _invalid("refundInvoice is not a valid BOLT11 invoice")
    if not invoice.payment_secret:
        raise _invalid("refundInvoice must carry a payment secret")
    if len(payment_hash) != 32 or not payee:
        raise _invalid("refundInvoice is not a valid BOLT11 invoice")
    if expires_at - now < min_validity_seconds:
        raise RefundInvoiceError(
            REFUND_INVOICE_EXPIRES_TOO_SOON,
            f"refundInvoice must stay valid for at least {math.ceil(min_validity_seconds / 60)} "
            "more minutes",
        )
    return RefundInvoice(
        payment_request=text, payment_hash=payment_hash, expires_at=expires_at, payee=payee
    )
