"""`drp tenant restore` (and, later, the Dagster job): one clinic's rows at a past moment, against live.

The order is the order of cost: everything that can be refused cheaply is refused first.

1. The request (mode and its options) and ``--at`` (a time in the future) are checked.
2. Live is read (never written here): the tenant scope from its FK graph and the clinic checked
   against the tenant root — an unknown clinic is refused before anything is restored.
3. The past database is opened (source.py: a PITR into a throwaway cluster, or a backup restored).
4. Schema drift in the affected tables refuses a preview or an apply (drift.py); ``--into-schema``
   still copies the rows as they were (that is how drifted rows are carried over by hand).
5. The mode: a preview (the diff, nothing written), the past rows into a new schema, or the apply.
6. The report, JSON and Markdown, in ``report_dir``; the throwaway cluster is removed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dr_pipelines.core import context
from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.export.errors import UnknownTenantError
from dr_pipelines.core.export.tenants import check_tenants
from dr_pipelines.core.pg.cluster import write_private
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.pitr import RecoveryTarget
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.tenancy import Scope, discover_scope
from dr_pipelines.core.tenant_restore.drift import Drift, check_drift, refuse_drift
from dr_pipelines.core.tenant_restore.source import (
    PastDatabase,
    RestorePoint,
    parse_time,
    past_database,
    scope_reads,
)

MODES = ("preview", "into-schema", "apply")
POLICIES = {"restore-deleted": ("restore-deleted",), "revert-changed": ("revert-changed",),
            "both": ("restore-deleted", "revert-changed")}
ON_CONFLICT = ("skip",)
Log = Callable[[str], None]


class UnknownClinicError(ConfigError):
    """The clinic asked for is not in live's tenant root (checked before anything is restored)."""


@dataclass(frozen=True)
class Request:
    """What `drp tenant restore` was asked; ``check`` refuses an inconsistent one before any work."""

    clinic: str
    at: str | None = None
    backup_id: str | None = None
    into_schema: str | None = None
    target_dsn: str | None = None  # --into-schema: another database than live
    apply: bool = False
    policy: str | None = None
    on_conflict: str | None = None
    reason: str | None = None
    requester: str | None = None
    undo_allow_plaintext: bool = False  # the undo export may go to storage that does not encrypt at rest

    @property
    def mode(self) -> str:
        return "apply" if self.apply else "into-schema" if self.into_schema else "preview"

    def check(self) -> RecoveryTarget | None:
        """ConfigError for a malformed request; the parsed ``--at`` target (None for --backup)."""
        if (self.at is None) == (self.backup_id is None):
            raise ConfigError("say which past to compare with", fix="pass exactly one of --at TIME or --backup ID")
        if self.apply and self.into_schema:
            raise ConfigError("--apply and --into-schema are two modes", fix="pass one of them (or neither: a preview)")
        if self.target_dsn and not self.into_schema:
            raise ConfigError("--target-dsn is where --into-schema writes", fix="add --into-schema NAME, or drop --target-dsn")
        if self.apply:
            if self.policy not in POLICIES:
                raise ConfigError(f"--apply needs --policy ({'given: ' + repr(self.policy) if self.policy else 'none given'})",
                                  fix=f"pass --policy {' | '.join(POLICIES)}")
            if not (self.reason or "").strip() or not (self.requester or "").strip():
                raise ConfigError("--apply needs --reason and --requester (they go to the audit table)",
                                  fix="pass --reason TEXT (e.g. the ticket) and --requester NAME")
        elif self.policy or self.on_conflict or self.reason or self.undo_allow_plaintext:
            raise ConfigError("--policy, --on-conflict, --reason and --undo-allow-plaintext are for --apply",
                              fix="add --apply, or drop them")
        if self.on_conflict is not None and self.on_conflict not in ON_CONFLICT:
            raise ConfigError(f"--on-conflict {self.on_conflict!r} is not a policy", fix="pass --on-conflict skip, or leave it out")
        return parse_time(self.at) if self.at is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"clinic": self.clinic, "at": self.at, "backup_id": self.backup_id, "mode": self.mode,
                "into_schema": self.into_schema, "target": "other database" if self.target_dsn else None,
                "policy": self.policy, "on_conflict": self.on_conflict, "reason": self.reason,
                "requester": self.requester, "undo_allow_plaintext": self.undo_allow_plaintext}


