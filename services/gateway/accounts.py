"""Operator commands for prepaid accounts: `python -m services.gateway.accounts create|revoke`."""

from __future__ import annotations

import argparse
import asyncio

from libs.common.core.config import load_settings
from libs.common.domain.api_keys import key_hash, new_api_key
from libs.common.persistence import db
from libs.common.persistence.account_store import PgAccounts


async def create(label: str) -> tuple[int, str]:
    """Create an account; returns its id and the API key (shown once, stored only hashed)."""
    api_key = new_api_key()
    pool = await db.create_pool(load_settings().database_url, max_size=1)
    try:
        account_id = await PgAccounts(pool).create(key_hash(api_key), label)
    finally:
        await pool.close()
    return account_id, api_key


async def revoke(account_id: int) -> bool:
    """Revoke an account's key; False if there was no active key."""
    pool = await db.create_pool(load_settings().database_url, max_size=1)
    try:
        return await PgAccounts(pool).revoke(account_id)
    finally:
        await pool.close()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="create an account and print its API key once")
    make.add_argument("--label", default="")
    drop = sub.add_parser("revoke", help="revoke an account's API key")
    drop.add_argument("account_id", type=int)
    args = parser.parse_args()
    if args.command == "create":
        account_id, api_key = asyncio.run(create(args.label))
        print(f"account {account_id}\napi key {api_key}\n(store it now: it is not kept)")
    elif not asyncio.run(revoke(args.account_id)):
        raise SystemExit(f"no active key for account {args.account_id}")
    else:
        print(f"account {args.account_id} revoked")


if __name__ == "__main__":
    main()
