"""`drp backup ...`, `drp restore`, `drp key generate`: the backup path for a person."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, human_bytes, out, progress_bar, report_swept, settings

backup_app = typer.Typer(help="Logical backups: take, list, inspect, prune, pin.", no_args_is_help=True)
key_app = typer.Typer(help="age keys for backup encryption.", no_args_is_help=True)

TARGET_ENV = "DRP_RESTORE_TARGET"  # the restore target's DSN, kept out of argv (visible in `ps`)


def _entry_row(e: Any, newest_id: str | None) -> dict[str, Any]:
    m = e.manifest
    return {
        "id": e.id,
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
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Take a logical backup now (pg_dump -> zstd -> age -> storage, manifest last), then apply retention."""
    from dr_pipelines.core.backup.logical import BackupOptions
    from dr_pipelines.core.backup.service import backup_now

    options = BackupOptions(compression_level=level, include_globals=not no_globals, role_passwords=role_passwords,
                            source_replaced=source_replaced)
    with progress_bar(not as_json) as progress:
        outcome = backup_now(settings(), options=options, progress=progress, prune=not no_prune)
    m = outcome.manifest
    summary = {
        "id": m.id, "uri": outcome.storage_url, "stored_bytes": m.stored_bytes,
        "plain_bytes": sum(o.plain_bytes or 0 for o in m.objects), "duration_s": round(m.duration_s, 2),
        "tables": len(m.tables), "rows": m.total_rows,
        "pruned": outcome.prune.deleted if outcome.prune else None,
    }
    if as_json:
        emit_json(summary)
        return
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

    entries = list_backups(settings().storage())
    newest = newest_restorable(entries)
    rows = [_entry_row(e, newest.id if newest else None) for e in entries if all_ or e.complete or e.error]
    for e in damaged(entries):
        err.print(f"warning: backup {e.id} is damaged and not restorable: {e.error}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(rows)
        return
    table = Table("id", "restore point (UTC)", "size", "duration", "tables", "rows", "status", "pinned", "verification", "")
    for r in rows:
        table.add_row(
            r["id"], (r["restore_point"] or "")[:19].replace("T", " "), human_bytes(r["bytes"]),
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

    entry = find_backup(settings().storage(), backup_id)
    m = entry.manifest
    assert m is not None
    if as_json:
        out.print(m.to_json(), end="", highlight=False, soft_wrap=True)
        return
    out.print(f"backup {m.id} ({m.kind}) of {m.source.get('database')} on {m.source.get('server')} "
              f"(PostgreSQL {m.source.get('server_version')})")
    out.print(f"restore point {entry.restore_point}, took {m.duration_s:.1f}s, pinned: {entry.pin or 'no'}")
    objects = Table("object", "role", "stored", "plain", "sha256")
    for o in m.objects:
        objects.add_row(o.key, o.role, human_bytes(o.bytes), human_bytes(o.plain_bytes or 0), o.sha256)
    out.print(objects)
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
    result = prune_backups(s.storage(), RetentionPolicy.parse(policy) if policy else s.retention_policy, dry_run=dry_run)
    rows = [{"id": d.candidate.id, "time": d.candidate.time.isoformat(), "keep": d.keep, "reasons": list(d.reasons)}
            for d in result.decisions]
    if as_json:
        emit_json({"dry_run": dry_run, "decisions": rows, "deleted": result.deleted})
        return
    for r in rows:
        verdict = "keep  " if r["keep"] else ("forget" if dry_run else "DELETED")
        out.print(f"{verdict}  {r['id']}  {r['time'][:19]}  {', '.join(r['reasons'])}", highlight=False)
    out.print(f"{'would delete' if dry_run else 'deleted'} {sum(not r['keep'] for r in rows)}, kept {sum(r['keep'] for r in rows)}")


@backup_app.command("pin")
def backup_pin(
    backup_id: str = typer.Argument(..., help="Backup id."),
    reason: str = typer.Option(..., help="Why (e.g. 'legal hold, case 1234')."),
) -> None:
    """Pin a backup (legal hold): retention never deletes it."""
    from dr_pipelines.core.backup.catalog import pin_backup

    pin_backup(settings().storage(), backup_id, reason=reason, by=getpass.getuser())
    out.print(f"pinned {backup_id}")


@backup_app.command("unpin")
def backup_unpin(backup_id: str = typer.Argument(..., help="Backup id.")) -> None:
    """Release a pin; retention may delete the backup afterwards."""
    from dr_pipelines.core.backup.catalog import unpin_backup

    unpin_backup(settings().storage(), backup_id)
    out.print(f"unpinned {backup_id}")


def restore(
    backup_id: str = typer.Argument("latest", help="Backup id, or 'latest'."),
    target: Optional[str] = typer.Option(
        None, "--target", show_default=False,
        help=f"DSN of an existing (empty) database to restore into (else {TARGET_ENV}). A password here is "
             f"visible in `ps`: put the DSN in {TARGET_ENV}, or leave the password out and let libpq find it "
             "(~/.pgpass or PGPASSFILE, service=NAME from pg_service.conf). pg_restore and psql never get it in argv."),
    new_cluster: Optional[Path] = typer.Option(None, "--new-cluster", help="Create a fresh local cluster in this directory."),
    port: Optional[int] = typer.Option(None, help="Port for --new-cluster (default: a free one)."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    list_only: bool = typer.Option(False, "--list", help="Only print the backup's table of contents."),
    schema: list[str] = typer.Option([], "--schema", "-n", help="Restore only this schema (repeatable)."),
    table: list[str] = typer.Option([], "--table", "-t", help="Restore only this table (repeatable)."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Parallel pg_restore jobs."),
    force: bool = typer.Option(False, "--force", help="Restore into a non-empty database (drops what the backup holds)."),
    overwrite_source: bool = typer.Option(
        False, "--overwrite-source",
        help="With --force: allow restoring over the backup's own source database (loses every change since the backup)."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip comparing restored row counts and checksums with the manifest."),
    no_owner: bool = typer.Option(False, "--no-owner", help="Do not restore ownership and privileges."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result."),
) -> None:
    """Restore a backup: every object's checksum is verified before anything is written to the target.

    Afterwards every restored table's row count and checksum is compared with the manifest (--no-check skips it).

    The target comes from --target or DRP_RESTORE_TARGET: keep passwords out of argv.
    """
    from dr_pipelines.core.backup.catalog import find_backup
    from dr_pipelines.core.errors import ConfigError
    from dr_pipelines.core.restore.logical import RestoreOptions, list_contents, restore_backup
    from dr_pipelines.core.restore.throwaway import restore_to_new_cluster

    s = settings()
    identities = s.identities(identity)
    storage = s.storage()
    entry = find_backup(storage, backup_id)
    work_dir = Path(s.work_dir)
    if list_only:
        out.print(list_contents(storage, entry, identities, work_dir), highlight=False, end="")
        return
    if target is not None and new_cluster is not None:
        raise ConfigError("say where to restore", fix="pass exactly one of --target DSN or --new-cluster DIR")
    if target is None and new_cluster is None:
        target = os.environ.get(TARGET_ENV) or None
        if target is None:
            raise ConfigError("say where to restore",
                              fix=f"pass exactly one of --target DSN (or set {TARGET_ENV}) or --new-cluster DIR")
    options = RestoreOptions(jobs=jobs, schemas=tuple(schema), tables=tuple(table), force=force, no_owner=no_owner,
                             with_globals=new_cluster is not None, check=not no_check,
                             overwrite_source=overwrite_source)
    started = datetime.now(UTC)
    report_swept(work_dir)
    with progress_bar(not as_json) as progress:
        if new_cluster is not None:
            cluster, result = restore_to_new_cluster(storage, entry, identities, new_cluster, work_dir=work_dir,
                                                     port=port, options=options, progress=progress)
            target_dsn = cluster.dsn(entry.manifest.source.get("database", "restored"))  # type: ignore[union-attr]
        else:
            assert target is not None
            result = restore_backup(storage, entry, identities, target, work_dir=work_dir, options=options,
                                    progress=progress)
            target_dsn = None
    report = {
        "backup_id": result.backup_id, "target": result.target, "fetch_seconds": round(result.fetch_seconds, 2),
        "restore_seconds": round(result.restore_seconds, 2), "plain_bytes": result.plain_bytes,
        "started_at": started.isoformat(), "new_cluster_dsn": target_dsn,
        "checked_tables": result.checked_tables,
    }
    if as_json:
        emit_json(report)
        return
    out.print(f"restored {result.backup_id} into {result.target}: fetched and verified in {result.fetch_seconds:.1f}s, "
              f"pg_restore {result.restore_seconds:.1f}s")
    if result.checked_tables is None:
        out.print("not checked against the manifest (--no-check)")
    else:
        out.print(f"row counts and checksums of {result.checked_tables} tables equal the manifest")
    if target_dsn:
        out.print(f"new cluster: {target_dsn}", highlight=False, soft_wrap=True)
        out.print(f"  connect: psql \"{target_dsn}\"  (the password is in the passfile, mode 0600; "
                  f"stop the server with pg_ctl -D {new_cluster} stop)", highlight=False, soft_wrap=True)
    for w in result.warnings:
        err.print(f"note: {w}")


@key_app.command("generate")
def key_generate(out_file: Path = typer.Option(..., "--out", help="Where to write the identity (private key), mode 0600.")) -> None:
    """Create an age key pair; put the printed public key in DRP_ENCRYPTION_RECIPIENTS and keep the file offline."""
    from dr_pipelines.core.crypto import generate_identity_file

    public = generate_identity_file(out_file)
    err.print(f"identity written to {out_file} (keep it off the backup host; without it backups cannot be read)")
    out.print(public)
