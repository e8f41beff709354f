"""Shared fixtures: stores on SQLite and PostgreSQL, and real local fogs."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from fogwheel.store import Store

PG_URL = os.environ.get("FOGWHEEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as e:  # any failure to connect means: no PostgreSQL here
        return f"PostgreSQL not reachable at {PG_URL}: {e}"


# The store tests were written against a node going gone after three 10 s leases; the
# coordinator's default horizon is longer (store/base.py: default_gone_after_s).
GONE_AFTER_S = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """A fresh, empty store; the same tests run on both databases."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'fog.db'}", lease_seconds=10.0, gone_after_s=GONE_AFTER_S)
        s.create_schema()
        yield s
        s.close()
        return
    why = _pg_available()
    if why:
        if os.environ.get("FOGWHEEL_REQUIRE_POSTGRES"):
            pytest.fail(why)
        pytest.skip(why)
    import psycopg

    schema = "fwtest_" + secrets.token_hex(6)
    raw = PG_URL.replace("+psycopg", "")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    s = Store(PG_URL, lease_seconds=10.0, schema=schema, gone_after_s=GONE_AFTER_S)
    s.create_schema()
    try:
        yield s
    finally:
        s.close()
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
