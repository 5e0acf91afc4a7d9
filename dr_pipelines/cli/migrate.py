"""`drp migrate ...`: status, lint, plan, dry-run, apply, rollback, validate, baseline, repair.

Every command reads the migrations from --dir (default: settings' migrations_dir) and works on
the source database from settings. Progress goes to stderr, results to stdout (--json for machines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, out, progress_bar, settings

migrate_app = typer.Typer(help="Schema migrations: lint, plan, dry-run, apply with a pre-migration backup, rollback.",
                          no_args_is_help=True)

DIR_HELP = "Migrations directory (default: settings' migrations_dir; no default when unset)."
JSON_HELP = "Machine-readable output."


def _migrations(directory: Optional[Path]) -> list[Any]:
    from dr_pipelines.core.migrate.files import configured_migrations

    return configured_migrations(settings().migrations_dir, directory)


def _say(message: str) -> None:
    err.print(escape(message), highlight=False)


def _progress(m: Any, seconds: float) -> None:
    err.print(f"  done {escape(m.name)} in {seconds:.2f}s", highlight=False)


def _row(table: Table, *cells: object) -> None:
    """Cells are data, not rich markup: a lint message may contain [brackets]."""
    table.add_row(*(escape(str(c)) for c in cells))


def _drift_table(drift: list[Any]) -> None:
    table = Table("version", "file", "finding", "severity", "fix")
    for d in drift:
        _row(table, d.version, d.name, d.message, d.severity, d.fix)
    out.print(table)


@migrate_app.command("status")
def status_cmd(directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
               as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Current version, applied and pending migrations, drift."""
    from dr_pipelines.core.migrate.runner import status

    st = status(settings().dsn, _migrations(directory))
    if as_json:
        emit_json(st.as_dict())
        return
    table = Table("version", "description", "applied at (UTC)", "by", "ms", "backup", "note")
    for a in st.applied:
        note = "baselined" if a.baselined else (f"repaired by {a.repaired_by}" if a.repaired_by else "")
        _row(table, a.version, a.description, f"{a.applied_at:%Y-%m-%d %H:%M:%S}" if a.applied_at else "",
             a.applied_by or "", a.duration_ms or 0, a.backup_id or "", note)
    for m in st.pending:
        _row(table, m.version, m.description, "pending", "", "", "", "" if m.down_path else "no down script")
    out.print(table)
    if st.drift:
        _drift_table(st.drift)
    out.print(f"current version: {st.current_version if st.current_version is not None else 'none'}, "
              f"{len(st.pending)} pending, {'ok' if st.ok else 'NOT in sync'}")


