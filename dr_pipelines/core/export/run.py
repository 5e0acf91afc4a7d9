"""Export one or more tenants (clinics) as CSV, JSON Lines and Parquet, from one consistent snapshot.

The flow of ``export_tenants``:

1. ``drp.export_audit`` is ensured; from here on every outcome leaves an audit row. The
   exports' housekeeping runs first (core/export/housekeeping.py): dead exports' partial
   files are removed and closed as ``abandoned``, exports past their time-to-live deleted.
2. One ``REPEATABLE READ, READ ONLY`` transaction is opened: every table (and the scope,
   the tenant check and the row counts) is read from its single snapshot. Text output
   settings are pinned in it and the tenant ids are bound once, as a parameter, with
   ``set_config('drp.export_tenants', %s, true)``; every query reads them back with
   ``current_setting`` (COPY cannot take parameters). No tenant id is ever formatted
   into SQL.
3. Tenant ids that do not round-trip exactly through the key's type (``FRANCE`` into a
   ``char(3)`` key reads back ``FRA``; ``99999999999999999999`` is no bigint), as PostgreSQL
   itself casts them, are refused, as are unknown ones (``UnknownTenantError``;
   core/export/tenants.py). Then the
   export's lock is taken (it marks it running for housekeeping), the per-tenant rate limit
   is checked and the ``started`` audit row appended (``RateLimitedError`` if over).
4. Each tenant-owned table is streamed once per format (core/export/tables.py) to
   ``exports/<export_id>/<schema.table>.<ext>`` (``Storage.put_stream``; Parquet through
   a temporary file). Row counts per table and an order-independent content checksum
   (as in core/pg/checksums.py, over the tenant's rows only) are computed in the same
   snapshot, by a second session that adopted it (``pg_export_snapshot``) and works while
   the table streams (core/export/sessions.py); every format's own row count must equal it.
   Parquet is read through a third session on the snapshot, an ADBC one (Arrow batches).
5. With ``zip_bundle``, every file is read back, checked against its sha256 and zipped
   with a copy of the manifest (core/export/bundle.py).
6. ``manifest.json`` (kind "export") is written last: it is the commit. On failure the
   objects already written are removed (best effort) and no manifest exists.
"""

from __future__ import annotations

import getpass
import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.core.checkpoints import reached
from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.export import audit
from dr_pipelines.core.export.bundle import zip_bundle
from dr_pipelines.core.export.errors import (  # noqa: F401 - re-exported: callers catch them from here
    ExportError,
    ExportRefusedError,
    RateLimitedError,
    UnknownTenantError,
)
from dr_pipelines.core.export.formats import EXTENSIONS, FORMATS, MEDIA_TYPES
from dr_pipelines.core.export.housekeeping import (
    DEFAULT_STALE_AFTER,
    Swept,
    hold_export_lock,
    sweep_exports,
)
from dr_pipelines.core.export.sessions import arrow_session, session_settings
from dr_pipelines.core.export.tables import object_name, tenant_checksum, tenant_count, write_one
from dr_pipelines.core.export.tenants import TenantSnapshot, tenant_snapshot
from dr_pipelines.core.layout import export_prefix, new_export_id
from dr_pipelines.core.manifest import Manifest, ObjectEntry, TableEntry, write_manifest
from dr_pipelines.core.parquet import pyarrow_version, table_columns
from dr_pipelines.core.pg.connect import connect, describe
from dr_pipelines.core.pg.snapshots import adopted_session, export_snapshot
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.tenancy import (
    TENANTS_SETTING,
    Scope,
)

