"""The backup as the CLI and Dagster run it: settings in, a stored backup and applied retention out."""

from __future__ import annotations

from dataclasses import dataclass

from dr_pipelines.core import context
from dr_pipelines.core.backup.logical import BackupOptions, run_logical_backup
from dr_pipelines.core.backup.prune import PruneResult, prune_backups
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.settings import Settings


@dataclass
class BackupOutcome:
    manifest: Manifest
    storage_url: str
    prune: PruneResult | None


def backup_now(
    settings: Settings, *, options: BackupOptions = BackupOptions(), progress: Progress | None = None, prune: bool = True
) -> BackupOutcome:
    """Take a logical backup of the source, then apply the retention policy (never touching the new one)."""
    storage = context.storage(settings)
    storage.check()
    manifest = run_logical_backup(settings.dsn, storage, settings.encryption_recipients, options=options, progress=progress)
    pruned = prune_backups(storage, context.retention_policy(settings), dry_run=False) if prune else None
    return BackupOutcome(manifest, f"{storage.url}/backups/{manifest.id}", pruned)
