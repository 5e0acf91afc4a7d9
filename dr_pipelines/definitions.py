"""The code location: every area's definitions merged, sharing one settings resource."""

from __future__ import annotations

import dagster as dg

from dr_pipelines.core.settings import load_settings
from dr_pipelines.defs.alerts import definitions as alerts
from dr_pipelines.defs.backups import definitions as backups
from dr_pipelines.defs.drills import definitions as drills
from dr_pipelines.defs.exports import definitions as exports
from dr_pipelines.defs.lib.resources import drp_resource
from dr_pipelines.defs.migrations import definitions as migrations
from dr_pipelines.defs.retention import definitions as retention
from dr_pipelines.defs.source import definitions as source
from dr_pipelines.defs.status import definitions as status_defs
from dr_pipelines.defs.tenant_restore import definitions as tenant_restore
from dr_pipelines.defs.verification import definitions as verification
from dr_pipelines.defs.wal import definitions as wal


def build_definitions() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions.merge(
        source.build(settings),
        backups.build(settings),
        verification.build(settings),
        drills.build(settings),
        exports.build(settings),
        migrations.build(settings),
        retention.build(settings),
        status_defs.build(settings),
        wal.build(settings),
        tenant_restore.build(settings),
        alerts.build(settings),
        dg.Definitions(resources={"drp": drp_resource()}),
    )


defs = build_definitions()
