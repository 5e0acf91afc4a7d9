"""A clinic's past-vs-live diff as JSON (report.json, Dagster metadata) and Markdown (report.md, for people).

Only counts, column names and sample *keys* appear: never row contents (health data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dr_pipelines.core.tenant_restore.compare import TableDiff

KINDS = ("deleted", "added", "changed", "unchanged")  # the per-table counts that add up the totals


@dataclass
class TenantDiff:
    clinic: str
    past: str  # where the past rows came from (host:port/db, and what point in time when known)
    live: str  # host:port/db of the live database
    live_snapshot_at: datetime  # when the one REPEATABLE READ snapshot of live was taken
    tables: list[TableDiff] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(t, k) for t in self.tables) for k in KINDS}

    @property
    def differing(self) -> list[TableDiff]:
        return [t for t in self.tables if t.differs]

    def table(self, name: str) -> TableDiff:
        for t in self.tables:
            if t.table == name:
                return t
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clinic": self.clinic, "past": self.past, "live": self.live,
            "live_snapshot_at": self.live_snapshot_at.isoformat(),
            "totals": self.totals, "tables_differing": len(self.differing),
            "tables": [t.as_dict() for t in self.tables],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        tot = self.totals
        lines = [
            f"# Tenant restore preview: clinic {_md(self.clinic)}",
            "",
            f"- past: {_md(self.past)}",
            f"- live: {_md(self.live)}, one snapshot at {self.live_snapshot_at.isoformat()}",
            f"- {tot['deleted']} rows deleted since, {tot['added']} added since, {tot['changed']} changed, "
            f"{tot['unchanged']} unchanged; {len(self.differing)} of {len(self.tables)} tables differ",
            "",
            "| table | key | past rows | live rows | deleted since | added since | changed | unchanged |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {_md(t.table)} | {_md(', '.join(t.key)) or '(none: whole rows)'} | {t.past_rows} | {t.live_rows} "
                  f"| {t.deleted} | {t.added} | {t.changed} | {t.unchanged} |" for t in self.tables]
        for t in self.differing:
            lines += ["", f"## {_md(t.table)}", ""]
            lines += _kind_line("Deleted since (only in the past)", t.deleted, t.samples.get("deleted"))
            lines += _kind_line("Added since (only live)", t.added, t.samples.get("added"))
            lines += _kind_line("Changed (same key, other content)", t.changed, t.samples.get("changed"))
            if t.changed_columns:
                cols = ", ".join(f"{_md(c)} ({n})" for c, n in sorted(t.changed_columns.items(), key=lambda kv: -kv[1]))
                lines.append(f"- changed columns (rows): {cols}")
        return "\n".join(lines) + "\n"


def _kind_line(label: str, count: int, samples: list[tuple[str | None, ...]] | None) -> list[str]:
    if not count:
        return []
    line = f"- {label}: {count}"
    if samples:
        shown = ", ".join(_key_text(s) for s in samples)
        line += f"; sample keys: {shown}" + (" …" if count > len(samples) else "")
    return [line]


def _key_text(key: tuple[str | None, ...]) -> str:
    parts = ["NULL" if v is None else v for v in key]
    return _md(parts[0] if len(parts) == 1 else f"({', '.join(parts)})")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell or line (names may hold | and backticks)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\n", " ")
