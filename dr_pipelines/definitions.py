"""The code location: every area's definitions merged, sharing one settings resource."""

from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import load_settings
from dr_pipelines.defs.alerts import definitions as alerts
from dr_pipelines.defs.backups import definitions as backups
from dr_pipelines.defs.resources import drp_resource
from dr_pipelines.defs.source import definitions as source


def build_definitions() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions.merge(
        source.build(settings),
        backups.build(settings),
        alerts.build(settings),
        dg.Definitions(resources={"drp": drp_resource()}),
    )


defs = build_definitions()
