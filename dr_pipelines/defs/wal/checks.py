"""Checks on wal_archive: continuity (no gap, no lost or uncommitted segment) and archive lag / pg_wal size.

Both are blocking with severity ERROR: a failure fails the checks run, so run_failure_alert notifies.
"""

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.
import dagster as dg

from dr_pipelines.core.settings import Settings
from dr_pipelines.core.wal.archive import archive_storage
from dr_pipelines.core.wal.status import PgWalState, server_wal_state, wal_alerts
from dr_pipelines.core.wal.verify import verify_archive
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.wal.assets import WAL_KEY


def server_state(s: Settings) -> tuple[PgWalState | None, str]:
    """The server's archiving state, or None with the reason (the archive is still checked without it)."""
    return server_wal_state(s.dsn)


@dg.asset_check(asset=WAL_KEY, blocking=True,
                description="drp wal verify --quick: every segment from the oldest archived to the server's current "
                            "one is committed, per timeline (gaps named).")
def wal_continuity(drp: DrpSettingsResource) -> dg.AssetCheckResult:
    s = drp.settings()
    pg, server = server_state(s)
    report = verify_archive(archive_storage(s), pg=pg, read=False)
    bad = [f"{g.status} {g.first}..{g.last} ({g.count})" for g in report.gaps if g.status != "in-flight"]
    bad += [f"{p['status']} {p['name']}" for p in report.problems if p["status"] != "in-flight"]
    return dg.AssetCheckResult(
        passed=report.ok, severity=dg.AssetCheckSeverity.ERROR,
        description="continuous" if report.ok else "; ".join(bad),
        metadata={"start": report.start or "none", "end": report.end or "none", "segments": report.found,
                  "problems": "; ".join(bad) or "none", "server": server},
    )


@dg.asset_check(asset=WAL_KEY, blocking=True,
                description="drp wal status: archive lag under wal_lag_alert_seconds, pg_wal under "
                            "wal_pg_wal_alert_bytes, archive_mode on.")
def wal_archive_lag(drp: DrpSettingsResource) -> dg.AssetCheckResult:
    s = drp.settings()
    pg, server = server_state(s)
    if pg is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"cannot read the server's archiving state: {server}")
    alerts = wal_alerts(pg, lag_limit_s=s.wal_lag_alert_seconds, pg_wal_limit_bytes=s.wal_pg_wal_alert_bytes)
    return dg.AssetCheckResult(
        passed=not alerts, severity=dg.AssetCheckSeverity.ERROR, description="; ".join(alerts) or "keeping up",
        metadata={"archive_lag_s": dg.MetadataValue.float(round(pg.oldest_ready_age_s or 0.0, 1)),
                  "lag_limit_s": s.wal_lag_alert_seconds, "ready_count": pg.ready_count,
                  "pg_wal_bytes": dg.MetadataValue.int(pg.pg_wal_bytes), "failed_count": pg.failed_count},
    )
