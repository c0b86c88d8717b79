"""Pure L402 (formerly LSAT) logic: identifiers, minting, header parsing and verification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from pymacaroons import Caveat, Macaroon
from pymacaroons.macaroon import MACAROON_V2
from pymacaroons.serializers.binary_serializer import BinarySerializer

SERVICE: Final = "sms4sats"
# aperture and every deployed client use "lsat" as the macaroon location; it is not signed.
LOCATION: Final = "lsat"

INVALID_MACAROON: Final = "INVALID_MACAROON"
EXPIRED_MACAROON: Final = "EXPIRED_MACAROON"

COND_SERVICES: Final = "services"
COND_VALID_UNTIL: Final = f"{SERVICE}_valid_until"
COND_ORDER: Final = f"{SERVICE}_order"
_KNOWN_CONDITIONS: Final = frozenset({COND_SERVICES, COND_VALID_UNTIL, COND_ORDER})

IDENTIFIER_VERSION: Final = 0
IDENTIFIER_LENGTH: Final = 66
_IDENTIFIER_FORMAT: Final = ">H32s32s"
ROOT_KEY_LENGTH: Final = 32

# Real credentials are a few hundred bytes; the cap bounds the work a hostile header can cause.
MAX_AUTHORIZATION_LENGTH: Final = 8192

_SCHEMES: Final = frozenset({"l402", "lsat"})
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
# Both base64 alphabets and optional padding: clients differ in what they send back.
_BASE64: Final = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_URLSAFE_TO_STD: Final = str.maketrans("-_", "+/")
_WHITESPACE: Final = re.compile(r"\s")
_UNSIGNED: Final = re.compile(r"[0-9]{1,18}")
_SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_HEADER_UNSAFE: Final = re.compile(r'["\\\x00-\x1f\x7f]')

_KEY_GENERATOR: Final = b"macaroons-key-generator"
_SERIALIZER: Final = BinarySerializer()  # stateless, safe to share
# V2 binary field types (libmacaroons doc/format.txt).
_EOS: Final = 0
_FIELD_LOCATION: Final = 1
_FIELD_IDENTIFIER: Final = 2
_FIELD_SIGNATURE: Final = 6


class L402Error(Exception):
    """An L402 credential was refused; `code` is the API error code, `message` is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"L402Error({self.code!r}, {self.message!r})"


def _invalid(message: str) -> L402Error:
    return L402Error(INVALID_MACAROON, message)


@dataclass(frozen=True)
class TokenId:
    """The decoded 66-byte macaroon identifier: version, invoice payment hash, random token id."""

    version: int
    payment_hash: bytes
    token_id: bytes
    raw: bytes


@dataclass(frozen=True)
class Credential:
    """A syntactically valid credential whose preimage matches the identifier's payment hash."""

    # repr=False: a credential is a bearer token and must never end up in logs.
    macaroon: Macaroon = field(repr=False)
    identifier: TokenId
    preimage: bytes = field(repr=False)


def new_identifier(payment_hash: bytes) -> bytes:
    """Build a fresh version-0 identifier bound to `payment_hash` with a random token id."""
    if len(payment_hash) != 32:
        raise ValueError("payment hash must be 32 bytes")
    return struct.pack(
        _IDENTIFIER_FORMAT, IDENTIFIER_VERSION, payment_hash, secrets.token_bytes(32)
    )


def parse_identifier(raw: bytes) -> TokenId:
    """Decode a macaroon identifier; anything but 66 bytes of version 0 is INVALID_MACAROON."""
    if not isinstance(raw, bytes) or len(raw) != IDENTIFIER_LENGTH:
        raise _invalid("macaroon identifier has the wrong length")
    version, payment_hash, token_id = struct.unpack(_IDENTIFIER_FORMAT, raw)
    if version != IDENTIFIER_VERSION:
        raise _invalid("unsupported macaroon identifier version")
    return TokenId(version=version, payment_hash=payment_hash, token_id=token_id, raw=raw)


def root_key_id(identifier: bytes) -> bytes:
    """Return sha256(identifier), the storage key of the token's root key."""
    return hashlib.sha256(identifier).digest()


def new_root_key() -> bytes:
    """Return a fresh random 32-byte root key (one per token, so one token can be revoked)."""
    return secrets.token_bytes(ROOT_KEY_LENGTH)


