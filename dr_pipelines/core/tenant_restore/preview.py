"""Preview a clinic's restore: what was deleted, added and changed since the past, table by table.

The live database is only read, in ONE REPEATABLE READ, READ ONLY transaction for all tables
(so the counts of parents and children agree with each other). The clinic's live rows are
streamed into a side schema of the *past* database (ours, throwaway), where the diff runs
against the clinic's past rows in place. The side schema is created inside one transaction
of the past database that is rolled back at the end: nothing of it outlives the preview,
even when the process dies half way.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import psycopg
from psycopg import sql

from dr_pipelines.core.pg.connect import connect, describe
from dr_pipelines.core.pg.snapshots import adopted_session
from dr_pipelines.core.tenancy import Scope, tenant_select
from dr_pipelines.core.tenant_restore.compare import SAMPLES, diff_table
from dr_pipelines.core.tenant_restore.report import TenantDiff
from dr_pipelines.core.tenant_restore.transfer import (
    bind_clinic,
    copy_tenant_rows,
    pin_output,
    primary_key,
    table_columns,
)


def preview(past_dsn: str, live_dsn: str, scope: Scope, clinic: str, *, past_label: str | None = None,
            samples: int = SAMPLES) -> TenantDiff:
    """The clinic's diff, past against live, for every table of ``scope``; nothing is written to live.

    ``past_label`` says what the past is (e.g. "PITR to 2026-11-30T14:05:00Z") for the report.
    """
    clinic = str(clinic)
    with connect(past_dsn) as past:
        side = f"drp_tenant_preview_{uuid.uuid4().hex[:12]}"
        past.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(side)))
        bind_clinic(past, clinic)
        pin_output(past)  # sample keys (a timestamptz in a key) read the same whatever the server's settings
        copies, snapshot_at = _copy_live(live_dsn, scope, clinic, past, side)
        result = TenantDiff(clinic, _label(past_dsn, past_label), describe(live_dsn), snapshot_at)
        for t, live_copy in zip(scope.tables, copies, strict=True):
            past_rows = sql.SQL("({})").format(tenant_select(t, scope))
            columns = [c.name for c in table_columns(past, t.schema, t.table)]
            result.tables.append(diff_table(past, past_rows, live_copy, columns, primary_key(past, t.schema, t.table),
                                            table=t.name, samples=samples))
        past.rollback()  # the side schema and its copies go with it
    return result


def _copy_live(live_dsn: str, scope: Scope, clinic: str, past: psycopg.Connection,
               side: str) -> tuple[list[sql.Identifier], datetime]:
    """Stream the clinic's live rows of every table, from one read-only snapshot, into ``side``."""
    copies = []
    with adopted_session(live_dsn, None) as live:
        snapshot_at = live.execute("SELECT now()").fetchone()[0]  # the start of the snapshot's transaction
        bind_clinic(live, clinic)
        for i, t in enumerate(scope.tables):
            dst = sql.Identifier(side, f"live_{i}")  # short names: a table's own may be 63 bytes long
            copy_tenant_rows(live, scope, t, past, dst)
            past.execute(sql.SQL("ANALYZE {}").format(dst))
            copies.append(dst)
    return copies, snapshot_at


def _label(dsn: str, label: str | None) -> str:
    return f"{describe(dsn)} ({label})" if label else describe(dsn)
