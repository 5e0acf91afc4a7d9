"""A quick, read-only profile of a live database: what it is, how big, which schema version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from dr_pipelines.core.pg.connect import connect


@dataclass(frozen=True)
class TableSize:
    name: str
    bytes: int
    estimated_rows: int


@dataclass(frozen=True)
class DatabaseProfile:
    server_version: str
    system_identifier: str
    database: str
    size_bytes: int
    schema_version: int | None
    tables: list[TableSize] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServerIdentity:
    version: str
    version_num: int
    system_identifier: str | None  # None when the role may not read pg_control_system()

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_identity(conn: psycopg.Connection) -> ServerIdentity:
    version, num = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int").fetchone()
    try:
        with conn.transaction():
            sysid = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        sysid = None
    return ServerIdentity(version, num, sysid)


def profile_database(dsn: str) -> DatabaseProfile:
    """Read-only: runs in a READ ONLY transaction so it can never change the source."""
    with connect(dsn) as conn:
        conn.read_only = True
        ident = server_identity(conn)
        db, size = conn.execute("SELECT current_database(), pg_database_size(current_database())").fetchone()
        has_tracking = conn.execute("SELECT to_regclass('drp.schema_migrations') IS NOT NULL").fetchone()[0]
        schema_version = (
            conn.execute("SELECT max(version) FROM drp.schema_migrations").fetchone()[0] if has_tracking else None
        )
        # pg_partition_tree() is empty for a plain table, so each table's members are its
        # partition tree plus (for a plain table) itself; partitions fold into their root.
        rows = conn.execute(
            """
            SELECT format('%I.%I', n.nspname, c.relname), s.bytes, s.estimated_rows
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            CROSS JOIN LATERAL (
                SELECT coalesce(sum(pg_total_relation_size(m.relid)), 0)::bigint AS bytes,
                       coalesce(sum(greatest(pc.reltuples, 0)) FILTER (WHERE m.isleaf), 0)::bigint AS estimated_rows
                FROM (SELECT t.relid, t.isleaf FROM pg_partition_tree(c.oid) t
                      UNION SELECT c.oid, true WHERE c.relkind = 'r') m
                JOIN pg_class pc ON pc.oid = m.relid
            ) s
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
            ORDER BY 1
            """
        ).fetchall()
    return DatabaseProfile(ident.version, ident.system_identifier or "unknown", db, size, schema_version, [TableSize(*r) for r in rows])
