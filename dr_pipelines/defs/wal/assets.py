"""wal_archive: the WAL archive in storage, kept by `drp wal archiver` (outside Dagster); freshness = the RPO.

Dagster does not materialize it: the wal_archive_watch sensor reports a materialization when the archive moves
(docs/wal.md, "Dagster"). Dagster 1.13 evaluates freshness on materializations only, not observations.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from dr_pipelines.core.settings import Settings

WAL_KEY = dg.AssetKey("wal_archive")
SENSOR_INTERVAL_S = 30  # how often the sensor looks; a push is reported at most this much later


def wal_freshness(settings: Settings) -> dg.FreshnessPolicy:
    """Warn past the RPO, fail past the RPO plus one sensor interval (the delay before a push is seen)."""
    rpo = timedelta(seconds=settings.wal_rpo_seconds)
    return dg.FreshnessPolicy.time_window(fail_window=rpo + timedelta(seconds=SENSOR_INTERVAL_S), warn_window=rpo)


def build_assets(settings: Settings) -> list[dg.AssetSpec]:
    return [dg.AssetSpec(
        WAL_KEY, group_name="wal", kinds={"postgres"}, freshness_policy=wal_freshness(settings),
        description="Every completed WAL segment, compressed, encrypted and checksummed in storage (drp wal archiver); "
                    "materialized by the wal_archive_watch sensor when it moves; freshness = the RPO.",
    )]
