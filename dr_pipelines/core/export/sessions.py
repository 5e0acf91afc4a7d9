"""More sessions on the export's one snapshot: checksums run beside the stream; Parquet reads Arrow.

The export's main transaction exports its snapshot (``pg_export_snapshot``); each extra
session starts ``REPEATABLE READ, READ ONLY`` and adopts it with ``SET TRANSACTION
SNAPSHOT``, so every session sees exactly the same rows. The tenant ids are bound (as a
parameter of ``set_config``) in each session, as in the main one.

- a checksum session (core/pg/snapshots.adopted_session): computes the per-table row count
  and content checksum while the main session streams the same table (two server processes
  on two cores instead of one after the other).
- ``arrow_session``: an ADBC PostgreSQL connection, which reads query results as Arrow
  record batches (COPY BINARY decoded in C++), several times faster than building Python
  objects row by row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.checksums import RENDER_SETTINGS
from dr_pipelines.core.pg.connect import describe
from dr_pipelines.core.pg.snapshots import set_snapshot_sql


class SnapshotSessionError(DrpError):
    """An extra session could not join the export's snapshot."""


def session_settings(tenants_setting: str, tenants: str) -> dict[str, str]:
    """What every session pins: text output (RENDER_SETTINGS, UTF-8) and the bound tenant ids."""
    return {**RENDER_SETTINGS, "client_encoding": "UTF8", tenants_setting: tenants}


@contextmanager
def arrow_session(dsn: str, snapshot_id: str, settings: dict[str, str]) -> Iterator[Any]:
    """An ADBC cursor inside a transaction on the snapshot; ``execute`` then ``fetch_record_batch``."""
    import adbc_driver_postgresql.dbapi as adbc

    try:
        conn = adbc.connect(dsn, autocommit=True)
    except adbc.Error:  # its message may carry the connection string: never shown
        raise SnapshotSessionError(f"could not open an Arrow (ADBC) session to {describe(dsn)}",
                                   fix="check the server accepts one more connection, or export CSV/JSON Lines") from None
    try:
        cur = conn.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(set_snapshot_sql(snapshot_id).as_string())
        for name, value in settings.items():
            cur.execute("SELECT set_config($1, $2, true)", parameters=(name, value))
            cur.fetchall()
        yield cur
        cur.execute("COMMIT")
    finally:
        conn.close()
