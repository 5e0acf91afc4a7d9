"""Stream one clinic's rows of one table from a database into a new plain table of another.

The one way rows move between the past and the live database (preview, --into-schema, apply):
``COPY (tenant_select) TO STDOUT`` on the source connection feeds ``COPY dst FROM STDIN`` on the
destination chunk by chunk, so memory stays flat whatever the table's size (never a fetchall).

Binary COPY is exact and fast, but some binary values are database-specific: a reg*/oid value
is a bare OID (in another database it names another table, or none; its text form is the
name), and arrays and composites carry their element types' OIDs, which differ between
databases for user-defined types. Such tables go through text COPY instead, with the output
settings pinned on both sides so every value reads back equal.

The tenant ids are never in the SQL: ``tenant_select`` reads them from the transaction-local
setting that ``bind_clinic`` (or export's ``check_tenants``) sets on the source connection.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

import psycopg
from psycopg import sql

from dr_pipelines.core.export.formats import RowCount, copy_out
from dr_pipelines.core.parquet import Column, table_columns
from dr_pipelines.core.pg.checksums import RENDER_SETTINGS
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, TableScope, tenant_select

BATCH_BYTES = 256 * 1024  # rows are handed from one COPY to the other in pieces of about this size

__all__ = ["Column", "bind_clinic", "copy_tenant_rows", "create_like", "pin_output", "primary_key",
           "table_columns", "wire_format"]

# Columns whose binary form carries a database-specific OID (arrays of user-defined element
# types, composites) or means nothing in another database (oid, reg*): such a table is copied as text.
_OID_BOUND_QUERY = """
WITH RECURSIVE types(oid) AS (
    SELECT a.atttypid FROM pg_attribute a
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END
    FROM types JOIN pg_type t ON t.oid = types.oid
    WHERE t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0)
)
SELECT coalesce(bool_or(t.typtype = 'c' OR t.oid = 'oid'::regtype OR t.typname LIKE 'reg%%'
                        OR (t.typcategory = 'A' AND t.typelem >= 16384)), false)
FROM types JOIN pg_type t ON t.oid = types.oid
"""

# Primary key columns in the key's order (conkey), for ordinary and partitioned tables alike.
_PRIMARY_KEY_QUERY = """
SELECT a.attname
FROM pg_constraint con
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
WHERE con.conrelid = %s::regclass AND con.contype = 'p'
ORDER BY k.ord
"""


def _regclass(conn: psycopg.Connection, schema: str, table: str) -> str:
    return sql.Identifier(schema, table).as_string(conn)


def primary_key(conn: psycopg.Connection, schema: str, table: str) -> tuple[str, ...]:
    """The table's primary key columns in key order, or () when it has none (compared as a multiset)."""
    return tuple(r[0] for r in conn.execute(_PRIMARY_KEY_QUERY, (_regclass(conn, schema, table),)).fetchall())


def wire_format(conn: psycopg.Connection, schema: str, table: str) -> str:
    """"binary", or "text" when a column's binary form would carry an OID another database refuses."""
    bound = conn.execute(_OID_BOUND_QUERY, (_regclass(conn, schema, table),)).fetchone()[0]
    return "text" if bound else "binary"


def bind_clinic(conn: psycopg.Connection, clinic: str) -> None:
    """Bind one tenant id for this transaction: tenant_select/tenant_filter read it back, never the SQL text.

    No existence check: a clinic may be gone from one side (that is what a restore is for).
    """
    conn.execute("SELECT set_config(%s, %s::text[]::text, true)", (TENANTS_SETTING, [str(clinic)]))


def pin_output(conn: psycopg.Connection) -> None:
    """Pin how values render as text (TimeZone UTC, ISO dates, exact floats) for this transaction."""
    for name, value in RENDER_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def create_like(conn: psycopg.Connection, dst: sql.Identifier, columns: list[Column]) -> None:
    """CREATE TABLE dst with the columns' names and types only: no constraints, defaults or generation."""
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(dst, sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type_name)) for c in columns)))


def copy_tenant_rows(src_conn: psycopg.Connection, scope: Scope, table_scope: TableScope,
                     dst_conn: psycopg.Connection, dst: sql.Identifier, *, create: bool = True,
                     on_chunk: Callable[[int], None] | None = None) -> int:
    """Stream the bound tenant's rows of ``table_scope`` into ``dst``; the number of rows.

    ``create`` makes ``dst`` first (create_like); otherwise it must exist with the same column
    names. Generated columns arrive as plain values. Both connections must be in a transaction
    (the tenant binding and, for text COPY, the pinned output settings are transaction-local).
    ``on_chunk`` sees the size of each chunk as it passes (progress; the tests see the stream).
    """
    t = table_scope
    columns = table_columns(src_conn, t.schema, t.table)
    if create:
        create_like(dst_conn, dst, columns)
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    fmt = wire_format(src_conn, t.schema, t.table)
    if fmt == "text":
        pin_output(src_conn)
        pin_output(dst_conn)
    option = sql.SQL("(FORMAT binary)" if fmt == "binary" else "(FORMAT text)")
    select = tenant_select(t, scope, sql.SQL(", ").join(sql.Identifier("t", c.name) for c in columns))
    copy_to = sql.SQL("COPY ({}) TO STDOUT {}").format(select, option)
    # closing(): a failed COPY FROM cancels and drains the COPY TO, so the source transaction stays usable.
    with closing(copy_out(src_conn, copy_to, RowCount(), BATCH_BYTES)) as out, dst_conn.cursor() as dst_cur:
        with dst_cur.copy(sql.SQL("COPY {} ({}) FROM STDIN {}").format(dst, names, option)) as into:
            for chunk in out:
                into.write(chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
        return dst_cur.rowcount

