"""Unit tests of domain.refund_invoices: refund invoice validation with real signed invoices."""

from __future__ import annotations

import hashlib
import random

import pytest
from bech32 import bech32_decode, bech32_encode
from bolt11 import Bolt11, MilliSatoshi, TagChar, Tags, encode
from coincurve import PrivateKey

from libs.common.domain import refund_invoices as invoices
from libs.common.domain.refund_invoices import (
    INVALID_REFUND_INVOICE,
    REFUND_INVOICE_EXPIRES_TOO_SOON,
    RefundInvoiceError,
    check_refund_invoice,
)

NOW = 1_760_000_000
PRIVKEY = "e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734"
PAYEE = PrivateKey.from_hex(PRIVKEY).public_key.format(compressed=True).hex()
PAYMENT_HASH = hashlib.sha256(b"refund preimage").digest()


def make_invoice(
    *,
    currency: str = "bcrt",
    amount_msat: int | None = None,
    date: int = NOW,
    expiry: int | None = 3600,
    payment_secret: bool = True,
    with_payee: bool = False,
) -> str:
    tags = Tags()
    tags.add(TagChar.payment_hash, PAYMENT_HASH.hex())
    if payment_secret:
        tags.add(TagChar.payment_secret, "11" * 32)
    tags.add(TagChar.description, "sms4sats refund")
    if expiry is not None:
        tags.add(TagChar.expire_time, expiry)
    if with_payee:
        tags.add(TagChar.payee, PAYEE)
    amount = MilliSatoshi(amount_msat) if amount_msat is not None else None
    invoice = Bolt11(currency=currency, date=date, amount_msat=amount, tags=tags)
    # ignore_exceptions lets us build the invalid no-payment-secret invoice on purpose.
    return encode(invoice, PRIVKEY, ignore_exceptions=not payment_secret, keep_payee=with_payee)


def check(payment_request: str, **kwargs: int) -> invoices.RefundInvoice:
    return check_refund_invoice(payment_request, currency="bcrt", now=NOW, **kwargs)


def expect_error(code: str, payment_request: object, **kwargs: int) -> RefundInvoiceError:
    with pytest.raises(RefundInvoiceError) as info:
        check(payment_request, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, info.value.message
    return info.value


def test_valid_no_amount_invoice() -> None:
    text = make_invoice()
    result = check(text)
    assert result == invoices.RefundInvoice(
        payment_request=text, payment_hash=PAYMENT_HASH, expires_at=NOW + 3600, payee=PAYEE
    )


def test_valid_with_explicit_payee_and_default_expiry() -> None:
    result = check(make_invoice(with_payee=True, expiry=None))
    assert result.payee == PAYEE
    assert result.expires_at == NOW + 3600  # BOLT11 default expiry


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: "lightning:" + s,
        lambda s: "LIGHTNING:" + s.upper(),
        lambda s: "  Lightning: " + s + " \n",
        lambda s: s.upper(),
        lambda s: "\t" + s + "\r\n",
    ],
)
def test_prefix_whitespace_and_case_normalised(wrap: object) -> None:
    assert callable(wrap)
    text = make_invoice()
    result = check(wrap(text))
    assert result.payment_request == text  # stored lowercase, without the URI prefix


def test_amount_refused() -> None:
    error = expect_error(INVALID_REFUND_INVOICE, make_invoice(amount_msat=10_000_000))
    assert "amount" in error.message


@pytest.mark.parametrize(
    ("invoice_currency", "expected", "named"),
    [("bc", "bcrt", "mainnet"), ("tb", "bcrt", "testnet"), ("tbs", "tb", "signet")],
)
def test_wrong_network_refused(invoice_currency: str, expected: str, named: str) -> None:
    text = make_invoice(currency=invoice_currency)
    with pytest.raises(RefundInvoiceError) as info:
        check_refund_invoice(text, currency=expected, now=NOW)
    assert info.value.code == INVALID_REFUND_INVOICE
    assert named in info.value.message
    # The same invoice is fine on its own network.
    assert check_refund_invoice(text, currency=invoice_currency, now=NOW).payee == PAYEE


def test_missing_payment_secret_refused() -> None:
    expect_error(INVALID_REFUND_INVOICE, make_invoice(payment_secret=False))


def test_odd_human_readable_part_refused() -> None:
    # bolt11 reads "lnbcrt-x" as a regtest no-amount invoice; LND would not.
    text = make_invoice(currency="bcrt-x")
    assert text.startswith("lnbcrt-x1")
    expect_error(INVALID_REFUND_INVOICE, text)


