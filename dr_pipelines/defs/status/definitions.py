"""dr_status: backup success rate (run history and storage), newest restorable vs RPO, last verification, last drill."""

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.core.status import current_status
from dr_pipelines.core.wal.status import server_wal_state
from dr_pipelines.defs.backups.assets import BACKUP_JOB, BACKUP_KEY
from dr_pipelines.defs.backups.history import success_rate
from dr_pipelines.defs.drills.definitions import DRILL_KEY
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.verification.definitions import VERIFICATION_KEY

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.


@dg.asset(deps=[BACKUP_KEY, VERIFICATION_KEY, DRILL_KEY], group_name="status")
def dr_status(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
    """The product's targets, measured: success rate, RPO, last verification, last drill and its RTO."""
    s = drp.settings()
    st = current_status(s, pg=server_wal_state(s.dsn)[0])
    runs = success_rate(context.instance, BACKUP_JOB, days=30)
    d = st.last_drill or {}
    return dg.MaterializeResult(
        metadata={
            "ok": st.ok,
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in st.problems) or "none"),
            "backup_success_rate_30d_runs": runs.describe(),
            "backup_success_rate_30d_storage": f"{st.success_rate_30d:.1%}" if st.success_rate_30d is not None else "n/a",
            "newest_restorable": st.newest_restorable or "none",
            "newest_age_minutes": st.newest_age_minutes if st.newest_age_minutes is not None else "n/a",
            "recovery_point": st.recovery_point,
            "recovery_point_age_minutes": st.recovery_point_age_minutes
            if st.recovery_point_age_minutes is not None else "n/a",
            "rpo_target_minutes": st.rpo_target_minutes,
            "rpo_met": st.rpo_met,
            "last_verification": dg.MetadataValue.json(st.last_verification or {}),
            "last_drill_month": d.get("month", "never"),
            "last_drill_rto_minutes": round(d["rto_seconds"] / 60, 2) if d else "n/a",
            "rto_target_minutes": st.rto_target_minutes,
        }
    )


def build(settings: Settings) -> dg.Definitions:
    job = dg.define_asset_job("dr_status_job", selection=[dr_status])
    schedule = dg.ScheduleDefinition(name="dr_status_hourly", job=job, cron_schedule="30 * * * *",
                                     execution_timezone="UTC", default_status=schedule_status(settings))
    return dg.Definitions(assets=[dr_status], jobs=[job], schedules=[schedule])
