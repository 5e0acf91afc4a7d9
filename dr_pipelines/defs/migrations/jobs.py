"""migrations_job: lint, pre-migration backup, apply (or dry-run), thin over dr_pipelines.core.migrate.service.

One run config for the whole job (mapped onto the three ops): dry_run (default true, so that
launching from the UI never changes the schema by accident), target_version, allow_lint_errors,
skip_backup.
"""

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.
from typing import Optional

import dagster as dg

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.files import configured_migrations
from dr_pipelines.core.migrate.runner import status
from dr_pipelines.core.migrate.service import apply_migrations, dry_run, lint_all, refuse_lint_errors
from dr_pipelines.defs.lib.resources import DrpSettingsResource

SCHEMA_KEY = dg.AssetKey("schema_migrations")
JOB_NAME = "migrations_job"


class MigrationsConfig(dg.Config):
    dry_run: bool = True
    target_version: Optional[int] = None
    allow_lint_errors: bool = False
    skip_backup: bool = False


@dg.config_mapping
def _one_config(config: MigrationsConfig) -> dict:
    values = config.model_dump()
    return {"ops": {name: {"config": values} for name in ("lint_migrations", "pre_migration_backup",
                                                          "apply_migrations_op")}}


def _pending(drp: DrpSettingsResource, config: MigrationsConfig) -> list:
    s = drp.settings()
    return [m for m in status(s.dsn, configured_migrations(s.migrations_dir)).pending
            if config.target_version is None or m.version <= config.target_version]


@dg.op(description="Lint the pending migrations; an unsuppressed error fails the run unless allow_lint_errors.")
def lint_migrations(context: dg.OpExecutionContext, config: MigrationsConfig, drp: DrpSettingsResource) -> list:
    pending = _pending(drp, config)
    reports = lint_all(pending)
    for r in reports:
        for f in r.findings:
            suppressed = f" (suppressed: {f.suppressed})" if f.suppressed else ""
            context.log.info(f"{r.path}:{f.line} [{f.severity}{suppressed}] {f.rule}: {f.message}")
    if not config.allow_lint_errors:
        try:
            refuse_lint_errors(reports)
        except MigrationError as exc:
            raise dg.Failure(description=str(exc)) from None
    return [m.name for m in pending]


@dg.op(description="A logical backup before anything changes (skipped on dry-run, skip_backup or nothing pending).")
def pre_migration_backup(context: dg.OpExecutionContext, config: MigrationsConfig, drp: DrpSettingsResource,
                         pending: list) -> Optional[str]:
    if config.dry_run or config.skip_backup or not pending:
        context.log.info("no pre-migration backup: " + ("dry-run" if config.dry_run else
                                                         "skip_backup" if config.skip_backup else "nothing pending"))
        return None
    from dr_pipelines.core.backup.service import backup_now

    backup_id = backup_now(drp.settings(), prune=False).manifest.id
    context.log.info(f"pre-migration backup {backup_id}")
    return backup_id


@dg.op(description="Apply the pending migrations with lock_timeout and retries, or dry-run them and report locks.")
def apply_migrations_op(context: dg.OpExecutionContext, config: MigrationsConfig, drp: DrpSettingsResource,
                        backup_id: Optional[str]) -> dict:
    s = drp.settings()
    migrations = configured_migrations(s.migrations_dir)
    if config.dry_run:
        report = dry_run(s, migrations, log=context.log.info)
        context.add_output_metadata({"dry_run": dg.MetadataValue.json(report.as_dict())})
        if not report.ok:
            raise dg.Failure(description=f"dry-run failed: {report.error}")
        return report.as_dict()
    # The backup op already ran (or was skipped on purpose); lint too: apply only, with that backup's id.
    outcome = apply_migrations(s, migrations, backup=False, backup_id=backup_id, allow_lint_errors=True,
                               target_version=config.target_version, applied_by=f"dagster run {context.run_id[:8]}",
                               log=context.log.info)
    after = status(s.dsn, migrations)
    context.log_event(dg.AssetMaterialization(SCHEMA_KEY, metadata={
        "current_version": after.current_version if after.current_version is not None else "none",
        "applied": dg.MetadataValue.json([m.name for m in outcome.applied]), "backup_id": backup_id or "none"}))
    return outcome.as_dict()


@dg.job(name=JOB_NAME, config=_one_config, tags={"drp/source": "primary"},
        description="Lint, pre-migration backup, apply (run config: dry_run, target_version, allow_lint_errors, "
                    "skip_backup).")
def migrations_job() -> None:
    apply_migrations_op(pre_migration_backup(lint_migrations()))
