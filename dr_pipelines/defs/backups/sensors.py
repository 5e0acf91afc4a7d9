"""RPO watch: open-source Dagster sends no freshness alerts, so this sensor reads storage and notifies.

With WAL archiving configured (an archive in storage) the recovery point is the newest archived WAL
segment, not the daily logical backup (which would alert most of the day); without, the newest backup.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.notify import notify
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.status import recovery_point_age
from dr_pipelines.defs.lib.default_status import sensor_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.wal.checks import server_state


def build_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    @dg.sensor(name="rpo_breach_alert", minimum_interval_seconds=300, default_status=sensor_status(settings),
               description="Alerts (log + webhook) when the newest archived WAL segment (else the newest restorable "
                           "backup) is older than the RPO.")
    def rpo_breach_alert(context: dg.SensorEvaluationContext, drp: DrpSettingsResource) -> dg.SkipReason:
        s = drp.settings()
        storage = core_context.storage(s)
        pg = server_state(s)[0]  # None when the source does not answer: then the newest push decides
        point, age_min = recovery_point_age(storage, list_backups(storage), datetime.now(UTC), pg)
        breached = age_min is None or age_min > s.rpo_minutes
        state = f"{point}:{'breach' if breached else 'ok'}"
        if breached and context.cursor != state:
            webhook = s.notify_webhook_url
            notify(
                "RPO breached: nothing restorable newer than the target",
                {"newest_restorable": None if point == "none" else point,
                 "age_minutes": round(age_min, 1) if age_min is not None else None, "rpo_minutes": s.rpo_minutes},
                webhook_url=webhook.get_secret_value() if webhook else None,
            )
        context.update_cursor(state)
        if breached:
            return dg.SkipReason(f"RPO breached (newest restorable: {point}); alert sent")
        return dg.SkipReason(f"RPO ok: newest restorable {point} is {age_min:.0f} min old (target {s.rpo_minutes})")

    return [rpo_breach_alert]