def mint(*, root_key: bytes, identifier: bytes, order_id: str, valid_until: int) -> str:
    """Mint a V2 macaroon bound to the order and return it as padded standard base64."""
    if len(root_key) != ROOT_KEY_LENGTH:
        raise ValueError("root key must be 32 bytes")
    parse_identifier(identifier)  # never mint a token we would refuse ourselves
    if not order_id or _WHITESPACE.search(order_id):
        raise ValueError("order id must be non-empty and contain no whitespace")
    if isinstance(valid_until, bool) or not isinstance(valid_until, int) or valid_until < 0:
        raise ValueError("valid_until must be a non-negative unix timestamp")
    macaroon = Macaroon(location=LOCATION, identifier=identifier, key=root_key, version=MACAROON_V2)
    # The services caveat comes first: a macaroon without one would grant every service.
    macaroon.add_first_party_caveat(f"{COND_SERVICES}={SERVICE}:0")
    macaroon.add_first_party_caveat(f"{COND_VALID_UNTIL}={valid_until}")
    macaroon.add_first_party_caveat(f"{COND_ORDER}={order_id}")
    raw: bytes = _SERIALIZER.serialize_raw(macaroon)
    # Not Macaroon.serialize(): that is unpadded URL-safe base64, which strict clients reject.
    return base64.b64encode(raw).decode("ascii")


def challenge_headers(macaroon_b64: str, invoice: str) -> list[tuple[str, str]]:
    """Return the two WWW-Authenticate headers of a 402 answer, LSAT first as aperture does."""
    for value in (macaroon_b64, invoice):
        # A quote or control character would let the value break out of the quoted-string.
        if not value or _HEADER_UNSAFE.search(value):
            raise ValueError("macaroon and invoice must be non-empty header-safe strings")
    params = f'macaroon="{macaroon_b64}", invoice="{invoice}"'
    return [("WWW-Authenticate", f"LSAT {params}"), ("WWW-Authenticate", f"L402 {params}")]


def _decode_base64(text: str) -> bytes:
    if not _BASE64.fullmatch(text):
        raise _invalid("macaroon is not base64")
    body = text.rstrip("=")
    if "-" in body or "_" in body:
        body = body.translate(_URLSAFE_TO_STD)
    if len(body) % 4 == 1:
        raise _invalid("macaroon is not base64")
    return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        byte = buf[pos]  # IndexError past the end is turned into INVALID_MACAROON
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift:
                raise ValueError("non-minimal varint")
            return value, pos
        shift += 7
        if shift > 21:  # 4 bytes already describe 256 MiB, far beyond any header
            raise ValueError("varint too long")


def _read_section(buf: bytes, pos: int) -> tuple[dict[int, bytes], int]:
    # A section is a run of (type, length, data) fields in strictly increasing type order,
    # closed by a zero byte (EOS) -- the libmacaroons/Go V2 format.
    fields: dict[int, bytes] = {}
    previous = 0
    while True:
        field_type, pos = _read_uvarint(buf, pos)
        if field_type == _EOS:
            return fields, pos
        if field_type <= previous or field_type > _FIELD_SIGNATURE:
            raise ValueError("field out of order")
        length, pos = _read_uvarint(buf, pos)
        end = pos + length
        if end > len(buf):
            raise ValueError("field extends past the end")
        fields[field_type] = buf[pos:end]
        previous = field_type
        pos = end


def _parse_v2(raw: bytes) -> Macaroon:
    # A strict parser of our own: pymacaroons' is ~6x slower on this hot path, ignores
    # trailing bytes (a second, concatenated macaroon) and accepts non-minimal encodings.
    header, pos = _read_section(raw, 1)
    if set(header) - {_FIELD_LOCATION, _FIELD_IDENTIFIER} or _FIELD_IDENTIFIER not in header:
        raise ValueError("invalid macaroon header")
    caveat_ids: list[bytes] = []
    while True:
        section, pos = _read_section(raw, pos)
        if not section:
            break
        if set(section) != {_FIELD_IDENTIFIER}:
            # A location or verification id means a third-party caveat: never issued by us.
            raise _invalid("third-party or malformed caveats are not supported")
        caveat_ids.append(section[_FIELD_IDENTIFIER])
    field_type, pos = _read_uvarint(raw, pos)
    length, pos = _read_uvarint(raw, pos)
    if field_type != _FIELD_SIGNATURE or length != 32 or pos + length != len(raw):
        raise ValueError("bad signature field or trailing data")
    return _build_macaroon(
        location=header.get(_FIELD_LOCATION, b""),
        identifier=header[_FIELD_IDENTIFIER],
        caveat_ids=caveat_ids,
        signature=raw[pos:],
    )


