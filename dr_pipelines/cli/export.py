"""`drp export`: one or more clinics' data as Parquet, CSV and JSON Lines, audited, to storage."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, human_bytes, out, progress_bar, settings
from dr_pipelines.core import context


def export(
    clinic: list[str] = typer.Option(..., "--clinic", help="Clinic (tenant) id to export; repeat for several."),
    formats: str = typer.Option("parquet,csv,jsonl", "--format", help="Comma-separated: parquet, csv, jsonl."),
    to: Optional[str] = typer.Option(None, "--to", help="Storage URL (default: the configured storage_url)."),
    requester: Optional[str] = typer.Option(None, "--requester", help="Who asked (default: the OS user); audited."),
    tables: list[str] = typer.Option([], "--table", help="Only this table (schema.table; repeatable). Default: all."),
    zip_bundle: bool = typer.Option(False, "--zip", help="Also write one zip holding every file and the manifest."),
    checksums: bool = typer.Option(False, "--checksums",
                                   help="Also checksum each table's rows in the database (as restores are checked)."),
    root: Optional[str] = typer.Option(None, "--root", help="Tenant root table (default: export_tenant_root)."),
    key: Optional[str] = typer.Option(None, "--key", help="Tenant key column (default: export_tenant_key)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Also leave out this table (schema.table; repeatable)."),
    presign: Optional[int] = typer.Option(None, "--presign-expiry", min=1, max=604800,
                                          help="S3: presigned URL lifetime (default: export_presign_expiry_seconds)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Export clinics' rows (and no other clinic's) from one snapshot; manifest last; every attempt audited."""
    from dr_pipelines.core.export.run import ExportOptions, export_tenants

    s = settings()
    storage = context.storage(s, to)
    on_s3 = storage.properties.presign
    options = ExportOptions(
        formats=tuple(f for f in formats.split(",") if f.strip()), root=root or s.export_tenant_root,
        key_column=key or s.export_tenant_key, exclude=tuple(s.export_exclude_tables) + tuple(exclude),
        tables=tuple(tables), requester=requester, max_per_hour=s.export_max_per_hour or None,
        presign_expiry_s=(presign or s.export_presign_expiry_seconds) if on_s3 else presign, zip_bundle=zip_bundle,
        content_checksums=checksums, ttl_days=s.export_ttl_days or None,
        sweep_after=timedelta(minutes=s.export_sweep_after_minutes),
    )
    with progress_bar(not as_json, unit="files", one_bar="export") as progress:
        result = export_tenants(s.dsn, storage, clinic, options, progress=progress)
    m = result.manifest
    summary = {
        "export_id": result.export_id,
        "uri": f"{result.storage_url.rstrip('/')}/{result.prefix}",
        "manifest": result.manifest_key,
        "manifest_sha256": result.manifest_sha256,
        "tenant_ids": m.extra["tenant_ids"],
        "formats": m.extra["formats"],
        "snapshot_at": m.extra["snapshot_at"],
        "tables": [{"table": t.name, "rows": t.rows} for t in m.tables],
        "excluded_tables": m.extra["excluded_tables"],
        "objects": len(m.objects),
        "rows": m.total_rows,
        "bytes": m.stored_bytes,
        "urls": result.urls,
        "housekeeping": result.swept.as_dict(),
    }
    if as_json:
        emit_json(summary)
        return
    out.print(f"export {result.export_id}: {len(m.tables)} tables, {m.total_rows:,} rows, "
              f"{human_bytes(m.stored_bytes)} in {m.duration_s:.1f}s -> {summary['uri']}", highlight=False)
    table = Table("table", "rows")
    for t in m.tables:
        table.add_row(t.name, f"{t.rows:,}")
    out.print(table)
    if m.extra["excluded_tables"]:
        out.print("not exported: " + ", ".join(f"{e['table']} ({e['reason']})" for e in m.extra["excluded_tables"]),
                  highlight=False)
    out.print(f"manifest sha256 {result.manifest_sha256}", highlight=False)
    _print_swept(result.swept)
    for k, url in result.urls.items():
        out.print(f"{k}: {url}", highlight=False, soft_wrap=True)


def _print_swept(swept: Any) -> None:
    if swept.abandoned or swept.expired:
        err.print(f"housekeeping: removed {swept.objects_removed} object(s): "
                  f"{len(swept.abandoned)} abandoned export(s) {', '.join(swept.abandoned)}; "
                  f"{len(swept.expired)} expired export(s) {', '.join(swept.expired)}", highlight=False)
    for problem in swept.skipped:
        err.print(f"housekeeping skipped {problem}", highlight=False)


def sweep(
    to: Optional[str] = typer.Option(None, "--to", help="Storage URL (default: the configured storage_url)."),
    older_than: Optional[float] = typer.Option(
        None, "--older-than", min=0, help="Minutes an unfinished export must be old (its process gone) to be swept "
        "(default: export_sweep_after_minutes)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Exports' housekeeping on its own: remove dead exports' partial files (audited abandoned), and exports
    older than export_ttl_days (audited expired)."""
    from dr_pipelines.core.export.housekeeping import sweep_exports
    from dr_pipelines.core.pg.connect import connect

    s = settings()
    with connect(s.dsn, autocommit=True) as conn:
        after = s.export_sweep_after_minutes if older_than is None else older_than
        swept = sweep_exports(conn, context.storage(s, to), stale_after=timedelta(minutes=after),
                              ttl=timedelta(days=s.export_ttl_days) if s.export_ttl_days else None)
    if as_json:
        emit_json(swept.as_dict())
        return
    _print_swept(swept)
    if not (swept.abandoned or swept.expired):
        out.print("housekeeping: nothing to remove", highlight=False)
