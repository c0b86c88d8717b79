"""Unit tests of libs.common.domain.l402: minting, header parsing, signature and caveat rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import secrets
import struct
from collections.abc import Callable

import pytest
from pymacaroons import Macaroon
from pymacaroons.macaroon import MACAROON_V2
from pymacaroons.serializers.binary_serializer import BinarySerializer

from libs.common.domain import l402

NOW = 1_760_000_000
ORDER = "ord_7f3a9c"
SERIALIZER = BinarySerializer()


class Token:
    """A freshly minted token plus the secrets needed to use and verify it."""

    def __init__(self, *, order_id: str = ORDER, valid_until: int = NOW + 3600) -> None:
        self.preimage = secrets.token_bytes(32)
        self.payment_hash = hashlib.sha256(self.preimage).digest()
        self.identifier = l402.new_identifier(self.payment_hash)
        self.root_key = l402.new_root_key()
        self.macaroon = l402.mint(
            root_key=self.root_key,
            identifier=self.identifier,
            order_id=order_id,
            valid_until=valid_until,
        )

    def header(self, macaroon: str | None = None, scheme: str = "L402") -> str:
        return f"{scheme} {macaroon or self.macaroon}:{self.preimage.hex()}"

    def verify(self, macaroon: str | None = None, *, order_id: str = ORDER, now: int = NOW) -> None:
        credential = l402.parse_authorization([self.header(macaroon)])
        l402.verify(credential, root_key=self.root_key, order_id=order_id, now=now)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def raw_of(macaroon_b64: str) -> bytes:
    return base64.b64decode(macaroon_b64, validate=True)


def append_caveat(macaroon_b64: str, caveat: str) -> str:
    """What a client does: add a first-party caveat with the holder-side HMAC step."""
    macaroon = SERIALIZER.deserialize_raw(raw_of(macaroon_b64))
    macaroon.add_first_party_caveat(caveat)
    return b64(SERIALIZER.serialize_raw(macaroon))


def append_raw_caveat(macaroon_b64: str, caveat_id: bytes) -> str:
    """Append arbitrary caveat bytes (even non-UTF-8) with a correct signature."""
    raw = raw_of(macaroon_b64)
    body, old_signature = raw[:-35], raw[-32:]
    assert raw[-35:-32] == b"\x00\x06\x20"  # end of caveats, signature field, 32 bytes
    signature = hmac.digest(old_signature, caveat_id, "sha256")
    packet = b"\x02" + bytes([len(caveat_id)]) + caveat_id + b"\x00"
    return b64(body + packet + b"\x00\x06\x20" + signature)


def manual_macaroon(root_key: bytes, identifier: bytes, caveats: list[str]) -> str:
    macaroon = Macaroon(location="lsat", identifier=identifier, key=root_key, version=MACAROON_V2)
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    return b64(SERIALIZER.serialize_raw(macaroon))


def expect_error(
    code: str, func: Callable[..., object], *args: object, **kwargs: object
) -> l402.L402Error:
    with pytest.raises(l402.L402Error) as info:
        func(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


# --- identifiers and keys ----------------------------------------------------------------


def test_identifier_layout_and_parse() -> None:
    payment_hash = hashlib.sha256(b"invoice").digest()
    raw = l402.new_identifier(payment_hash)
    assert len(raw) == 66
    assert raw[:2] == b"\x00\x00"
    assert raw[2:34] == payment_hash
    token = l402.parse_identifier(raw)
    assert (token.version, token.payment_hash, token.token_id, token.raw) == (
        0,
        payment_hash,
        raw[34:],
        raw,
    )
    assert l402.new_identifier(payment_hash)[34:] != raw[34:]  # token id is random
    assert l402.root_key_id(raw) == hashlib.sha256(raw).digest()
    keys = {l402.new_root_key() for _ in range(4)}
    assert len(keys) == 4 and all(len(key) == 32 for key in keys)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 65,
        b"\x00" * 67,
        struct.pack(">H32s32s", 1, b"\x01" * 32, b"\x02" * 32),
    ],
)
def test_parse_identifier_refuses(raw: bytes) -> None:
    expect_error(l402.INVALID_MACAROON, l402.parse_identifier, raw)


def test_new_identifier_refuses_bad_hash() -> None:
    with pytest.raises(ValueError):
        l402.new_identifier(b"\x00" * 31)


# --- minting and the challenge ------------------------------------------------------------


def test_round_trip() -> None:
    token = Token()
    credential = l402.parse_authorization([token.header()])
    assert credential.preimage == token.preimage
    assert credential.identifier.payment_hash == token.payment_hash
    assert credential.identifier.raw == token.identifier
    l402.verify(credential, root_key=token.root_key, order_id=ORDER, now=NOW)


def test_serialize_raw_byte_layout_v2() -> None:
    root_key = b"\x11" * 32
    identifier = struct.pack(">H32s32s", 0, b"\x22" * 32, b"\x33" * 32)
    minted = l402.mint(root_key=root_key, identifier=identifier, order_id="o1", valid_until=1234)

    caveats = [b"services=sms4sats:0", b"sms4sats_valid_until=1234", b"sms4sats_order=o1"]
    # Independent HMAC chain, as Go's macaroon.v2 computes it.
    signature = hmac.digest(
        hmac.digest(b"macaroons-key-generator", root_key, "sha256"), identifier, "sha256"
    )
    for caveat in caveats:
        signature = hmac.digest(signature, caveat, "sha256")
    expected = b"\x02" + b"\x01\x04lsat" + b"\x02\x42" + identifier + b"\x00"
    for caveat in caveats:
        expected += b"\x02" + bytes([len(caveat)]) + caveat + b"\x00"
    expected += b"\x00" + b"\x06\x20" + signature
    assert raw_of(minted) == expected


def test_mint_refuses_bad_input() -> None:
    identifier = l402.new_identifier(b"\x00" * 32)
    key = b"k" * 32
    assert l402.mint(root_key=key, identifier=identifier, order_id="o", valid_until=1)
    with pytest.raises(ValueError):
        l402.mint(root_key=key[:16], identifier=identifier, order_id="o", valid_until=1)
    with pytest.raises(ValueError):
        l402.mint(root_key=key, identifier=identifier, order_id="a b", valid_until=1)
    with pytest.raises(ValueError):
        l402.mint(root_key=key, identifier=identifier, order_id="", valid_until=1)
    with pytest.raises(ValueError):
        l402.mint(root_key=key, identifier=identifier, order_id="o", valid_until=-1)
    with pytest.raises(l402.L402Error):
        l402.mint(root_key=key, identifier=identifier[:-1], order_id="o", valid_until=1)


def test_challenge_headers_order_format_and_padding() -> None:
    header_re = re.compile(r'(LSAT|L402) macaroon="([A-Za-z0-9+/=]+)", invoice="(lnbcrt1xyz)"')
    padded = 0
    for order_id in ("a", "ab", "abc"):  # three lengths cover every base64 remainder
        token = Token(order_id=order_id)
        headers = l402.challenge_headers(token.macaroon, "lnbcrt1xyz")
        assert [name for name, _ in headers] == ["WWW-Authenticate", "WWW-Authenticate"]
        lsat = header_re.fullmatch(headers[0][1])
        l402_ = header_re.fullmatch(headers[1][1])
        assert lsat is not None and l402_ is not None
        assert (lsat.group(1), l402_.group(1)) == ("LSAT", "L402")
        macaroon_b64 = lsat.group(2)
        assert l402_.group(2) == macaroon_b64
        assert len(macaroon_b64) % 4 == 0
        raw = base64.b64decode(macaroon_b64, validate=True)
        assert base64.b64encode(raw).decode() == macaroon_b64  # standard alphabet, padded
        padded += macaroon_b64.endswith("=")
        decoded = SERIALIZER.deserialize_raw(raw)  # the reference library reads it back
        assert len(decoded.identifier_bytes) == 66
        assert decoded.identifier_bytes[2:34] == token.payment_hash
        assert decoded.location == "lsat"
    assert padded >= 1


@pytest.mark.parametrize("bad", ['x"y', "a\r\nb", ""])
def test_challenge_headers_refuse_unsafe_values(bad: str) -> None:
    with pytest.raises(ValueError):
        l402.challenge_headers(bad, "lnbc1")
    with pytest.raises(ValueError):
        l402.challenge_headers("AgE=", bad)


# --- the Authorization header ---------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "L402 {m}:{p}",
        "l402 {m}:{p}",
        "LSAT {m}:{p}",
        "lsat {m}:{p}",
        "LsAt {m}:{p}",
        "  L402   {m}:{p}  ",
        "L402\t{m}:{p}",
        "L402 {m}:{P}",
        "LSAT {m}:{P}\r\n",
    ],
)
def test_header_variants_accepted(template: str) -> None:
    token = Token()
    value = template.format(
        m=token.macaroon, p=token.preimage.hex(), P=token.preimage.hex().upper()
    )
    credential = l402.parse_authorization([value])
    l402.verify(credential, root_key=token.root_key, order_id=ORDER, now=NOW)


def test_urlsafe_and_unpadded_macaroon_accepted() -> None:
    token = Token()
    raw = raw_of(token.macaroon)
    for variant in (
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode().rstrip("="),
        SERIALIZER.serialize(SERIALIZER.deserialize_raw(raw)),  # pymacaroons' own serialize()
    ):
        token.verify(variant)


def v1_packet(key: bytes, value: bytes) -> bytes:
    """One libmacaroons V1 packet: 4 hex digits of total length, key, space, value, newline."""
    return b"%04x" % (4 + len(key) + 1 + len(value) + 1) + key + b" " + value + b"\n"


def v1_encode(macaroon_b64: str, *, extra: bytes = b"") -> bytes:
    v2 = SERIALIZER.deserialize_raw(raw_of(macaroon_b64))
    packets = v1_packet(b"location", b"lsat") + v1_packet(b"identifier", v2.identifier_bytes)
    for caveat in v2.caveats:
        packets += v1_packet(b"cid", caveat.caveat_id_bytes)
    return packets + extra + v1_packet(b"signature", bytes.fromhex(v2.signature))


def test_v1_fallback_verifies() -> None:
    token = Token()
    raw_v1 = v1_encode(token.macaroon)
    credential = l402.parse_authorization([token.header(b64(raw_v1))])
    reference = SERIALIZER.deserialize_raw(raw_v1)  # pymacaroons reads it the same way
    assert credential.macaroon.identifier_bytes == reference.identifier_bytes == token.identifier
    assert [c.caveat_id_bytes for c in credential.macaroon.caveats] == [
        c.caveat_id_bytes for c in reference.caveats
    ]
    assert credential.macaroon.signature_bytes == reference.signature_bytes
    token.verify(b64(raw_v1))
    # ...and a V1 re-encoding is still bound to the signature.
    forged = raw_v1.replace(b"sms4sats_order=" + ORDER.encode(), b"sms4sats_order=ord_000000")
    assert forged != raw_v1
    expect_error(l402.INVALID_MACAROON, token.verify, b64(forged), order_id="ord_000000")


@pytest.mark.parametrize(
    "extra",
    [
        v1_packet(b"identifier", b"\x00" * 66),  # a second identifier must not win
        v1_packet(b"vid", b"x" * 40),  # third-party caveat
        v1_packet(b"bogus", b"x"),
        v1_packet(b"signature", b"\x00" * 32),  # two signatures
    ],
)
def test_v1_unexpected_packets_refused(extra: bytes) -> None:
    token = Token()
    value = b64(v1_encode(token.macaroon, extra=extra))
    expect_error(l402.INVALID_MACAROON, token.verify, value)


@pytest.mark.parametrize("header", [b"+02f", b" 02f", b"002F", b"0_2f"])
def test_v1_non_canonical_length_refused(header: bytes) -> None:
    token = Token()
    raw_v1 = v1_encode(token.macaroon)
    assert raw_v1[-47:-33] == b"002fsignature "  # 4 + 9 + 1 + 32 + 1 = 0x2f bytes
    token.verify(b64(raw_v1))
    value = b64(raw_v1[:-47] + header + raw_v1[-43:])  # int() would take any of these
    expect_error(l402.INVALID_MACAROON, token.verify, value)


def test_own_parser_matches_pymacaroons() -> None:
    token = Token()
    macaroon_b64 = append_caveat(token.macaroon, "preimage=" + token.preimage.hex())
    macaroon_b64 = append_caveat(macaroon_b64, "sms4sats_valid_until=" + str(NOW + 60))
    raw = raw_of(macaroon_b64)
    ours = l402.parse_authorization([token.header(macaroon_b64)]).macaroon
    reference = SERIALIZER.deserialize_raw(raw)
    assert ours.identifier_bytes == reference.identifier_bytes
    assert ours.signature_bytes == reference.signature_bytes
    assert ours.location == reference.location == "lsat"
    assert [c.caveat_id_bytes for c in ours.caveats] == [
        c.caveat_id_bytes for c in reference.caveats
    ]
    assert SERIALIZER.serialize_raw(ours) == raw


def _v2_with_identifier(identifier: bytes) -> str:
    return manual_macaroon(b"k" * 32, identifier, ["services=sms4sats:0"])


def _malformed_cases() -> list[tuple[str, str]]:
    token = Token()
    mac = token.macaroon
    raw = raw_of(mac)
    pre = token.preimage.hex()
    second = Token(order_id="other")
    non_minimal = raw.replace(b"\x02\x42", b"\x02\xc2\x00", 1)  # 0x42 as a 2-byte varint
    assert non_minimal != raw
    trailing = b64(raw + b"\x00")
    version_1 = _v2_with_identifier(b"\x00\x01" + token.identifier[2:])
    v1_zero = b64(b"0000location lsat\n")
    v1_past_end = b64(b"00ffidentifier x\n")
    v1_unknown_key = b64(b"000ebogus xyz\n")
    return [
        ("empty", ""),
        ("scheme only", "L402"),
        ("scheme and space", "L402 "),
        ("wrong scheme", f"Bearer {mac}:{pre}"),
        ("no space", f"L402{mac}:{pre}"),
        ("missing colon", f"L402 {mac}{pre}"),
        ("empty macaroon", f"L402 :{pre}"),
        ("empty preimage", f"L402 {mac}:"),
        ("two colons", f"L402 {mac}:{pre}:{pre}"),
        ("bad hex", f"L402 {mac}:{'zz' * 32}"),
        ("short preimage", f"L402 {mac}:{pre[:-2]}"),
        ("long preimage", f"L402 {mac}:{pre}00"),
        ("spaces in preimage", f"L402 {mac}:{pre[:32]} {pre[32:]}"),
        ("space before colon", f"L402 {mac} :{pre}"),
        ("garbage base64", f"L402 !!!notbase64!!!:{pre}"),
        ("impossible base64 length", f"L402 AgEEb:{pre}"),
        ("not a macaroon", f"L402 {b64(b'hello world')}:{pre}"),
        ("truncated macaroon", f"L402 {b64(raw[:-1])}:{pre}"),
        ("half a macaroon", f"L402 {b64(raw[: len(raw) // 2])}:{pre}"),
        ("only version byte", f"L402 {b64(raw[:1])}:{pre}"),
        ("trailing byte", f"L402 {trailing}:{pre}"),
        ("two concatenated macaroons", f"L402 {b64(raw + raw_of(second.macaroon))}:{pre}"),
        ("non-minimal varint", f"L402 {b64(non_minimal)}:{pre}"),
        ("65-byte identifier", f"L402 {_v2_with_identifier(token.identifier[:-1])}:{pre}"),
        ("67-byte identifier", f"L402 {_v2_with_identifier(token.identifier + b'x')}:{pre}"),
        ("identifier version 1", f"L402 {version_1}:{pre}"),
        ("V1 zero-length packet", f"L402 {v1_zero}:{pre}"),
        ("V1 negative length", f"L402 {b64(b'-001' * 8)}:{pre}"),
        ("V1 length past end", f"L402 {v1_past_end}:{pre}"),
        ("V1 unknown key", f"L402 {v1_unknown_key}:{pre}"),
        ("preimage of another invoice", f"L402 {mac}:{second.preimage.hex()}"),
        ("macaroon of another invoice", f"L402 {second.macaroon}:{pre}"),
    ]


@pytest.mark.parametrize(("name", "value"), _malformed_cases())
def test_malformed_headers_refused(name: str, value: str) -> None:
    error = expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [value])
    assert error.message


def test_random_inputs_only_raise_l402_error() -> None:
    rng = random.Random(402)
    token = Token()
    raw = raw_of(token.macaroon)
    pre = token.preimage.hex()
    alphabet = 'ABCxyz019+/=_-:, \t"L402LSAT'
    refused = 0
    for case in range(2000):
        kind = case % 4
        blob = b""
        if kind == 0:  # random bytes as a macaroon
            blob = rng.randbytes(rng.randrange(0, 300))
            value = f"L402 {b64(blob)}:{rng.randbytes(32).hex()}"
        elif kind == 1:  # random byte edits of a valid macaroon
            mutated = bytearray(raw)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            blob = bytes(mutated)
            value = f"L402 {b64(blob)}:{pre}"
        elif kind == 2:  # truncations and insertions
            cut = rng.randrange(len(raw))
            blob = raw[:cut] + rng.randbytes(rng.randrange(0, 5)) + raw[cut + rng.randrange(3) :]
            value = f"LSAT {b64(blob)}:{pre}"
        else:  # random header text
            value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 120)))
        try:
            credential = l402.parse_authorization([value])
            l402.verify(credential, root_key=token.root_key, order_id=ORDER, now=NOW)
        except l402.L402Error:
            refused += 1
            continue
        # Whatever verifies may differ from the real token only in the unsigned location.
        assert len(blob) == len(raw) and blob[:3] + blob[7:] == raw[:3] + raw[7:], case
    assert refused > 1700


def test_several_authorization_headers_refused() -> None:
    token = Token()
    good = token.header()
    expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [good, good])
    bad = f"LSAT {b64(b'garbage')}:{'00' * 32}"
    expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [bad, good])
    expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [good, bad])


def test_missing_header_refused() -> None:
    error = expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [])
    assert "missing" in error.message


def test_bare_string_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        l402.parse_authorization(Token().header())


def test_several_macaroons_refused() -> None:
    token = Token()
    other = Token(order_id="other").macaroon
    pre = token.preimage.hex()
    for value in (
        f"L402 {token.macaroon},{other}:{pre}",
        f"L402 {other},{token.macaroon}:{pre}",
        f"L402 {token.macaroon}, {other}:{pre}",
        f"L402 {token.macaroon},{token.macaroon}:{pre}",
    ):
        error = expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [value])
        assert "several" in error.message


def test_oversized_header_refused() -> None:
    token = Token()
    padded = token.header() + " " * l402.MAX_AUTHORIZATION_LENGTH
    l402.parse_authorization([token.header() + " " * 100])  # fine below the cap
    expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [padded])


def test_secrets_not_in_repr_or_messages() -> None:
    token = Token()
    credential = l402.parse_authorization([token.header()])
    text = repr(credential)
    assert token.preimage.hex() not in text and str(token.preimage) not in text
    assert token.macaroon[:20] not in text
    for value in (token.header() + "0", f"L402 {token.macaroon}x:{token.preimage.hex()}"):
        error = expect_error(l402.INVALID_MACAROON, l402.parse_authorization, [value])
        assert token.preimage.hex() not in str(error) and token.macaroon[:20] not in str(error)


# --- signature ----------------------------------------------------------------------------


def test_tampered_signature_refused() -> None:
    token = Token()
    raw = bytearray(raw_of(token.macaroon))
    raw[-1] ^= 0x01
    expect_error(l402.INVALID_MACAROON, token.verify, b64(bytes(raw)))


def test_tampered_caveat_refused() -> None:
    token = Token(valid_until=NOW - 10)
    raw = raw_of(token.macaroon)
    # Same length, later expiry: parses fine, the HMAC chain must catch it.
    forged = raw.replace(str(NOW - 10).encode(), str(NOW + 9999990).encode()[:10])
    assert forged != raw and len(forged) == len(raw)
    expect_error(l402.INVALID_MACAROON, token.verify, b64(forged))


def test_removed_caveat_refused() -> None:
    token = Token()
    stripped = manual_macaroon(token.root_key, token.identifier, ["services=sms4sats:0"])
    macaroon = SERIALIZER.deserialize_raw(raw_of(token.macaroon))
    forged = SERIALIZER.deserialize_raw(raw_of(stripped))
    forged.signature = macaroon.signature_bytes  # keep the old signature, drop the caveats
    expect_error(l402.INVALID_MACAROON, token.verify, b64(SERIALIZER.serialize_raw(forged)))


def test_wrong_root_key_refused() -> None:
    token = Token()
    credential = l402.parse_authorization([token.header()])
    expect_error(
        l402.INVALID_MACAROON,
        l402.verify,
        credential,
        root_key=l402.new_root_key(),
        order_id=ORDER,
        now=NOW,
    )


def test_third_party_caveat_refused() -> None:
    token = Token()
    macaroon = SERIALIZER.deserialize_raw(raw_of(token.macaroon))
    macaroon.add_third_party_caveat("https://auth.example", "k" * 32, "caveat-id")
    value = b64(SERIALIZER.serialize_raw(macaroon))
    expect_error(l402.INVALID_MACAROON, token.verify, value)


def test_third_party_caveat_in_hand_built_credential_refused() -> None:
    token = Token()
    credential = l402.parse_authorization([token.header()])
    macaroon = credential.macaroon.copy()
    macaroon.add_third_party_caveat("https://auth.example", "k" * 32, "caveat-id")
    forged = l402.Credential(
        macaroon=macaroon, identifier=credential.identifier, preimage=credential.preimage
    )
    error = expect_error(
        l402.INVALID_MACAROON, l402.verify, forged, root_key=token.root_key, order_id=ORDER, now=NOW
    )
    assert "third-party" in error.message


def test_inconsistent_hand_built_credential_refused() -> None:
    token = Token()
    other = Token(order_id="other")
    credential = l402.parse_authorization([token.header()])
    mixed = l402.Credential(
        macaroon=credential.macaroon,
        identifier=l402.parse_identifier(other.identifier),
        preimage=other.preimage,
    )
    expect_error(
        l402.INVALID_MACAROON, l402.verify, mixed, root_key=token.root_key, order_id=ORDER, now=NOW
    )
    wrong_preimage = l402.Credential(
        macaroon=credential.macaroon, identifier=credential.identifier, preimage=b"\x00" * 32
    )
    expect_error(
        l402.INVALID_MACAROON,
        l402.verify,
        wrong_preimage,
        root_key=token.root_key,
        order_id=ORDER,
        now=NOW,
    )


# --- caveat semantics -----------------------------------------------------------------------


def test_expiry_boundary() -> None:
    token = Token(valid_until=NOW)
    token.verify(now=NOW)  # valid *until* that second, inclusive
    expect_error(l402.EXPIRED_MACAROON, token.verify, now=NOW + 1)


def test_expired_refused() -> None:
    token = Token(valid_until=NOW - 60)
    error = expect_error(l402.EXPIRED_MACAROON, token.verify)
    assert "expired" in error.message


def test_wrong_order_refused() -> None:
    token = Token()
    expect_error(l402.INVALID_MACAROON, token.verify, order_id="ord_other")


def test_wrong_order_reported_before_expiry() -> None:
    token = Token(valid_until=NOW - 60)
    expect_error(l402.INVALID_MACAROON, token.verify, order_id="ord_other")


def test_client_appended_preimage_caveat_verifies() -> None:
    token = Token()
    token.verify(append_caveat(token.macaroon, "preimage=" + token.preimage.hex()))


def test_unknown_caveat_ignored() -> None:
    token = Token()
    token.verify(append_caveat(token.macaroon, "othersvc_capabilities=read"))


def test_appended_looser_valid_until_refused() -> None:
    token = Token(valid_until=NOW + 60)
    looser = append_caveat(token.macaroon, f"sms4sats_valid_until={NOW + 3600}")
    expect_error(l402.INVALID_MACAROON, token.verify, looser)


def test_appended_stricter_valid_until_accepted() -> None:
    token = Token(valid_until=NOW + 3600)
    token.verify(append_caveat(token.macaroon, f"sms4sats_valid_until={NOW + 60}"))
    token.verify(append_caveat(token.macaroon, f"sms4sats_valid_until={NOW + 3600}"))


def test_appended_stricter_past_valid_until_expired() -> None:
    token = Token(valid_until=NOW + 3600)
    stricter = append_caveat(token.macaroon, f"sms4sats_valid_until={NOW - 1}")
    expect_error(l402.EXPIRED_MACAROON, token.verify, stricter)


def test_appended_other_order_refused() -> None:
    token = Token()
    other = append_caveat(token.macaroon, "sms4sats_order=ord_other")
    expect_error(l402.INVALID_MACAROON, token.verify, other)
    expect_error(l402.INVALID_MACAROON, token.verify, other, order_id="ord_other")
    token.verify(append_caveat(token.macaroon, f"sms4sats_order={ORDER}"))


@pytest.mark.parametrize(
    ("caveat", "ok"),
    [
        ("services=sms4sats:0", True),
        ("services=sms4sats:0,other:0", False),  # widening
        ("services=other:0", False),  # narrowing away from us
        ("services=sms4sats:1", False),  # different tier is not a subset
        ("services=", False),
        ("services=sms4sats", False),
    ],
)
def test_appended_services_caveat(caveat: str, ok: bool) -> None:
    token = Token()
    value = append_caveat(token.macaroon, caveat)
    if ok:
        token.verify(value)
    else:
        expect_error(l402.INVALID_MACAROON, token.verify, value)


@pytest.mark.parametrize(
    "caveat",
    [
        "sms4sats_valid_until = 1",
        "sms4sats_valid_until=+1",
        "sms4sats_valid_until=1_0",
        "sms4sats_valid_until=",
        "sms4sats_valid_until=\u0661",  # non-ASCII digit that int() would accept
        "no-equals-sign",
        "=value",
        "preimage= 00",
    ],
)
def test_malformed_appended_caveat_refused(caveat: str) -> None:
    token = Token()
    expect_error(l402.INVALID_MACAROON, token.verify, append_caveat(token.macaroon, caveat))


def test_non_utf8_caveat_refused() -> None:
    token = Token()
    value = append_raw_caveat(token.macaroon, b"preimage=\xff\xfe")
    expect_error(l402.INVALID_MACAROON, token.verify, value)
    # The helper itself produces verifiable macaroons.
    token.verify(append_raw_caveat(token.macaroon, b"preimage=00"))


@pytest.mark.parametrize(
    "caveats",
    [
        [f"sms4sats_valid_until={NOW + 60}", f"sms4sats_order={ORDER}"],  # no services
        ["services=sms4sats:0", f"sms4sats_order={ORDER}"],  # no expiry
        ["services=sms4sats:0", f"sms4sats_valid_until={NOW + 60}"],  # no order
        ["services=other:0", f"sms4sats_valid_until={NOW + 60}", f"sms4sats_order={ORDER}"],
        [],
    ],
)
def test_required_caveats(caveats: list[str]) -> None:
    token = Token()
    value = manual_macaroon(token.root_key, token.identifier, caveats)
    expect_error(l402.INVALID_MACAROON, token.verify, value)


def test_manual_mint_with_all_caveats_verifies() -> None:
    # Guards the test above: the same construction with every caveat does verify.
    token = Token()
    caveats = ["services=sms4sats:0", f"sms4sats_valid_until={NOW + 60}", f"sms4sats_order={ORDER}"]
    token.verify(manual_macaroon(token.root_key, token.identifier, caveats))
