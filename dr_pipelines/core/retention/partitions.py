"""Retention by partition: when a month's leaf partition holds exactly the archived rows, drop it.

Detaching and dropping the partition replaces many delete batches; the partition is checked
inside the same transaction (row count and the sum of row hashes equal the verified
segments'), and on any difference, or a lock it cannot get at once, the caller deletes in
batches instead.
"""

from __future__ import annotations

import time
from datetime import date

import psycopg
from psycopg import sql

from dr_pipelines.core.retention import journal
from dr_pipelines.core.retention.policy import BoundTable
from dr_pipelines.core.retention.results import TableResult
from dr_pipelines.core.retention.segment import ALIAS, month_bounds, row_hash, ts_value


def drop_month_partition(conn: psycopg.Connection, bt: BoundTable, method: str, month: date,
                         segs: list[journal.Segment], result: TableResult) -> list[journal.Segment]:
    """Detach and drop the month's leaf partition if it holds exactly ``segs``; return the segments still to delete."""
    m0, m1 = month_bounds(month)
    ts = sql.Identifier(bt.policy.timestamp_column)
    parts = conn.execute(sql.SQL(
        "SELECT DISTINCT tableoid FROM {} WHERE {} >= %s AND {} < %s").format(bt.ident, ts, ts),
        (ts_value(bt, m0), ts_value(bt, m1))).fetchall()
    if len(parts) != 1:
        return segs
    oid = parts[0][0]
    schema, name, bound_expr, parent = conn.execute(
        "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhparent FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_inherits i ON i.inhrelid = c.oid"
        " WHERE c.oid = %s AND c.relkind = 'r'", (oid,)).fetchone() or (None, None, None, None)
    own_oid = conn.execute("SELECT %s::regclass::oid", (bt.ident.as_string(conn),)).fetchone()[0]
    if name is None or bound_expr == "DEFAULT" or parent != own_oid:
        return segs
    want_rows = sum(s.rows or 0 for s in segs)
    want_sum = sum(int(s.checksum or "0", 16) for s in segs) % (1 << 64)
    part = sql.Identifier(schema, name)
    started = time.monotonic()
    try:
        with result.timed("delete"), conn.transaction() as tx:
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(bt.ident, part))
            rows, total = conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}::numeric), 0) FROM {} AS {}")
                                       .format(row_hash(method), part, sql.Identifier(ALIAS))).fetchone()
            if rows != want_rows or int(total) % (1 << 64) != want_sum:
                raise psycopg.Rollback(tx)  # the partition holds other rows too: batch deletes instead
            conn.execute(sql.SQL("DROP TABLE {}").format(part))
            seconds = time.monotonic() - started
            for s in segs:
                journal.record_batch(conn, s.id, deleted=s.rows or 0, kept=0, next_offset=s.rows or 0,
                                     seconds=seconds)
                conn.execute("UPDATE drp.archive_segments SET state = 'deleted', removed_by = 'partition'"
                             " WHERE id = %s", (s.id,))
    except psycopg.errors.LockNotAvailable:
        return segs
    if rows != want_rows or int(total) % (1 << 64) != want_sum:
        return segs
    result.batch(time.monotonic() - started)
    result.deleted_rows += want_rows
    result.partitions_dropped.append(f"{schema}.{name}")
    return []
