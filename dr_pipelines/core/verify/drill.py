"""The DR drill: as if the primary were gone, restore the newest backup from storage only and measure.

RTO = drill start to restored-and-checked. RPO achieved = age of the restore point at drill
start (what a real disaster at that moment would have lost). Reports go to storage under
drills/<YYYY-MM>/ as JSON and Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups, newest_restorable
from dr_pipelines.core.layout import DRILL_MARKDOWN_NAME, DRILL_REPORT_NAME, DRILLS, drill_prefix
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
    started = datetime.now(UTC)
    month = month or started.strftime("%Y-%m")
    entry = newest_restorable(list_backups(storage), kind="logical")
    verification, error, notes = None, None, []
    if entry is None:
        error = "no restorable backup in storage"
    else:
        verification = verify_backup(storage, entry, identities, work_dir, probes=probes, heapallindexed=heapallindexed,
                                     durable=True, purpose="drill")
        if not verification.passed:
            notes.append("the newest backup failed verification and is now marked unverified; the next drill uses an older one")
    finished = datetime.now(UTC)
    point = entry.restore_point if entry else None
    report = DrillReport(
        month=month, started_at=started, finished_at=finished, backup_id=entry.id if entry else None,
        restore_point=point, rto_seconds=(finished - started).total_seconds(),
        rpo_seconds=(started - point).total_seconds() if point else None,
        rto_target_seconds=rto_target_minutes * 60, rpo_target_seconds=rpo_target_minutes * 60,
        verification=verification, error=error, notes=notes,
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