DEFAULT_MAX_PER_HOUR = 10
DEFAULT_TTL_DAYS = 7


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    root: str = "public.clinics"
    key_column: str = "id"
    exclude: tuple[str, ...] = ()
    requester: str | None = None  # default: the OS user
    max_per_hour: int | None = DEFAULT_MAX_PER_HOUR  # per tenant; None disables the limit
    batch_rows: int = 65_536  # Parquet row group size (and rows held in memory at once)
    presign_expiry_s: int | None = None  # S3 only: also return presigned GET URLs valid this long
    work_dir: Path | None = None  # for Parquet and zip temporary files (default: the system temp dir)
    tables: tuple[str, ...] = ()  # only these tenant-owned tables (schema.table); empty = all
    zip_bundle: bool = False  # also write <export_id>.zip: every file plus the manifest, read back and verified
    prefix: str | None = None  # where the bundle goes (default exports/<export_id>)
    # Also checksum each table's tenant rows in the database (what a restored copy is checked with).
    # Off by default: on two cores the extra scan costs ~30% of CSV throughput; row counts are always checked.
    content_checksums: bool = False
    # Housekeeping before the export: finished exports older than this are deleted (None: kept).
    ttl_days: int | None = DEFAULT_TTL_DAYS
    sweep_after: timedelta = DEFAULT_STALE_AFTER  # ... and unfinished exports this old, their process gone, swept
    # Read this exported snapshot (pg_export_snapshot of a transaction kept open meanwhile) instead of a new one.
    snapshot_id: str | None = None
    credential_id: str | None = None  # audited: the portal credential that asked (dr_pipelines/portal/)
    client_address: str | None = None  # audited: the portal client's address


@dataclass
class ExportResult:
    export_id: str
    prefix: str  # exports/<export_id>
    storage_url: str
    manifest: Manifest
    manifest_key: str
    manifest_sha256: str
    scope: Scope
    urls: dict[str, str] = field(default_factory=dict)  # key -> presigned URL (S3, if asked)
    swept: Swept = field(default_factory=Swept)  # what the housekeeping before it removed


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, DrpError):
        return exc.problem[:2000]
    return f"{type(exc).__name__}: {str(exc).strip()}"[:2000]


def _parse_formats(formats: tuple[str, ...] | list[str]) -> list[str]:
    wanted = [f.strip().lower() for f in formats if f.strip()]
    unknown = sorted(set(wanted) - set(FORMATS))
    if not wanted or unknown:
        raise ConfigError(
            f"unknown export format(s): {', '.join(unknown) or '(none given)'}",
            fix=f"choose from {', '.join(FORMATS)}",
        )
    return list(dict.fromkeys(wanted))


def export_tenants(
    dsn: str,
    storage: Storage,
    tenant_ids: list[str] | list[int] | tuple[Any, ...],
    options: ExportOptions | None = None,
    *,
    progress: Progress | None = None,
) -> ExportResult:
    """Export the rows of ``tenant_ids`` (and nothing else) from every tenant-owned table."""
    options = options or ExportOptions()
    started = datetime.now(UTC)
    requested = [str(t).strip() for t in tenant_ids]
    record = audit.AuditRecord(
        requester=options.requester or getpass.getuser(), tenant_ids=requested, root_table=options.root,
        started_at=started, formats=[f.strip().lower() for f in options.formats], destination=storage.url,
        credential_id=options.credential_id, client_address=options.client_address,
    )
    with connect(dsn, autocommit=True) as audit_conn:
        audit.ensure_audit_table(audit_conn)
        written: list[str] = []
        try:
            result = _run(dsn, storage, requested, options, record, audit_conn, written, progress)
        except BaseException as exc:
            for key in written:  # best effort: no half bundle of health data lingers
                try:
                    storage.delete(key)
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
            # Refused: turned away before any tenant data was read (unknown tenant, rate limit,
            # a bad request). Anything else, before or after the start, is a failure.
            refused = isinstance(exc, ExportRefusedError) or (
                isinstance(exc, ConfigError) and record.status != "started")
            _finish(audit_conn, record, "refused" if refused else "failed", exc)
            raise
        record.status = "succeeded"
        record.finished_at = datetime.now(UTC)
        audit.append(audit_conn, record)
        return result


def _finish(conn: psycopg.Connection, record: audit.AuditRecord, status: str, exc: BaseException) -> None:
    record.status = status
    record.error = _error_text(exc)
    record.finished_at = datetime.now(UTC)
    audit.append(conn, record)


