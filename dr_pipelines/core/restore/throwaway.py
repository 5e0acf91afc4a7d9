"""Restore a backup into a leased cluster: what verification, drills, migrate's dry-run and
`drp backup restore --new-cluster` all do first.

``restored_cluster`` sweeps the leftovers of killed runs, makes a password-protected cluster
under a lease (core/pg/leases.py), creates the source's database in it and restores the
backup there. A throwaway cluster (the default) is removed when the block ends; one at a
user's `data_dir` is removed only if the restore (or the block) fails, else handed over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dr_pipelines.core.backup.catalog import BackupEntry
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.leases import leased_cluster, sweep_leftovers
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.logical import RestoreError, RestoreOptions, RestoreResult, restore_backup
from dr_pipelines.core.storage import Storage

# A throwaway cluster is never crash-recovered, so it need not be durable (a drill, timing a
# real restore, asks for the defaults instead).
FAST_THROWAWAY = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class Restored:
    cluster: LocalCluster
    dsn: str  # of the restored database
    result: RestoreResult


@contextmanager
def restored_cluster(
    storage: Storage,
    entry: BackupEntry,
    identities: Sequence[object],
    work_dir: Path,
    purpose: str,
    *,
    settings: Mapping[str, str] | None = FAST_THROWAWAY,
    data_dir: Path | None = None,
    port: int | None = None,
    options: RestoreOptions = RestoreOptions(with_globals=True),
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[Restored]:
    """`entry` restored into a new leased cluster (see the module docstring); `log` hears the sweep and the start."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for line in sweep_leftovers(work_dir):
        if log:
            log(f"removed leftover {line}")
    if log:
        where = f"a throwaway cluster under {work_dir}" if data_dir is None else f"a new cluster in {data_dir}"
        log(f"restoring backup {entry.id} into {where}")
    database = (entry.manifest.source.get("database") if entry.manifest else None) or "restored"
    with leased_cluster(work_dir, purpose, data_dir=data_dir, port=port, settings=settings) as cluster:
        dsn = cluster.create_database(database, template="template0")
        result = restore_backup(storage, entry, identities, dsn, work_dir=work_dir, options=options,
                                progress=progress)
        yield Restored(cluster, dsn, result)


def restore_to_new_cluster(
    storage: Storage,
    entry: BackupEntry,
    identities: Sequence[object],
    data_dir: Path,
    *,
    work_dir: Path,
    port: int | None = None,
    options: RestoreOptions = RestoreOptions(with_globals=True),
    progress: Progress | None = None,
) -> tuple[LocalCluster, RestoreResult]:
    """A fresh local cluster holding the backup's database (named as the source's); removed again on failure.

    It is password-protected (its DSN names the 0600 passfile in the data directory). Until the
    restore has finished it is leased like a throwaway cluster, so a killed run's half-restored
    cluster is stopped and deleted by the next command's sweep; then it is the user's.
    """
    if entry.manifest is None:
        raise RestoreError(f"backup {entry.id} has no readable manifest", fix="choose another backup")
    with restored_cluster(storage, entry, identities, work_dir, "new-cluster", settings=None, data_dir=data_dir,
                          port=port, options=options, progress=progress) as restored:
        return restored.cluster, restored.result
