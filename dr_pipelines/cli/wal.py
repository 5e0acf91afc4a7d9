"""`drp wal`: continuous WAL archiving (archive_command / restore_command sides) and its checks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, out, settings
from dr_pipelines.core import context

wal_app = typer.Typer(help="WAL archive: push (archive_command), fetch (restore_command), verify, archiver.",
                      no_args_is_help=True)

_SOCKET_HELP = "Unix socket of the archiver (its directory must be mode 0700)."


def _recipients():  # type: ignore[no-untyped-def]
    from dr_pipelines.core.crypto import parse_recipients

    return parse_recipients(settings().encryption_recipients)


@wal_app.command("push")
def wal_push(
    path: Path = typer.Argument(..., help="The WAL file to archive (%p in archive_command)."),
) -> None:
    """Archive one WAL file in this process (the fallback when no archiver runs); exit 0 only once stored."""
    from dr_pipelines.core.wal.archive import archive_storage, push_wal

    result = push_wal(archive_storage(settings()), _recipients(), path)
    err.print(f"{result.name}: {result.status}", highlight=False)


@wal_app.command("fetch")
def wal_fetch(
    name: str = typer.Argument(..., help="WAL file name (%f in restore_command)."),
    dest: Path = typer.Argument(..., help="Where to write it (%p in restore_command)."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    spool: Optional[Path] = typer.Option(None, help="Private (0700) directory for prefetched segments."),
    prefetch: int = typer.Option(0, min=0, max=64, help="Also fetch the next N segments into --spool, in parallel."),
) -> None:
    """Fetch one archived WAL file: checksums checked, decrypted, decompressed, written atomically.

    Exit 1 only when the file is not in the archive (PostgreSQL's normal end of recovery); any other
    failure (corrupt, undecryptable, storage down) exits 200, which makes PostgreSQL abort recovery.
    """
    from dr_pipelines.core.errors import DrpError
    from dr_pipelines.core.wal.archive import WalNotArchivedError
    from dr_pipelines.core.wal.restore import ABORT_RECOVERY_EXIT, restore_wal

    if prefetch and spool is None:
        raise typer.BadParameter("--prefetch needs --spool")
    try:
        s = settings()
        source = restore_wal(context.storage(s), context.identities(s, identity), name, dest, spool=spool,
                             prefetch=prefetch)
    except WalNotArchivedError:
        raise
    except DrpError as exc:
        err.print(f"error: {exc} (exit {ABORT_RECOVERY_EXIT}: recovery must stop here, not end quietly)",
                  highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(ABORT_RECOVERY_EXIT) from None
    err.print(f"{name}: restored from {source}", highlight=False)


@wal_app.command("restore-point")
def wal_restore_point(
    name: str = typer.Argument(..., help="Name for the restore point (letters, digits, . _ -)."),
) -> None:
    """pg_create_restore_point on the source (DRP_SOURCE_DSN), recorded in storage for `drp restore --pitr --restore-point`."""
    from dr_pipelines.core.wal.restore_points import create_restore_point

    s = settings()
    point = create_restore_point(s.dsn, context.storage(s), name)
    out.print(f"restore point {point.name}: LSN {point.lsn}, timeline {point.timeline}, {point.time}", highlight=False)


@wal_app.command("verify")
def wal_verify(
    start: Optional[str] = typer.Option(None, help="First segment (or LSN, e.g. a base backup's start) that must be present (default: oldest archived)."),
    no_server: bool = typer.Option(False, "--no-server", help="Do not ask the source server what it archived."),
    quick: bool = typer.Option(False, "--quick", help="Skip reading objects (continuity and sidecars only)."),
    grace: float = typer.Option(300, "--in-flight-grace", min=0,
                                help="With --no-server: an unfinished push younger than this many seconds is in flight."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every segment from START to now archived, committed and intact, per timeline; gaps named."""
    from dr_pipelines.core.wal.status import read_pg_wal_state, require_archiving
    from dr_pipelines.core.wal.verify import verify_archive

    s = settings()
    pg = None if no_server else read_pg_wal_state(s.dsn)
    if pg is not None:
        require_archiving(pg)  # else every absent segment would look "in flight" and the report OK
    report = verify_archive(context.storage(s), start=start, pg=pg, read=not quick, grace_s=grace)
    if as_json:
        emit_json(report.as_dict())
    else:
        out.print(f"WAL archive {'OK' if report.ok else 'NOT OK'}: {report.found} segment(s) from {report.start or '-'} "
                  f"to {report.end or '-'}", highlight=False)
        if report.gaps or report.problems:
            table = Table("status", "timeline", "first", "last", "count / detail")
            for g in report.gaps:
                table.add_row(g.status, f"{g.timeline}", g.first, g.last, str(g.count))
            for p in report.problems:
                table.add_row(p["status"], "", p["name"], "", p["detail"])
            out.print(table)
    if not report.ok:
        raise typer.Exit(1)


@wal_app.command("status")
def wal_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Archive lag and pg_wal size from the server; alerts (and exit 1) past the configured limits."""
    from dr_pipelines.core.notify import notify
    from dr_pipelines.core.wal.status import archiving_warnings, read_pg_wal_state, wal_alerts

    s = settings()
    state = read_pg_wal_state(s.dsn)
    alerts = wal_alerts(state, lag_limit_s=s.wal_lag_alert_seconds, pg_wal_limit_bytes=s.wal_pg_wal_alert_bytes)
    warnings = archiving_warnings(state)
    webhook = s.notify_webhook_url.get_secret_value() if s.notify_webhook_url else None
    for alert in alerts:
        notify("WAL archiving behind", {"alert": alert}, webhook_url=webhook)
    if as_json:
        emit_json({**state.as_dict(), "alerts": alerts, "warnings": warnings})
    else:
        lag = f"{state.oldest_ready_age_s:.0f} s" if state.oldest_ready_age_s is not None else "none"
        out.print(f"writing {state.current_wal}; last archived {state.last_archived_wal or '-'}; "
                  f"{state.ready_count} waiting (lag {lag}); {state.failed_count} failed; "
                  f"pg_wal {state.pg_wal_bytes:,} bytes", highlight=False)
        for alert in alerts:
            out.print(f"ALERT: {alert}", highlight=False)
        for warning in warnings:
            out.print(f"WARNING: {warning}", highlight=False)
    if alerts:
        raise typer.Exit(1)


@wal_app.command("prune")
def wal_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be deleted and why the rest stays."),
    accept_gaps: bool = typer.Option(False, "--accept-gaps",
                                     help="Prune although the archive has gaps or corrupt files (recorded as an event)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Delete archived WAL no retained base backup needs (timeline-aware; `drp backup prune` does this too)."""
    from dr_pipelines.core.backup.catalog import list_backups
    from dr_pipelines.core.wal.retention import WalRetentionRefused, prune_wal

    storage = context.storage(settings())
    try:
        result = prune_wal(storage, list_backups(storage), dry_run=dry_run, accept_problems=accept_gaps)
    except WalRetentionRefused as exc:
        if dry_run and exc.plan is not None and not as_json:  # what the refusal holds back; the error follows
            out.print(f"would delete {len(exc.plan.delete)} WAL file(s) ({exc.plan.delete_bytes:,} bytes stored), "
                      f"kept {exc.plan.kept}, but:", highlight=False)
        raise
    plan = result.plan
    if as_json:
        emit_json({"dry_run": dry_run, **plan.as_dict(), "deleted": result.deleted, "event": result.event,
                   "accepted_problems": result.accepted_problems})
        return
    for need in plan.needs:
        out.print(f"needed from {need.start.name} (timeline {need.timeline}) by base backup {need.backup_id}",
                  highlight=False)
    if plan.reason:
        out.print(f"nothing deleted: {plan.reason}", highlight=False)
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {len(plan.delete)} WAL file(s) ({plan.delete_bytes:,} bytes stored), kept {plan.kept}",
              highlight=False)
    if result.event:
        out.print(f"WARNING: pruned despite archive problems; decision recorded at {result.event}", highlight=False)
    elif dry_run and result.accepted_problems:
        out.print(f"WARNING: would prune despite archive problems ({result.accepted_problems}); the real run "
                  "records that decision as an event", highlight=False)


