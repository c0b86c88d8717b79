"""Prepaid accounts: API keys (only their hash is stored) and ledger movements."""

from __future__ import annotations

import hashlib
import secrets

import asyncpg

from libs.common.persistence.db import Q

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


async def move(
    conn: asyncpg.Connection, account_id: int, delta_sats: int, kind: str, ref: str
) -> int | None:
    """Record one balance movement; the new balance, or None if it would overdraw.

    Raises asyncpg.UniqueViolationError when (kind, ref) was already recorded, which the
    caller treats as "done before".
    """
    balance: int | None = await conn.fetchval(Q.account_move, account_id, delta_sats, kind, ref)
    return balance


async def already_recorded(conn: asyncpg.Connection | asyncpg.Pool, kind: str, ref: str) -> bool:
    """Tell whether this movement is in the ledger."""
    return await conn.fetchval(Q.ledger_has, kind, ref) is not None
