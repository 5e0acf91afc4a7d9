"""tenant_restore_job (one clinic, on request: preview, into a schema, or apply) and the monthly tenant_restore_drill.

Both call core/tenant_restore (run.py, drill.py), as `drp tenant restore` does; nothing is computed here.
"""

from typing import Any, Literal

import dagster as dg
from pydantic import Field

from dr_pipelines.core import context as core_context
from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.tenant_restore.drill import tenant_restore_drill
from dr_pipelines.core.tenant_restore.run import Outcome, Request, tenant_restore
from dr_pipelines.defs.drills.definitions import MONTHS
from dr_pipelines.defs.exports.definitions import CLINICS
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource

# No `from __future__ import annotations` here: Dagster validates the context and config annotations.

DRILL_KEY = dg.AssetKey("tenant_restore_drill")
DRILL_CHECK = "all_clinics_equal_originals"
# Per-table counts a mode reports: the preview's diff, the apply's writes; totals for all but the first three.
COUNTS = ("past_rows", "live_rows", "unchanged", "deleted", "added", "changed", "inserted", "updated", "skipped",
          "archived", "rows")


class TenantRestoreConfig(dg.Config):
    """`drp tenant restore` for the run's clinic (its partition key: a tenant_export partition)."""

    at: str = Field(default="", description="the time to go back to, with a UTC offset, e.g. '2026-12-01 14:05:00+00'")
    backup_id: str = Field(default="", description="or a backup id (logical, or base: recovered to its stop)")
    mode: Literal["preview", "into_schema", "apply"] = Field(default="preview", description="preview writes nothing")
    schema_name: str = Field(default="", description="into_schema: the new schema of live the past rows go to")
    policy: str = Field(default="", description="apply: restore-deleted, revert-changed or both")
    on_conflict: str = Field(default="", description="apply: 'skip' conflicting rows (else the apply is refused)")
    requester: str = Field(default="", description="who asked (audited); default: the Dagster run")
    reason: str = Field(default="", description="apply: why, e.g. the ticket (audited)")
    undo_allow_plaintext: bool = Field(default=False, description="apply: let the undo export go to storage that "
                                       "does not encrypt at rest (a local directory)")


class TenantDrillConfig(dg.Config):
    clinic: str = Field(default="", description="the clinic to damage and restore; default: the first one")


def request_for(clinic: str, config: TenantRestoreConfig, run_id: str) -> Request:
    """The CLI's Request from the run config (the same checks then refuse a malformed one)."""
    if config.mode == "into_schema" and not config.schema_name.strip():
        raise ConfigError("mode into_schema needs the schema to create", fix="set schema_name in the run config")
    return Request(clinic=clinic, at=config.at or None, backup_id=config.backup_id or None,
                   into_schema=config.schema_name if config.mode == "into_schema" else None,
                   apply=config.mode == "apply", policy=config.policy or None, on_conflict=config.on_conflict or None,
                   reason=config.reason or None, requester=config.requester.strip() or f"dagster run {run_id}",
                   undo_allow_plaintext=config.undo_allow_plaintext)


def outcome_metadata(outcome: Outcome) -> dict[str, Any]:
    """The restore point, per-table counts (whatever the mode reports per table) and the report paths.

    Counts only: the reports' sample keys stay in the 0600 files, out of Dagster's event log."""
    rows = table_rows(outcome.result)
    columns = [c for c in COUNTS if any(c in r for r in rows)]
    meta: dict[str, Any] = {
        "clinic": outcome.clinic, "mode": outcome.request.mode,
        "restore_point": outcome.point.describe() if outcome.point else "none",
        **{f"report_{p.suffix.lstrip('.')}": dg.MetadataValue.path(str(p)) for p in outcome.reports},
        "seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in outcome.seconds.items()}),
        "tables": dg.MetadataValue.md("| table | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
                                      + "\n".join(f"| {r['table']} | " + " | ".join(str(r.get(c, "")) for c in columns)
                                                  + " |" for r in rows)),
    }
    for count in columns:
        if count in COUNTS[3:]:
            meta[f"total_{count}"] = dg.MetadataValue.int(sum(int(r.get(count) or 0) for r in rows))
    return meta


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A mode's per-table entries as dicts with a 'table' key (a list of dicts, or table -> dict / count)."""
    tables = result.get("tables", [])
    if isinstance(tables, dict):
        return [{"table": name, **(v if isinstance(v, dict) else {"rows": v})} for name, v in tables.items()]
    return [dict(t) for t in tables if isinstance(t, dict)]


