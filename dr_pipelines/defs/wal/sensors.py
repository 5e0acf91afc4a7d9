"""wal_archive_watch: reports a wal_archive materialization when the archive moves, so freshness is the RPO.

Each tick (every SENSOR_INTERVAL_S) reads the newest committed segment (one sidecar read when the server
names it, else a listing) and, when a source server answers, `drp wal status`'s numbers. It reports one
materialization when the last report is at least half the RPO old (the rate limit) and

- the newest archived segment changed since the last report (however many segments arrived), or
- nothing waits to be archived (``caught_up``): an idle server completes no segments, and its archive
  is as current as a busy one's.

So the event log grows by at most 86,400 / max(SENSOR_INTERVAL_S, RPO / 2) events a day whatever the write
load: 2,880 with the default 60 s RPO, 576 with 300 s (docs/wal.md). Reports stay at most half an RPO apart
while archiving keeps up, so freshness stays green; when archiving stalls neither condition holds and
freshness turns red at most one RPO plus one interval after the last report. The first tick
that sees an alert from `drp wal status` (lag, pg_wal size, archive_mode off) also asks for a run of the
checks job, whose blocking checks fail it, so run_failure_alert notifies; once per episode.
"""

from __future__ import annotations

import json
import time

import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.core.wal.archive import archive_storage, newest_committed
from dr_pipelines.core.wal.status import archive_is_current, wal_alerts
from dr_pipelines.defs.lib.default_status import sensor_status
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.wal.assets import SENSOR_INTERVAL_S, WAL_KEY
from dr_pipelines.defs.wal.checks import server_state

CHECKS_JOB = "wal_archive_checks_job"


def build_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    @dg.sensor(name="wal_archive_watch", job_name=CHECKS_JOB, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=sensor_status(settings),
               description="Reports wal_archive materializations when the archive moves (freshness = RPO); "
                           "asks for a checks run when archiving falls behind.")
    def wal_archive_watch(context: dg.SensorEvaluationContext, drp: DrpSettingsResource) -> dg.SensorResult:
        s = drp.settings()
        last = json.loads(context.cursor) if context.cursor else {}
        storage = archive_storage(s)
        pg, server = server_state(s)
        newest = newest_committed(storage, pg.last_archived_wal if pg else None)
        if newest is None:
            return dg.SensorResult(skip_reason=f"the archive {storage.url} holds no segment yet (server: {server})")
        alerts = wal_alerts(pg, lag_limit_s=s.wal_lag_alert_seconds, pg_wal_limit_bytes=s.wal_pg_wal_alert_bytes) \
            if pg else []
        now = time.time()
        current = archive_is_current(pg, storage, newest.name)
        moved = newest.name != last.get("segment")  # since the last report
        due = now - last.get("reported_at", 0) >= s.wal_rpo_seconds / 2
        cursor = {**last, "alerting": bool(alerts)}
        events, requests = [], []
        if (moved or current) and due:
            cursor.update(segment=newest.name, reported_at=now)
            events.append(dg.AssetMaterialization(WAL_KEY, metadata={
                "newest_segment": newest.name, "pushed_at": newest.pushed_at,
                "reason": "new segment" if moved else "caught up",
                "archive_lag_s": dg.MetadataValue.float(round(pg.oldest_ready_age_s or 0.0, 1)) if pg else "n/a",
                "ready_count": pg.ready_count if pg else "n/a",
                "pg_wal_bytes": dg.MetadataValue.int(pg.pg_wal_bytes) if pg else "n/a",
                "server": server,
            }))
        if alerts and not last.get("alerting"):
            requests.append(dg.RunRequest(run_key=f"wal-alert-{int(now)}", tags={"drp/wal-alert": alerts[0][:200]}))
        context.update_cursor(json.dumps(cursor))
        if not events and not requests:
            state = "; ".join(alerts) or ("caught up" if current else f"server: {server}")
            return dg.SensorResult(skip_reason=f"newest archived segment {newest.name}, last reported "
                                               f"{now - last.get('reported_at', 0):.0f} s ago ({state})")
        return dg.SensorResult(asset_events=events, run_requests=requests)

    return [wal_archive_watch]
