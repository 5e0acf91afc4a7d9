from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.wal.assets import WAL_KEY, build_assets
from dr_pipelines.defs.wal.checks import wal_archive_lag, wal_continuity
from dr_pipelines.defs.wal.sensors import CHECKS_JOB, build_sensors

CHECKS_CRON = "*/15 * * * *"  # 96 checks runs a day; the sensor asks for one at once when archiving falls behind


def build(settings: Settings) -> dg.Definitions:
    job = dg.define_asset_job(CHECKS_JOB, selection=dg.AssetSelection.checks_for_assets(WAL_KEY),
                              tags={"drp/source": "primary"})
    schedule = dg.ScheduleDefinition(name="wal_archive_checks_schedule", job=job, cron_schedule=CHECKS_CRON,
                                     execution_timezone="UTC", default_status=schedule_status(settings))
    return dg.Definitions(assets=build_assets(settings), asset_checks=[wal_continuity, wal_archive_lag], jobs=[job],
                          schedules=[schedule], sensors=build_sensors(settings))
