"""What an export request names, checked in its snapshot: the tables asked for and the tenant ids, bound once.

Tenant ids are bound as a parameter (``set_config``) and read back by every query with
``current_setting``; an id that PostgreSQL cannot read as the key's type, or reads as
another value, or that names no row, is refused before any tenant data is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.export.errors import UnknownTenantError
from dr_pipelines.core.pg.checksums import RENDER_SETTINGS
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.snapshots import set_snapshot_sql
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, TableScope, discover_scope, tenant_array


@dataclass
class TenantSnapshot:
    """An open REPEATABLE READ, READ ONLY transaction with the request checked in it and the tenant ids bound."""

    conn: psycopg.Connection
    snapshot_at: datetime
    database: str
    server_version: str
    scope: Scope
    selected: list[TableScope]
    tenants: list[str]
    schema_version: int | None


@contextmanager
def tenant_snapshot(dsn: str, requested: list[str], *, root: str, key_column: str, exclude: tuple[str, ...] = (),
                    tables: tuple[str, ...] = (), noted: Callable[[str, Any], None] | None = None,
                    application_name: str | None = None, snapshot_id: str | None = None) -> Iterator[TenantSnapshot]:
    """The one snapshot every export reads (``drp export`` and the portal's streams alike).

    Text output is pinned (RENDER_SETTINGS, UTF-8), the scope derived, the tables and tenant
    ids checked (refusals raise before any tenant row is read) and the ids bound. ``noted``
    hears each fact as it is established ("root_table", "tables", "tenant_ids"), so an audit
    row of a refusal names what was known.

    ``snapshot_id``: read another transaction's exported snapshot (``pg_export_snapshot``) instead of
    a new one, so the export holds exactly what that transaction sees (the tenant restore's undo is
    taken in the apply's own snapshot). That transaction must stay open until this one has begun.
    """
    kwargs = {"application_name": application_name} if application_name else {}
    with connect(dsn, **kwargs) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            if snapshot_id:
                conn.execute(set_snapshot_sql(snapshot_id))  # first in the transaction, as it must be
            snapshot_at, database, server_version = conn.execute(
                "SELECT statement_timestamp(), current_database(), current_setting('server_version')").fetchone()
            for name, value in RENDER_SETTINGS.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            conn.execute("SELECT set_config('client_encoding', 'UTF8', true)")
            # Rows in one order for one snapshot, so whoever streams it gets the same bytes: scans start at
            # the table's first block (not where a concurrent scan of a big table is), and no parallel
            # workers (a Gather hands out their rows as they come). COPY in the leader is the bottleneck anyway.
            for name, value in (("synchronize_seqscans", "off"), ("max_parallel_workers_per_gather", "0")):
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            note = noted or (lambda _name, _value: None)
            scope = discover_scope(conn, root=root, key_column=key_column, exclude=exclude)
            note("root_table", scope.root)
            selected = select_tables(scope, tables)
            note("tables", [t.name for t in selected])
            tenants = check_tenants(conn, scope, requested)
            note("tenant_ids", tenants)
            yield TenantSnapshot(conn, snapshot_at, database, server_version, scope, selected, tenants,
                                 schema_version(conn))


def select_tables(scope: Scope, wanted: tuple[str, ...]) -> list[TableScope]:
    """The tenant-owned tables to export: all, or the requested ones (each must be in scope)."""
    if not wanted:
        return list(scope.tables)
    names = [w.strip() if "." in w else f"public.{w.strip()}" for w in wanted]
    unknown = [n for n in names if n not in scope.names]
    if unknown:
        excluded = {e.name: e.reason for e in scope.excluded}
        why = "; ".join(f"{n}: {excluded.get(n, 'no such table')}" for n in unknown)
        raise ConfigError(f"table(s) not exportable for a tenant: {why}",
                          fix=f"choose among the tenant-owned tables: {', '.join(scope.names)}")
    return [scope.table(n) for n in dict.fromkeys(names)]


def check_tenants(conn: psycopg.Connection, scope: Scope, requested: list[str]) -> list[str]:
    """Bind the tenant ids and return them canonical and distinct; refuse invalid or unknown ones."""
    _refuse_inexact(conn, scope, requested)
    conn.execute("SELECT set_config(%s, %s::text[]::text, true)", (TENANTS_SETTING, requested))
    canonical = conn.execute(sql.SQL(
        "SELECT array_agg(DISTINCT tenant.id::text) FROM unnest({}) AS tenant(id)").format(
        tenant_array(scope.key_type))).fetchone()[0]
    root_schema, root_table = scope.root.split(".", 1)
    missing = [r[0] for r in conn.execute(
        sql.SQL("SELECT tenant.id::text FROM unnest({}) AS tenant(id)"
                " WHERE NOT EXISTS (SELECT 1 FROM {} AS r WHERE r.{} = tenant.id) ORDER BY 1").format(tenant_array(scope.key_type), sql.Identifier(root_schema, root_table),
                                      sql.Identifier(scope.key_column))).fetchall()]
    if missing:
        raise UnknownTenantError(
            f"unknown tenant id(s) {', '.join(map(repr, missing))}: no such row in {scope.root}",
            fix=f"check the id(s) against {scope.root}.{scope.key_column}; nothing was exported",
        )
    conn.execute("SELECT set_config(%s, %s::text[]::text, true)", (TENANTS_SETTING, sorted(canonical)))
    return sorted(canonical)


def _refuse_inexact(conn: psycopg.Connection, scope: Scope, requested: list[str]) -> None:
    """Refuse ids that PostgreSQL cannot cast to the key's type, or that do not read back exactly as given.

    A cast may succeed and still change the value (char(3) truncates 'FRANCE' to 'FRA'): the
    export would then be of another tenant than the one asked for. The value is a parameter;
    only the type name, from the catalog (format_type), is part of the SQL.
    """
    check = sql.SQL("SELECT %s::{}::text = %s").format(sql.SQL(scope.key_type))
    bad = []
    for value in dict.fromkeys(requested):
        try:
            with conn.transaction():
                exact = conn.execute(check, (value, value)).fetchone()[0]
        except psycopg.DataError:  # invalid input syntax, out of range, too long for varchar(n), ...
            exact = False
        if not exact:
            bad.append(value)
    if bad:
        raise UnknownTenantError(
            f"tenant id(s) {', '.join(repr(b[:64]) for b in bad)} are not {scope.key_type} values as written "
            f"(of {scope.root}.{scope.key_column}): PostgreSQL cannot read them as that type, or reads them as "
            "another value",
            fix=f"pass {scope.root}.{scope.key_column} values exactly as the database shows them (its ::text form)",
        )


def schema_version(conn: psycopg.Connection) -> int | None:
    if conn.execute("SELECT to_regclass('drp.schema_migrations') IS NULL").fetchone()[0]:
        return None
    return conn.execute("SELECT max(version) FROM drp.schema_migrations").fetchone()[0]