@migrate_app.command("lint")
def lint_cmd(
    files: Optional[list[Path]] = typer.Argument(None, help="Migration files (default: every file in --dir)."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Lint migrations on PostgreSQL's parser (no database needed); exit 1 on an unsuppressed error."""
    from dr_pipelines.core.migrate.files import Migration
    from dr_pipelines.core.migrate.service import lint_all

    migrations = _migrations(directory)
    if files:
        wanted = {f.resolve() for f in files}
        chosen = [m for m in migrations if m.path.resolve() in wanted]
        chosen += [Migration(0, f.stem, f, f.read_text()) for f in files
                   if f.resolve() not in {m.path.resolve() for m in chosen}]
        migrations = chosen
    reports = lint_all(migrations)
    if as_json:
        emit_json([r.as_dict() for r in reports])
    else:
        _print_findings(reports)
    if any(r.blocking for r in reports):
        raise typer.Exit(1)


def _print_findings(reports: list[Any]) -> None:
    table = Table("file", "line", "severity", "rule", "message", "fix")
    for r in reports:
        name = Path(r.path).name if r.path else ""
        for f in r.findings:
            severity = f"{f.severity} (suppressed: {f.suppressed})" if f.suppressed else f.severity
            _row(table, name, f.line, severity, f"{f.rule} [{f.source}]", f.message, f.fix)
    out.print(table)
    errors = sum(len(r.blocking) for r in reports)
    out.print(f"{len(reports)} file(s), {sum(len(r.findings) for r in reports)} finding(s), {errors} blocking error(s)")


@migrate_app.command("plan")
def plan_cmd(directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Pending migrations with lint findings and the lock-impact estimate against the live tables."""
    from dr_pipelines.core.migrate.service import plan

    current, items = plan(settings(), _migrations(directory))
    if as_json:
        emit_json({"current_version": current.current_version, "drift": [d.as_dict() for d in current.drift],
                   "pending": [i.as_dict() for i in items]})
        return
    if current.drift:
        _drift_table(current.drift)
    if not items:
        out.print(f"nothing pending (current version {current.current_version})")
        return
    for item in items:
        m = item.migration
        out.print(f"[bold]{escape(m.name)}[/]{'' if m.transactional else ' (no transaction)'}"
                  f"{'' if m.down_path else ' [yellow](no down script)[/]'}")
        for i in item.impacts:
            out.print(escape(f"  [{i.severity}] {i.text}"), highlight=False)
        _print_findings([item.lint])


@migrate_app.command("dry-run")
def dry_run_cmd(directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Run the pending migrations for real, record locks and times per statement, roll back (or use a restore)."""
    from dr_pipelines.core.migrate.service import dry_run

    report = dry_run(settings(), _migrations(directory), log=_say)
    if as_json:
        emit_json(report.as_dict())
    else:
        if report.statements:
            table = Table("migration", "line", "statement", "seconds", "locks taken")
            for s in report.statements:
                locks = ", ".join(f"{lk.mode} on {lk.relation}" for lk in s.locks)
                _row(table, s.migration, s.line, s.sql, f"{s.seconds:.3f}", locks)
            out.print(table)
        undone = "rolled back" if report.rolled_back else "the throwaway cluster was removed"
        out.print(f"dry-run on {escape(report.where)}: {len(report.migrations)} migration(s), {report.seconds:.2f}s, {undone}")
        if report.error:
            out.print(f"[red]failed:[/] {escape(report.error)}")
    if not report.ok:
        raise typer.Exit(1)


@migrate_app.command("apply")
def apply_cmd(
    directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
    target: Optional[int] = typer.Option(None, "--target", help="Apply up to and including this version."),
    no_backup: bool = typer.Option(False, "--no-backup", help="Skip the pre-migration backup (recorded as none)."),
    allow_lint_errors: bool = typer.Option(False, "--allow-lint-errors", help="Apply despite lint errors (reviewed)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Lint, take a pre-migration backup, then apply pending migrations with lock_timeout and retries."""
    from dr_pipelines.core.migrate.service import apply_migrations

    with progress_bar(not as_json) as bar:
        outcome = apply_migrations(settings(), _migrations(directory), backup=not no_backup,
                                   allow_lint_errors=allow_lint_errors, target_version=target,
                                   progress=_progress, log=_say, backup_progress=bar)
    if as_json:
        emit_json(outcome.as_dict())
        return
    if not outcome.applied:
        out.print("nothing to apply")
        return
    out.print(f"applied {len(outcome.applied)} migration(s), now at version {outcome.applied[-1].version}; "
              f"pre-migration backup: {outcome.backup_id or 'none (--no-backup)'}")


@migrate_app.command("rollback")
def rollback_cmd(
    to: int = typer.Option(..., "--to", help="Target version: undo every applied migration newer than it (0 = all)."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Roll back to a version through the down scripts, newest first, one transaction each."""
    from dr_pipelines.core.migrate.rollback import rollback
    from dr_pipelines.core.migrate.service import apply_options

    s = settings()
    undone = rollback(s.dsn, _migrations(directory), to, apply_options(s), progress=_progress, log=_say)
    if as_json:
        emit_json({"rolled_back": [m.name for m in undone], "version": to})
        return
    out.print(f"rolled back {len(undone)} migration(s); now at version {to}" if undone else "nothing to roll back")


@migrate_app.command("validate")
def validate_cmd(directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Compare files with the tracking table: edited, formatting-only, missing, out-of-order. Exit 1 on an error."""
    from dr_pipelines.core.migrate.runner import status
    from dr_pipelines.core.migrate.validate import blocking

    st = status(settings().dsn, _migrations(directory))
    if as_json:
        emit_json({"ok": not blocking(st.drift), "drift": [d.as_dict() for d in st.drift],
                   "pending": [m.name for m in st.pending]})
    elif st.drift:
        _drift_table(st.drift)
    else:
        out.print(f"valid: {len(st.applied)} applied migration(s) match their files, {len(st.pending)} pending")
    if blocking(st.drift):
        raise typer.Exit(1)


@migrate_app.command("baseline")
def baseline_cmd(
    version: int = typer.Option(..., "--version", help="The version the database's schema is already at."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Adopt an existing database: record migrations up to --version as applied, without running them."""
    from dr_pipelines.core.migrate.runner import baseline

    done = baseline(settings().dsn, _migrations(directory), version)
    if as_json:
        emit_json({"baselined": [m.name for m in done]})
        return
    out.print(f"baselined {len(done)} migration(s) up to version {version}")


@migrate_app.command("repair")
def repair_cmd(
    versions: list[int] = typer.Option(..., "--version", help="An applied version whose changed file was reviewed."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Accept reviewed edits of applied migrations: record the files' new checksums, with who and when."""
    from dr_pipelines.core.migrate.runner import repair

    done = repair(settings().dsn, _migrations(directory), versions)
    if as_json:
        emit_json({"repaired": [m.name for m in done]})
        return
    out.print(f"repaired: {', '.join(m.name for m in done)}")