@dataclass
class Outcome:
    """What a run did: the restore point reached, the drift found, the mode's result, the report files."""

    request: Request
    clinic: str
    point: RestorePoint | None = None
    drift: Drift | None = None
    result: dict[str, Any] = field(default_factory=dict)  # the mode's JSON
    markdown: str = ""  # the mode's Markdown section
    seconds: dict[str, float] = field(default_factory=dict)  # restore, <mode>
    reports: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"request": self.request.as_dict(), "clinic": self.clinic,
                "restore_point": self.point.as_dict() if self.point else None,
                "schema_drift": self.drift.as_dict() if self.drift else None,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}, self.request.mode: self.result}

    def to_markdown(self) -> str:
        """The mode's Markdown (its own title), then where the past came from and the schema since."""
        body = self.markdown if self.markdown.startswith("# ") else \
            f"# Tenant restore: clinic {self.clinic} ({self.request.mode})\n\n{self.markdown}"
        lines = [body.rstrip("\n"), ""]
        p = self.point
        if p is not None:
            lines += ["## Restore point", "", f"- reached: {p.time or 'unknown'} ({p.time_basis})",
                      f"- asked: {p.requested}",
                      f"- obtained by: {p.how} from {p.backup_id}" + (f", WAL replayed to {p.lsn}" if p.lsn else ""), ""]
        if self.drift is not None and (self.drift.tables or self.drift.since):
            lines += ["## Schema since the restore point", ""]
            lines += [f"- {t.table}: {'; '.join(t.changes)}" for t in self.drift.tables]
            lines += [f"- migration applied since: {m}" for m in self.drift.as_dict()["migrations_since"]]
            lines.append("")
        return "\n".join(lines)


def tenant_restore(settings: Settings, request: Request, *, identities: Sequence[object],
                   report_dir: Path | None = None, progress: Progress | None = None,
                   log: Log | None = None) -> Outcome:
    """Run ``request`` against the configured live database and storage (see the module docstring)."""
    say = log or (lambda _line: None)
    target = request.check()
    live_dsn = settings.dsn
    scope, clinic, database = live_scope(live_dsn, request.clinic, root=settings.export_tenant_root,
                               key_column=settings.export_tenant_key, exclude=tuple(settings.export_exclude_tables))
    outcome = Outcome(request, clinic)
    started = time.monotonic()
    say(f"clinic {clinic}: {len(scope.tables)} tables in scope; restoring the past database "
        f"({'to ' + target.describe() if target else 'backup ' + str(request.backup_id)})")
    applying = False
    try:
        with past_database(context.storage(settings), identities, Path(settings.work_dir),
                           database=database, at=target, backup_id=request.backup_id,
                           read_only=request.mode != "preview",  # the preview's side schema is written there
                           reads=scope_reads(scope),  # index files other reads never use are left out
                           progress=progress, log=say) as past:
            outcome.point = past.point
            outcome.seconds["restore"] = time.monotonic() - started
            outcome.drift = drift_between(past, live_dsn, scope)
            if request.mode != "into-schema":
                refuse_drift(outcome.drift)
            started, applying = time.monotonic(), request.apply
            _run_mode(settings, request, past, scope, clinic, outcome, say)
            outcome.seconds[request.mode] = time.monotonic() - started
            say(f"{request.mode} done in {outcome.seconds[request.mode]:.1f}s; removing the throwaway cluster")
    except DrpError as exc:
        if request.apply and not applying:  # apply_restore audits its own outcomes
            audit_refusal(live_dsn, request, clinic, outcome.point, exc)
        raise
    outcome.reports = write_reports(outcome, report_dir or Path(settings.work_dir))
    return outcome


def live_scope(live_dsn: str, clinic: str, *, root: str, key_column: str,
               exclude: tuple[str, ...] = ()) -> tuple[Scope, str, str]:
    """Live's tenant scope, the clinic's canonical id and the database's name (the past one has the same);
    UnknownClinicError when live has no such clinic."""
    with connect(live_dsn) as conn:
        conn.read_only = True
        with conn.transaction():
            database = conn.execute("SELECT current_database()").fetchone()[0]
            scope = discover_scope(conn, root=root, key_column=key_column, exclude=exclude)
            try:
                [canonical] = check_tenants(conn, scope, [clinic])
            except UnknownTenantError as exc:
                raise UnknownClinicError(
                    f"clinic {clinic!r} is not in live's {scope.root}: {exc.problem}",
                    fix=f"pass a {scope.root}.{scope.key_column} value that exists in live; nothing was restored") from None
    return scope, canonical, database


def drift_between(past: PastDatabase, live_dsn: str, scope: Scope) -> Drift:
    with connect(past.dsn, autocommit=True) as past_conn, connect(live_dsn, autocommit=True) as live_conn:
        return check_drift(past_conn, live_conn, scope)


