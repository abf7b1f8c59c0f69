"""PostgreSQL: versioned plain-SQL migrations (`slipguard db migrate`) and connections."""

from __future__ import annotations

import logging
import re
from importlib import resources

import psycopg
from psycopg.rows import Row

log = logging.getLogger("slipguard.db")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x5119_6A7D  # advisory lock: one migrator at a time


class MigrationError(Exception):
    """A migration file could not be applied; nothing of it was kept."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with slipguard, in order."""
    found = []
    for item in resources.files("streams.migrations").iterdir():
        match = _NAME.match(item.name)
        if match:
            found.append((int(match.group(1)), match.group(2), item.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


def migrate(url: str) -> list[str]:
    """Apply what is missing, each migration in its own transaction. Idempotent."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS slipguard_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                done = conn.execute("SELECT 1 FROM slipguard_schema_migrations WHERE version = %s",
                                    (version,)).fetchone()
                if done:
                    continue
                try:
                    conn.execute(sql)  # (a trusted file shipped with the package)
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {version:04d}_{name}.sql failed: {exc}") from exc
                conn.execute("INSERT INTO slipguard_schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied_now.append(f"{version:04d}_{name}")
                log.info("applied migration %04d_%s", version, name)
    return applied_now


def one(cursor: psycopg.Cursor[Row]) -> Row:
    """The row of a query that always returns one (an aggregate: count(*), percentile_cont)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("a query that always returns a row returned none")
    return row