def _run(
    dsn: str,
    storage: Storage,
    requested: list[str],
    options: ExportOptions,
    record: audit.AuditRecord,
    audit_conn: psycopg.Connection,
    written: list[str],
    progress: Progress | None,
) -> ExportResult:
    formats = _parse_formats(options.formats)
    record.formats = formats
    _check_request(storage, requested, options)
    swept = sweep_exports(audit_conn, storage, stale_after=options.sweep_after,
                          ttl=timedelta(days=options.ttl_days) if options.ttl_days is not None else None)
    export_id = new_export_id(record.started_at)
    prefix = options.prefix.strip("/") + f"/{export_id}" if options.prefix else export_prefix(export_id)
    record.export_id = export_id
    snap = _read_snapshot(dsn, storage, requested, options, formats, prefix, record, audit_conn, written, progress)
    manifest = _manifest(dsn, export_id, record, formats, options, snap)
    return _commit(storage, prefix, manifest, snap, options, record, written, swept)


def _check_request(storage: Storage, requested: list[str], options: ExportOptions) -> None:
    """Refuse a request that cannot succeed before anything is read or swept."""
    if not requested or any(not t for t in requested):
        raise ConfigError("no tenant id given (or an empty one)", fix="pass at least one tenant id, e.g. --clinic 1")
    if options.batch_rows < 1:
        raise ConfigError(f"batch_rows must be positive, not {options.batch_rows}", fix="use e.g. 65536")
    if options.presign_expiry_s is not None and not storage.properties.presign:
        raise storage.presign_unsupported()
    if options.work_dir is not None:
        Path(options.work_dir).mkdir(parents=True, exist_ok=True)


@dataclass
class _Snapshot(TenantSnapshot):
    """What the export read in its one snapshot (where from, what), and what it wrote."""

    objects: list[ObjectEntry] = field(default_factory=list)
    tables: list[TableEntry] = field(default_factory=list)


def _read_snapshot(dsn: str, storage: Storage, requested: list[str], options: ExportOptions, formats: list[str],
                   prefix: str, record: audit.AuditRecord, audit_conn: psycopg.Connection, written: list[str],
                   progress: Progress | None) -> _Snapshot:
    """Open the one REPEATABLE READ snapshot, check the request in it, start the attempt, write every table."""
    with tenant_snapshot(dsn, requested, root=options.root, key_column=options.key_column, exclude=options.exclude,
                         tables=options.tables, noted=lambda name, value: setattr(record, name, value),
                         snapshot_id=options.snapshot_id) as ts:
        conn = ts.conn
        snap = _Snapshot(**vars(ts))
        hold_export_lock(audit_conn, record.export_id)  # released by the server if this process dies
        try:
            audit.start_attempt(audit_conn, record, max_per_hour=options.max_per_hour)
        except audit.RateLimitedError as exc:
            raise RateLimitedError(exc.problem, exc.fix) from None
        _write_tables(conn, dsn, storage, snap, options, formats, prefix, written, progress)
    return snap


def _write_tables(conn: psycopg.Connection, dsn: str, storage: Storage, snap: _Snapshot, options: ExportOptions,
                  formats: list[str], prefix: str, written: list[str], progress: Progress | None) -> None:
    """Stream each selected table in each format; its count (or checksum) beside it, on the same snapshot."""
    snapshot_id = export_snapshot(conn).id
    settings = session_settings(TENANTS_SETTING, conn.execute(
        "SELECT current_setting(%s)", (TENANTS_SETTING,)).fetchone()[0])
    scope = snap.scope
    total_files = len(snap.selected) * len(formats)
    done = 0
    with ExitStack() as stack:
        twin = stack.enter_context(adopted_session(dsn, snapshot_id, settings))
        arrow = stack.enter_context(arrow_session(dsn, snapshot_id, settings)) if "parquet" in formats else None
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="drp-export-checksum"))
        for t in snap.selected:
            measure = tenant_checksum if options.content_checksums else tenant_count
            checksum = pool.submit(measure, twin, scope, t)  # beside the stream, same snapshot
            columns = table_columns(conn, t.schema, t.table)
            counts = {}
            for fmt in formats:
                key = f"{prefix}/{object_name(t.name, fmt)}"
                counts[fmt], put = write_one(conn, arrow, storage, scope, t, columns, fmt, key, options.work_dir,
                                             options.batch_rows, written)
                snap.objects.append(ObjectEntry(object_name(t.name, fmt), "table", put.size, put.sha256, format=fmt))
                done += 1
                if done == 1:
                    reached("export-after-first-file")
                if progress:
                    progress(f"{t.name}.{EXTENSIONS[fmt]}", done, total_files)
            rows, digest, method = checksum.result()
            snap.tables.append(TableEntry(t.name, rows, digest, method))
            for fmt, got in counts.items():
                if got != rows:
                    raise ExportError(
                        f"{fmt} export of {t.name} has {got} rows, the snapshot count is {rows}",
                        fix="this is a bug in drp's export: report it with the table's definition",
                    )


