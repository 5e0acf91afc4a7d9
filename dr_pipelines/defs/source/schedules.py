"""Profile the source hourly so size and schema drift are visible in the UI."""

from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.lib.default_status import schedule_status
from dr_pipelines.defs.source.assets import source_profile_job


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return [
        dg.ScheduleDefinition(
            name="source_profile_hourly",
            job=source_profile_job,
            cron_schedule="0 * * * *",
            execution_timezone="UTC",
            default_status=schedule_status(settings),
        )
    ]
