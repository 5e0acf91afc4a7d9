"""Apply a GFS retention policy to the backups in storage (pins and the newest restorable always stay)."""

from __future__ import annotations

from dataclasses import dataclass

from dr_pipelines.core.backup.catalog import BackupEntry, delete_backup, list_backups
from dr_pipelines.core.backup.gfs import Candidate, Decision, RetentionPolicy, plan
from dr_pipelines.core.storage import Storage


@dataclass
class PruneResult:
    decisions: list[Decision]
    deleted: list[str]
    dry_run: bool

    @property
    def kept(self) -> list[str]:
        return [d.candidate.id for d in self.decisions if d.keep]


def candidates(entries: list[BackupEntry]) -> list[Candidate]:
    out = []
    for e in entries:
        if e.complete and e.restore_point is not None:
            out.append(Candidate(id=e.id, time=e.restore_point, pinned=e.pin is not None, restorable=e.restorable))
    return out


def prune_backups(storage: Storage, policy: RetentionPolicy, *, dry_run: bool) -> PruneResult:
    """Decide with restic semantics; unless dry_run, delete what no rule keeps (manifest first)."""
    entries = {e.id: e for e in list_backups(storage)}
    decisions = plan(candidates(list(entries.values())), policy)
    deleted = []
    if not dry_run:
        for d in decisions:
            if not d.keep:
                delete_backup(storage, entries[d.candidate.id])
                deleted.append(d.candidate.id)
    return PruneResult(decisions, deleted, dry_run)
