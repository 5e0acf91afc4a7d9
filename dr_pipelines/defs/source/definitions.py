from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.source.assets import source_profile, source_profile_job
from dr_pipelines.defs.source.schedules import build_schedules


def build(settings: Settings) -> dg.Definitions:
    return dg.Definitions(assets=[source_profile], jobs=[source_profile_job], schedules=build_schedules(settings))
