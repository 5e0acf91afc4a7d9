"""Verification of a base backup, and the PITR a DR drill measures: extract, prove, recover, check.

A base backup is extracted from storage, ``pg_verifybackup`` checks the tree against the
``backup_manifest`` it carried (with the WAL wal_start..wal_stop fetched from the archive, so the
WAL is parsed too), then PostgreSQL recovers it (core/restore/pitr.py) to ``target``: its own stop
point (``recovery_target = 'immediate'``) for a verification, the end of the archive for a drill.
On the promoted cluster the same checks as a logical verification run (amcheck, foreign keys,
sequences, probes), and the row count and content checksum of every table are recorded: a base
backup's manifest has no per-table checksums, so they say what the restore point holds (the
source has moved on since, so there is nothing cheap to compare them with). The cluster lives in a
lease (a killed run's is swept) and is always removed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dr_pipelines.core.backup.catalog import BackupEntry
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster, give_to_server
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.leases import CLUSTERS, take_lease
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.physical import verify_base_backup
from dr_pipelines.core.restore.pitr import (
    BaseBackup,
    RecoveryResult,
    RecoveryTarget,
    extract_from_storage,
    restore_to_point,
)
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.verify.checks import CheckResult, Probe, amcheck, foreign_keys, run_probe, sequences, timed
from dr_pipelines.core.wal.archive import fetch_wal
from dr_pipelines.core.wal.names import Segment


@dataclass
class BaseCheck:
    """What a recovered base backup showed: the checks, every table's rows and checksum, the recovery."""

    checks: list[CheckResult]
    tables: list[dict[str, object]]
    recovery: RecoveryResult | None
    restore_seconds: float
    checks_seconds: float


def check_base_backup(storage: Storage, entry: BackupEntry, entries: Sequence[BackupEntry],
                      identities: Sequence[object], work_dir: Path, target: RecoveryTarget, *,
                      probes: Sequence[Probe] = (), heapallindexed: bool = True, purpose: str = "verify",
                      progress: Progress | None = None) -> BaseCheck:
    """Extract, pg_verifybackup, recover to ``target`` and check (see the module docstring).

    ``entries``: what the PITR may choose from (``[entry]`` for a verification). A failed restore
    raises (the caller records it); failed checks are returned.
    """
    lease = take_lease(work_dir, CLUSTERS, f"{purpose}-{entry.id}", mode=0o711)
    data_dir = lease.path / "data"  # where the lease sweep looks for a killed run's cluster
    extract = extract_from_storage(storage, identities, progress)
    verified: list[CheckResult] = []

    def extract_and_prove(base: BaseBackup, into: Path) -> None:
        extract(base, into)
        verified.append(timed("pg_verifybackup", lambda: _verifybackup(storage, identities, base, into, lease.path)))

    started = time.monotonic()
    try:
        own = int(entry.manifest.extra["timeline"]) if target.kind == "immediate" and entry.manifest else None
        result = restore_to_point(storage, target, data_dir, entries=entries, extract=extract_and_prove,
                                  work_dir=work_dir, identities=identities, timeline=own,  # its stop point: its timeline
                                  progress=progress)
        restore_s = time.monotonic() - started
        rec = result.recovery
        assert rec.dsn is not None
        dsn = LocalCluster(data_dir=data_dir, port=rec.port).dsn(_database(entry))
        t0 = time.monotonic()
        checks = [*verified, _recovered(rec, target)]
        with connect(dsn, autocommit=True) as conn:
            checks.append(timed("amcheck", lambda: amcheck(conn, heapallindexed=heapallindexed)))
            checks.append(timed("foreign_keys", lambda: foreign_keys(conn)))
            checks.append(timed("sequences", lambda: sequences(conn)))
            for probe in probes:
                checks.append(timed(f"probe:{probe.name}", lambda p=probe: run_probe(conn, p)))  # type: ignore[misc]
        tables = [{"table": t.name, "rows": t.rows, "checksum": t.checksum, "method": t.method}
                  for t in database_checksums(dsn)]
        checks.append(CheckResult("table_checksums", True, f"row counts and checksums of {len(tables)} tables "
                                  "recorded at the restore point", checked=len(tables)))
        return BaseCheck(checks, tables, rec, restore_s, time.monotonic() - t0)
    finally:
        LocalCluster(data_dir=data_dir, port=0).remove()
        lease.release()


def _verifybackup(storage: Storage, identities: Sequence[object], base: BaseBackup, data_dir: Path,
                  scratch: Path) -> CheckResult:
    """pg_verifybackup with the base's own WAL (wal_start..wal_stop) fetched into the lease (0700)."""
    wal_dir = scratch / "verify-wal"
    wal_dir.mkdir(mode=0o700)
    first = Segment.parse(base.wal_start)
    last = Segment.parse(base.entry.manifest.extra["wal_stop"])
    count = last.number(base.segment_bytes) - first.number(base.segment_bytes)
    for segment in [first, *first.following(count, base.segment_bytes)]:
        fetch_wal(storage, identities, segment.name, wal_dir / segment.name)
    give_to_server(wal_dir)
    problems = verify_base_backup(data_dir, wal_dir)
    return CheckResult("pg_verifybackup", not problems,
                       "; ".join(problems[:5]) if problems else
                       f"every file matches backup_manifest; WAL {base.wal_start}..{last.name} parses",
                       [{"problem": p} for p in problems[:50]], count + 1)


def _recovered(rec: RecoveryResult, target: RecoveryTarget) -> CheckResult:
    return CheckResult("recovery", True, f"recovered to {target.describe()}: WAL replayed to {rec.replayed_to}, "
                       f"last transaction {rec.last_commit_time or 'none replayed'}, promoted to timeline "
                       f"{rec.timeline}", checked=1, seconds=round(rec.seconds, 3))


def _database(entry: BackupEntry) -> str:
    return (entry.manifest.source.get("database") if entry.manifest else None) or "postgres"


def last_commit(rec: RecoveryResult | None, base: BackupEntry) -> tuple[datetime | None, str]:
    """The newest commit the restore holds, and how it is known: the last transaction replayed
    (pg_last_xact_replay_timestamp), else — none replayed — the base backup's stop time (an upper bound)."""
    if rec is not None and rec.last_commit_time:
        return datetime.fromisoformat(rec.last_commit_time).astimezone(UTC), "commit time of the last transaction recovered"
    stop = (base.manifest.extra.get("stop_time") if base.manifest else None)
    if stop:
        return datetime.fromisoformat(stop).astimezone(UTC), "no transaction replayed: the base backup's stop time"
    return None, "unknown"
