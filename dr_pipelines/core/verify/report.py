"""Verification and drill reports as JSON (for machines) and Markdown (for people)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from dr_pipelines.core.verify.checks import CheckResult


@dataclass
class VerificationReport:
    backup_id: str
    started_at: datetime
    finished_at: datetime
    fetch_seconds: float
    restore_seconds: float
    checks_seconds: float
    checks: list[CheckResult]
    error: str | None = None  # the restore itself failed (corrupt object, wrong key, pg_restore error)
    kind: str = "logical"  # or "base"
    # Base backups: every table's rows and checksum in the recovered cluster (their manifest has none),
    # and the newest commit the restore holds, with how that is known (core/verify/base.py).
    tables: list[dict[str, Any]] = field(default_factory=list)
    restore_point: str | None = None
    restore_point_basis: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(started_at=self.started_at.isoformat(), finished_at=self.finished_at.isoformat(), passed=self.passed)
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"

    def summary(self) -> str:
        if self.error:
            return f"backup {self.backup_id} FAILED to restore: {self.error}"
        if self.passed:
            return f"backup {self.backup_id} verified: {len(self.checks)} checks passed"
        return f"backup {self.backup_id} FAILED verification: " + "; ".join(c.detail for c in self.failed_checks)

    def to_markdown(self) -> str:
        lines = [
            f"# Verification of backup {self.backup_id}: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"- started {self.started_at.isoformat()}, finished {self.finished_at.isoformat()} ({self.seconds:.1f} s)",
            f"- fetch {self.fetch_seconds:.1f} s, restore {self.restore_seconds:.1f} s, checks {self.checks_seconds:.1f} s",
        ]
        if self.kind == "base" and not self.error:
            lines.append(f"- base backup recovered: it holds commits up to {self.restore_point or 'n/a'} "
                         f"({self.restore_point_basis}); rows and checksums of {len(self.tables)} tables recorded")
        if self.error:
            lines += ["", f"**Restore failed:** {self.error}"]
        lines += ["", "| check | result | checked | seconds | detail |", "|---|---|---:|---:|---|"]
        lines += [
            f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.checked} | {c.seconds:.2f} | {c.detail} |"
            for c in self.checks
        ]
        return "\n".join(lines) + "\n"


@dataclass
class DrillReport:
    month: str
    started_at: datetime
    finished_at: datetime
    backup_id: str | None
    restore_point: datetime | None
    rto_seconds: float
    rpo_seconds: float | None
    rto_target_seconds: float
    rpo_target_seconds: float
    verification: VerificationReport | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    kind: str | None = None  # "base": a PITR to the end of the WAL archive; "logical": a logical restore
    rpo_basis: str = "the backup's restore point"  # what restore_point is (core/verify/drill.py)

    @property
    def rto_met(self) -> bool:
        return self.rto_seconds <= self.rto_target_seconds

    @property
    def rpo_met(self) -> bool:
        return self.rpo_seconds is not None and self.rpo_seconds <= self.rpo_target_seconds

    @property
    def passed(self) -> bool:
        return self.error is None and self.verification is not None and self.verification.passed and self.rto_met and self.rpo_met

    def as_dict(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "backup_id": self.backup_id,
            "kind": self.kind,
            "restore_point": self.restore_point.isoformat() if self.restore_point else None,
            "rpo_basis": self.rpo_basis,
            "rto_seconds": round(self.rto_seconds, 2),
            "rto_target_seconds": self.rto_target_seconds,
            "rto_met": self.rto_met,
            "rpo_seconds": round(self.rpo_seconds, 2) if self.rpo_seconds is not None else None,
            "rpo_target_seconds": self.rpo_target_seconds,
            "rpo_met": self.rpo_met,
            "passed": self.passed,
            "error": self.error,
            "notes": self.notes,
            "verification": self.verification.as_dict() if self.verification else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"

    def to_markdown(self) -> str:
        def mark(ok: bool) -> str:
            return "met" if ok else "**MISSED**"

        rpo = f"{self.rpo_seconds / 60:.1f} min" if self.rpo_seconds is not None else "n/a (no backup)"
        rpo_label = f"drill start minus the {self.rpo_basis}" if self.kind == "base" else \
            "age of the restore point at drill start"
        lines = [
            f"# DR drill {self.month}: {'PASSED' if self.passed else 'FAILED'}",
            "",
            "As if the primary were gone at the drill's start: "
            + ("the newest base backup was taken from storage only and recovered with the archived WAL to its end "
               "(PITR to latest) in a fresh cluster, promoted and checked." if self.kind == "base" else
               "the newest backup was taken from storage only, restored into a fresh cluster and checked."),
            "",
            "| measure | achieved | target | |",
            "|---|---:|---:|---|",
            f"| RTO (start to restored and checked) | {self.rto_seconds / 60:.1f} min | {self.rto_target_seconds / 60:.0f} min "
            f"| {mark(self.rto_met)} |",
            f"| RPO ({rpo_label}) | {rpo} | {self.rpo_target_seconds / 60:.0f} min "
            f"| {mark(self.rpo_met)} |",
            "",
            f"- backup: {self.backup_id or 'none'} (restore point {self.restore_point.isoformat() if self.restore_point else 'n/a'})",
            f"- started {self.started_at.isoformat()}, finished {self.finished_at.isoformat()}",
        ]
        if self.error:
            lines.append(f"- **error:** {self.error}")
        lines += [f"- note: {n}" for n in self.notes]
        if self.verification:
            lines += ["", self.verification.to_markdown().replace("# Verification", "## Verification", 1)]
        return "\n".join(lines) + "\n"