@pytest.mark.parametrize(
    ("date", "expiry", "ok"),
    [
        (NOW, 1800, True),  # exactly the minimum
        (NOW, 1799, False),
        (NOW - 3000, 3600, False),  # created a while ago, 10 minutes left
        (NOW - 7200, 3600, False),  # already expired
        (NOW - 1800, 3600, True),
        (NOW, 86400, True),
    ],
)
def test_validity_window(date: int, expiry: int, ok: bool) -> None:
    text = make_invoice(date=date, expiry=expiry)
    if ok:
        assert check(text).expires_at == date + expiry
    else:
        error = expect_error(REFUND_INVOICE_EXPIRES_TOO_SOON, text)
        assert "30" in error.message


def test_custom_min_validity() -> None:
    text = make_invoice(expiry=600)
    assert check(text, min_validity_seconds=600).expires_at == NOW + 600
    expect_error(REFUND_INVOICE_EXPIRES_TOO_SOON, text, min_validity_seconds=601)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "lightning:",
        "hello",
        "lnbcrt1",
        "lnbcrt1qqqqqqqqqqqqqqq",
        "bitcoin:bcrt1qxyz",
        "lnurl1dp68gurn8ghj7um9wfmxjcm99e3k7mf0v9cxj0m385ekvcenxc6r2c35xvukxefcv5mkvv34x5ekzd3ev56nyd3hxqurzepexejxxepnxscrvwfnv9nxzcn9xq6xyefhvgcxxcmyxymnserxfq5fns",
        "x" * 10_000,
        None,
        12345,
    ],
)
def test_garbage_refused(garbage: object) -> None:
    expect_error(INVALID_REFUND_INVOICE, garbage)


def test_flipped_character_refused() -> None:
    text = make_invoice()
    position = len(text) // 2
    flipped = text[:position] + ("q" if text[position] != "q" else "p") + text[position + 1 :]
    expect_error(INVALID_REFUND_INVOICE, flipped)


def _resign_checksum(text: str, edit_at_from_end: int) -> str:
    """Change one 5-bit group of the signature and recompute the bech32 checksum."""
    hrp, data = bech32_decode(text)
    assert hrp is not None and data is not None
    edited = list(data)
    edited[-edit_at_from_end] ^= 0x01
    return bech32_encode(hrp, edited)


def test_tampered_signature_with_payee_tag_refused() -> None:
    text = make_invoice(with_payee=True)
    for offset in (2, 20, 50, 100):  # recovery byte, s, r and the signed data
        expect_error(INVALID_REFUND_INVOICE, _resign_checksum(text, offset))


def test_tampered_signature_without_payee_tag_changes_payee() -> None:
    # Without an `n` tag BOLT11 recovers the payee from the signature: a tampered invoice
    # is either undecodable or "signed" by some other node, never attributed to ours.
    text = make_invoice()
    for offset in (2, 20, 50, 100):
        tampered = _resign_checksum(text, offset)
        try:
            result = check(tampered)
        except RefundInvoiceError as error:
            assert error.code == INVALID_REFUND_INVOICE
        else:
            assert result.payee != PAYEE


def test_random_bech32_payloads_only_raise_refund_error() -> None:
    rng = random.Random(11)
    base = make_invoice()
    hrp, data = bech32_decode(base)
    assert hrp is not None and data is not None
    for case in range(300):
        edited = list(data)
        if case % 3 == 0:
            edited = [rng.randrange(32) for _ in range(rng.randrange(0, 200))]
        elif case % 3 == 1:
            for _ in range(rng.randrange(1, 6)):
                edited[rng.randrange(len(edited))] = rng.randrange(32)
        else:
            cut = rng.randrange(len(edited))
            edited = edited[:cut] + edited[cut + rng.randrange(1, 20) :]
        text = bech32_encode(rng.choice(["lnbcrt", "lnbcrt10u", "lnbc", "lnbcrtx", "ln"]), edited)
        try:
            check(text)
        except RefundInvoiceError:
            pass


@pytest.mark.parametrize(
    ("network", "currency"),
    [
        ("mainnet", "bc"),
        ("testnet", "tb"),
        ("signet", "tbs"),
        ("regtest", "bcrt"),
        ("simnet", "sb"),
        ("testnet4", "tb"),
        ("Regtest", "bcrt"),
    ],
)
def test_currency_for_network(network: str, currency: str) -> None:
    assert invoices.currency_for_network(network) == currency


def test_currency_for_unknown_network() -> None:
    with pytest.raises(ValueError):
        invoices.currency_for_network("bogusnet")
