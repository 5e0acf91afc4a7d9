"""tenant_export (a partition per clinic, kept in sync by a sensor) and the daily analytics_export."""

from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from dr_pipelines.core import context as core_context
from dr_pipelines.core.export.run import ExportOptions, ExportResult, export_tenants
from dr_pipelines.core.layout import analytics_prefix
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.tenancy import tenant_keys
from dr_pipelines.defs.lib.default_status import schedule_status, sensor_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource

# No `from __future__ import annotations` here: Dagster validates the context and config annotations.

CLINICS = dg.DynamicPartitionsDefinition(name="clinics")
DAYS = dg.DailyPartitionsDefinition(start_date="2026-11-01", timezone="UTC")
TENANT_EXPORT_KEY = dg.AssetKey("tenant_export")
ANALYTICS_EXPORT_KEY = dg.AssetKey("analytics_export")


class TenantExportConfig(dg.Config):
    """What to export for the partition's clinic; every run is audited with the requester."""

    formats: list[str] = Field(default=["parquet", "csv", "jsonl"], description="parquet, csv and/or jsonl")
    tables: list[str] = Field(default=[], description="schema.table names; empty = every tenant-owned table")
    requester: str = Field(default="", description="who asked (e.g. the DPO's email); default: the Dagster run")
    zip_bundle: bool = Field(default=False, description="also write one zip with every file and the manifest")
    content_checksums: bool = Field(default=False, description="also checksum each table's rows in the database")
    credential_id: str = Field(default="", description="audited: the export portal credential that asked, if any")
    client_address: str = Field(default="", description="audited: the export portal client's address, if any")


def _options(s: Settings, **overrides: Any) -> ExportOptions:
    return ExportOptions(root=s.export_tenant_root, key_column=s.export_tenant_key,
                         exclude=tuple(s.export_exclude_tables), work_dir=s.work_dir,
                         ttl_days=s.export_ttl_days or None, **overrides)


def _metadata(result: ExportResult) -> dict[str, Any]:
    m = result.manifest
    seconds = max(m.duration_s, 1e-6)
    return {
        "export_id": result.export_id,
        "storage_uri": f"{result.storage_url.rstrip('/')}/{result.prefix}",
        "tenant_ids": ", ".join(m.extra["tenant_ids"]) if len(m.extra["tenant_ids"]) <= 20
        else f"{len(m.extra['tenant_ids'])} tenants",
        "formats": ", ".join(m.extra["formats"]),
        "rows": dg.MetadataValue.int(m.total_rows),
        "bytes": dg.MetadataValue.int(m.stored_bytes),
        "duration_s": dg.MetadataValue.float(round(m.duration_s, 3)),
        "rows_per_second": dg.MetadataValue.float(round(m.total_rows / seconds, 1)),
        "snapshot_at": m.extra["snapshot_at"],
        "manifest_sha256": result.manifest_sha256,
        "tables": dg.MetadataValue.md("| table | rows |\n|---|---|\n" + "\n".join(
            f"| {t.name} | {t.rows:,} |" for t in m.tables)),
        "excluded_tables": ", ".join(e["table"] for e in m.extra["excluded_tables"]) or "none",
    }


def build(settings: Settings) -> dg.Definitions:
    @dg.asset(key=TENANT_EXPORT_KEY, partitions_def=CLINICS, group_name="exports", kinds={"postgres", "parquet"},
              tags={"drp/source": "primary"})
    def tenant_export(context: dg.AssetExecutionContext, config: TenantExportConfig,
                      drp: DrpSettingsResource) -> dg.MaterializeResult:
        """One clinic's rows (and no other clinic's) from one snapshot, audited; manifest written last."""
        s = drp.settings()
        storage = core_context.storage(s)
        requester = config.requester.strip() or f"dagster run {context.run_id}"
        options = _options(s, formats=tuple(config.formats), tables=tuple(config.tables), requester=requester,
                           max_per_hour=s.export_max_per_hour or None, zip_bundle=config.zip_bundle,
                           content_checksums=config.content_checksums,
                           credential_id=config.credential_id or None, client_address=config.client_address or None,
                           presign_expiry_s=s.export_presign_expiry_seconds if storage.properties.presign else None)
        result = export_tenants(s.dsn, storage, [context.partition_key], options,
                                progress=lambda name, done, total: context.log.info(f"{done}/{total} {name}"))
        meta = _metadata(result)
        meta["requester"] = requester
        if result.urls:
            manifest_url = result.urls[result.manifest_key]
            meta["manifest_url"] = dg.MetadataValue.url(manifest_url)
            meta["url_expires_in_s"] = s.export_presign_expiry_seconds
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(key=ANALYTICS_EXPORT_KEY, partitions_def=DAYS, group_name="exports", kinds={"postgres", "parquet"},
              tags={"drp/source": "primary"},
              freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26)))
    def analytics_export(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
        """Every tenant's rows as Parquet under analytics/<day>/<export id>/, for analysts (audited)."""
        s = drp.settings()
        with connect(s.dsn) as conn:
            tenants = tenant_keys(conn, s.export_tenant_root, s.export_tenant_key)
        if not tenants:
            raise dg.Failure(description=f"no tenants in {s.export_tenant_root}: nothing to export")
        options = _options(s, formats=("parquet",), requester="dagster analytics_export", max_per_hour=None,
                           prefix=analytics_prefix(context.partition_key))
        result = export_tenants(s.dsn, core_context.storage(s), tenants, options,
                                progress=lambda name, done, total: context.log.info(f"{done}/{total} {name}"))
        return dg.MaterializeResult(metadata=_metadata(result))

    @dg.sensor(name="clinic_partitions_sync", minimum_interval_seconds=300, default_status=sensor_status(settings),
               description="Adds a tenant_export partition per new clinic and removes those of deleted clinics.")
    def clinic_partitions_sync(context: dg.SensorEvaluationContext, drp: DrpSettingsResource) -> dg.SensorResult:
        s = drp.settings()
        with connect(s.dsn) as conn:
            live = tenant_keys(conn, s.export_tenant_root, s.export_tenant_key)
        known = set(context.instance.get_dynamic_partitions(CLINICS.name))
        added = [k for k in live if k not in known]
        removed = sorted(known - set(live))
        requests = []
        if added:
            requests.append(CLINICS.build_add_request(added))
        if removed:
            requests.append(CLINICS.build_delete_request(removed))
        context.update_cursor(f"{len(live)} clinics")
        if not requests:
            return dg.SensorResult(skip_reason=f"{len(live)} clinics, partitions in sync")
        context.log.info(f"clinic partitions: +{len(added)} -{len(removed)}")
        return dg.SensorResult(dynamic_partitions_requests=requests)

    tenant_job = dg.define_asset_job("tenant_export_job", selection=dg.AssetSelection.assets(TENANT_EXPORT_KEY),
                                     tags={"drp/source": "primary"})
    analytics_job = dg.define_asset_job("analytics_export_job",
                                        selection=dg.AssetSelection.assets(ANALYTICS_EXPORT_KEY),
                                        tags={"drp/source": "primary"})

    @dg.schedule(name="analytics_export_schedule", job=analytics_job, cron_schedule=settings.analytics_export_cron,
                 execution_timezone="UTC", default_status=schedule_status(settings))
    def analytics_export_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """The day that just ended: partition D is exported shortly after D (its state at run time)."""
        day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
        return dg.RunRequest(run_key=f"analytics-{day}", partition_key=day)

    return dg.Definitions(assets=[tenant_export, analytics_export], jobs=[tenant_job, analytics_job],
                          schedules=[analytics_export_schedule], sensors=[clinic_partitions_sync])
