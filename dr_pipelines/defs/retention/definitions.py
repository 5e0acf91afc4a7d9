"""An archival asset per retention policy: each monthly partition is that month's enforcement pass.

Partition ``2026-03-01`` runs retention as of the end of March 2026 (or now, if earlier):
rows older than their rule's period at that instant are archived, verified and deleted.
Backfilling an old partition enforces as of then, which never removes more than a later
pass would. Three checks ride on each materialization (yielded with it, so they see the
same run): nothing expired remains outside legal holds, every row archived in the run was
deleted unless it was kept (changed since its archive or held by then: archived - kept ==
deleted), and every archive of the run still matches its manifest in storage, with its
kept rows listed next to it (kept.json).
"""

from datetime import UTC, datetime

import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.retention.apply import ApplyOptions, apply_policies
from dr_pipelines.core.retention.plan import plan
from dr_pipelines.core.retention.policy import Policies, TablePolicy, load_policies
from dr_pipelines.core.retention.recheck import recheck_run
from dr_pipelines.core.retention.segment import ArchiveKeys
from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.

MONTHS = dg.MonthlyPartitionsDefinition(start_date="2026-01-01", end_offset=1)  # the current month runs
RETENTION_CRON = "0 3 1 * *"  # 03:00 UTC on the 1st: the new month's pass
GROUP = "retention"
CHECKS = ("no_expired_rows_remain", "archived_equals_deleted", "archive_manifests_verify")


def asset_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["retention", table.replace(".", "__")])


def as_of_for(partition_key: str, now: datetime | None = None) -> datetime:
    """The partition's end, or now if the month is still running."""
    end = MONTHS.time_window_for_partition_key(partition_key).end
    return min(end, now or datetime.now(UTC))


def _archival_asset(policy: TablePolicy, policies: Policies) -> dg.AssetsDefinition:
    key = asset_key(policy.table)

    @dg.asset(
        key=key, partitions_def=MONTHS, group_name=GROUP, kinds={"postgres", "parquet"},
        description=f"Retention of {policy.table}: {policy.rule.describe()}, by {policy.timestamp_column}; "
                    f"{len(policy.overrides)} override(s).",
        check_specs=[dg.AssetCheckSpec(name, asset=key) for name in CHECKS],
    )
    def archival(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
        s = drp.settings()
        storage = core_context.storage(s)
        as_of = as_of_for(context.partition_key)
        keys = ArchiveKeys.from_settings(s)
        result = apply_policies(s.dsn, storage, policies, ApplyOptions(tables=(policy.table,), as_of=as_of,
                                                                       run_id=context.run.run_id, keys=keys))
        t = result.tables[0]
        remaining = sum(p.to_delete for p in plan(s.dsn, policies, tables=[policy.table], as_of=as_of))
        run = recheck_run(s.dsn, storage, policy.table, context.run.run_id, keys.identities)
        rows = run.balance
        context.log.info(f"{policy.table} as of {as_of:%Y-%m-%d}: archived {t.archived_rows}, deleted "
                         f"{t.deleted_rows + t.deleted_unarchived}, held {sum(h.rows for h in t.held)}")
        return dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(), "rows_archived": t.archived_rows, "rows_deleted": t.deleted_rows,
                "rows_deleted_without_archive": t.deleted_unarchived, "rows_kept_changed_or_held": t.kept_changed,
                "bytes": t.bytes, "segments": t.segments, "batches": t.batches,
                "longest_batch_seconds": dg.MetadataValue.float(round(t.longest_batch_s, 4)),
                "partitions_dropped": ", ".join(t.partitions_dropped) or "none",
                "held_skips": dg.MetadataValue.json([vars(h) for h in t.held]),
                "storage": storage.url,
            },
            check_results=[
                dg.AssetCheckResult(check_name="no_expired_rows_remain", passed=remaining == 0,
                                    metadata={"expired_rows_outside_holds": remaining}),
                dg.AssetCheckResult(check_name="archived_equals_deleted", passed=rows.ok,
                                    metadata={"archived": rows.archived, "kept_changed_or_held": rows.kept,
                                              "deleted": rows.deleted}),
                dg.AssetCheckResult(check_name="archive_manifests_verify", passed=not run.failed,
                                    metadata={"archives": run.segments, "failed": ", ".join(run.failed) or "none"}),
            ],
        )

    return archival


def build(settings: Settings) -> dg.Definitions:
    if settings.retention_policies_file is None:
        return dg.Definitions()
    policies = load_policies(settings.retention_policies_file)
    assets = [_archival_asset(p, policies) for p in policies.tables.values()
              if {p.rule.action, *(o.action for o in p.overrides if o.action)} != {"keep"}]
    if not assets:
        return dg.Definitions()
    job = dg.define_asset_job("retention_job", selection=dg.AssetSelection.groups(GROUP))

    @dg.schedule(name="retention_schedule", job=job, cron_schedule=RETENTION_CRON, execution_timezone="UTC",
                 default_status=schedule_status(settings))
    def retention_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        month = context.scheduled_execution_time.strftime("%Y-%m-01")
        return dg.RunRequest(run_key=f"retention-{month}", partition_key=month)

    return dg.Definitions(assets=assets, jobs=[job], schedules=[retention_schedule])
