"""The success metrics in one view, from the storage catalog alone (works with Dagster gone).

Backup success rate (30 days, from attempt records), the recovery point's age vs the RPO target
(the newest archived WAL segment when storage holds a WAL archive, else the newest restorable
backup: ``recovery_point_age``), the last verification, the last drill and its RTO vs the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dr_pipelines.core import context
from dr_pipelines.core.backup.attempts import attempt_stats
from dr_pipelines.core.backup.catalog import BackupEntry, damaged, list_backups, newest_restorable
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.verify.drill import drill_reports
from dr_pipelines.core.wal.archive import newest_committed
from dr_pipelines.core.wal.status import PgWalState, archive_is_current

DRILL_OVERDUE = timedelta(days=32)  # monthly drills, with a day's grace


@dataclass
class Status:
    checked_at: str
    storage: str
    backups: int
    damaged: list[str]  # ids whose manifest no longer reads: never restorable
    success_rate_30d: float | None
    attempts_30d: dict[str, int]
    newest_restorable: str | None
    newest_restore_point: str | None
    newest_age_minutes: float | None
    recovery_point: str  # what a loss now falls back to: "WAL segment …", "backup …" or "none"
    recovery_point_age_minutes: float | None  # the RPO measured: what a loss now would lose
    rpo_target_minutes: int
    rpo_met: bool
    last_verification: dict[str, Any] | None
    last_drill: dict[str, Any] | None
    rto_target_minutes: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def rpo_age(entries: list[BackupEntry], now: datetime) -> tuple[BackupEntry | None, float | None]:
    """The newest restorable backup and its age in minutes at ``now`` (None, None when there is none)."""
    newest = newest_restorable(entries)
    point = newest.restore_point if newest else None
    return newest, (now - point).total_seconds() / 60 if point else None


def recovery_point_age(storage: Storage, entries: list[BackupEntry], now: datetime,
                       pg: PgWalState | None = None) -> tuple[str, float | None]:
    """What a loss at ``now`` would fall back to, and its age in minutes: with a WAL archive (archiving
    configured) the newest archived segment (pushed_at: everything committed before that push is
    restorable by PITR; age 0 when the server ``pg`` is caught up into this archive: an idle server
    completes no segment and loses nothing), else the newest restorable backup. ("none", None) when
    there is neither. WAL counts only beside a restorable base backup: replay needs one to start from,
    so an archive of WAL alone restores nothing."""
    if not any(e.kind == "base" and e.restorable for e in entries):
        newest, age = rpo_age(entries, now)
        return (f"backup {newest.id}" if newest else "none"), age
    segment = newest_committed(storage, pg.last_archived_wal if pg else None)
    if segment is not None and archive_is_current(pg, storage, segment.name):
        return f"WAL segment {segment.name} (server caught up)", 0.0
    if segment is not None and segment.pushed_at:
        pushed = datetime.fromisoformat(segment.pushed_at).astimezone(UTC)
        return f"WAL segment {segment.name}", (now - pushed).total_seconds() / 60
    newest, age = rpo_age(entries, now)
    return (f"backup {newest.id}" if newest else "none"), age


def current_status(settings: Settings, *, now: datetime | None = None, pg: PgWalState | None = None) -> Status:
    """``pg``: the source's archiving state when the caller could read it (server_wal_state); it lets a
    caught-up but idle server count as current (recovery_point_age)."""
    now = now or datetime.now(UTC)
    storage = context.storage(settings)
    entries = list_backups(storage)
    newest, age = rpo_age(entries, now)
    point = newest.restore_point if newest else None
    recovery_point, rpo = recovery_point_age(storage, entries, now, pg)
    stats = attempt_stats(storage, now=now)
    verified = [e for e in entries if e.verification]
    last_verification = None
    if verified:
        latest = max(verified, key=lambda e: str((e.verification or {}).get("finished_at") or ""))
        v = latest.verification or {}
        last_verification = {"backup_id": latest.id, "passed": v.get("passed"), "finished_at": v.get("finished_at")}
    drills = drill_reports(storage)
    last_drill = None
    if drills:
        d = drills[-1]
        last_drill = {k: d.get(k) for k in ("month", "passed", "finished_at", "backup_id", "kind", "rto_seconds", "rpo_seconds",
                                            "rto_met", "rpo_met")}
    problems = []
    broken = [e.id for e in damaged(entries)]
    if broken:
        problems.append(f"{len(broken)} damaged backup(s), manifest unreadable: {', '.join(broken)}")
    rpo_met = rpo is not None and rpo <= settings.rpo_minutes
    if not rpo_met:
        problems.append("no restorable backup" if rpo is None else
                        f"recovery point ({recovery_point}) is {rpo:.0f} min old, RPO target {settings.rpo_minutes} min")
    if stats.rate is not None and stats.rate < 1:
        problems.append(f"backup success rate {stats.rate:.1%} over 30 days (last failure {stats.last_failure})")
    if last_verification and not last_verification["passed"]:
        problems.append(f"last verification failed (backup {last_verification['backup_id']})")
    if last_verification is None:
        problems.append("no backup has been verified")
    if last_drill is None:
        problems.append("no DR drill has run")
    elif not last_drill["passed"]:
        problems.append(f"last DR drill ({last_drill['month']}) failed")
    elif now - datetime.fromisoformat(last_drill["finished_at"]) > DRILL_OVERDUE:
        problems.append(f"the monthly DR drill is overdue (last: {last_drill['month']})")
    return Status(
        checked_at=now.isoformat(), storage=storage.url, backups=sum(1 for e in entries if e.complete), damaged=broken,
        success_rate_30d=stats.rate,
        attempts_30d={"succeeded": stats.succeeded, "failed": stats.failed, "running": stats.running},
        newest_restorable=newest.id if newest else None, newest_restore_point=point.isoformat() if point else None,
        newest_age_minutes=round(age, 1) if age is not None else None, recovery_point=recovery_point,
        recovery_point_age_minutes=round(rpo, 1) if rpo is not None else None, rpo_target_minutes=settings.rpo_minutes,
        rpo_met=rpo_met, last_verification=last_verification, last_drill=last_drill,
        rto_target_minutes=settings.rto_minutes, problems=problems,
    )
