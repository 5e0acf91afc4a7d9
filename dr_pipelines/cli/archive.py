"""`drp archive list|restore`: rows that data retention archived to storage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, human_bytes, out, progress_bar, settings
from dr_pipelines.core import context

archive_app = typer.Typer(help="Archived rows in storage: list them, bring them back.", no_args_is_help=True)
_JSON = typer.Option(False, "--json", help="Machine-readable output.")


@archive_app.command("list")
def archive_list(table: Optional[str] = typer.Option(None, "--table", help="Only this table."),
                 tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant."),
                 period: Optional[str] = typer.Option(None, "--period", help="YYYY-MM or YYYY-MM..YYYY-MM."),
                 as_json: bool = _JSON) -> None:
    """List archives in storage (read from their manifests; the database is not needed)."""
    from dr_pipelines.core.retention.rehydrate import list_archives, parse_period
    from dr_pipelines.core.retention.segment import ArchiveKeys

    s = settings()
    found = list_archives(context.storage(s), table=table, tenant_id=tenant, period=parse_period(period) if period else None,
                          identities=ArchiveKeys.from_settings(s).identities)
    if as_json:
        emit_json([a.as_dict() for a in found])
        return
    t = Table("table", "tenant", "month", "rows", "kept", "bytes", "archive")
    for a in found:
        t.add_row(a.table, a.tenant_id, a.month, f"{a.rows:,}", f"{a.kept:,}", human_bytes(a.bytes), a.prefix)
    out.print(t)
    if any(a.kept for a in found):
        err.print("kept: archived rows that were not deleted (changed after the archive, or held); the database or "
                  "a later archive holds them, and restore skips them", highlight=False)


@archive_app.command("restore")
def archive_restore(table: str = typer.Option(..., "--table", help="The archived table (schema.table)."),
                    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
                    period: str = typer.Option(..., "--period", help="YYYY-MM or YYYY-MM..YYYY-MM."),
                    into: Optional[str] = typer.Option(None, "--into", help="A side table to restore into instead "
                                                       "(created like the table if missing)."),
                    identity: Optional[Path] = typer.Option(None, "--identity", help="age identity file to decrypt "
                                                            "archives (default: age_identity_file)."),
                    as_json: bool = _JSON) -> None:
    """Bring archived rows back into their table (or a side table), checked against each manifest."""
    from dr_pipelines.core.retention.rehydrate import parse_period, restore_archives
    from dr_pipelines.core.retention.segment import ArchiveKeys

    s = settings()
    with progress_bar(not as_json, unit="archives") as progress:
        done = restore_archives(s.dsn, context.storage(s), table, tenant, parse_period(period), into=into, progress=progress,
                                identities=ArchiveKeys.from_settings(s, identity).identities)
    summary = {"table": table, "into": into or table, "tenant": tenant, "archives": len(done),
               "rows": sum(a.rows - a.kept for a in done), "skipped_kept": sum(a.kept for a in done),
               "prefixes": [a.prefix for a in done]}
    if as_json:
        emit_json(summary)
        return
    skipped = summary["skipped_kept"]
    out.print(f"restored {summary['rows']:,} rows from {len(done)} archive(s) into {summary['into']}; "
              + (f"skipped {skipped:,} row(s) never deleted (listed in kept.json: the database or a later archive "
                 "holds them); each matched its manifest minus those" if skipped else "each matched its manifest"),
              highlight=False)
    if not into:
        err.print("note: these rows are past retention again; place a legal hold if they must stay", highlight=False)
