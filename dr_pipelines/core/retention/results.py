"""What a retention apply is asked to do (ApplyOptions) and what it did (per-table results, errors)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.retention.segment import ArchiveError, ArchiveKeys

DEFAULT_BATCH = 1_000
DEFAULT_SEGMENT_ROWS = 100_000


class RetentionBusyError(DrpError):
    """Another retention run holds the table's lock."""


@dataclass(frozen=True)
class ApplyOptions:
    tables: tuple[str, ...] = ()  # empty: every table with a policy
    tenants: tuple[str, ...] = ()  # empty: every tenant
    months: tuple[date, ...] = ()  # empty: every month with expired rows
    as_of: datetime | None = None  # the clock the periods count back from (default: the server's now())
    batch_size: int = DEFAULT_BATCH
    segment_rows: int = DEFAULT_SEGMENT_ROWS
    partition_drop: bool = True
    run_id: str | None = None
    work_dir: Path | None = None
    keys: ArchiveKeys = ArchiveKeys()  # archives are sealed to its recipients, read back with its identities


@dataclass
class HeldSkip:
    table: str
    tenant_id: str
    rows: int
    holds: list[int]


@dataclass
class TableResult:
    table: str
    archived_rows: int = 0
    deleted_rows: int = 0  # archived rows deleted (batches or partitions)
    deleted_unarchived: int = 0  # rows of `delete` rules
    kept_changed: int = 0  # archived, but changed or held by the time of the delete: left in place
    bytes: int = 0
    segments: int = 0
    resumed: int = 0
    abandoned: int = 0
    batches: int = 0
    longest_batch_s: float = 0.0
    partitions_dropped: list[str] = field(default_factory=list)
    held: list[HeldSkip] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"archive": 0.0, "verify": 0.0, "delete": 0.0})
    # Journal totals over every segment this run created or resumed (resumed ones were archived by an
    # earlier run, so archived_rows above does not count them): archived == deleted + kept when all is well.
    balance: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] += time.monotonic() - started

    def batch(self, seconds: float) -> None:
        self.batches += 1
        self.longest_batch_s = max(self.longest_batch_s, seconds)

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["held"] = [vars(h) for h in self.held]
        d["longest_batch_s"] = round(self.longest_batch_s, 4)
        d["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        return d


@dataclass
class ApplyResult:
    run_id: str
    as_of: datetime
    tables: list[TableResult]

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "as_of": self.as_of.isoformat(), "tables": [t.as_dict() for t in self.tables]}


class ApplyIncompleteError(ArchiveError):
    """Retention stopped on some tables; ``result`` holds what the other tables did."""

    def __init__(self, failures: list[DrpError], result: ApplyResult) -> None:
        self.failures, self.result = failures, result
        done = ", ".join(t.table for t in result.tables)
        super().__init__("; ".join(f.problem for f in failures) + (f" (done: {done})" if done else ""),
                         fix="; ".join(dict.fromkeys(f.fix for f in failures if f.fix)))
