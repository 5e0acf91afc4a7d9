"""The tenant-restore audit trail: ``drp.tenant_restores``, append-only, enforced by the database.

Every apply attempt leaves rows here, in the live database, the same way exports do
(core/export/audit.py): ``started`` before anything is read from the live database's rows,
then one of

- ``succeeded``: appended inside the apply's own transaction, so it commits with the rows
  restored (it exists if and only if the restore did);
- ``refused``: turned away (conflicts, an undo export that could not be written, bad input);
  nothing was applied;
- ``failed``: an error or an isolation breach rolled the transaction back; nothing was applied.

A process killed in between leaves only its ``started`` row: an attempt is never invisible.
UPDATE, DELETE and TRUNCATE raise (trigger) and are revoked from PUBLIC (DDL in core/pg/drp_schema.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.drp_schema import TENANT_RESTORES_DDL, TENANT_RESTORES_LOCK

TABLE = "drp.tenant_restores"
STATUSES = ("started", "succeeded", "refused", "failed")


class RestoreAuditError(DrpError):
    """The tenant-restore audit table cannot be created or written: nothing is restored without it."""


@dataclass
class RestoreRecord:
    """One attempt, as its audit rows say it (each append writes the record as it is then)."""

    requester: str
    reason: str
    tenant_id: str
    restore_point: str  # what the past database is: a time, a backup id, or a description of the DSN
    mode: str  # "apply"
    policies: list[str]
    started_at: datetime
    on_conflict: str | None = None
    attempt_id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = "new"
    counts: dict[str, Any] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    undo_export_id: str | None = None
    undo_storage: str | None = None
    attempts: int = 0
    error: str | None = None


def ensure_restore_audit(conn: psycopg.Connection) -> None:
    """Create drp.tenant_restores with its append-only triggers (idempotent; nothing run when present)."""
    present = conn.execute(
        "SELECT to_regclass('drp.tenant_restores') IS NOT NULL AND (SELECT count(*) FROM pg_trigger"
        " WHERE tgrelid = to_regclass('drp.tenant_restores') AND tgenabled <> 'D' AND tgname IN"
        " ('tenant_restores_no_update_delete', 'tenant_restores_no_truncate')) = 2").fetchone()[0]
    if present:
        return
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (TENANT_RESTORES_LOCK,))
            conn.execute(TENANT_RESTORES_DDL)
    except psycopg.Error as exc:
        raise RestoreAuditError(
            f"cannot create the tenant-restore audit table {TABLE}: {str(exc).strip()}",
            fix="run the restore once as a role allowed to create schema drp (and tables in it)") from None


_INSERT = """
INSERT INTO drp.tenant_restores (attempt_id, status, requester, reason, tenant_id, restore_point, mode, policies,
                                 on_conflict, counts, conflicts, undo_export_id, undo_storage, attempts, error,
                                 started_at)
VALUES (%(attempt_id)s, %(status)s, %(requester)s, %(reason)s, %(tenant_id)s, %(restore_point)s, %(mode)s,
        %(policies)s, %(on_conflict)s, %(counts)s, %(conflicts)s, %(undo_export_id)s, %(undo_storage)s,
        %(attempts)s, %(error)s, %(started_at)s)
RETURNING id
"""


def append(conn: psycopg.Connection, record: RestoreRecord, status: str) -> int:
    """Append one row for ``record`` with ``status``, in ``conn``'s current transaction (or its own); its id."""
    if status not in STATUSES:
        raise ValueError(f"unknown tenant-restore audit status {status!r}")
    record.status = status
    params = dict(vars(record), counts=Jsonb(record.counts), conflicts=Jsonb(record.conflicts))
    try:
        with conn.transaction():
            return int(conn.execute(_INSERT, params).fetchone()[0])
    except psycopg.Error as exc:
        raise RestoreAuditError(f"cannot write to the tenant-restore audit table {TABLE}: {str(exc).strip()}",
                                fix="grant the restoring role INSERT and SELECT on drp.tenant_restores") from None


def history(conn: psycopg.Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """The audit rows (of one tenant, or all), oldest first, as dicts."""
    cur = conn.execute("SELECT * FROM drp.tenant_restores WHERE %(t)s::text IS NULL OR tenant_id = %(t)s"
                       " ORDER BY id", {"t": tenant_id})
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
