"""Dry-run on a throwaway restore of the newest backup: for migrations that cannot be rolled back.

The copy's own tracking table decides what is pending there (a backup may be older than the
target). Transactional migrations run one transaction each, as apply would; no-transaction ones
statement by statement. The cluster is removed afterwards, also on failure.
"""

from __future__ import annotations

from dataclasses import replace

import psycopg

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import BackupNotFoundError, find_backup
from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.apply import ApplyOptions, Log, set_timeouts
from dr_pipelines.core.migrate.dryrun import DryRunReport, Lock, pending_for, run_outside_transaction, run_statements
from dr_pipelines.core.migrate.files import Migration
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.restore.throwaway import restored_cluster
from dr_pipelines.core.settings import Settings


def dry_run_on_restore(settings: Settings, migrations: list[Migration], options: ApplyOptions = ApplyOptions(),
                       *, log: Log | None = None) -> DryRunReport:
    """Restore the newest restorable backup into a throwaway cluster and run the pending migrations there."""
    storage = context.storage(settings)
    try:
        entry = find_backup(storage, None, kind="logical")
    except BackupNotFoundError:
        raise MigrationError(
            f"a migration marked -- drp:no-transaction cannot be rolled back, so its dry-run needs a throwaway "
            f"restore, and {storage.url} holds no restorable backup",
            fix="take one with `drp backup run` (or check DRP_STORAGE_URL), then dry-run again",
        ) from None
    with restored_cluster(storage, entry, context.identities(settings), settings.work_dir, f"dryrun-{entry.id}", log=log) as restored:
        return _run(restored.dsn, migrations, replace(options, runner_wait_s=0), f"restore of backup {entry.id}", log)


def _run(dsn: str, migrations: list[Migration], options: ApplyOptions, where: str, log: Log | None) -> DryRunReport:
    with connect(dsn, autocommit=True) as conn:
        todo = pending_for(conn, migrations)
        report = DryRunReport(where, [m.name for m in todo], rolled_back=False)
        for m in todo:
            if log:
                log(f"dry-run {m.name}{'' if m.transactional else ' (no transaction)'}")
            if m.transactional:
                with conn.transaction():
                    set_timeouts(conn, options, local=True)
                    ok = run_statements(conn, conn.info.backend_pid, m, set[Lock](), report)
                    if not ok:
                        raise psycopg.Rollback()
                if not ok:
                    break
            else:
                set_timeouts(conn, options, local=False)
                if not run_outside_transaction(conn, dsn, m, report):
                    break
    return report
