"""WAL retention: archived WAL is deleted only when no retained base backup needs it.

Backup retention (core/backup/gfs.py, pins included) decides which base backups stay; this module
follows from that decision instead of having rules of its own, so a pinned or GFS-kept base
backup can never lose the WAL that makes it restorable (a failure pgBackRest and WAL-G users
report when WAL expiry and backup expiry are configured separately).

A WAL file is needed when some retained base backup can reach it by recovery: it lies on the
backup's timeline or on a timeline descended from it (history files list every ancestor), at or
after the backup's first segment. Everything else older is deleted. Three more rules:

- History files are never deleted (a few bytes each, and without them timelines cannot be followed).
- No base backup at all, or a base backup whose manifest does not read: nothing is deleted. A
  damaged manifest hides where its WAL starts, and guessing wrong loses data.
- Continuity is checked first (``verify_archive`` from the oldest retained backup's start). A gap
  or a corrupt file refuses the prune unless the caller accepts it, and that decision is recorded
  as an event under ``wal/events/`` (never drop WAL without a loud, recorded decision).

Deleting removes the sidecar first (the commit), then the object: a prune killed in between
leaves an uncommitted object, which the next prune deletes too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dr_pipelines.core.backup.catalog import BASE_KIND, BackupEntry
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import record_event
from dr_pipelines.core.wal.names import (
    DEFAULT_SEGMENT_BYTES,
    Segment,
    is_history,
    object_key,
    sidecar_key,
)
from dr_pipelines.core.wal.verify import ArchiveScan, WalReport, verify_archive


class WalRetentionRefused(DrpError):
    """Deleting WAL now could make a retained backup unrestorable, or the archive has problems."""

    def __init__(self, problem: str, fix: str | None = None, *, plan: WalPrunePlan | None = None) -> None:
        super().__init__(problem, fix)
        self.plan = plan  # what would have been deleted, for a dry run to show


@dataclass(frozen=True)
class WalNeed:
    """Where the WAL one retained base backup needs begins."""

    backup_id: str
    timeline: int
    start: Segment
    segment_bytes: int


@dataclass
class WalPrunePlan:
    needs: list[WalNeed]
    delete: list[str] = field(default_factory=list)  # WAL file names, oldest first
    kept: int = 0
    delete_bytes: int = 0
    reason: str | None = None  # why nothing may be deleted, if so
    report: WalReport | None = None

    def as_dict(self) -> dict[str, object]:
        return {"needs": [{"backup": n.backup_id, "timeline": n.timeline, "from": n.start.name} for n in self.needs],
                "delete": self.delete, "kept": self.kept, "delete_bytes": self.delete_bytes, "reason": self.reason,
                "continuity": self.report.as_dict() if self.report else None}


@dataclass
class WalPruneResult:
    plan: WalPrunePlan
    deleted: list[str]
    dry_run: bool
    event: str | None = None  # the recorded decision when problems were accepted
    accepted_problems: str | None = None  # the archive's problems this prune went past (--accept-gaps)


def needs_of(entries: Iterable[BackupEntry]) -> tuple[list[WalNeed], str | None]:
    """The WAL needs of the retained base backups, or a reason why none can be worked out safely."""
    needs = []
    for entry in entries:
        if entry.error:
            return [], f"backup {entry.id} has an unreadable manifest ({entry.error}): where its WAL starts is unknown"
        m = entry.manifest
        if m is None or m.kind != BASE_KIND:
            continue
        extra = m.extra
        try:
            start = Segment.parse(extra["wal_start"])
            needs.append(WalNeed(entry.id, int(extra["timeline"]), start,
                                 int(extra.get("segment_bytes") or DEFAULT_SEGMENT_BYTES)))
        except (KeyError, TypeError, ValueError, DrpError):
            return [], f"base backup {entry.id} records no usable wal_start/timeline"
    if not needs:
        return [], "no base backup is retained: no WAL can be anchored to one, so none is deleted"
    return needs, None


def plan_wal_prune(storage: Storage, entries: Iterable[BackupEntry]) -> WalPrunePlan:
    """What a prune would delete, given the backups retention keeps (``entries``: all that remain), with the
    continuity report from the oldest needed start: one listing and one read of each sidecar for both."""
    needs, reason = needs_of(entries)
    plan = WalPrunePlan(needs, reason=reason)
    if reason:
        return plan
    scan = ArchiveScan.read(storage)
    ancestors = _ancestors(scan)
    oldest = min(needs, key=lambda n: (n.timeline, n.start.number(n.segment_bytes)))
    for name in sorted(scan.stored_bytes):
        if is_history(name) or _needed(name, needs, ancestors):
            plan.kept += 1
        else:
            plan.delete.append(name)
            plan.delete_bytes += scan.stored_bytes[name]
    plan.report = verify_archive(storage, start=oldest.start.name, read=False, scan=scan)
    return plan


def prune_wal(storage: Storage, entries: Iterable[BackupEntry], *, dry_run: bool,
              accept_problems: bool = False) -> WalPruneResult:
    """Plan, check continuity, then (unless ``dry_run``) delete what no retained base backup needs.

    A dry run decides exactly as the real run would: problems in the archive refuse it too (the same
    WalRetentionRefused, saying the real run would refuse), unless ``accept_problems``.
    """
    plan = plan_wal_prune(storage, entries)
    result = WalPruneResult(plan, [], dry_run)
    if plan.reason or not plan.delete:
        return result
    report = plan.report
    if report is not None and not report.ok:
        result.accepted_problems = _problems(report)
        if not accept_problems:
            raise WalRetentionRefused(
                f"{'dry run: a real prune would refuse: ' if dry_run else ''}the WAL archive has problems from "
                f"{report.start} on ({result.accepted_problems}); no WAL {'would be' if dry_run else 'was'} deleted",
                fix="run `drp wal verify` and take a new base backup after the gap; to prune anyway, accept it "
                    "explicitly with `drp wal prune --accept-gaps` (that is the decision, and it is recorded)",
                plan=plan)
        if not dry_run:
            result.event = record_event(storage, "prune-accepted-gaps", report.start or "-",
                                        {"problems": result.accepted_problems, "deleting": len(plan.delete)})
    if dry_run:
        return result
    for name in plan.delete:
        storage.delete(sidecar_key(name))
        storage.delete(object_key(name))
        result.deleted.append(name)
    return result


def _problems(report: WalReport) -> str:
    parts = [f"{g.status} {g.first}..{g.last} ({g.count})" for g in report.gaps if g.status != "in-flight"]
    parts += [f"{p['status']} {p['name']}" for p in report.problems if p["status"] != "in-flight"]
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")


def _ancestors(scan: ArchiveScan) -> dict[int, set[int]]:
    """timeline -> every timeline it descends from, from the committed history sidecars.

    A history file whose sidecar does not read yields no ancestors, so that timeline's WAL
    is kept only by backups taken on it: never more deleted than with the history known.
    """
    out: dict[int, set[int]] = {}
    for name, sidecar in scan.sidecars.items():
        if is_history(name) and sidecar is not None:
            out[sidecar.timeline] = {int(tl) for tl, _ in (sidecar.switches or [])}
    return out


def _needed(name: str, needs: list[WalNeed], ancestors: dict[int, set[int]]) -> bool:
    """Segments, .partial and .backup files are kept if a retained base backup's recovery can reach them."""
    try:
        segment = Segment.parse(name[:24])
    except DrpError:
        return True  # not a name we can place: keep it
    for need in needs:
        on_path = segment.timeline == need.timeline or need.timeline in ancestors.get(segment.timeline, set())
        if on_path and segment.number(need.segment_bytes) >= need.start.number(need.segment_bytes):
            return True
    return False
