"""The *past* database a tenant restore compares with live: a PITR to a time, or a backup restored.

``past_database`` is a context manager yielding a DSN that holds the database as it was, and the
exact restore point reached (time, LSN, backup id, how it was obtained):

- ``at``: a point-in-time restore (core/restore/pitr.py) into a throwaway cluster under a lease:
  the newest base backup that stopped before the time, WAL replayed up to it, promoted with a
  random superuser password (passfile only). ``fsync`` and friends are off (FAST_THROWAWAY), and
  the extraction flushes nothing: the copy is never crash-recovered. With ``read_only`` (callers
  that only read the past: the apply, --into-schema) recovery pauses at the target instead: a
  read-only hot standby reached over its private unix socket only (core/restore/recovery.py).
  With ``reads`` (the tables the caller reads: a tenant restore) the index files nothing reads are
  left out (core/restore/partial.py) and the copy is promoted, to mark them, but stays reached over its
  private unix socket only, as a paused one (``socket_only``: TCP rejected, no password set).
- ``backup_id``: a logical backup restored into a leased throwaway (core/restore/throwaway.py), or a
  base backup recovered to its own stop point (``recovery_target = 'immediate'``).

Refused before anything is restored, each naming the fix: a time in the future, before the oldest
restorable point (no base backup stopped before it) or after the newest archived WAL, an unknown
backup id. The cluster is removed when the block ends; a killed run's (kill -9) is stopped and
deleted by the next command's lease sweep (core/pg/leases.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from dr_pipelines.core.backup.catalog import BackupEntry, find_backup, list_backups
from dr_pipelines.core.backup.index_map import IndexMap
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.leases import CLUSTERS, sweep_leftovers, take_lease
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.partial import PartialPlan, Reads, disable_left_out, plan_partial
from dr_pipelines.core.restore.pitr import (
    BaseBackup,
    PitrError,
    RecoveryTarget,
    extract_from_storage,
    restore_to_point,
)
from dr_pipelines.core.restore.throwaway import FAST_THROWAWAY, restored_cluster
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.tenancy import Scope

PURPOSE = "tenant-restore"  # the lease folders' name: clusters/tenant-restore-<hex>
Log = Callable[[str], None]


@dataclass(frozen=True)
class RestorePoint:
    """Where the past database stands, as reached (not only as asked)."""

    how: str  # "pitr" (--at), "base backup" or "logical backup" (--backup)
    requested: str  # what was asked, e.g. "time 2026-12-01T02:10:00+00:00 (inclusive)" or "backup 20261201T..."
    time: str | None  # ISO: the last transaction recovered (PITR), else the backup's snapshot/stop time
    time_basis: str  # how ``time`` is known
    lsn: str | None  # the last WAL replayed (PITR and base backups)
    backup_id: str  # the base or logical backup it started from
    timeline: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f" at LSN {self.lsn}" if self.lsn else ""
        return f"{self.how} from {self.backup_id}: {self.time or 'unknown time'} ({self.time_basis}){where}"


@dataclass(frozen=True)
class PastDatabase:
    dsn: str  # the restored database in the throwaway cluster (passfile, never a password)
    point: RestorePoint


def scope_reads(scope: Scope) -> Reads:
    """The tables a tenant restore reads in the past database, each with the column its tenant filter starts
    from (tenancy.tenant_filter): the key of the root, the first FK hop's column for every other table."""
    return {(t.schema, t.table): (t.path[0].pairs[0][0] if t.path else scope.key_column) for t in scope.tables}


def parse_time(text: str) -> RecoveryTarget:
    """``--at``: an ISO time with a UTC offset (targets.py's rules), refused when it lies in the future."""
    target = RecoveryTarget.parse(time=text)
    assert target.time is not None
    now = datetime.now(UTC)
    if target.time > now:
        raise PitrError(f"time {target.time.isoformat()} is in the future (it is now {now.isoformat(timespec='seconds')})",
                        fix="pass a time in the past, when the clinic's rows were as you want them back")
    return target