def _parse_v1(raw: bytes) -> Macaroon:
    # libmacaroons V1: packets "<4 lowercase hex digits: length><key> <value>\n". Parsed here
    # because pymacaroons trusts the length (0 or "-001", which int() takes, loop forever),
    # lets duplicate packets overwrite each other and cannot re-encode a binary identifier.
    packets: list[tuple[bytes, bytes]] = []
    index = 0
    while index < len(raw):
        header = raw[index : index + 4]
        if len(header) != 4 or header.strip(b"0123456789abcdef"):
            raise ValueError("bad V1 packet header")
        end = index + int(header, 16)
        if end < index + 7 or end > len(raw) or raw[end - 1] != 0x0A:
            raise ValueError("bad V1 packet length")
        key, space, value = raw[index + 4 : end - 1].partition(b" ")
        if not space:
            raise ValueError("bad V1 packet")
        packets.append((key, value))
        index = end
    keys = [key for key, _ in packets]
    # Exactly location, identifier, first-party caveats, signature: vid/cl (third-party
    # caveats), repeats and reordering are refused rather than resolved by "last one wins".
    if (
        keys[:2] != [b"location", b"identifier"]
        or keys[-1:] != [b"signature"]
        or any(key != b"cid" for key in keys[2:-1])
        or len(packets[-1][1]) != 32
    ):
        raise ValueError("unexpected V1 packets")
    return _build_macaroon(
        location=packets[0][1],
        identifier=packets[1][1],
        caveat_ids=[value for _, value in packets[2:-1]],
        signature=packets[-1][1],
    )


def _build_macaroon(
    *, location: bytes, identifier: bytes, caveat_ids: list[bytes], signature: bytes
) -> Macaroon:
    # Always a V2 object, even from V1 input: pymacaroons' V1 objects raise
    # UnicodeDecodeError from .identifier on our binary identifiers.
    macaroon = Macaroon(
        location=location.decode("utf-8"),
        identifier=identifier,
        signature=binascii.hexlify(signature),
        version=MACAROON_V2,
    )
    macaroon.caveats = [Caveat(caveat_id=cid, version=MACAROON_V2) for cid in caveat_ids]
    return macaroon


def _deserialize(raw: bytes) -> Macaroon:
    if not raw:
        raise ValueError("empty macaroon")
    if raw[0] == MACAROON_V2:
        return _parse_v2(raw)
    # V1 (text framing) only as a fallback for clients that re-encode; it is never minted.
    return _parse_v1(raw)


def parse_authorization(values: Sequence[str]) -> Credential:
    """Parse the request's Authorization header values into a credential, or raise L402Error."""
    if isinstance(values, str):
        # A bare string is a Sequence[str] too; treating its characters as headers is a bug.
        raise TypeError("values must be the list of Authorization header values")
    if len(values) == 0:
        raise _invalid("missing Authorization header")
    if len(values) > 1:
        # aperture once accepted "LSAT <bad>" followed by "L402 <good>"; refuse any ambiguity.
        raise _invalid("several Authorization headers")
    value = values[0]
    if len(value) > MAX_AUTHORIZATION_LENGTH:
        raise _invalid("Authorization header too long")
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() not in _SCHEMES:
        raise _invalid("Authorization scheme must be L402 or LSAT")
    token = parts[1].strip()
    macaroon_text, colon, preimage_text = token.partition(":")
    if not colon:
        raise _invalid("credential must be <macaroon>:<preimage>")
    if "," in macaroon_text:
        # The spec allows several macaroons; we support one and never silently pick one.
        raise _invalid("several macaroons are not supported")
    if _WHITESPACE.search(token):
        raise _invalid("credential must not contain whitespace")
    if not _HEX64.fullmatch(preimage_text):
        raise _invalid("preimage must be 64 hex characters")
    preimage = bytes.fromhex(preimage_text)

    try:
        macaroon = _deserialize(_decode_base64(macaroon_text))
        identifier_raw = macaroon.identifier_bytes
    except L402Error:
        raise
    except Exception:
        # Hostile input makes decoders raise all sorts (IndexError, binascii.Error,
        # UnicodeDecodeError, pymacaroons exceptions...): every one is a 403, never a 500.
        raise _invalid("macaroon could not be decoded") from None

    identifier = parse_identifier(identifier_raw)
    if not hmac.compare_digest(hashlib.sha256(preimage).digest(), identifier.payment_hash):
        raise _invalid("preimage does not match the payment hash")
    return Credential(macaroon=macaroon, identifier=identifier, preimage=preimage)


