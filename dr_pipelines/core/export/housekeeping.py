"""The exports' own housekeeping: no export's files outlive their purpose in storage.

Two sweeps, both recorded in the append-only audit table (new rows, never edits):

- **Abandoned.** An export killed mid-way (kill -9, OOM, a lost host) leaves its ``started``
  audit row open and maybe some files under ``exports/<export_id>/``, but no manifest.
  A running export holds a session advisory lock on its id (taken before its ``started``
  row, released by the server when the process dies); an open ``started`` row older than
  ``stale_after`` whose lock is free and whose manifest is absent belongs to a dead
  process: its files are removed and an ``abandoned`` row closes it.
- **Expired.** A finished export (manifest present) older than the time-to-live, by its
  manifest's ``finished_at``, is deleted (manifest first: a half-deleted export is never
  mistaken for a complete one) and an ``expired`` row records it.

And one on request: ``discard_export`` deletes a finished export its caller will not use (a
tenant restore's undo export whose apply rolled back) and records it ``discarded``.

Only exports under the default layout (``exports/<export_id>/``) of the storage being swept
are touched; an export written elsewhere (``ExportOptions.prefix``: the analytics export)
has its own lifecycle. It runs at the start of every export and on its own
(``drp export-sweep``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from dr_pipelines.core.export import audit
from dr_pipelines.core.layout import EXPORTS, MANIFEST_NAME, export_prefix
from dr_pipelines.core.manifest import ManifestError, read_manifest
from dr_pipelines.core.pg.drp_schema import EXPORT_RUNNING_LOCK_CLASS
from dr_pipelines.core.storage import Storage

DEFAULT_STALE_AFTER = timedelta(minutes=15)  # the lock is the real guard; this leaves a just-started export be


@dataclass
class Swept:
    """What one housekeeping pass removed."""

    abandoned: list[str] = field(default_factory=list)  # export ids closed as abandoned
    expired: list[str] = field(default_factory=list)  # export ids deleted after their time-to-live
    objects_removed: int = 0
    skipped: list[str] = field(default_factory=list)  # problems that left an export in place (malformed manifest)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def hold_export_lock(conn: psycopg.Connection, export_id: str) -> None:
    """Mark ``export_id`` as running for as long as ``conn``'s session lives (taken before its started row)."""
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (EXPORT_RUNNING_LOCK_CLASS, export_id))


def sweep_exports(conn: psycopg.Connection, storage: Storage, *, ttl: timedelta | None,
                  stale_after: timedelta = DEFAULT_STALE_AFTER) -> Swept:
    """Close dead exports as abandoned and delete expired ones (``ttl`` None: keep finished exports)."""
    audit.ensure_audit_table(conn)
    swept = Swept()
    for row in _open_attempts(conn, storage.url, stale_after):
        export_id = row["export_id"]
        if not _lock_if_free(conn, export_id):
            continue  # still running
        try:
            if storage.exists(f"{export_prefix(export_id)}/{MANIFEST_NAME}"):
                continue  # committed, killed before its audit row: the time-to-live deletes it
            removed = _remove(storage, export_prefix(export_id))
            _close(conn, row, "abandoned",
                   f"the export process died before its manifest; housekeeping removed {removed} partial object(s)")
            swept.abandoned.append(export_id)
            swept.objects_removed += removed
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (EXPORT_RUNNING_LOCK_CLASS, export_id))
    if ttl is not None:
        _expire(conn, storage, ttl, swept)
    return swept


