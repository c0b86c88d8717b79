"""PostgreSQL access: the asyncpg pool, named SQL queries from .sql files, and migrations."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from libs.common.domain.orders import TERMINAL

SQL_DIR = Path(__file__).parent / "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


# Spelled in SQL as $TERMINAL: the statuses an order never leaves, from the state machine
# itself, so the SQL and the Python can never disagree on them.
TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))


class Queries:
    """Named queries read from `-- name: <name>` blocks of the .sql files in persistence/sql."""

    def __init__(self, directory: Path = SQL_DIR) -> None:
        self._sql: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            text = path.read_text().replace("$TERMINAL", TERMINAL_SQL)
            parts = _NAME.split(text)
            for name, body in zip(parts[1::2], parts[2::2], strict=True):
                if name in self._sql:
                    raise ValueError(f"query {name!r} defined twice ({path.name})")
                self._sql[name] = body.strip().rstrip(";")

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(f"no SQL query named {name!r}") from None

    def names(self) -> list[str]:
        """List every query name."""
        return sorted(self._sql)


Q = Queries()

# What a store is bound to: the pool, or one transaction's connection.
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Teach a new connection to speak JSON for json/jsonb columns."""
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a connection pool to the database."""
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
    )
    assert pool is not None
    return pool


async def ping(db: Executor) -> None:
    """One round trip to the database; raises if it cannot be reached."""
    await db.fetchval("SELECT 1")


def sqlalchemy_url(url: str) -> str:
    """Turn a libpq-style URL into SQLAlchemy's asyncpg URL (alembic needs SQLAlchemy)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def migrate(url: str, revision: str = "head") -> None:
    """Apply alembic migrations up to revision (blocking; run it off the event loop)."""
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parents[3]
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, revision)


def split_sql(script: str) -> list[str]:
    """Split a SQL script into statements on `;`, keeping $$-quoted function bodies whole."""
    # Our scripts never put "--" inside string literals, so comments can simply be cut.
    script = re.sub(r"--[^\n]*", "", script)
    statements: list[str] = []
    current: list[str] = []
    for chunk in re.split(r"(\$\$|;)", script):
        current.append(chunk)
        if chunk == ";" and "".join(current).count("$$") % 2 == 0:
            statements.append("".join(current))
            current = []
    statements.append("".join(current))
    return [s.strip().rstrip(";").strip() for s in statements if s.strip().rstrip(";").strip()]
