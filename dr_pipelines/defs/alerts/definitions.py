"""A run-failure sensor: every failed run of this location is logged and sent to the webhook."""

from __future__ import annotations

import dagster as dg

from dr_pipelines.core.notify import notify
from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.lib.default_status import sensor_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource


def build(settings: Settings) -> dg.Definitions:
    @dg.run_failure_sensor(name="run_failure_alert", default_status=sensor_status(settings))
    def run_failure_alert(context: dg.RunFailureSensorContext, drp: DrpSettingsResource) -> None:
        """Alert on any failed run (a failed backup is an RPO risk)."""
        webhook = drp.settings().notify_webhook_url
        error = context.failure_event.message or "unknown error"
        notify(
            f"dr_pipelines run failed: {context.dagster_run.job_name}",
            {"run_id": context.dagster_run.run_id, "error": error[:500]},
            webhook_url=webhook.get_secret_value() if webhook else None,
        )

    return dg.Definitions(sensors=[run_failure_alert])
