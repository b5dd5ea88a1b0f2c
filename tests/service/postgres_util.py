"""A real PostgreSQL server for tests: fresh schemas and databases, always dropped afterwards.

The server is ``FACESERVE_TEST_DATABASE_URL`` (default: the local one, trust auth, database
``test``). Tests that need it skip with the reason when it does not answer; they never share
state: each gets its own schema (store tests) or database (replica tests) and drops it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

PG_URL = os.environ.get("FACESERVE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@cache
def unavailable() -> str | None:
    """Why the test server cannot be used, or None."""
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (f"PostgreSQL not reachable at {PG_URL} (set FACESERVE_TEST_DATABASE_URL): "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    return None


def require() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def with_schema(url: str, schema: str) -> str:
    """``url`` (a postgresql:// URL) with ``schema`` first on its search_path."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema(prefix: str = "fs_test") -> Iterator[tuple[str, str]]:
    """(connection string whose search_path is a new empty schema, schema name); dropped after."""
    require()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_schema(PG_URL, schema), schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def fresh_database(prefix: str = "fs_test") -> Iterator[str]:
    """A URL of a new empty database on the test server; dropped (connections cut) after."""
    require()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(PG_URL)
    params["dbname"] = name
    user = params.get("user") or "postgres"
    host = params.get("host") or "127.0.0.1"
    port = params.get("port") or "5432"
    password = f":{params['password']}" if params.get("password") else ""
    try:
        yield f"postgresql://{user}{password}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
