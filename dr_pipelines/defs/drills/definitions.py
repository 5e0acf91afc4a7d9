"""dr_drill: as if the primary were gone, restore the newest backup from storage, check, measure RTO and RPO."""

import re
from datetime import timedelta

import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.layout import DRILL_MARKDOWN_NAME, drill_prefix
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.verify.drill import drill_now
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.

DRILL_KEY = dg.AssetKey("dr_drill")
MONTHS = dg.MonthlyPartitionsDefinition(start_date="2026-01-01", end_offset=1)  # the current month is drillable


def drill_deadline_cron(drill_cron: str) -> str:
    """Two days after the scheduled drill: a drill not done by then is missed (freshness turns red)."""
    minute, hour, day, *_ = drill_cron.split()
    if re.fullmatch(r"\d+", day) and int(day) <= 26 and re.fullmatch(r"\d+", minute) and re.fullmatch(r"\d+", hour):
        return f"{minute} {hour} {int(day) + 2} * *"
    return "0 0 3 * *"


def build(settings: Settings) -> dg.Definitions:
    @dg.asset(
        key=DRILL_KEY, partitions_def=MONTHS, group_name="drills", kinds={"postgres"},
        freshness_policy=dg.FreshnessPolicy.cron(deadline_cron=drill_deadline_cron(settings.drill_cron),
                                                 lower_bound_delta=timedelta(days=28)),
        tags={"drp/source": "primary"},
    )
    def dr_drill(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
        """A DR drill for the partition's month; the report (JSON and Markdown) goes to storage."""
        s = drp.settings()
        month = context.partition_key[:7]
        report = drill_now(s, month=month)
        context.log.info(f"drill {month}: {'passed' if report.passed else 'FAILED'}")
        return dg.MaterializeResult(
            metadata={
                "passed": report.passed,
                "backup_id": report.backup_id or "none",
                "drill_kind": "PITR to latest" if report.kind == "base" else (report.kind or "none"),
                "rpo_basis": report.rpo_basis,
                "rto_minutes": dg.MetadataValue.float(round(report.rto_seconds / 60, 2)),
                "rto_target_minutes": s.rto_minutes,
                "rpo_minutes": dg.MetadataValue.float(round(report.rpo_seconds / 60, 2)) if report.rpo_seconds is not None
                else "n/a",
                "rpo_target_minutes": s.rpo_minutes,
                "report_uri": f"{core_context.storage(s).url}/{drill_prefix(month)}/{DRILL_MARKDOWN_NAME}",
                "report": dg.MetadataValue.md(report.to_markdown()),
            }
        )

    @dg.asset_check(asset=DRILL_KEY, blocking=True, description="The drill restored, checked, and met RTO and RPO.")
    def drill_passed(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(DRILL_KEY)
        meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
        return dg.AssetCheckResult(
            passed=bool(meta.get("passed") and meta["passed"].value), severity=dg.AssetCheckSeverity.ERROR,
            metadata={k: meta[k].value for k in ("backup_id", "rto_minutes", "rpo_minutes") if k in meta},
        )

    job = dg.define_asset_job("dr_drill_job", selection=dg.AssetSelection.assets(DRILL_KEY), tags={"drp/source": "primary"})

    @dg.schedule(name="dr_drill_schedule", job=job, cron_schedule=settings.drill_cron, execution_timezone="UTC",
                 default_status=schedule_status(settings))
    def dr_drill_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        month = context.scheduled_execution_time.strftime("%Y-%m-01")
        return dg.RunRequest(run_key=f"drill-{month}", partition_key=month)

    return dg.Definitions(assets=[dr_drill], asset_checks=[drill_passed], jobs=[job], schedules=[dr_drill_schedule])
