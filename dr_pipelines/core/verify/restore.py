"""Verification restore: restore a backup into a throwaway cluster, run every check, remove the cluster.

The result is recorded next to the backup (backups/<id>/verification.json), so the catalog
knows which backups are proven restorable; a failed one stops counting as restorable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import BackupEntry, find_backup, list_backups, newest_restorable
from dr_pipelines.core.crypto import DecryptionError, WrongKeyError
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
from dr_pipelines.core.pg.leases import sweep_leftovers
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.logical import RestoreOptions
from dr_pipelines.core.restore.pitr import RecoveryTarget
from dr_pipelines.core.restore.throwaway import FAST_THROWAWAY, restored_cluster
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.verify.base import check_base_backup, last_commit
from dr_pipelines.core.verify.checks import CheckResult, Probe, run_checks
from dr_pipelines.core.verify.report import VerificationReport

# Failures that say nothing about the backup itself (our machine or our configuration): raised, never recorded.
ENVIRONMENT_ERRORS = (ConfigError, ClusterError, PostgresNotFoundError, DatabaseError)


def verify_now(settings: Settings, backup_id: str | None = None, identity: Path | None = None, record: bool = True,
               progress: Progress | None = None, log: Callable[[str], None] | None = None, *,
               kind: str | None = None) -> VerificationReport:
    """The verification as `drp verify` and the Dagster verification asset run it: configured keys, storage, probes.

    ``backup_id`` None or 'latest' is the newest restorable backup of ``kind`` (default 'logical', as before
    base backups existed); an id is verified whatever its kind. The leftovers of killed runs are swept
    before the restore, each one said to ``log`` (the CLI's "removed leftover ..." lines).
    """
    identities = context.identities(settings, identity)
    storage = context.storage(settings)
    latest = backup_id in (None, "latest")
    entry = find_backup(storage, backup_id, kind=(kind or "logical") if latest else kind)
    work_dir = Path(settings.work_dir)
    for line in sweep_leftovers(work_dir):
        if log is not None:
            log(f"removed leftover {line}")
    return verify_backup(storage, entry, identities, work_dir, probes=context.probes(settings), record=record,
                         progress=progress)


def verify_each_kind(settings: Settings, identity: Path | None = None, *, progress: Progress | None = None,
                     log: Callable[[str], None] | None = None) -> list[VerificationReport]:
    """The newest restorable backup of each kind in storage verified, logical first (the Dagster verification
    asset). With no restorable backup at all, verify_now's error for the logical kind."""
    entries = list_backups(context.storage(settings))
    kinds = [k for k in ("logical", "base") if newest_restorable(entries, k)] or ["logical"]
    return [verify_now(settings, None, identity, progress=progress, log=log, kind=k) for k in kinds]


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
    target: RecoveryTarget | None = None,
) -> VerificationReport:
    """Restore `entry` into a fresh local cluster and check it; the cluster is always removed.

    A base backup is recovered to ``target`` (default: its own stop point) and checked by
    core/verify/base.py; this process serves the recovery's WAL fetches (core/restore/pitr.py).

    A verification cluster is thrown away, so it runs without fsync unless `durable` (a DR
    drill measures the RTO of a real restore, with fsync on). It is password-protected and
    leased (core/restore/throwaway.py): one left by a killed run is swept here first.
    """
    assert entry.manifest is not None
    started = datetime.now(UTC)
    fetch_s = restore_s = checks_s = 0.0
    checks, error, tables, point, basis = [], None, [], None, None
    try:
        if entry.kind == "base":
            base = check_base_backup(storage, entry, [entry], identities, work_dir,
                                     target or RecoveryTarget("immediate"), probes=probes,
                                     heapallindexed=heapallindexed, purpose=purpose, progress=progress)
            checks, tables, restore_s, checks_s = base.checks, base.tables, base.restore_seconds, base.checks_seconds
            committed, basis = last_commit(base.recovery, entry)
            point = committed.isoformat() if committed else None
        else:
            checks, fetch_s, restore_s, checks_s = _check_logical(storage, entry, identities, work_dir, probes,
                                                                  heapallindexed, durable, progress, purpose)
    except ENVIRONMENT_ERRORS:
        raise
    except WrongKeyError:
        raise  # a key problem, not a backup problem
    except DecryptionError as exc:
        error = exc.problem
    except StorageError as exc:
        if not isinstance(exc, ObjectNotFoundError):
            raise  # an outage of the storage says nothing about the backup
        error = exc.problem
    except DrpError as exc:  # corrupt object, pg_restore failure: the backup is not restorable
        error = exc.problem
    report = VerificationReport(entry.id, started, datetime.now(UTC), fetch_s, restore_s, checks_s, checks, error,
                                kind=entry.kind, tables=tables, restore_point=point, restore_point_basis=basis)
    if record:
        storage.put_bytes(f"{backup_prefix(entry.id)}/{VERIFICATION_NAME}", report.to_json().encode())
    return report


def _check_logical(storage: Storage, entry: BackupEntry, identities: Sequence[object], work_dir: Path,
                   probes: Sequence[Probe], heapallindexed: bool, durable: bool, progress: Progress | None,
                   purpose: str) -> tuple[list[CheckResult], float, float, float]:
    """A logical backup restored into a throwaway cluster and compared with its manifest: (checks, fetch,
    restore and checks seconds)."""
    assert entry.manifest is not None
    with restored_cluster(storage, entry, identities, work_dir, f"{purpose}-{entry.id}",
                          settings={} if durable else FAST_THROWAWAY,
                          options=RestoreOptions(with_globals=True, check=False), progress=progress) as restored:
        t0 = time.monotonic()
        checks = run_checks(restored.dsn, entry.manifest, list(probes), heapallindexed=heapallindexed)
        return checks, restored.result.fetch_seconds, restored.result.restore_seconds, time.monotonic() - t0
