"""Prepaid accounts' API keys: made, recognised and hashed (only the hash is stored; pure)."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "s4s_"


def new_api_key() -> str:
    """A fresh random API key, shown once to the operator."""
    return KEY_PREFIX + secrets.token_hex(24)


# Longer than any key we issue (52 characters), with room for keys of another format.
MAX_KEY_LENGTH = 128


def plausible_key(api_key: str) -> bool:
    """Whether the text could be a key we issued: printable ASCII of a sane length."""
    text = api_key.strip()
    return 0 < len(text) <= MAX_KEY_LENGTH and text.isascii() and text.isprintable()


def key_hash(api_key: str) -> bytes:
    """What is stored for an API key (undecodable header bytes hash as the bytes received)."""
    return hashlib.sha256(api_key.strip().encode("utf-8", "surrogateescape")).digest()