def _run_mode(settings: Settings, request: Request, past: PastDatabase, scope: Scope, clinic: str,
              outcome: Outcome, say: Log) -> None:
    """The preview, --into-schema or --apply on the open past database; fills ``outcome.result``/``markdown``."""
    live_dsn = settings.dsn
    if request.mode == "preview":
        from dr_pipelines.core.tenant_restore.preview import preview

        say("comparing: copying live's rows of the clinic next to the past ones, then diffing each table")
        diff = preview(past.dsn, live_dsn, scope, clinic, past_label=past.point.describe())
        outcome.result, outcome.markdown = diff.as_dict(), diff.to_markdown()
    elif request.mode == "into-schema":
        from dr_pipelines.core.tenant_restore.side_schema import into_schema

        assert request.into_schema is not None
        say(f"copying the clinic's past rows into schema {request.into_schema}")
        rows = into_schema(past.dsn, request.target_dsn or live_dsn, scope, clinic, request.into_schema,
                           past_label=past.point.describe())
        outcome.result = {"schema": request.into_schema, "tables": rows}
        outcome.markdown = "\n".join([f"# Tenant restore: clinic {clinic}'s past rows in schema {request.into_schema}",
                                      "", *[f"- {t}: {n} rows" for t, n in rows.items()], ""])
    else:
        from dr_pipelines.core.tenant_restore.apply import UndoTarget, apply_restore

        say(f"applying ({request.policy}): one live transaction, the undo export in its snapshot beside it")
        applied = apply_restore(past.dsn, live_dsn, scope, clinic, policies=POLICIES[request.policy or ""],
                                on_conflict=request.on_conflict, requester=request.requester, reason=request.reason or "",
                                undo=UndoTarget(context.storage(settings), allow_plaintext=request.undo_allow_plaintext),
                                restore_point=past.point.describe())
        outcome.result, outcome.markdown = applied.as_dict(), apply_markdown(clinic, applied.as_dict())


def apply_markdown(clinic: str, applied: dict[str, Any]) -> str:
    """The apply's counts per table, conflicts skipped, undo export and audit row, as Markdown."""
    lines = [f"# Tenant restore applied: clinic {clinic} ({', '.join(applied['policies'])})", "",
             f"- {applied['inserted']} rows restored (inserted), {applied['updated']} reverted (updated)",
             f"- undo export: {applied['undo_export_id'] or 'none (no table differed: nothing written)'}; audit row drp.tenant_restores {applied['audit_id']}", "",
             "| table | inserted | updated | skipped (conflicts) | archived since (not restored) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {t['table']} | {t['inserted']} | {t['updated']} | {t['skipped']} | {t['archived']} |"
              for t in applied["tables"]]
    if applied["conflicts"]:
        lines += ["", "## Conflicts skipped", ""]
        lines += [f"- {c['table']} {c['key']}: {c['kind']} ({c['constraint']}), {c['policy']}" for c in applied["conflicts"]]
    return "\n".join(lines) + "\n"


def audit_refusal(live_dsn: str, request: Request, clinic: str, point: RestorePoint | None, exc: DrpError) -> None:
    """An --apply refused before it began (no restorable past, schema drift): its 'started' and 'refused'
    rows in drp.tenant_restores, as apply_restore writes for its own refusals (an attempt is never invisible)."""
    from dr_pipelines.core.tenant_restore import audit

    record = audit.RestoreRecord(
        requester=request.requester or "", reason=request.reason or "", tenant_id=clinic,
        restore_point=point.describe() if point else f"{request.at or 'backup ' + str(request.backup_id)} (not reached)",
        mode="apply", policies=list(POLICIES[request.policy or ""]), started_at=datetime.now(UTC),
        on_conflict=request.on_conflict)
    with connect(live_dsn, autocommit=True) as conn:
        audit.ensure_restore_audit(conn)
        audit.append(conn, record, "started")
        record.error = exc.problem[:2000]
        audit.append(conn, record, "refused")


def write_reports(outcome: Outcome, report_dir: Path) -> list[Path]:
    """report JSON + Markdown (0600: they name the clinic's keys) in ``report_dir``; their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = report_dir / f"tenant-restore-{_safe(outcome.clinic)}-{stamp}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    write_private(json_path, json.dumps(outcome.as_dict(), indent=2, default=str) + "\n")
    write_private(md_path, outcome.to_markdown())
    return [json_path, md_path]


def _safe(text: str) -> str:
    """A clinic id fit for a file name (ids are usually numbers; anything else is replaced)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "clinic"
