"""Backup success rate from Dagster's run history (the seed's '100% backup success' metric).

This side only fetches the runs; the rate is core's SuccessRate (as `drp status` computes it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from dr_pipelines.core.backup.attempts import SuccessRate

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]


def success_rate(instance: dg.DagsterInstance, job_name: str, *, days: int = 30) -> SuccessRate:
    """Finished runs of job_name in the last `days` days; the run in progress is not counted."""
    since = datetime.now(UTC) - timedelta(days=days)
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=FINISHED, created_after=since)
    )
    return SuccessRate.of(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
