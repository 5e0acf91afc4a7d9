"""Compare the migration files with what the database recorded: edited, missing, out-of-order, pending.

An applied migration whose sha256 changed was edited after it ran somewhere; if its
fingerprint is unchanged the edit was formatting only (comments, whitespace), which is
reported softly and accepted with `repair` after review.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.files import Migration
from dr_pipelines.core.migrate.tracking import AppliedMigration

# kind -> severity; errors stop apply, warnings are shown
SEVERITY = {"edited": "error", "missing": "error", "out_of_order": "error", "formatting_only": "warning",
            "pending": "info"}


@dataclass(frozen=True)
class Drift:
    kind: str  # edited | formatting_only | missing | out_of_order | pending
    version: int
    name: str
    message: str
    fix: str

    @property
    def severity(self) -> str:
        return SEVERITY[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity}


def compare(migrations: list[Migration], done: dict[int, AppliedMigration]) -> list[Drift]:
    """Every difference between files and tracking table, ordered by version."""
    on_disk = {m.version: m for m in migrations}
    newest = max(done, default=0)
    out: list[Drift] = []
    for version in sorted(set(on_disk) | set(done)):
        m, row = on_disk.get(version), done.get(version)
        if m is None and row is not None:
            out.append(Drift("missing", version, row.description,
                             f"version {version} ({row.description}) is applied in the database but its file is missing",
                             "restore the file from version control (or roll the database back while you still have it)"))
        elif m is not None and row is None:
            if version < newest:
                out.append(Drift("out_of_order", version, m.name,
                                 f"{m.name} is not applied but is older than the newest applied version {newest}",
                                 f"renumber it after {newest} (a newer migration already ran without it)"))
            else:
                out.append(Drift("pending", version, m.name, f"{m.name} is not applied yet", "drp migrate apply"))
        elif m is not None and row is not None and m.sha256 != row.sha256:
            if row.fingerprint is not None and row.fingerprint == m.fingerprint:
                out.append(Drift("formatting_only", version, m.name,
                                 f"{m.name} changed after it was applied, but only in formatting or comments "
                                 "(same parsed statements)",
                                 f"review the diff, then `drp migrate repair --version {version}`"))
            else:
                out.append(Drift("edited", version, m.name,
                                 f"{m.name} was edited after it was applied (sha256 {row.sha256[:12]}… in the "
                                 f"database, {m.sha256[:12]}… on disk)",
                                 "revert the edit and put the change in a new migration; if the database really "
                                 f"has the edited version, `drp migrate repair --version {version}`"))
    return out


def blocking(drift: list[Drift]) -> list[Drift]:
    return [d for d in drift if d.severity == "error"]


def refuse_on_drift(drift: list[Drift]) -> None:
    """Raise one MigrationError listing every blocking difference (first one's fix)."""
    bad = blocking(drift)
    if bad:
        problems = "; ".join(d.message for d in bad)
        raise MigrationError(problems, fix=bad[0].fix if len(bad) == 1 else "see `drp migrate validate` for each fix")
