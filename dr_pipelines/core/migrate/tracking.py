"""The tracking table drp.schema_migrations and the advisory lock that serializes runners.

Databases made by the first runner (version, description, sha256, applied_by, applied_at,
duration_ms) are upgraded in place, under the advisory lock, with ADD COLUMN IF NOT EXISTS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.drp_schema import MIGRATION_RUNNER_LOCK as ADVISORY_LOCK_KEY
from dr_pipelines.core.pg.drp_schema import TRACKING_DDL

APPLICATION_NAME = "drp migrate"


_COLUMNS = ("version", "description", "sha256", "fingerprint", "applied_by", "applied_at", "duration_ms",
            "backup_id", "baselined", "repaired_by", "repaired_at")


@dataclass(frozen=True)
class AppliedMigration:
    """One row of drp.schema_migrations."""

    version: int
    description: str
    sha256: str
    fingerprint: str | None = None  # NULL on rows written before fingerprints existed
    applied_by: str | None = None
    applied_at: datetime | None = None
    duration_ms: int | None = None
    backup_id: str | None = None  # the pre-migration backup of the run; NULL when skipped
    baselined: bool = False  # recorded by `baseline`, never run by drp
    repaired_by: str | None = None
    repaired_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("applied_at", "repaired_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


def tracking_exists(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT to_regclass('drp.schema_migrations') IS NOT NULL").fetchone()[0])


def applied(conn: psycopg.Connection) -> dict[int, AppliedMigration]:
    """What the tracking table says is applied (empty if it does not exist yet; old layouts read too)."""
    if not tracking_exists(conn):
        return {}
    present = {r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'drp.schema_migrations'::regclass AND attnum > 0"
        " AND NOT attisdropped").fetchall()}
    columns = [c for c in _COLUMNS if c in present]
    query = sql.SQL("SELECT {} FROM drp.schema_migrations ORDER BY version").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    return {row[0]: AppliedMigration(**dict(zip(columns, row, strict=True))) for row in conn.execute(query).fetchall()}


def ensure_tracking(conn: psycopg.Connection) -> None:
    """Create or upgrade the tracking table (the caller holds the advisory lock)."""
    with conn.transaction():
        conn.execute(TRACKING_DDL)


@contextmanager
def runner_lock(conn: psycopg.Connection, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the migration advisory lock on an autocommit connection, or raise naming who holds it.

    pg_try_advisory_lock never queues behind the other runner, so a second runner gets an
    answer (after polling up to wait_seconds) instead of hanging.
    """
    deadline = time.monotonic() + wait_seconds
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()[0]:
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another migration runner is working on this database ({_holder(conn)})",
                fix="wait for it to finish (`drp migrate status`), or end that session if it is stuck",
            )
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
    try:
        yield
    finally:
        if not conn.closed:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


@contextmanager
def runner_session(dsn: str, *, wait_seconds: float = 0.0) -> Iterator[tuple[psycopg.Connection, dict]]:
    """An autocommit connection holding the runner lock, the tracking table ensured; yields it and what is applied."""
    with connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn, \
            runner_lock(conn, wait_seconds=wait_seconds):
        ensure_tracking(conn)
        yield conn, applied(conn)


def _holder(conn: psycopg.Connection) -> str:
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, a.backend_start FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname ="
        " current_database()) AND ((l.classid::bigint << 32) | l.objid::bigint) = %s LIMIT 1",
        (ADVISORY_LOCK_KEY,),
    ).fetchone()
    if row is None:
        return "its session just ended; retry"
    pid, app, user, started = row
    return f"backend pid {pid}, application {app or '?'!r}, user {user}, connected since {started:%Y-%m-%d %H:%M:%S %Z}"
