"""`drp restore`: a backup into an existing database or a new local cluster, checked against its manifest."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

import typer

from dr_pipelines.cli.common import emit_json, err, out, progress_bar, report_swept, settings
from dr_pipelines.core import context

TARGET_ENV = "DRP_RESTORE_TARGET"  # the restore target's DSN, kept out of argv (visible in `ps`)


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
    pitr: bool = typer.Option(False, "--pitr", help="Point-in-time restore: a base backup plus archived WAL (docs/pitr.md)."),
    to_time: Optional[str] = typer.Option(None, "--time", help="--pitr: recover to this time, e.g. '2026-12-01 02:10:00+00'."),
    to_lsn: Optional[str] = typer.Option(None, "--lsn", help="--pitr: recover to this LSN, e.g. 0/3000060."),
    to_xid: Optional[str] = typer.Option(None, "--xid", help="--pitr: recover to this transaction id."),
    to_name: Optional[str] = typer.Option(None, "--restore-point", help="--pitr: recover to a named restore point."),
    latest: bool = typer.Option(False, "--latest", help="--pitr: recover everything archived."),
    exclusive: bool = typer.Option(False, "--exclusive", help="--pitr: stop just before the target, not just after it."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="--pitr: recover into this empty directory and leave it stopped."),
    prefetch: int = typer.Option(8, "--prefetch", min=0, max=64, help="--pitr: WAL segments fetched ahead, in parallel."),
    timeline: Optional[int] = typer.Option(
        None, "--timeline", min=1, help="--pitr: recover along this timeline (one that went on after a promote); "
        "default the newest archived (docs/pitr.md, Timelines)."),
) -> None:
    """Restore a backup: every object's checksum is verified before anything is written to the target.

    Afterwards every restored table's row count and checksum is compared with the manifest (--no-check skips it).

    The target comes from --target or DRP_RESTORE_TARGET: keep passwords out of argv.
    """
    from dr_pipelines.core.backup.catalog import find_backup
    from dr_pipelines.core.restore.logical import RestoreOptions, list_contents, restore_backup
    from dr_pipelines.core.restore.throwaway import restore_to_new_cluster

    s = settings()
    identities = context.identities(s, identity)
    storage = context.storage(s)
    if not pitr and (to_time or to_lsn or to_xid or to_name or latest or exclusive or data_dir or timeline):
        from dr_pipelines.core.errors import ConfigError

        raise ConfigError("--time, --lsn, --xid, --restore-point, --latest, --exclusive, --data-dir and --timeline are for "
                          "point-in-time restores", fix="add --pitr (docs/pitr.md)")
    if pitr:
        from dr_pipelines.core.restore.targets import RecoveryTarget

        target_point = RecoveryTarget.parse(time=to_time, lsn=to_lsn, xid=to_xid, name=to_name, latest=latest,
                                            inclusive=not exclusive)
        _restore_pitr(s, storage, identities, backup_id, target_point, new_cluster=new_cluster, data_dir=data_dir,
                      port=port, prefetch=prefetch, as_json=as_json, timeline=timeline)
        return
    entry = find_backup(storage, backup_id, kind="logical")
    work_dir = Path(s.work_dir)
    if list_only:
        out.print(list_contents(storage, entry, identities, work_dir), highlight=False, end="")
        return
    target = _target(target, new_cluster)
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
    _print_result(result, target_dsn, new_cluster)


def _target(target: str | None, new_cluster: Path | None) -> str | None:
    """Exactly one of --target (else DRP_RESTORE_TARGET) and --new-cluster; the target DSN, if any."""
    from dr_pipelines.core.errors import ConfigError

    if target is not None and new_cluster is not None:
        raise ConfigError("say where to restore", fix="pass exactly one of --target DSN or --new-cluster DIR")
    if target is None and new_cluster is None:
        target = os.environ.get(TARGET_ENV) or None
        if target is None:
            raise ConfigError("say where to restore",
                              fix=f"pass exactly one of --target DSN (or set {TARGET_ENV}) or --new-cluster DIR")
    return target


def _print_result(result: Any, target_dsn: str | None, new_cluster: Path | None) -> None:
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


def _restore_pitr(s: Any, storage: Any, identities: Any, backup_id: str, target: Any, *, new_cluster: Path | None,
                  data_dir: Path | None, port: int | None, prefetch: int, as_json: bool,
                  timeline: int | None = None) -> None:
    """`drp restore --pitr`: into --new-cluster DIR (left running) or --data-dir DIR (left stopped)."""
    from dr_pipelines.core.backup.catalog import list_backups
    from dr_pipelines.core.errors import ConfigError
    from dr_pipelines.core.restore.pitr import extract_from_storage, restore_to_point

    if (new_cluster is None) == (data_dir is None):
        raise ConfigError("say where to restore to", fix="pass exactly one of --new-cluster DIR or --data-dir DIR with --pitr")
    entries = [e for e in list_backups(storage) if backup_id == "latest" or e.id == backup_id]
    with progress_bar(not as_json) as progress:
        result = restore_to_point(
            storage, target, (new_cluster or data_dir), entries=entries,  # type: ignore[arg-type]
            extract=extract_from_storage(storage, identities, progress), work_dir=Path(s.work_dir),
            identities=identities, prefetch=prefetch, keep_running=new_cluster is not None,
            port=port, progress=progress, timeline=timeline, log=lambda line: err.print(line, highlight=False))
    rec = result.recovery
    report = {"base_backup": result.base.id, "target": target.describe(), "followed_timeline": result.followed,
              "timeline": rec.timeline,
              "replayed_to": rec.replayed_to, "last_commit_time": rec.last_commit_time,
              "seconds": round(rec.seconds, 2), "data_dir": str(rec.data_dir), "running": rec.running, "dsn": rec.dsn}
    if as_json:
        emit_json(report)
        return
    out.print(f"restored {result.base.describe()} to {report['target']} in {report['seconds']}s: WAL replayed to "
              f"{rec.replayed_to}, last transaction {rec.last_commit_time or '-'}; promoted to timeline {rec.timeline} "
              "(archiving off)", highlight=False, soft_wrap=True)
    if rec.dsn:
        out.print(f"  connect: psql \"{rec.dsn}\"  (stop it with pg_ctl -D {rec.data_dir} stop)", highlight=False,
                  soft_wrap=True)
    else:
        out.print(f"  stopped in {rec.data_dir}; start it with pg_ctl -D {rec.data_dir} start", highlight=False)