def _open_attempts(conn: psycopg.Connection, destination: str, stale_after: timedelta) -> list[dict[str, Any]]:
    """``started`` rows to ``destination`` with no later row of the same attempt, older than ``stale_after``."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT * FROM drp.export_audit s WHERE s.status = 'started' AND s.export_id IS NOT NULL"
            " AND s.destination = %s AND s.started_at < clock_timestamp() - %s"
            " AND NOT EXISTS (SELECT 1 FROM drp.export_audit t WHERE t.attempt_id = s.attempt_id"
            " AND t.status <> 'started') ORDER BY s.id", (destination, stale_after)).fetchall()


def _lock_if_free(conn: psycopg.Connection, export_id: str) -> bool:
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                             (EXPORT_RUNNING_LOCK_CLASS, export_id)).fetchone()[0])


def _remove(storage: Storage, prefix: str) -> int:
    """Delete an export's objects, its manifest first; returns how many there were."""
    keys = [info.key for info in storage.list(prefix + "/")]
    manifest = f"{prefix}/{MANIFEST_NAME}"
    for key in sorted(keys, key=lambda k: k != manifest):
        storage.delete(key)
    return len(keys)


def _close(conn: psycopg.Connection, row: dict[str, Any], status: str, why: str) -> None:
    """Append the closing row of an attempt, carrying its started row's facts."""
    fields = {k: row[k] for k in ("attempt_id", "export_id", "requester", "tenant_ids", "root_table", "tables",
                                  "formats", "rows", "bytes", "manifest_sha256", "destination", "started_at",
                                  "credential_id", "client_address", "request")
              if k in row}
    audit.append(conn, audit.AuditRecord(**fields, status=status, error=why, finished_at=datetime.now(UTC)))


def _expire(conn: psycopg.Connection, storage: Storage, ttl: timedelta, swept: Swept) -> None:
    cutoff = datetime.now(UTC) - ttl
    manifests = [i.key for i in storage.list(f"{EXPORTS}/")
                 if i.key.count("/") == 2 and i.key.endswith("/" + MANIFEST_NAME)]
    for key in manifests:
        prefix = key.rsplit("/", 1)[0]
        try:
            m = read_manifest(storage, prefix)
        except ManifestError as exc:
            swept.skipped.append(f"{prefix}: {exc.problem}")
            continue
        if m.kind != "export" or m.finished_at >= cutoff:
            continue
        removed = _remove(storage, prefix)
        _close(conn, _row_of(conn, storage, m), "expired", f"deleted by housekeeping: finished "
               f"{m.finished_at:%Y-%m-%d %H:%M} UTC, older than the time-to-live of {ttl.days} day(s); "
               f"{removed} object(s) removed")
        swept.expired.append(m.id)
        swept.objects_removed += removed


def discard_export(conn: psycopg.Connection, storage: Storage, prefix: str, why: str) -> int:
    """Delete a finished export nobody will use (manifest first) and record it ``discarded`` with ``why``: a
    tenant restore's undo export whose apply rolled back holds rows that are still live (core/tenant_restore/
    apply.py). Returns how many objects were removed."""
    audit.ensure_audit_table(conn)
    m = read_manifest(storage, prefix)
    removed = _remove(storage, prefix)
    _close(conn, _row_of(conn, storage, m), "discarded", f"{why}; {removed} object(s) removed")
    return removed


def _row_of(conn: psycopg.Connection, storage: Storage, m: Any) -> dict[str, Any]:
    """An export's audit facts from its manifest, under its first attempt's id when this database has it."""
    known = conn.execute("SELECT attempt_id FROM drp.export_audit WHERE export_id = %s ORDER BY id LIMIT 1",
                         (m.id,)).fetchone()
    x = m.extra
    row = {"export_id": m.id,
           "requester": str(x.get("requester", "unknown")), "tenant_ids": [str(t) for t in x.get("tenant_ids", [])],
           "root_table": str(x.get("tenant_root", {}).get("table", "unknown")),
           "tables": [t.name for t in m.tables], "formats": list(x.get("formats", [])), "rows": m.total_rows,
           "bytes": m.stored_bytes, "manifest_sha256": None, "destination": storage.url,
           "started_at": m.started_at}
    if known:  # else written through another database's drp: recorded under a new attempt id
        row["attempt_id"] = known[0]
    return row
