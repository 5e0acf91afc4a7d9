"""`drp backup run|list|show|prune|pin|unpin`: the backup path for a person."""

from __future__ import annotations

import getpass
from typing import Any, Optional

import typer
from rich.table import Column, Table

from dr_pipelines.cli.common import emit_json, err, human_bytes, out, progress_bar, settings
from dr_pipelines.core import context

backup_app = typer.Typer(help="Logical and base backups: take, list, inspect, prune, pin.", no_args_is_help=True)


def _entry_row(e: Any, newest_id: str | None) -> dict[str, Any]:
    m = e.manifest
    return {
        "id": e.id,
        "kind": e.kind,
        "status": e.status,
        "restore_point": e.restore_point.isoformat() if e.restore_point else None,
        "bytes": e.stored_bytes,
        "duration_s": round(m.duration_s, 1) if m else None,
        "tables": len(m.tables) if m else None,
        "rows": m.total_rows if m else None,
        "pinned": e.pin is not None,
        "verified": (e.verification or {}).get("passed"),
        "verification": e.verification_state,
        "verified_at": e.verified_at,
        "error": e.error,
        "newest_restorable": e.id == newest_id,
    }


def _verification_cell(r: dict[str, Any]) -> str:
    """unverified / verified <time> / FAILED <time>: restorable in principle is not proven restorable."""
    when = (r["verified_at"] or "")[:16].replace("T", " ")
    return {"verified": f"verified {when}", "failed": f"FAILED {when}"}.get(r["verification"], "unverified")


