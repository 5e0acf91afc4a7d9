"""Migrations as the CLI and Dagster run them: settings in; lint, plan, dry-run, backup, apply, rollback.

Apply policy: lint the pending migrations first; an unsuppressed lint error stops the run
before anything touches the database unless allow_lint_errors (then it is logged). Then a
pre-migration backup (settings' storage and recipients) unless skipped explicitly; its id is
recorded on every row the run applies. Then the runner, with the settings' timeouts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.apply import ApplyOptions, Log, MigrationProgress, apply_pending
from dr_pipelines.core.migrate.dryrun import DryRunReport, dry_run_on_target
from dr_pipelines.core.migrate.files import Migration
from dr_pipelines.core.migrate.lint import LintConfig, LintReport, lint_migration
from dr_pipelines.core.migrate.runner import MigrationStatus, status
from dr_pipelines.core.migrate.validate import refuse_on_drift
from dr_pipelines.core.settings import Settings

LINT_CONFIG = LintConfig(runner_sets_lock_timeout=True)  # the runner always sets lock_timeout


def apply_options(settings: Settings, **overrides: Any) -> ApplyOptions:
    """The runner's options from settings (lock_timeout, retries, statement_timeout)."""
    return replace(ApplyOptions(lock_timeout_s=settings.migration_lock_timeout,
                                lock_retries=settings.migration_lock_retries,
                                statement_timeout_s=settings.migration_statement_timeout), **overrides)


def lint_all(migrations: list[Migration], config: LintConfig = LINT_CONFIG) -> list[LintReport]:
    return [lint_migration(m, config) for m in migrations]


def refuse_lint_errors(reports: list[LintReport]) -> None:
    bad = [(r, f) for r in reports for f in r.blocking]
    if bad:
        listed = "; ".join(f"{_name(r)} line {f.line}: [{f.rule}] {f.message}" for r, f in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise MigrationError(
            f"lint found {len(bad)} error(s) in pending migrations: {listed}{more}; nothing was applied",
            fix="fix them (see `drp migrate lint`), suppress one with `-- drp:allow <rule> reason: <why>` above it, "
                "or pass --allow-lint-errors after review",
        )


def _name(report: LintReport) -> str:
    return (report.path or "migration").rsplit("/", 1)[-1]


@dataclass
class ApplyOutcome:
    applied: list[Migration]
    backup_id: str | None
    lint: list[LintReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"applied": [m.name for m in self.applied], "backup_id": self.backup_id,
                "lint_errors_allowed": sum(len(r.blocking) for r in self.lint)}


def apply_migrations(
    settings: Settings,
    migrations: list[Migration],
    *,
    backup: bool = True,
    backup_id: str | None = None,
    allow_lint_errors: bool = False,
    target_version: int | None = None,
    applied_by: str | None = None,
    progress: MigrationProgress | None = None,
    log: Log | None = None,
    backup_progress: Callable[[str, int, int | None], None] | None = None,
) -> ApplyOutcome:
    """Lint -> pre-migration backup -> apply, for the pending migrations up to target_version.

    backup_id: a pre-migration backup taken already (Dagster's backup op); recorded, none taken.
    """
    current = status(settings.dsn, migrations)
    refuse_on_drift(current.drift)  # before lint and backup: an edited history stops everything
    todo = [m for m in current.pending if target_version is None or m.version <= target_version]
    if not todo:
        return ApplyOutcome([], None)
    reports = lint_all(todo)
    if not allow_lint_errors:
        refuse_lint_errors(reports)
    elif log:
        for r in reports:
            for f in r.blocking:
                log(f"lint error allowed: {_name(r)} line {f.line}: [{f.rule}] {f.message}")
    if backup and backup_id is None:
        from dr_pipelines.core.backup.logical import BackupOptions
        from dr_pipelines.core.backup.service import backup_now

        if log:
            log(f"pre-migration backup of {len(todo)} pending migration(s)")
        backup_id = backup_now(settings, options=BackupOptions(), progress=backup_progress, prune=False).manifest.id
        if log:
            log(f"pre-migration backup {backup_id}")
    options = apply_options(settings, target_version=target_version, backup_id=backup_id, applied_by=applied_by)
    applied = apply_pending(settings.dsn, migrations, options, progress=progress, log=log)
    return ApplyOutcome(applied, backup_id, reports)


def dry_run(settings: Settings, migrations: list[Migration], *, log: Log | None = None) -> DryRunReport:
    """On the target in one rolled-back transaction, or on a throwaway restore when a no-transaction one is pending."""
    pending = status(settings.dsn, migrations).pending
    options = apply_options(settings)
    if all(m.transactional for m in pending):
        return dry_run_on_target(settings.dsn, migrations, options, log=log)
    from dr_pipelines.core.migrate.restore_dryrun import dry_run_on_restore

    if log:
        names = ", ".join(m.name for m in pending if not m.transactional)
        log(f"{names} cannot run in a transaction: dry-run on a throwaway restore of the newest backup")
    return dry_run_on_restore(settings, migrations, options, log=log)


@dataclass
class PlanItem:
    migration: Migration
    lint: LintReport
    impacts: list[Any]  # impact.Impact

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.migration.version, "name": self.migration.name,
                "transactional": self.migration.transactional, "has_down": self.migration.down_path is not None,
                "lint": self.lint.as_dict(), "impact": [i.as_dict() for i in self.impacts]}


def plan(settings: Settings, migrations: list[Migration]) -> tuple[MigrationStatus, list[PlanItem]]:
    """Pending migrations, each with its lint report and the impact estimate against the live tables."""
    from dr_pipelines.core.migrate.impact import estimate
    from dr_pipelines.core.pg.connect import connect

    current = status(settings.dsn, migrations)
    items = []
    with connect(settings.dsn, autocommit=True) as conn:
        for m in current.pending:
            report = lint_migration(m, LINT_CONFIG)
            items.append(PlanItem(m, report, estimate(conn, report)))
    return current, items
