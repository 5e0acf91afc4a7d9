from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.backups.assets import BACKUP_JOB, BACKUP_KEY, BASE_JOB, BASE_KEY, build_assets
from dr_pipelines.defs.backups.checks import base_checks, manifest_complete, objects_present
from dr_pipelines.defs.backups.sensors import build_sensors
from dr_pipelines.defs.lib.default_status import schedule_status


def build(settings: Settings) -> dg.Definitions:
    assets = build_assets(settings)
    job = dg.define_asset_job(
        BACKUP_JOB,
        selection=dg.AssetSelection.assets(BACKUP_KEY, "backup_retention"),  # backup, its checks, then retention
        tags={"drp/source": "primary"},
    )
    schedule = dg.ScheduleDefinition(
        name="logical_backup_schedule", job=job, cron_schedule=settings.backup_cron, execution_timezone="UTC",
        default_status=schedule_status(settings),
    )
    base_job = dg.define_asset_job(BASE_JOB, selection=dg.AssetSelection.assets(BASE_KEY, "backup_retention"),
                                   tags={"drp/source": "primary"})
    base_schedule = dg.ScheduleDefinition(
        name="base_backup_schedule", job=base_job, cron_schedule=settings.base_backup_cron, execution_timezone="UTC",
        default_status=schedule_status(settings),
    )
    return dg.Definitions(assets=assets, asset_checks=[manifest_complete, objects_present, *base_checks],
                          jobs=[job, base_job], schedules=[schedule, base_schedule], sensors=build_sensors(settings))
