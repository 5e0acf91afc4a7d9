"""The export audit trail: ``drp.export_audit``, append-only, enforced by the database itself.

Every export attempt leaves rows here:

- an attempt that starts streaming first appends a ``started`` row, then a ``succeeded`` or
  ``failed`` row (same ``attempt_id``); a crash between the two leaves the ``started`` row,
  so an export that may have written data is never invisible;
- an attempt refused before any data is read (unknown tenant, rate limit, bad request)
  appends one ``refused`` row.

Append-only is enforced in PostgreSQL, not by convention: a trigger raises on UPDATE,
DELETE and TRUNCATE (it fires for the table owner and superusers too), and UPDATE, DELETE
and TRUNCATE are revoked from PUBLIC. Application roles get INSERT and SELECT only. A
superuser or the owner can still drop the trigger (DDL): that is visible in the DDL log
and outside what a table can protect itself from.

The rate limit counts ``started`` rows (successful, failed and crashed exports all count;
refusals do not) per tenant over the last hour, under a transaction-level advisory lock
so two concurrent exports cannot both squeeze under the limit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.drp_schema import AUDIT_DDL, EXPORT_AUDIT_LOCK

TABLE = "drp.export_audit"
# abandoned: a started export whose process died (no manifest), closed by housekeeping (core/export/housekeeping.py);
# expired: a finished export deleted by housekeeping after its time-to-live.
# granted: a request of the export portal that read no rows (a status, a listing) was answered.
# discarded: a finished export its caller did not use, deleted by it (a tenant restore's undo whose apply rolled back).
STATUSES = ("started", "succeeded", "failed", "refused", "abandoned", "expired", "granted", "discarded")



class AuditError(DrpError):
    """The audit table cannot be created or written: no export runs without its audit row."""


@dataclass
class AuditRecord:
    requester: str
    tenant_ids: list[str]
    root_table: str
    started_at: datetime
    attempt_id: uuid.UUID = field(default_factory=uuid.uuid4)
    export_id: str | None = None
    status: str = "new"  # not yet in the table; append() takes one of STATUSES
    tables: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    rows: int | None = None
    bytes: int | None = None
    manifest_sha256: str | None = None
    destination: str | None = None
    error: str | None = None
    finished_at: datetime | None = None
    credential_id: str | None = None  # the portal credential that asked (dr_pipelines/portal/)
    client_address: str | None = None  # the portal client's address
    request: str | None = None  # the portal's HTTP request line (method and path)
    content_sha256: str | None = None  # sha256 of a body streamed over HTTP


def ensure_audit_table(conn: psycopg.Connection) -> None:
    """Create drp.export_audit with its append-only trigger and revocations (idempotent).

    If the table, both triggers and the current status list already exist nothing is run, so
    a role without DDL rights (INSERT and SELECT only) can export once an administrator has set
    it up.
    """
    present = conn.execute(
        "SELECT to_regclass('drp.export_audit') IS NOT NULL AND (SELECT count(*) FROM pg_trigger"
        " WHERE tgrelid = to_regclass('drp.export_audit') AND tgenabled <> 'D' AND tgname IN"
        " ('export_audit_no_update_delete', 'export_audit_no_truncate')) = 2"
        " AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('drp.export_audit')"
        " AND conname = 'export_audit_status_check' AND pg_get_constraintdef(oid) LIKE %s)"
        " AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('drp.export_audit')"
        " AND attname = 'content_sha256' AND NOT attisdropped)",
        ("%'discarded'%",),
    ).fetchone()[0]
    if present:
        return
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (EXPORT_AUDIT_LOCK,))
            conn.execute(AUDIT_DDL)
    except psycopg.Error as exc:
        raise AuditError(
            f"cannot create the export audit table {TABLE}: {str(exc).strip()}",
            fix="run the export once as a role allowed to create schema drp, or create it with ensure_audit_table",
        ) from None


_INSERT = """
INSERT INTO drp.export_audit (attempt_id, export_id, status, requester, tenant_ids, root_table, tables, formats,
                              rows, bytes, manifest_sha256, destination, error, started_at, finished_at,
                              credential_id, client_address, request, content_sha256)
VALUES (%(attempt_id)s, %(export_id)s, %(status)s, %(requester)s, %(tenant_ids)s, %(root_table)s, %(tables)s,
        %(formats)s, %(rows)s, %(bytes)s, %(manifest_sha256)s, %(destination)s, %(error)s, %(started_at)s,
        %(finished_at)s, %(credential_id)s, %(client_address)s, %(request)s, %(content_sha256)s)
"""


def append(conn: psycopg.Connection, record: AuditRecord) -> None:
    """Append one row for ``record`` as it is now (its status included)."""
    if record.status not in STATUSES:
        raise ValueError(f"unknown audit status {record.status!r}")
    try:
        with conn.transaction():
            conn.execute(_INSERT, vars(record))
    except psycopg.Error as exc:
        raise AuditError(
            f"cannot write to the export audit table {TABLE}: {str(exc).strip()}",
            fix="grant the exporting role INSERT and SELECT on drp.export_audit",
        ) from None


def recent_attempts(conn: psycopg.Connection, tenant_id: str, window: timedelta = timedelta(hours=1)) -> int:
    """Exports of ``tenant_id`` started within ``window`` (refusals not counted)."""
    return conn.execute(
        "SELECT count(*) FROM drp.export_audit WHERE status = 'started' AND tenant_ids @> ARRAY[%s]::text[]"
        " AND started_at > clock_timestamp() - %s",
        (tenant_id, window),
    ).fetchone()[0]


class RateLimitedError(DrpError):
    """A tenant has had its allowance of exports in the current window."""


def start_attempt(
    conn: psycopg.Connection,
    record: AuditRecord,
    *,
    max_per_hour: int | None,
) -> None:
    """Check the per-tenant rate limit and append the ``started`` row, atomically.

    Raises RateLimitedError (nothing appended) if a tenant is over its allowance.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EXPORT_AUDIT_LOCK,))
        if max_per_hour is not None:
            for tenant in record.tenant_ids:
                n = recent_attempts(conn, tenant)
                if n >= max_per_hour:
                    raise RateLimitedError(
                        f"tenant {tenant} has been exported {n} times in the last hour (limit {max_per_hour})",
                        fix="wait for the window to pass, or raise the limit deliberately "
                        "(DRP_EXPORT_MAX_PER_HOUR) if this volume is expected",
                    )
        record.status = "started"
        conn.execute(_INSERT, vars(record))
