"""Verification restore: restore a backup into a throwaway cluster, run every check, remove the cluster.

The result is recorded next to the backup (backups/<id>/verification.json), so the catalog
knows which backups are proven restorable; a failed one stops counting as restorable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from dr_pipelines.core.backup.catalog import BackupEntry
from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.errors import (
    ClusterError,
    ConfigError,
    DatabaseError,
    DrpError,
    ObjectNotFoundError,
    PostgresNotFoundError,
    StorageError,
)
from dr_pipelines.core.layout import VERIFICATION_NAME, backup_prefix
from dr_pipelines.core.pg.cluster import sweep_leftovers, throwaway_cluster
from dr_pipelines.core.restore.logical import Progress, RestoreOptions, restore_backup
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.verify.checks import Probe, run_checks
from dr_pipelines.core.verify.report import VerificationReport

FAST_THROWAWAY = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

# Failures that say nothing about the backup itself (our machine or our configuration): raised, never recorded.
ENVIRONMENT_ERRORS = (ConfigError, ClusterError, PostgresNotFoundError, DatabaseError)


def verify_backup(
    storage: Storage,
    entry: BackupEntry,
    identities: Sequence[object],
    work_dir: Path,
    *,
    probes: Sequence[Probe] = (),
    heapallindexed: bool = True,
    record: bool = True,
    durable: bool = False,
    progress: Progress | None = None,
    purpose: str = "verify",
) -> VerificationReport:
    """Restore `entry` into a fresh local cluster and check it; the cluster is always removed.

    A verification cluster is thrown away, so it runs without fsync unless `durable` (a DR
    drill measures the RTO of a real restore, with fsync on). It is password-protected and
    leased (core/pg/cluster.py): one left by a killed run is swept here first.
    """
    assert entry.manifest is not None
    manifest = entry.manifest
    started = datetime.now(UTC)
    fetch_s = restore_s = checks_s = 0.0
    checks, error = [], None
    work_dir.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(work_dir)
    try:
        settings = {} if durable else FAST_THROWAWAY
        with throwaway_cluster(work_dir, f"{purpose}-{entry.id}", settings=settings) as cluster:
            target = cluster.create_database(manifest.source.get("database") or "restored", template="template0")
            result = restore_backup(storage, entry, identities, target, work_dir=work_dir,
                                    options=RestoreOptions(with_globals=True, check=False), progress=progress)
            fetch_s, restore_s = result.fetch_seconds, result.restore_seconds
            t0 = time.monotonic()
            checks = run_checks(target, manifest, list(probes), heapallindexed=heapallindexed)
            checks_s = time.monotonic() - t0
    except ENVIRONMENT_ERRORS:
        raise
    except DecryptionError as exc:
        if "No matching keys" in exc.problem:
            raise  # a key problem, not a backup problem
        error = exc.problem
    except StorageError as exc:
        if not isinstance(exc, ObjectNotFoundError):
            raise  # an outage of the storage says nothing about the backup
        error = exc.problem
    except DrpError as exc:  # corrupt object, pg_restore failure: the backup is not restorable
        error = exc.problem
    report = VerificationReport(entry.id, started, datetime.now(UTC), fetch_s, restore_s, checks_s, checks, error)
    if record:
        storage.put_bytes(f"{backup_prefix(entry.id)}/{VERIFICATION_NAME}", report.to_json().encode())
    return report
