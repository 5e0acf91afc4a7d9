"""The segment journal ``drp.archive_segments``: where every archive-then-delete stands.

A segment is one batch of a table's rows for one tenant and one month, archived as one
Parquet object with its manifest. Its state only moves forward::

    pending --(Parquet + manifest stored)--> written --(read back, checksum equal)--> verified
        --(every batch deleted, or the partition dropped)--> deleted
    pending | written --(object missing or wrong: objects removed)--> abandoned

Rows are deleted only from a ``verified`` segment, and each delete batch updates the
segment's counters (deleted_rows, next_offset) in the same transaction as the DELETE, so
after a crash the journal says exactly which rows are gone. The rows a batch kept (changed
since the archive, or held now) are recorded in ``drp.archive_kept`` in that same
transaction; when the segment is done they go to storage next to its manifest
(``kept.json``), so an archive says by itself which of its rows were never removed. A run first finishes the
unfinished segments it finds (resume), then selects new rows, so rows of an unfinished
segment are never selected into a second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.pg.drp_schema import JOURNAL_DDL, KEPT_DDL, RETENTION_JOURNAL_LOCK, ensure_table

STATES = ("pending", "written", "verified", "deleted", "abandoned")
UNFINISHED = ("pending", "written", "verified")



@dataclass
class Segment:
    id: str
    run_id: str
    table_name: str
    tenant_id: str
    month: date
    state: str
    storage_url: str
    prefix: str
    cutoff: datetime
    predicate: str
    rule: str
    rows: int | None
    bytes: int | None
    sha256: str | None
    checksum: str | None
    method: str | None
    deleted_rows: int
    kept_rows: int
    next_offset: int
    batches: int
    longest_batch_s: float
    removed_by: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date | datetime) else v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class Balance:
    """Rows archived by some segments, kept in place (changed or held by the delete), and deleted."""

    archived: int
    kept: int
    deleted: int

    @property
    def ok(self) -> bool:
        """Every archived row was deleted unless the journal (and its kept.json) says it was kept."""
        return self.archived - self.kept == self.deleted


def balance(segs: list[Segment]) -> Balance:
    live = [s for s in segs if s.state != "abandoned"]
    return Balance(sum(s.rows or 0 for s in live), sum(s.kept_rows for s in live), sum(s.deleted_rows for s in live))


def ensure_journal_table(conn: psycopg.Connection) -> None:
    ensure_table(conn, "drp.archive_segments", JOURNAL_DDL, RETENTION_JOURNAL_LOCK)
    ensure_table(conn, "drp.archive_kept", KEPT_DDL, RETENTION_JOURNAL_LOCK)  # separate: journals older than the table


def insert_pending(conn: psycopg.Connection, seg: dict[str, Any]) -> None:
    """Record a segment before anything is written to storage (a crash leaves it pending: cleaned up)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO drp.archive_segments (id, run_id, table_name, tenant_id, month, state, storage_url, prefix,"
            " cutoff, predicate, rule) VALUES (%(id)s, %(run_id)s, %(table_name)s, %(tenant_id)s, %(month)s, 'pending',"
            " %(storage_url)s, %(prefix)s, %(cutoff)s, %(predicate)s, %(rule)s)", seg)


def advance(conn: psycopg.Connection, seg_id: str, state: str, **fields: Any) -> None:
    """Move a segment to ``state`` and set ``fields`` (one transaction)."""
    assert state in STATES
    sets = [sql.SQL(", {} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields]
    with conn.transaction():
        conn.execute(sql.SQL("UPDATE drp.archive_segments SET state = %(state)s, updated_at = clock_timestamp(){}"
                             " WHERE id = %(id)s").format(sql.SQL("").join(sets)),
                     {"state": state, "id": seg_id, **fields})


def record_batch(conn: psycopg.Connection, seg_id: str, *, deleted: int, kept: int, next_offset: int,
                 seconds: float) -> None:
    """Count one delete batch; call inside the DELETE's transaction so the two commit together."""
    conn.execute(
        "UPDATE drp.archive_segments SET deleted_rows = deleted_rows + %s, kept_rows = kept_rows + %s,"
        " next_offset = %s, batches = batches + 1, longest_batch_s = greatest(longest_batch_s, %s),"
        " updated_at = clock_timestamp() WHERE id = %s", (deleted, kept, next_offset, seconds, seg_id))


def kept(conn: psycopg.Connection, seg_id: str) -> tuple[int, list[tuple[list[str], int]]]:
    """The segment's kept_rows counter and its kept rows' (primary key as text, archived row hash), by key."""
    (count,) = conn.execute("SELECT kept_rows FROM drp.archive_segments WHERE id = %s", (seg_id,)).fetchone()
    rows = conn.execute("SELECT pk, row_hash FROM drp.archive_kept WHERE segment_id = %s ORDER BY pk",
                        (seg_id,)).fetchall()
    return int(count), [(list(pk), int(h)) for pk, h in rows]


def segments(conn: psycopg.Connection, *, table: str | None = None, tenant_id: str | None = None,
             states: tuple[str, ...] = STATES, run_id: str | None = None) -> list[Segment]:
    ensure_journal_table(conn)
    rows = conn.execute(
        "SELECT id, run_id, table_name, tenant_id, month, state, storage_url, prefix, cutoff, predicate, rule, rows,"
        " bytes, sha256, checksum, method, deleted_rows, kept_rows, next_offset, batches, longest_batch_s, removed_by,"
        " error, created_at, updated_at FROM drp.archive_segments"
        " WHERE (%(t)s::text IS NULL OR table_name = %(t)s) AND (%(n)s::text IS NULL OR tenant_id = %(n)s)"
        " AND state = ANY (%(s)s) AND (%(r)s::text IS NULL OR run_id = %(r)s) ORDER BY created_at, id",
        {"t": table, "n": tenant_id, "s": list(states), "r": run_id}).fetchall()
    return [Segment(*r) for r in rows]
