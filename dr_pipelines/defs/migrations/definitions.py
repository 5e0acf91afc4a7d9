from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.migrations.assets import migrations_in_sync, schema_migrations
from dr_pipelines.defs.migrations.jobs import migrations_job
from dr_pipelines.defs.migrations.sensors import build_sensors


def build(settings: Settings) -> dg.Definitions:
    return dg.Definitions(assets=[schema_migrations], asset_checks=[migrations_in_sync], jobs=[migrations_job],
                          sensors=build_sensors(settings))
