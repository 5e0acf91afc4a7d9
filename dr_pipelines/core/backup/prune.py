"""Apply a GFS retention policy to the backups in storage (pins and the newest restorable always stay).

The WAL archive is pruned right after, from the backups that remain (core/wal/retention.py): WAL
has no retention rules of its own, so it can never be deleted while a kept base backup needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dr_pipelines.core.backup.catalog import BackupEntry, delete_backup, list_backups
from dr_pipelines.core.backup.gfs import Candidate, Decision, RetentionPolicy, plan
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.retention import WalPruneResult, WalRetentionRefused, prune_wal


@dataclass
class PruneResult:
    decisions: list[Decision]
    deleted: list[str]
    dry_run: bool
    wal: WalPruneResult | None = None
    wal_refused: str | None = None  # why no WAL was deleted although some is unneeded (e.g. a gap)

    @property
    def kept(self) -> list[str]:
        return [d.candidate.id for d in self.decisions if d.keep]


def candidates(entries: list[BackupEntry]) -> list[Candidate]:
    out = []
    for e in entries:
        if e.complete and e.restore_point is not None:
            out.append(Candidate(id=e.id, time=e.restore_point, pinned=e.pin is not None, restorable=e.restorable))
    return out


def prune_backups(storage: Storage, policy: RetentionPolicy, *, dry_run: bool, wal: bool = True) -> PruneResult:
    """Decide with restic semantics; unless dry_run, delete what no rule keeps (manifest first), then the WAL
    no remaining base backup needs. A refused WAL prune (gaps) is reported in ``wal_refused``, not raised:
    the backups' own retention has been applied and stays applied."""
    entries = {e.id: e for e in list_backups(storage)}
    decisions = plan(candidates(list(entries.values())), policy)
    deleted = []
    if not dry_run:
        for d in decisions:
            if not d.keep:
                delete_backup(storage, entries[d.candidate.id])
                deleted.append(d.candidate.id)
    result = PruneResult(decisions, deleted, dry_run)
    if wal:
        remaining = [e for i, e in entries.items() if i not in deleted]
        try:
            result.wal = prune_wal(storage, remaining, dry_run=dry_run)
        except WalRetentionRefused as exc:
            result.wal_refused = str(exc)
    return result
