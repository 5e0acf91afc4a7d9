"""backup_verification: restore the newest backup of each kind into a throwaway cluster and check it.

A logical backup is restored and compared with its manifest; a base backup (when there is one) is
recovered to its stop point, proven with pg_verifybackup and checked (core/verify/base.py). The
metadata keeps the logical backup's keys as before and adds base_* keys for the base backup.

A failed verification is recorded in the catalog (the backup stops counting as restorable),
fails the blocking check, so the run fails and run_failure_alert notifies.
"""

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.core.verify.restore import verify_each_kind
from dr_pipelines.defs.backups.assets import BACKUP_KEY
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.

VERIFICATION_KEY = dg.AssetKey("backup_verification")


@dg.asset(key=VERIFICATION_KEY, deps=[BACKUP_KEY], group_name="verification", kinds={"postgres"},
          tags={"drp/source": "primary"})
def backup_verification(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
    """Restore the newest restorable backup of each kind and prove it: rows, checksums, amcheck, FKs, sequences, probes."""
    reports = verify_each_kind(drp.settings(), progress=lambda phase, done, total: None, log=context.log.info)
    for report in reports:
        context.log.info(report.summary())
    report = reports[0]
    base = next((r for r in reports if r.kind == "base"), None)
    extra = {} if base is None else {
        "base_backup_id": base.backup_id,
        "base_backup_verified": base.passed,
        "base_failed_checks": ", ".join(c.name for c in base.failed_checks) or ("restore" if base.error else "none"),
        "base_restore_point": base.restore_point or "n/a",
        "base_tables": len(base.tables),
    }
    return dg.MaterializeResult(
        metadata={
            "backup_id": report.backup_id,
            "backup_verified": all(r.passed for r in reports),
            "failed_checks": ", ".join(c.name for c in report.failed_checks) or ("restore" if report.error else "none"),
            "error": "; ".join(r.error for r in reports if r.error) or "none",
            "fetch_seconds": dg.MetadataValue.float(round(report.fetch_seconds, 2)),
            "restore_seconds": dg.MetadataValue.float(round(report.restore_seconds, 2)),
            "checks_seconds": dg.MetadataValue.float(round(report.checks_seconds, 2)),
            "checks": dg.MetadataValue.md("\n".join(r.to_markdown() for r in reports)),
            **extra,
        }
    )


@dg.asset_check(asset=VERIFICATION_KEY, blocking=True, description="The newest backup restored and passed every check.")
def verification_passed(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(VERIFICATION_KEY)
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    passed = bool(meta.get("backup_verified") and meta["backup_verified"].value)
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        metadata={k: meta[k].value for k in ("backup_id", "failed_checks", "error") if k in meta},
    )


def build(settings: Settings) -> dg.Definitions:
    # The status is refreshed after a verification; a failed (blocking) check stops it, and the run fails.
    job = dg.define_asset_job("verification_job", selection=dg.AssetSelection.assets(VERIFICATION_KEY, "dr_status"),
                              tags={"drp/source": "primary"})
    schedule = dg.ScheduleDefinition(name="verification_schedule", job=job, cron_schedule=settings.verify_cron,
                                     execution_timezone="UTC", default_status=schedule_status(settings))
    return dg.Definitions(assets=[backup_verification], asset_checks=[verification_passed], jobs=[job],
                          schedules=[schedule])
