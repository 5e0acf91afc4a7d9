"""Exported and adopted snapshots: several sessions that see exactly the same rows.

One session, in a REPEATABLE READ transaction, exports its snapshot (``pg_export_snapshot``);
others adopt it (``SET TRANSACTION SNAPSHOT``) at the start of their own REPEATABLE READ,
READ ONLY transaction, or hand it to pg_dump (``--snapshot``). A backup's checksums, an
export's checksums and its Arrow reads all join their main session this way, so what they
measure is what was dumped or streamed. The exporting transaction must stay open while
others adopt the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import NamedTuple

import psycopg
from psycopg import sql

from dr_pipelines.core.pg.connect import connect


class ExportedSnapshot(NamedTuple):
    id: str
    at: datetime  # clock_timestamp() when it was exported


def export_snapshot(conn: psycopg.Connection) -> ExportedSnapshot:
    """Export the snapshot of `conn`'s current (REPEATABLE READ) transaction, and when."""
    snapshot_id, at = conn.execute("SELECT pg_export_snapshot(), clock_timestamp()").fetchone()
    return ExportedSnapshot(snapshot_id, at)


def set_snapshot_sql(snapshot_id: str) -> sql.Composed:
    """The statement adopting `snapshot_id`, first in a transaction.

    SET TRANSACTION SNAPSHOT takes no parameters; the id comes from pg_export_snapshot()."""
    return sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id))


@contextmanager
def adopted_session(dsn: str, snapshot_id: str | None,
                    settings: Mapping[str, str] = {}) -> Iterator[psycopg.Connection]:  # noqa: B006 (read only)
    """A read-only REPEATABLE READ transaction on `snapshot_id` (or a fresh snapshot if None),
    with `settings` set for the transaction (set_config, as parameters)."""
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            if snapshot_id:
                conn.execute(set_snapshot_sql(snapshot_id))
            for name, value in settings.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            yield conn
