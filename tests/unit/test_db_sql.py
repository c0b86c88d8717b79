"""The SQL loader and the migration script splitter."""

from __future__ import annotations

from libs.common.persistence.db import Q, split_sql


def test_every_named_query_loads_and_is_not_empty() -> None:
    names = Q.names()
    assert "order_by_token" in names and "refund_claim" in names
    for name in names:
        assert getattr(Q, name).strip()


def test_split_keeps_function_bodies_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x int);
    CREATE FUNCTION f() RETURNS trigger AS $$
    BEGIN
        PERFORM 1; RETURN NULL;
    END $$ LANGUAGE plpgsql;
    """
    parts = split_sql(script)
    assert len(parts) == 2
    assert parts[0] == "CREATE TABLE a (x int)"
    assert "RETURN NULL;" in parts[1] and parts[1].endswith("plpgsql")