@contextmanager
def past_database(storage: Storage, identities: Sequence[object], work_dir: Path, *, database: str,
                  at: RecoveryTarget | None = None, backup_id: str | None = None, read_only: bool = False,
                  reads: Reads | None = None, progress: Progress | None = None,
                  log: Log | None = None) -> Iterator[PastDatabase]:
    """The database ``database`` as it was at ``at`` or in backup ``backup_id`` (exactly one), in a leased
    throwaway cluster removed when the block ends (see the module docstring). ``read_only``: the caller
    never writes to it (a PITR then pauses at the target instead of promoting). ``reads``: the only tables the
    caller reads, and the column each is filtered on: a base backup's other index files are left out
    (core/restore/partial.py; the cluster is then promoted, not paused)."""
    if (at is None) == (backup_id is None):
        raise PitrError("say which past to restore", fix="pass exactly one of --at TIME or --backup ID")
    work_dir = Path(work_dir)
    for line in sweep_leftovers(work_dir):
        if log:
            log(f"removed leftover {line}")
    if at is not None:
        with _pitr(storage, identities, work_dir, list_backups(storage), at, database=database,
                   requested=at.describe(), progress=progress, log=log, pause=read_only, reads=reads) as past:
            yield past
        return
    assert backup_id is not None
    entry = find_backup(storage, backup_id)
    if entry.kind == "base":
        if not entry.restorable:
            raise PitrError(f"base backup {entry.id} is not restorable ({entry.status})",
                            fix="choose another backup (`drp backup list`), or check WAL archiving (`drp wal status`)")
        with _pitr(storage, identities, work_dir, [entry], RecoveryTarget("immediate"), database=database,
                   requested=f"backup {entry.id}", progress=progress, log=log, pause=read_only, reads=reads) as past:
            yield past
        return
    with restored_cluster(storage, entry, identities, work_dir, PURPOSE, progress=progress, log=log) as restored:
        point = entry.restore_point
        yield PastDatabase(restored.dsn, RestorePoint(
            how="logical backup", requested=f"backup {entry.id}", time=point.isoformat() if point else None,
            time_basis="the backup's snapshot time", lsn=None, backup_id=entry.id))


@contextmanager
def _pitr(storage: Storage, identities: Sequence[object], work_dir: Path, entries: Sequence[BackupEntry],
          target: RecoveryTarget, *, database: str, requested: str, progress: Progress | None,
          log: Log | None, pause: bool = False, reads: Reads | None = None) -> Iterator[PastDatabase]:
    """restore_to_point into ``<lease>/data`` (where the sweep looks), kept running for the block, then removed;
    ``pause``: left a read-only hot standby at the target; ``reads``: a partial extraction (past_database)."""
    lease = take_lease(work_dir, CLUSTERS, PURPOSE, mode=0o711)
    data_dir = lease.path / "data"
    plans: list[PartialPlan] = []

    def leave_out(base: BaseBackup) -> Callable[[str], bool] | None:
        plan = plan_partial(IndexMap.from_extra(base.entry.manifest.extra), database, reads or {})
        if log:
            log(plan.describe() if plan else f"base backup {base.id} maps no index of {database}: extracting every file")
        plans.extend([plan] if plan else [])
        return plan.leaves_out if plan else None

    try:
        result = restore_to_point(storage, target, data_dir, entries=entries,
                                  extract=extract_from_storage(storage, identities, progress, durable=False,
                                                               leave_out=leave_out if reads else None),
                                  work_dir=work_dir, identities=identities, keep_running=True, progress=progress,
                                  log=log, settings=FAST_THROWAWAY, pause=pause and not reads,
                                  socket_only=bool(reads))
        rec = result.recovery
        if rec.last_commit_time:
            time, basis = rec.last_commit_time, "commit time of the last transaction recovered"
        else:
            time, basis = result.base.stop_time.isoformat(), "no transaction replayed: the base backup's stop time"
        point = RestorePoint(how="pitr" if target.kind != "immediate" else "base backup", requested=requested,
                             time=time, time_basis=basis, lsn=rec.replayed_to, backup_id=result.base.id,
                             timeline=rec.timeline)
        if log:
            log(f"restored: {point.describe()}")
        assert rec.dsn is not None  # kept running: TCP with the passfile, or the private socket (paused, socket_only)
        dsn = make_conninfo(rec.dsn, dbname=database)
        for plan in plans:
            with psycopg.connect(dsn, autocommit=True) as conn:
                marked = disable_left_out(conn, plan)
            if log:
                log(f"{marked} left-out index(es) marked invalid in the past database")
        yield PastDatabase(dsn, point)
    finally:
        LocalCluster(data_dir=data_dir, port=0).remove()
        lease.release()
