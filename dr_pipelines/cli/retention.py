"""`drp retention plan|apply|hold`: data retention (not backup retention); archives are cli/archive.py."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, human_bytes, out, progress_bar, settings
from dr_pipelines.core import context
from dr_pipelines.core.errors import ConfigError

retention_app = typer.Typer(help="Data retention: archive then delete rows past their policy; legal holds.",
                            no_args_is_help=True)
hold_app = typer.Typer(help="Legal holds: rows that are never archived or deleted.", no_args_is_help=True)
retention_app.add_typer(hold_app, name="hold")

_POLICIES = typer.Option(None, "--policies", help="Retention policy YAML (default: retention_policies_file).")
_TABLE = typer.Option([], "--table", help="Only this table (schema.table; repeatable).")
_TENANT = typer.Option([], "--tenant", help="Only this tenant id (repeatable).")
_AS_OF = typer.Option(None, "--as-of", help="Count periods back from this instant (ISO 8601) instead of now.")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")


def _policies(path: Optional[Path]) -> Any:
    from dr_pipelines.core.retention.policy import load_policies

    path = path or settings().retention_policies_file
    if path is None:
        raise ConfigError("no retention policy file given",
                          fix="pass --policies FILE or set DRP_RETENTION_POLICIES_FILE (demo: dr_pipelines/demo/retention.yaml)")
    return load_policies(path)


def _as_of(raw: Optional[str]) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"--as-of {raw!r} is not an ISO 8601 instant", fix="write e.g. 2025-11-01T00:00:00Z") from None
    if value.tzinfo is None:
        raise ConfigError(f"--as-of {raw!r} has no time zone", fix="add Z or an offset, e.g. 2025-11-01T00:00:00Z")
    return value


@retention_app.command("plan")
def plan(policies: Optional[Path] = _POLICIES, table: list[str] = _TABLE, tenant: list[str] = _TENANT,
         as_of: Optional[str] = _AS_OF, as_json: bool = _JSON) -> None:
    """Dry run: per table and tenant, rows that would be archived, deleted or kept by a hold, and why."""
    from dr_pipelines.core.retention.plan import PlanIncompleteError
    from dr_pipelines.core.retention.plan import plan as make_plan

    try:
        lines = make_plan(settings().dsn, _policies(policies), tables=table or None, tenants=tenant or None,
                          as_of=_as_of(as_of))
    except PlanIncompleteError as exc:  # the other tables were planned: show them, then the error
        _show_plan(exc.lines, as_json)
        raise
    _show_plan(lines, as_json)


def _show_plan(lines: list[Any], as_json: bool) -> None:
    if as_json:
        emit_json([line.as_dict() for line in lines])
        return
    t = Table("table", "tenant", "action", "expired", "held", "archive", "delete", "why")
    for p in lines:
        t.add_row(p.table, p.tenant_id, p.action, f"{p.expired:,}", f"{p.held:,}", f"{p.to_archive:,}",
                  f"{p.to_delete:,}", p.why)
    out.print(t)


@retention_app.command("apply")
def apply(policies: Optional[Path] = _POLICIES, table: list[str] = _TABLE, tenant: list[str] = _TENANT,
          as_of: Optional[str] = _AS_OF,
          batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Rows per DELETE transaction."),
          segment_rows: int = typer.Option(100_000, "--segment-rows", min=1, help="Rows per archive object at most."),
          no_partition_drop: bool = typer.Option(False, "--no-partition-drop",
                                                 help="Delete in batches even where a whole partition expired."),
          as_json: bool = _JSON) -> None:
    """Archive expired rows to storage, verify them, then delete them (resuming an interrupted run first)."""
    from dr_pipelines.core.retention.apply import ApplyIncompleteError, ApplyOptions, apply_policies
    from dr_pipelines.core.retention.segment import ArchiveKeys

    s = settings()
    options = ApplyOptions(tables=tuple(table), tenants=tuple(tenant), as_of=_as_of(as_of), batch_size=batch_size,
                           segment_rows=segment_rows, partition_drop=not no_partition_drop, keys=ArchiveKeys.from_settings(s))
    try:
        with progress_bar(not as_json, unit="rows") as progress:
            result = apply_policies(s.dsn, context.storage(s), _policies(policies), options, progress=progress)
    except ApplyIncompleteError as exc:  # the other tables ran: show what they did, then the error
        _show_apply(exc.result, as_json)
        raise
    _show_apply(result, as_json)


def _show_apply(result: Any, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_dict())
        return
    t = Table("table", "archived", "deleted", "deleted (no archive)", "kept (changed/held)", "bytes", "batches",
              "longest batch", "partitions dropped")
    for r in result.tables:
        t.add_row(r.table, f"{r.archived_rows:,}", f"{r.deleted_rows:,}", f"{r.deleted_unarchived:,}",
                  f"{r.kept_changed:,}", human_bytes(r.bytes), str(r.batches), f"{r.longest_batch_s:.3f}s",
                  ", ".join(r.partitions_dropped))
    out.print(t)
    for r in result.tables:
        b = r.balance
        if b and b["segments"]:
            state = "balanced" if b["ok"] else "NOT BALANCED: see docs/retention.md"
            out.print(f"{r.table}: {b['segments']} segment(s) of this run (new and resumed): archived {b['archived']:,}"
                      f" = deleted {b['deleted']:,} + kept {b['kept']:,}: {state}", highlight=False)
        for h in r.held:
            err.print(f"held: {h.table} tenant {h.tenant_id}: {h.rows:,} expired row(s) kept by hold(s) "
                      f"{', '.join(map(str, h.holds))}", highlight=False)


@hold_app.command("place")
def hold_place(tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
               reason: str = typer.Option(..., "--reason", help="Why (case or request number)."),
               table: Optional[str] = typer.Option(None, "--table", help="Only this table (default: all)."),
               where: Optional[str] = typer.Option(None, "--where", help="Only rows matching this SQL condition."),
               by: Optional[str] = typer.Option(None, "--by", help="Who places it (default: the OS user)."),
               as_json: bool = _JSON) -> None:
    """Place a legal hold: matching rows are never archived or deleted until it is released."""
    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.core.retention.holds import place_hold

    s = settings()
    root = ("public.clinics", "id")
    if s.retention_policies_file is not None:  # the policies name the tenant root
        p = _policies(s.retention_policies_file)
        root = (p.tenant_root, p.tenant_key)
    with connect(s.dsn, autocommit=True) as conn:
        hold = place_hold(conn, tenant, reason, table=table, predicate=where, placed_by=by, tenant_root=root)
    emit_json(hold.as_dict()) if as_json else out.print(f"placed {hold.describe()}", highlight=False)


@hold_app.command("release")
def hold_release(hold_id: int = typer.Argument(..., help="The hold's id."),
                 by: Optional[str] = typer.Option(None, "--by", help="Who releases it (default: the OS user)."),
                 as_json: bool = _JSON) -> None:
    """Release a legal hold (it stays on record with who released it and when)."""
    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.core.retention.holds import release_hold

    with connect(settings().dsn, autocommit=True) as conn:
        hold = release_hold(conn, hold_id, released_by=by)
    emit_json(hold.as_dict()) if as_json else out.print(f"released {hold.describe()}", highlight=False)


@hold_app.command("list")
def hold_list(all_holds: bool = typer.Option(False, "--all", help="Include released holds."),
              tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant."),
              as_json: bool = _JSON) -> None:
    """List legal holds (active ones unless --all)."""
    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.core.retention.holds import list_holds

    with connect(settings().dsn, autocommit=True) as conn:
        holds = list_holds(conn, active_only=not all_holds, tenant_id=tenant)
    if as_json:
        emit_json([h.as_dict() for h in holds])
        return
    t = Table("id", "tenant", "table", "where", "reason", "placed", "released")
    for h in holds:
        t.add_row(str(h.id), h.tenant_id, h.table_name or "(all)", h.predicate or "", h.reason,
                  f"{h.placed_by} {h.placed_at:%Y-%m-%d %H:%M}",
                  f"{h.released_by} {h.released_at:%Y-%m-%d %H:%M}" if h.released_at else "")
    out.print(t)