def build(settings: Settings) -> dg.Definitions:
    @dg.op(out=dg.Out(dg.Nothing), tags={"drp/source": "primary"})
    def tenant_restore_op(context: dg.OpExecutionContext, config: TenantRestoreConfig,
                          drp: DrpSettingsResource) -> dg.Output:
        """`drp tenant restore` for the partition's clinic; the report's counts and paths as output metadata
        (no output value: the report, with the clinic's keys, stays in its 0600 files, not in Dagster's storage)."""
        s = drp.settings()
        request = request_for(context.partition_key, config, context.run_id)
        outcome = tenant_restore(s, request, identities=core_context.identities(s), log=context.log.info)
        return dg.Output(None, metadata=outcome_metadata(outcome))

    @dg.job(name="tenant_restore_job", partitions_def=CLINICS, tags={"drp/source": "primary"},
            description="Restore one clinic (the partition) to a point in time: preview, into a schema, or apply.")
    def tenant_restore_job() -> None:
        tenant_restore_op()

    @dg.asset(key=DRILL_KEY, partitions_def=MONTHS, group_name="drills", kinds={"postgres"},
              check_specs=[dg.AssetCheckSpec(DRILL_CHECK, asset=DRILL_KEY, blocking=True,
                                             description="After the restore every clinic's rows equal the originals.")],
              tags={"drp/source": "primary"})
    def tenant_restore_drill_asset(context: dg.AssetExecutionContext, config: TenantDrillConfig,
                                   drp: DrpSettingsResource) -> dg.MaterializeResult:
        """On a scratch copy of the newest backup: damage one clinic, restore it with --apply, compare checksums."""
        s = drp.settings()
        report = tenant_restore_drill(s, core_context.identities(s), month=context.partition_key[:7],
                                      clinic=config.clinic or None, log=context.log.info)
        context.log.info(f"tenant-restore drill {report.month}: {'passed' if report.passed else 'FAILED'}")
        return dg.MaterializeResult(
            metadata={
                "passed": report.passed, "backup_id": report.backup_id, "clinic": report.clinic,
                "clinics": dg.MetadataValue.int(report.clinics),
                "checksums_compared": dg.MetadataValue.int(report.tables_checked),
                "mismatches": dg.MetadataValue.int(len(report.mismatches)),
                "damage": dg.MetadataValue.json(report.damage),
                "duration_s": dg.MetadataValue.float(round(report.seconds, 1)),
                **{f"report_{p.suffix.lstrip('.')}": dg.MetadataValue.path(str(p)) for p in report.reports},
                "report": dg.MetadataValue.md(report.to_markdown()),
            },
            check_results=[dg.AssetCheckResult(
                check_name=DRILL_CHECK, passed=report.passed, severity=dg.AssetCheckSeverity.ERROR,
                metadata={"mismatches": "\n".join(report.mismatches[:20]) or "none"})],
        )

    drill_job = dg.define_asset_job("tenant_restore_drill_job", selection=dg.AssetSelection.assets(DRILL_KEY),
                                    tags={"drp/source": "primary"})

    @dg.schedule(name="tenant_restore_drill_schedule", job=drill_job, cron_schedule=settings.tenant_drill_cron,
                 execution_timezone="UTC", default_status=schedule_status(settings))
    def tenant_restore_drill_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        month = context.scheduled_execution_time.strftime("%Y-%m-01")
        return dg.RunRequest(run_key=f"tenant-drill-{month}", partition_key=month)

    return dg.Definitions(jobs=[tenant_restore_job, drill_job], assets=[tenant_restore_drill_asset],
                          schedules=[tenant_restore_drill_schedule])
