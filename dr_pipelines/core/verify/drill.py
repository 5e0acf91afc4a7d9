"""The DR drill: as if the primary were gone, restore from storage only and measure.

The loss is simulated at the drill's start T. With a restorable base backup (WAL archiving on)
the drill is a real PITR: the newest base backup recovered to the end of the archive (``latest``),
promoted and checked; RPO achieved = T - the commit time of the last transaction recovered
(pg_last_xact_replay_timestamp at promotion). Without one it restores the newest logical backup;
RPO achieved = T - its restore point. RTO = T to restored-and-checked, in both. Reports go to
storage under drills/<YYYY-MM>/ as JSON and Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups, newest_restorable
from dr_pipelines.core.layout import DRILL_MARKDOWN_NAME, DRILL_REPORT_NAME, DRILLS, drill_prefix
from dr_pipelines.core.restore.pitr import RecoveryTarget
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.verify.checks import Probe
from dr_pipelines.core.verify.report import DrillReport
from dr_pipelines.core.verify.restore import verify_backup


def drill_now(settings: Settings, *, identity: Path | None = None, month: str | None = None) -> DrillReport:
    """The drill as `drp drill run` and the Dagster drill asset run it: configured storage, keys, targets, probes."""
    return run_drill(context.storage(settings), context.identities(settings, identity), Path(settings.work_dir),
                     rto_target_minutes=settings.rto_minutes, rpo_target_minutes=settings.rpo_minutes,
                     probes=context.probes(settings), month=month)


def run_drill(
    storage: Storage,
    identities: Sequence[object],
    work_dir: Path,
    *,
    rto_target_minutes: int,
    rpo_target_minutes: int,
    probes: Sequence[Probe] = (),
    month: str | None = None,
    heapallindexed: bool = True,
) -> DrillReport:
    """Run one drill and store its report; returns the report (passed or not)."""
    started = datetime.now(UTC)  # T: the simulated loss of the primary
    month = month or started.strftime("%Y-%m")
    entries = list_backups(storage)
    entry = newest_restorable(entries, kind="base") or newest_restorable(entries, kind="logical")
    verification, error, notes = None, None, []
    if entry is None:
        error = "no restorable backup in storage"
    else:
        verification = verify_backup(storage, entry, identities, work_dir, probes=probes, heapallindexed=heapallindexed,
                                     durable=True, purpose="drill", target=RecoveryTarget("latest"))
        if not verification.passed:
            notes.append("the newest backup failed verification and is now marked unverified; the next drill uses an older one")
    finished = datetime.now(UTC)
    point, basis = entry.restore_point if entry else None, "the backup's restore point"
    if verification is not None and verification.kind == "base":
        point = datetime.fromisoformat(verification.restore_point) if verification.restore_point else None
        basis = verification.restore_point_basis or basis
    report = DrillReport(
        month=month, started_at=started, finished_at=finished, backup_id=entry.id if entry else None,
        restore_point=point, rto_seconds=(finished - started).total_seconds(),
        rpo_seconds=(started - point).total_seconds() if point else None,
        rto_target_seconds=rto_target_minutes * 60, rpo_target_seconds=rpo_target_minutes * 60,
        verification=verification, error=error, notes=notes, kind=entry.kind if entry else None, rpo_basis=basis,
    )
    write_drill_report(storage, report)
    return report


def write_drill_report(storage: Storage, report: DrillReport) -> str:
    prefix = drill_prefix(report.month)
    storage.put_bytes(f"{prefix}/{DRILL_MARKDOWN_NAME}", report.to_markdown().encode())
    storage.put_bytes(f"{prefix}/{DRILL_REPORT_NAME}", report.to_json().encode())  # last: the JSON is what status reads
    return prefix


def drill_reports(storage: Storage) -> list[dict]:  # type: ignore[type-arg]
    """Every stored drill report (JSON), oldest month first."""
    import json

    return [json.loads(storage.get_bytes(o.key)) for o in storage.list(DRILLS + "/") if o.key.endswith("/" + DRILL_REPORT_NAME)]
