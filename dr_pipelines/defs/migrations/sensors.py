"""new_migration_files: a new or changed migration file asks for a dry-run of what is pending.

The cursor is a digest of the directory (every file's name and sha256), so an edit counts
as a change too; nothing pending (e.g. a down script added) is a skip, not a run.
"""

import hashlib

import dagster as dg

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.migrate.files import configured_migrations
from dr_pipelines.core.migrate.runner import status
from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.lib.default_status import sensor_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.migrations.jobs import JOB_NAME


def directory_digest(migrations: list) -> str:
    lines = [f"{m.name} {m.sha256} {m.down_path.name if m.down_path else '-'}" for m in migrations]
    newest = migrations[-1].version if migrations else 0
    return f"{newest}:{hashlib.sha256(chr(10).join(lines).encode()).hexdigest()[:16]}"


def build_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    @dg.sensor(name="new_migration_files", job_name=JOB_NAME, minimum_interval_seconds=60,
               default_status=sensor_status(settings),
               description="New or changed files in migrations_dir: a dry-run of the pending migrations.")
    def new_migration_files(context: dg.SensorEvaluationContext, drp: DrpSettingsResource):  # noqa: ANN202
        s = drp.settings()
        try:
            migrations = configured_migrations(s.migrations_dir)
        except DrpError as exc:
            return dg.SkipReason(f"migrations directory unreadable: {exc.problem}")
        cursor = directory_digest(migrations)
        if cursor == context.cursor:
            return dg.SkipReason(f"no new migration files (newest version {cursor.split(':')[0]})")
        try:
            pending = status(s.dsn, migrations).pending
        except DrpError as exc:  # cursor kept: the next tick looks again
            return dg.SkipReason(f"new migration files, but the database is not reachable: {exc.problem}")
        context.update_cursor(cursor)
        if not pending:
            return dg.SkipReason("migration files changed, nothing pending")
        return dg.RunRequest(run_key=cursor, run_config={"dry_run": True},
                             tags={"drp/migrations": ",".join(m.name for m in pending)})

    return [new_migration_files]
