"""Backup success rate from Dagster's run history (the seed's '100% backup success' metric)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]


@dataclass(frozen=True)
class SuccessRate:
    succeeded: int
    failed: int

    @property
    def rate(self) -> float | None:
        total = self.succeeded + self.failed
        return self.succeeded / total if total else None

    def describe(self) -> str:
        if self.rate is None:
            return "no finished runs yet"
        return f"{self.rate:.1%} ({self.succeeded} of {self.succeeded + self.failed} runs)"


def success_rate(instance: dg.DagsterInstance, job_name: str, *, days: int = 30) -> SuccessRate:
    """Finished runs of job_name in the last `days` days; the run in progress is not counted."""
    since = datetime.now(UTC) - timedelta(days=days)
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=FINISHED, created_after=since)
    )
    succeeded = sum(1 for r in records if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS)
    return SuccessRate(succeeded, len(records) - succeeded)