@wal_app.command("archiver")
def wal_archiver(
    socket_path: Path = typer.Option(..., "--socket", help=_SOCKET_HELP),
    workers: int = typer.Option(4, min=1, max=32, help="Parallel pushes (read-ahead of .ready segments)."),
    read_ahead: int = typer.Option(8, min=0, max=256, help="Ready segments to push ahead of PostgreSQL's request."),
    switch_after: float = typer.Option(
        0, min=0, help="Force a WAL switch (via DRP_SOURCE_DSN) when the open segment has held writes this many "
        "seconds: the RPO bound (0 = off; rely on archive_timeout)."),
) -> None:
    """Run the long-running archiver that archive_command's tiny client talks to (foreground)."""
    from dr_pipelines.core.wal.archive import archive_storage
    from dr_pipelines.core.wal.daemon import (
        Archiver,
        SegmentSwitcher,
        check_source_archives,
        reuse_freed_memory,
        serve,
        stderr_log,
    )

    s = settings()
    check_source_archives(s.dsn, stderr_log)
    reuse_freed_memory()
    archiver = Archiver(archive_storage(s), _recipients(), workers=workers, read_ahead=read_ahead, log=stderr_log)
    switcher = SegmentSwitcher(s.dsn, switch_after, stderr_log) if switch_after else None
    if switcher:
        switcher.start()
    try:
        serve(archiver, socket_path, ready=lambda: stderr_log(f"archiver listening on {socket_path}"))
    finally:
        if switcher:
            switcher.close()


@wal_app.command("archive-command")
def wal_archive_command(
    socket_path: Path = typer.Option(..., "--socket", help=_SOCKET_HELP),
    no_fallback: bool = typer.Option(False, "--no-fallback", help="Fail (PostgreSQL retries) when no archiver runs."),
) -> None:
    """Print the archive_command to put in postgresql.conf (the tiny client, falling back to `drp wal push`)."""
    out.print(archive_command(socket_path, fallback=not no_fallback), highlight=False, soft_wrap=True)


def archive_command(socket_path: Path, *, fallback: bool = True, python: str | None = None, drp: Path | None = None,
                    config: Path | None = None) -> str:
    """The command line: this interpreter (or ``python``) in isolated mode runs the stdlib-only client;
    ``drp`` and ``config`` default to this installation's `drp` and settings file (the demo passes its own)."""
    import shlex
    import sys

    from dr_pipelines.cli.common import config_file
    from dr_pipelines.core.wal import client

    fallback_drp = str(drp or Path(sys.executable).parent / "drp") if fallback else "-"
    config = config or config_file()
    # A shell assignment, not `env`: PostgreSQL runs archive_command with /bin/sh -c, and `env` was one more
    # exec per segment (~1 ms of CPU, in series; docs/benchmarks.md, "WAL archiving").
    assign = [f"DRP_CONFIG={shlex.quote(str(config.absolute()))}"] if config and fallback else []
    parts = [python or sys.executable, "-I", "-S", client.__file__, str(socket_path.absolute()), fallback_drp]
    return " ".join(assign + [shlex.quote(p) for p in parts]) + " %p"
