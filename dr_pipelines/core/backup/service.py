"""The backup as the CLI and Dagster run it: settings in, a stored backup and applied retention out.

Each kind's module (and the retention one) is imported where it is used: `drp backup run` is a
process of its own, and a base backup's start-up should not pay for pg_dump's or prune's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dr_pipelines.core import context
from dr_pipelines.core.errors import ConfigError

if TYPE_CHECKING:
    from dr_pipelines.core.backup.logical import BackupOptions
    from dr_pipelines.core.backup.physical import BaseBackupOptions
    from dr_pipelines.core.backup.prune import PruneResult
    from dr_pipelines.core.manifest import Manifest
    from dr_pipelines.core.progress import Progress
    from dr_pipelines.core.settings import Settings


@dataclass
class BackupOutcome:
    manifest: Manifest
    storage_url: str
    prune: PruneResult | None


def backup_now(
    settings: Settings,
    *,
    kind: str = "logical",
    options: BackupOptions | BaseBackupOptions | None = None,
    progress: Progress | None = None,
    prune: bool = True,
) -> BackupOutcome:
    """Take a backup of the source ('logical': pg_dump; 'base': pg_basebackup), then apply the retention policy.

    ``options`` must match the kind (BackupOptions / BaseBackupOptions); None takes its defaults.
    Retention covers both kinds alike and never touches the new backup.
    """
    storage = context.storage(settings)
    storage.check()
    if kind == "logical":
        from dr_pipelines.core.backup.logical import BackupOptions, run_logical_backup

        manifest = run_logical_backup(settings.dsn, storage, settings.encryption_recipients,
                                      options=options or BackupOptions(), progress=progress)  # type: ignore[arg-type]
    elif kind == "base":
        from dr_pipelines.core.backup.physical import BaseBackupOptions, run_base_backup

        manifest = run_base_backup(settings.dsn, storage, settings.encryption_recipients,
                                   options=options or BaseBackupOptions(method=settings.base_backup_method),
                                   progress=progress)  # type: ignore[arg-type]
    else:
        raise ConfigError(f"unknown backup kind {kind!r}", fix="use 'logical' or 'base'")
    pruned = None
    if prune:
        from dr_pipelines.core.backup.prune import prune_backups

        pruned = prune_backups(storage, context.retention_policy(settings), dry_run=False)
    return BackupOutcome(manifest, f"{storage.url}/backups/{manifest.id}", pruned)