def _parse_services(value: str) -> frozenset[tuple[str, int]]:
    services: set[tuple[str, int]] = set()
    for entry in value.split(","):
        name, colon, tier = entry.partition(":")
        if not colon or not _SERVICE_NAME.fullmatch(name) or not _UNSIGNED.fullmatch(tier):
            raise _invalid("malformed services caveat")
        services.add((name, int(tier)))
    return frozenset(services)


def _parse_timestamp(value: str) -> int:
    # Strict digits only: int() would also take "+5", " 5", "5_0" and non-ASCII digits.
    if not _UNSIGNED.fullmatch(value):
        raise _invalid("malformed valid_until caveat")
    return int(value)


def _check_caveats(caveat_ids: list[bytes], *, order_id: str, now: int) -> None:
    groups: dict[str, list[str]] = {}
    for caveat_id in caveat_ids:
        try:
            text = caveat_id.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("malformed caveat") from None
        condition, equals, value = text.partition("=")
        # Fail closed on malformed caveats: a holder who appended "x_valid_until = 1" meant
        # to restrict the token, and ignoring it would grant more than they intended.
        if not equals or not condition or _WHITESPACE.search(text):
            raise _invalid("malformed caveat")
        if condition in _KNOWN_CONDITIONS:
            groups.setdefault(condition, []).append(value)
        # Unknown conditions (e.g. a client-appended "preimage=<hex>") are skipped, as in aperture.

    # Each later caveat of a group may only narrow the earlier one (attenuation).
    services_values = groups.get(COND_SERVICES)
    if not services_values:
        raise _invalid("macaroon has no services caveat")
    services = _parse_services(services_values[0])
    for later in services_values[1:]:
        narrower = _parse_services(later)
        if not narrower <= services:
            raise _invalid("services caveat widens an earlier one")
        services = narrower

    order_values = groups.get(COND_ORDER)
    if not order_values or not order_values[0]:
        raise _invalid("macaroon is not bound to an order")
    if any(later != order_values[0] for later in order_values[1:]):
        raise _invalid("order caveat contradicts an earlier one")

    until_values = groups.get(COND_VALID_UNTIL)
    if not until_values:
        raise _invalid("macaroon has no expiry")
    valid_until = _parse_timestamp(until_values[0])
    for later in until_values[1:]:
        narrower_until = _parse_timestamp(later)
        if narrower_until > valid_until:
            raise _invalid("valid_until caveat extends an earlier one")
        valid_until = narrower_until

    # The last caveat of each group decides. Authorization failures come before expiry so an
    # expired token for somebody else's order is reported as invalid, not merely expired.
    if not any(name == SERVICE for name, _tier in services):
        raise _invalid("macaroon does not grant this service")
    if order_values[-1] != order_id:
        raise _invalid("macaroon belongs to another order")
    if valid_until < now:
        raise L402Error(EXPIRED_MACAROON, "macaroon has expired; create a new order")


def verify(credential: Credential, *, root_key: bytes, order_id: str, now: int) -> None:
    """Check signature, preimage and caveats of a parsed credential; raise L402Error if refused."""
    macaroon = credential.macaroon
    identifier = credential.identifier.raw
    # Re-checked here so verify() alone is sufficient even for a hand-built Credential.
    if macaroon.identifier_bytes != identifier:
        raise _invalid("identifier does not match the macaroon")
    if not hmac.compare_digest(
        hashlib.sha256(credential.preimage).digest(), credential.identifier.payment_hash
    ):
        raise _invalid("preimage does not match the payment hash")

    caveats = macaroon.caveats
    caveat_ids: list[bytes] = []
    for caveat in caveats:
        # We never issue third-party caveats and cannot verify discharges; refuse them.
        if caveat.verification_key_id is not None:
            raise _invalid("third-party caveats are not supported")
        caveat_ids.append(caveat.caveat_id_bytes)

    # The macaroon HMAC chain computed directly (what pymacaroons, libmacaroons and Go do):
    # half the cost of pymacaroons.Verifier here, and it checks the signature only, leaving
    # caveat semantics to the L402 rules below.
    signature = hmac.digest(hmac.digest(_KEY_GENERATOR, root_key, "sha256"), identifier, "sha256")
    for caveat_id in caveat_ids:
        signature = hmac.digest(signature, caveat_id, "sha256")
    if not hmac.compare_digest(binascii.hexlify(signature), macaroon.signature_bytes):
        raise _invalid("macaroon signature is invalid")

    _check_caveats(caveat_ids, order_id=order_id, now=now)