def _manifest(dsn: str, export_id: str, record: audit.AuditRecord, formats: list[str], options: ExportOptions,
              snap: _Snapshot) -> Manifest:
    """The export's manifest: what was read, from where, and the conventions of each format."""
    scope = snap.scope
    return Manifest(
        kind="export", id=export_id, started_at=record.started_at, finished_at=datetime.now(UTC),
        objects=snap.objects, tables=snap.tables,
        source={"database": snap.database, "server": describe(dsn), "server_version": snap.server_version},
        tools={"pyarrow": pyarrow_version()} if "parquet" in formats else {},
        extra={
            "tenant_root": {"table": scope.root, "key_column": scope.key_column, "key_type": scope.key_type},
            "tenant_ids": snap.tenants,
            "formats": formats,
            "media_types": {f: MEDIA_TYPES[f] for f in formats},
            "requester": record.requester,
            "snapshot_at": snap.snapshot_at.isoformat(),
            "schema_version": snap.schema_version,
            "scope": [ts.as_dict() for ts in snap.selected],
            "tables_requested": list(options.tables) or "all",
            "excluded_tables": [e.as_dict() for e in scope.excluded],
            "conventions": CONVENTIONS,
        },
    )


CONVENTIONS = {
    "csv": "COPY CSV with header, UTF-8; NULL is an unquoted empty field, the empty string is \"\"; "
           "timestamps in DateStyle ISO, UTC (2024-03-05 04:07:08.123456+00); bytea base64; arrays as PostgreSQL "
           "literals; jsonb as JSON text",
    "jsonl": "one JSON object per row; numeric as exact strings; bytea base64; jsonb nested; "
             "arrays as JSON arrays; timestamps ISO 8601",
    "parquet": "numeric(p,s) as decimal128(p,s) (string if unconstrained or p > 38); timestamptz as "
               "timestamp[us, UTC]; jsonb as string; arrays as lists; bytea as binary",
    "checksum": "per table, over the tenant's rows only, as in core/pg/checksums.py (method 'none': "
                "not computed, ask with --checksums)",
}


def _commit(storage: Storage, prefix: str, manifest: Manifest, snap: _Snapshot, options: ExportOptions,
            record: audit.AuditRecord, written: list[str], swept: Swept) -> ExportResult:
    """Bundle (if asked), then write the manifest: the commit. Presign the objects if asked."""
    if options.zip_bundle:
        bundle = zip_bundle(storage, prefix, manifest, work_dir=options.work_dir)
        written.append(f"{prefix}/{bundle.key}")
        manifest.objects.append(bundle)
    manifest_key = write_manifest(storage, prefix, manifest)
    written.append(manifest_key)
    manifest_sha = hashlib.sha256(manifest.to_json().encode()).hexdigest()
    record.rows = manifest.total_rows
    record.bytes = manifest.stored_bytes
    record.manifest_sha256 = manifest_sha
    urls: dict[str, str] = {}
    presign = options.presign_expiry_s
    if presign is not None:
        for key in [f"{prefix}/{o.key}" for o in snap.objects] + [manifest_key]:
            urls[key] = storage.presign_get(key, presign)
    return ExportResult(manifest.id, prefix, storage.url, manifest, manifest_key, manifest_sha, snap.scope, urls,
                        swept)
