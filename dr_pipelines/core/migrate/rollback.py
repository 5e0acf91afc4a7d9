"""Roll back to a target version through the down scripts, newest first.

Everything is checked before anything runs: every version to undo must have its up file
(unedited) and a down script, or nothing is undone. Each down script runs in its own
transaction together with the deletion of its tracking row, so an interrupted rollback
leaves the database at a version the table tells truthfully.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.apply import ApplyOptions, Log, in_transaction_with_retries, outside_transaction
from dr_pipelines.core.migrate.files import Migration, is_transactional
from dr_pipelines.core.migrate.tracking import runner_session
from dr_pipelines.core.migrate.validate import compare


def rollback_plan(migrations: list[Migration], applied_versions: list[int], target_version: int) -> list[Migration]:
    """The migrations to undo (newest first), or a MigrationError naming every version that cannot be undone."""
    if target_version < 0:
        raise MigrationError(f"target version {target_version} is negative", fix="give 0 (undo all) or a version")
    on_disk = {m.version: m for m in migrations}
    versions = sorted((v for v in applied_versions if v > target_version), reverse=True)
    no_file = [v for v in versions if v not in on_disk]
    if no_file:
        raise MigrationError(f"cannot roll back: versions {no_file} are applied but their files are missing",
                             fix="restore the files from version control; nothing was rolled back")
    no_down = [on_disk[v].name for v in versions if on_disk[v].down_path is None]
    if no_down:
        raise MigrationError(
            f"cannot roll back to version {target_version}: no down script for {', '.join(no_down)}",
            fix="write the missing NNNN_description.down.sql file(s) or choose a later target; nothing was rolled back",
        )
    return [on_disk[v] for v in versions]


def rollback(
    dsn: str,
    migrations: list[Migration],
    target_version: int,
    options: ApplyOptions = ApplyOptions(),
    *,
    progress: Callable[[Migration, float], None] | None = None,
    log: Log | None = None,
) -> list[Migration]:
    """Undo every applied migration newer than target_version; returns what was undone (newest first)."""
    undone: list[Migration] = []
    with runner_session(dsn, wait_seconds=options.runner_wait_s) as (conn, record):
        plan = rollback_plan(migrations, list(record), target_version)
        planned = {m.version for m in plan}
        edited = [d for d in compare(migrations, record) if d.version in planned and d.kind == "edited"]
        if edited:
            raise MigrationError(f"cannot roll back: {edited[0].message}",
                                 fix="its down script may not match what ran; revert the edit or `drp migrate repair`")
        for i, m in enumerate(plan, 1):
            if log:
                log(f"rolling back {m.name} ({i}/{len(plan)})")
            started = time.monotonic()
            _undo(conn, m, options, log)
            undone.append(m)
            if progress:
                progress(m, time.monotonic() - started)
    return undone


def _undo(conn: psycopg.Connection, m: Migration, options: ApplyOptions, log: Log | None) -> None:
    down = m.down_sql or ""
    name = m.down_path.name if m.down_path else m.name

    def forget() -> None:
        conn.execute("DELETE FROM drp.schema_migrations WHERE version = %s", (m.version,))

    if is_transactional(down):
        in_transaction_with_retries(conn, name, options, log, lambda: (conn.execute(down), forget()))
        return
    outside_transaction(conn, name, down, options, forget)