@backup_app.command("run")
def backup_run(
    no_prune: bool = typer.Option(False, "--no-prune", help="Do not apply the retention policy afterwards."),
    no_globals: bool = typer.Option(False, "--no-globals", help="Skip pg_dumpall --globals-only (roles)."),
    role_passwords: bool = typer.Option(False, "--role-passwords", help="Include role password hashes."),
    level: int = typer.Option(3, min=1, max=19, help="zstd compression level."),
    source_replaced: bool = typer.Option(
        False, "--source-replaced",
        help="This cluster replaced the one the storage prefix records (e.g. restored after a loss): rebind the prefix."),
    physical: bool = typer.Option(
        False, "--physical", help="A base backup of the whole cluster (pg_basebackup; needs WAL archiving) instead of pg_dump."),
    slot: Optional[str] = typer.Option(None, "--slot", help="With --physical: an existing physical replication slot."),
    method: Optional[str] = typer.Option(
        None, "--method", help="With --physical: auto, lowlevel or pg_basebackup (default: the base_backup_method setting)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Take a backup now (pg_dump, or pg_basebackup with --physical -> zstd -> age -> storage, manifest last), then apply retention."""
    from dr_pipelines.core.backup.service import backup_now
    from dr_pipelines.core.errors import ConfigError

    options: BackupOptions | BaseBackupOptions
    if physical:
        from dr_pipelines.core.backup.physical import BaseBackupOptions

        if no_globals or role_passwords:
            raise ConfigError("--no-globals and --role-passwords are for logical backups",
                              fix="leave them out with --physical (a base backup holds the whole cluster, roles included)")
        options = BaseBackupOptions(compression_level=level, source_replaced=source_replaced, slot=slot,
                                    method=method or settings().base_backup_method)
    elif slot is not None or method is not None:
        raise ConfigError("--slot and --method are for base backups", fix="add --physical, or leave them out")
    else:
        from dr_pipelines.core.backup.logical import BackupOptions

        options = BackupOptions(compression_level=level, include_globals=not no_globals, role_passwords=role_passwords,
                                source_replaced=source_replaced)
    with progress_bar(not as_json) as progress:
        outcome = backup_now(settings(), kind="base" if physical else "logical", options=options, progress=progress,
                             prune=not no_prune)
    m = outcome.manifest
    summary = {
        "id": m.id, "kind": "base" if physical else "logical", "uri": outcome.storage_url, "stored_bytes": m.stored_bytes,
        "plain_bytes": sum(o.plain_bytes or 0 for o in m.objects), "duration_s": round(m.duration_s, 2),
        "tables": len(m.tables), "rows": m.total_rows,
        "pruned": outcome.prune.deleted if outcome.prune else None,
        **({"method": m.extra.get("method")} if physical else {}),
    }
    if physical and m.extra.get("method_note"):
        err.print(m.extra["method_note"], highlight=False, soft_wrap=True)
    if as_json:
        emit_json(summary)
        return
    if physical:
        out.print(f"base backup {m.id} ({m.extra.get('method')}): {human_bytes(m.stored_bytes)} stored in {m.duration_s:.1f}s, WAL "
                  f"{m.extra['wal_start']}..{m.extra['wal_stop']} (LSN {m.extra['start_lsn']}..{m.extra['stop_lsn']}) "
                  f"-> {outcome.storage_url}", highlight=False)
    else:
        out.print(f"backup {m.id}: {human_bytes(m.stored_bytes)} stored in {m.duration_s:.1f}s, "
                  f"{len(m.tables)} tables, {m.total_rows:,} rows -> {outcome.storage_url}")
    if outcome.prune and outcome.prune.deleted:
        out.print(f"retention removed: {', '.join(outcome.prune.deleted)}")


@backup_app.command("list")
def backup_list(
    all_: bool = typer.Option(False, "--all", help="Also show incomplete (interrupted) sets."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The backups in storage, oldest first, with each one's verification state; damaged ones are listed and warned about."""
    from dr_pipelines.core.backup.catalog import damaged, list_backups, newest_restorable

    entries = list_backups(context.storage(settings()))
    newest = newest_restorable(entries)
    rows = [_entry_row(e, newest.id if newest else None) for e in entries if all_ or e.complete or e.error]
    for e in damaged(entries):
        err.print(f"warning: backup {e.id} is damaged and not restorable: {e.error}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(rows)
        return
    table = Table(Column("id", no_wrap=True), "kind", "restore point (UTC)", "size", "duration", "tables", "rows",
                  "status", "pinned", Column("verification", no_wrap=True), Column("", no_wrap=True))
    for r in rows:
        table.add_row(
            r["id"], r["kind"], (r["restore_point"] or "")[:19].replace("T", " "), human_bytes(r["bytes"]),
            f"{r['duration_s']}s" if r["duration_s"] is not None else "", str(r["tables"] or ""),
            f"{r['rows']:,}" if r["rows"] is not None else "", r["status"], "yes" if r["pinned"] else "",
            "" if r["status"] == "damaged" else _verification_cell(r),
            "newest restorable" if r["newest_restorable"] else "",
        )
    out.print(table)


@backup_app.command("show")
def backup_show(
    backup_id: str = typer.Argument("latest", help="Backup id, or 'latest'."),
    as_json: bool = typer.Option(False, "--json", help="The whole manifest as JSON."),
) -> None:
    """One backup's manifest: objects with sizes and checksums, tables with row counts."""
    from dr_pipelines.core.backup.catalog import find_backup

    entry = find_backup(context.storage(settings()), backup_id)
    m = entry.manifest
    assert m is not None
    if as_json:
        out.print(m.to_json(), end="", highlight=False, soft_wrap=True)
        return
    out.print(f"backup {m.id} ({m.kind}) of {m.source.get('database')} on {m.source.get('server')} "
              f"(PostgreSQL {m.source.get('server_version')})")
    out.print(f"restore point {entry.restore_point}, took {m.duration_s:.1f}s, pinned: {entry.pin or 'no'}, "
              f"status: {entry.status}")
    if entry.kind == "base":
        x = m.extra
        out.print(f"timeline {x.get('timeline')}, LSN {x.get('start_lsn')} .. {x.get('stop_lsn')}, "
                  f"WAL {x.get('wal_start')} .. {x.get('wal_stop')} ({'archived' if entry.wal_archived else 'NOT archived yet'}), "
                  f"system identifier {x.get('system_identifier')}, next xid {x.get('next_xid')}, "
                  f"method {x.get('method') or 'pg_basebackup'}", highlight=False)
    objects = Table("object", "role", "stored", "plain", "sha256")
    for o in m.objects:
        objects.add_row(o.key, o.role, human_bytes(o.bytes), human_bytes(o.plain_bytes or 0), o.sha256)
    out.print(objects)
    if entry.kind == "logical":
        tables = Table("table", "rows", "checksum")
        for t in m.tables:
            tables.add_row(t.name, f"{t.rows:,}", t.checksum)
        out.print(tables)


@backup_app.command("prune")
def backup_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would go and why the rest stays."),
    policy: Optional[str] = typer.Option(None, help="Override the policy, e.g. 'last=3,daily=7,weekly=4'."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Apply the GFS retention policy (restic semantics; pins and the newest restorable backup always stay)."""
    from dr_pipelines.core.backup.gfs import RetentionPolicy
    from dr_pipelines.core.backup.prune import prune_backups

    s = settings()
    result = prune_backups(context.storage(s), RetentionPolicy.parse(policy) if policy else context.retention_policy(s), dry_run=dry_run)
    rows = [{"id": d.candidate.id, "time": d.candidate.time.isoformat(), "keep": d.keep, "reasons": list(d.reasons)}
            for d in result.decisions]
    wal = result.wal.plan.as_dict() | {"deleted": result.wal.deleted} if result.wal else None
    if as_json:
        emit_json({"dry_run": dry_run, "decisions": rows, "deleted": result.deleted, "wal": wal,
                   "wal_refused": result.wal_refused})
    else:
        for r in rows:
            verdict = "keep  " if r["keep"] else ("forget" if dry_run else "DELETED")
            out.print(f"{verdict}  {r['id']}  {r['time'][:19]}  {', '.join(r['reasons'])}", highlight=False)
        out.print(f"{'would delete' if dry_run else 'deleted'} {sum(not r['keep'] for r in rows)}, "
                  f"kept {sum(r['keep'] for r in rows)}")
        if result.wal and not result.wal.plan.reason:
            out.print(f"WAL: {'would delete' if dry_run else 'deleted'} {len(result.wal.plan.delete)} file(s) no "
                      f"kept base backup needs, kept {result.wal.plan.kept}", highlight=False)
    if result.wal_refused:
        err.print(f"WAL not pruned: {result.wal_refused}", highlight=False)
        raise typer.Exit(1)


@backup_app.command("pin")
def backup_pin(
    backup_id: str = typer.Argument(..., help="Backup id."),
    reason: str = typer.Option(..., help="Why (e.g. 'legal hold, case 1234')."),
) -> None:
    """Pin a backup (legal hold): retention never deletes it."""
    from dr_pipelines.core.backup.catalog import pin_backup

    pin_backup(context.storage(settings()), backup_id, reason=reason, by=getpass.getuser())
    out.print(f"pinned {backup_id}")


@backup_app.command("unpin")
def backup_unpin(backup_id: str = typer.Argument(..., help="Backup id.")) -> None:
    """Release a pin; retention may delete the backup afterwards."""
    from dr_pipelines.core.backup.catalog import unpin_backup

    unpin_backup(context.storage(settings()), backup_id)
    out.print(f"unpinned {backup_id}")
