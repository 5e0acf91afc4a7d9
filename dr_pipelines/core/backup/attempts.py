"""Every backup attempt, as a small record in storage: the success rate without the orchestrator.

attempts/<id>.json is written 'running' at the start and rewritten 'succeeded' or 'failed'
at the end. An attempt still 'running' long after it began was killed: it counts as failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dr_pipelines.core.layout import ATTEMPTS, attempt_key
from dr_pipelines.core.storage import Storage

STALE_AFTER = timedelta(hours=12)  # no backup runs this long: a 'running' record this old was killed


def record_attempt(storage: Storage, backup_id: str, started: datetime, status: str, *, error: str | None = None) -> None:
    body = {"id": backup_id, "started_at": started.isoformat(), "status": status, "error": error,
            "updated_at": datetime.now(UTC).isoformat()}
    storage.put_bytes(attempt_key(backup_id), json.dumps(body).encode())


@dataclass(frozen=True)
class SuccessRate:
    """Succeeded over finished runs: the one computation behind `drp status` and the Dagster asset."""

    succeeded: int
    failed: int

    @classmethod
    def of(cls, outcomes: Iterable[bool]) -> SuccessRate:
        """From one bool per finished run (True: it succeeded), however the runs were recorded."""
        results = list(outcomes)
        succeeded = sum(results)
        return cls(succeeded, len(results) - succeeded)

    @property
    def rate(self) -> float | None:
        finished = self.succeeded + self.failed
        return self.succeeded / finished if finished else None

    def describe(self) -> str:
        if self.rate is None:
            return "no finished runs yet"
        return f"{self.rate:.1%} ({self.succeeded} of {self.succeeded + self.failed} runs)"


@dataclass(frozen=True)
class AttemptStats(SuccessRate):
    running: int
    last_failure: str | None


def attempt_stats(storage: Storage, *, days: int = 30, now: datetime | None = None) -> AttemptStats:
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    succeeded = failed = running = 0
    last_failure = None
    for obj in storage.list(ATTEMPTS + "/"):
        record = json.loads(storage.get_bytes(obj.key))
        started = datetime.fromisoformat(record["started_at"])
        if started < since:
            continue
        status = record["status"]
        if status == "running" and now - started > STALE_AFTER:
            status = "failed"
        if status == "succeeded":
            succeeded += 1
        elif status == "failed":
            failed += 1
            last_failure = record["id"]
        else:
            running += 1
    return AttemptStats(succeeded, failed, running, last_failure)
