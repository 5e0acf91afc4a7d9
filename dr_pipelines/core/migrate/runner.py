"""The migration runner's entry points: migrate, status, baseline, repair.

`migrate` is the plain engine (the demo and tests use it); `service.apply_migrations` adds
lint and the pre-migration backup in front of it for the CLI and Dagster. Every function
that writes holds the advisory lock (tracking.runner_lock).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.apply import ApplyOptions, Log, MigrationProgress, apply_pending, fill_fingerprints
from dr_pipelines.core.migrate.files import Migration, discover
from dr_pipelines.core.migrate.tracking import (
    APPLICATION_NAME,
    AppliedMigration,
    applied,
    runner_session,
)
from dr_pipelines.core.migrate.validate import Drift, blocking, compare
from dr_pipelines.core.pg.connect import connect

__all__ = ["AppliedMigration", "MigrationStatus", "baseline", "migrate", "repair", "status"]


def migrate(
    dsn: str,
    directory: Path | str,
    *,
    progress: MigrationProgress | None = None,
    options: ApplyOptions = ApplyOptions(),
    log: Log | None = None,
) -> list[Migration]:
    """Apply every pending migration in order; returns what was applied."""
    return apply_pending(dsn, discover(directory), options, progress=progress, log=log)


@dataclass
class MigrationStatus:
    current_version: int | None  # newest applied; None when nothing is tracked
    applied: list[AppliedMigration]
    pending: list[Migration]
    drift: list[Drift] = field(default_factory=list)  # everything but "pending"

    @property
    def ok(self) -> bool:
        """Nothing pending and nothing blocking (what the Dagster check asks)."""
        return not self.pending and not blocking(self.drift)

    def as_dict(self) -> dict[str, Any]:
        return {
            "current_version": self.current_version,
            "ok": self.ok,
            "applied": [a.as_dict() for a in self.applied],
            "pending": [{"version": m.version, "name": m.name, "transactional": m.transactional,
                         "has_down": m.down_path is not None} for m in self.pending],
            "drift": [d.as_dict() for d in self.drift],
        }


def status(dsn: str, migrations: list[Migration]) -> MigrationStatus:
    """Read-only: what is applied, what is pending, what drifted (no lock, no writes)."""
    with connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
        record = applied(conn)
    drift = compare(migrations, record)
    pending_versions = {d.version for d in drift if d.kind == "pending"}
    return MigrationStatus(
        current_version=max(record, default=None),
        applied=list(record.values()),
        pending=[m for m in migrations if m.version in pending_versions],
        drift=[d for d in drift if d.kind != "pending"],
    )


def baseline(dsn: str, migrations: list[Migration], version: int, *, by: str | None = None) -> list[Migration]:
    """Adopt a database whose schema already is at `version`: record 1..version as applied, run nothing."""
    chosen = [m for m in migrations if m.version <= version]
    if not any(m.version == version for m in migrations):
        raise MigrationError(f"there is no migration file with version {version}",
                             fix="baseline to a version that exists in the migrations directory")
    with runner_session(dsn) as (conn, record):
        if record:
            raise MigrationError(
                f"the database already tracks migrations (newest applied: {max(record)})",
                fix="baseline is only for a database without migration history; use `drp migrate validate`",
            )
        with conn.transaction():
            for m in chosen:
                conn.execute(
                    "INSERT INTO drp.schema_migrations (version, description, sha256, fingerprint, applied_by,"
                    " duration_ms, baselined) VALUES (%s, %s, %s, %s, %s, 0, true)",
                    (m.version, m.description, m.sha256, m.fingerprint, by or getpass.getuser()),
                )
    return chosen


def repair(dsn: str, migrations: list[Migration], versions: list[int], *, by: str | None = None) -> list[Migration]:
    """Accept reviewed edits: the named applied versions take the files' sha256 and fingerprint, with who and when."""
    if not versions:
        raise MigrationError("repair needs the versions to accept", fix="pass --version N (repeatable)")
    on_disk = {m.version: m for m in migrations}
    with runner_session(dsn) as (conn, record):
        unknown = [v for v in versions if v not in record]
        no_file = [v for v in versions if v not in on_disk]
        if unknown or no_file:
            raise MigrationError(
                f"cannot repair: {'not applied: ' + str(unknown) if unknown else ''}"
                f"{'; ' if unknown and no_file else ''}{'no file: ' + str(no_file) if no_file else ''}",
                fix="repair only accepts changed files of applied versions; see `drp migrate validate`",
            )
        fill_fingerprints(conn, migrations, record)
        repaired = []
        with conn.transaction():
            for v in sorted(set(versions)):
                m = on_disk[v]
                conn.execute(
                    "UPDATE drp.schema_migrations SET sha256 = %s, fingerprint = %s, description = %s,"
                    " repaired_by = %s, repaired_at = now() WHERE version = %s",
                    (m.sha256, m.fingerprint, m.description, by or getpass.getuser(), v),
                )
                repaired.append(m)
    return repaired
