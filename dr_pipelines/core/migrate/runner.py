"""The minimal runner: apply pending migrations in order, one transaction each, recording sha256.

An advisory lock keeps two runners from applying at once; an applied migration whose file
changed since is refused (its checksum no longer matches), as is an unknown applied version.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.files import Migration, discover
from dr_pipelines.core.pg.connect import connect

ADVISORY_LOCK_KEY = 0x6472_705F_6D69  # "drp_mi": one migration runner per database at a time

TRACKING_DDL = """
CREATE SCHEMA IF NOT EXISTS drp;
CREATE TABLE IF NOT EXISTS drp.schema_migrations (
    version      integer PRIMARY KEY,
    description  text        NOT NULL,
    sha256       text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    applied_by   text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms  integer     NOT NULL
);
"""


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    description: str
    sha256: str


def applied(conn: psycopg.Connection) -> dict[int, AppliedMigration]:
    """What the tracking table says is applied (empty if it does not exist yet)."""
    exists = conn.execute("SELECT to_regclass('drp.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute("SELECT version, description, sha256 FROM drp.schema_migrations ORDER BY version").fetchall()
    return {r[0]: AppliedMigration(*r) for r in rows}


def pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Migrations not applied yet; raises if an applied one was edited or has vanished."""
    done = applied(conn)
    on_disk = {m.version: m for m in migrations}
    for version, row in done.items():
        m = on_disk.get(version)
        if m is None:
            raise MigrationError(
                f"version {version} ({row.description}) is applied in the database but its file is missing",
                fix="restore the migration file from version control",
            )
        if m.sha256 != row.sha256:
            raise MigrationError(
                f"migration {m.path.name} was edited after it was applied (sha256 {row.sha256[:12]}… in the database, "
                f"{m.sha256[:12]}… on disk)",
                fix="revert the edit and add a new migration for the change",
            )
    newest = max(done, default=0)
    todo = [m for m in migrations if m.version not in done]
    late = [m for m in todo if m.version < newest]
    if late:
        raise MigrationError(
            f"migration {late[0].path.name} is older than the newest applied version {newest}",
            fix="renumber it after the newest applied version",
        )
    return todo


def migrate(
    dsn: str,
    directory: Path | str,
    *,
    progress: Callable[[Migration, float], None] | None = None,
) -> list[Migration]:
    """Apply every pending migration in order; returns what was applied."""
    migrations = discover(directory)
    done: list[Migration] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            with conn.transaction():
                conn.execute(TRACKING_DDL)
            for m in pending(conn, migrations):
                started = time.monotonic()
                try:
                    if m.transactional:
                        with conn.transaction():
                            conn.execute(m.sql)
                            _record(conn, m, started)
                    else:
                        conn.execute(m.sql)
                        _record(conn, m, started)
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {m.path.name} failed: {str(exc).strip()}",
                        fix="fix the SQL; a transactional migration was rolled back and can be re-run",
                    ) from None
                done.append(m)
                if progress:
                    progress(m, time.monotonic() - started)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return done


def _record(conn: psycopg.Connection, m: Migration, started: float) -> None:
    conn.execute(
        "INSERT INTO drp.schema_migrations (version, description, sha256, applied_by, duration_ms)"
        " VALUES (%s, %s, %s, %s, %s)",
        (m.version, m.description, m.sha256, getpass.getuser(), int((time.monotonic() - started) * 1000)),
    )
