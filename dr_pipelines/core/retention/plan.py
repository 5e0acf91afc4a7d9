"""The dry run: per table and tenant, what apply would archive, delete or keep, and why. Changes nothing.

Everything is read in one READ ONLY, REPEATABLE READ transaction, and nothing is created
(not even drp's own tables): a missing holds or journal table simply means none. Each table
is planned in its own savepoint: one that fails (a hold predicate that errors on some row)
is reported after the others' lines, as apply does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.checksums import pin_render_settings
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.retention.apply import cutoff_for, resolve_as_of
from dr_pipelines.core.retention.holds import column_names, hold_filter
from dr_pipelines.core.retention.policy import BoundTable, Policies, Tenant, bind
from dr_pipelines.core.retention.segment import ALIAS, bind_tenant, from_clause, ts_value
from dr_pipelines.core.tenancy import tenant_filter


class PlanIncompleteError(DrpError):
    """Some tables could not be planned; ``lines`` holds the others'."""

    def __init__(self, problems: list[str], lines: list[PlanLine]) -> None:
        self.lines = lines
        super().__init__("; ".join(problems), fix="fix the cause (a legal hold's predicate failing on a row is "
                         "released and placed again with a correct one); the other tables' plans are shown")


@dataclass(frozen=True)
class PlanLine:
    table: str
    tenant_id: str
    jurisdiction: str | None
    action: str
    rule: str  # the why: which rule applied (table, jurisdiction or tenant override)
    cutoff: datetime | None
    expired: int  # rows older than the cutoff
    held: int  # of those, kept by a legal hold
    to_archive: int
    to_delete: int
    holds: tuple[int, ...]
    unfinished_segments: int  # from an interrupted run; apply finishes them first

    @property
    def why(self) -> str:
        if self.action == "keep":
            return f"{self.rule}: kept whatever their age"
        parts = [f"{self.rule}: rows before {self.cutoff:%Y-%m-%d %H:%M} UTC are expired"] if self.cutoff else []
        if self.held:
            parts.append(f"{self.held} held by legal hold(s) {', '.join(map(str, self.holds))}")
        if self.unfinished_segments:
            parts.append(f"{self.unfinished_segments} unfinished segment(s) will be resumed")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        d["holds"] = list(self.holds)
        d["why"] = self.why
        return d


def plan(dsn: str, policies: Policies, *, tables: list[str] | None = None, tenants: list[str] | None = None,
         as_of: datetime | None = None) -> list[PlanLine]:
    lines: list[PlanLine] = []
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            pin_render_settings(conn)
            bound = bind(conn, policies, tables=tables)
            when = resolve_as_of(conn, as_of)
            chosen = [bound.tenant(t) for t in tenants] if tenants else bound.tenants
            journal_exists = conn.execute("SELECT to_regclass('drp.archive_segments') IS NOT NULL").fetchone()[0]
            problems: list[str] = []
            for bt in bound.tables.values():
                try:
                    with conn.transaction():  # a savepoint: a failing table leaves the snapshot usable
                        lines += _plan_table(conn, bt, chosen, when, journal_exists)
                except psycopg.Error as exc:
                    problems.append(f"plan of {bt.name} failed: "
                                    f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
    if problems:
        raise PlanIncompleteError(problems, lines)
    return lines


def _plan_table(conn: psycopg.Connection, bt: BoundTable, chosen: list[Tenant] | tuple[Tenant, ...],
                when: datetime, journal_exists: bool) -> list[PlanLine]:
    lines: list[PlanLine] = []
    columns = column_names(conn, bt.name)
    for tenant in chosen:
        rule = bt.policy.rule_for(tenant.id, tenant.jurisdiction)
        unfinished = conn.execute(
            "SELECT count(*) FROM drp.archive_segments WHERE table_name = %s AND tenant_id = %s"
            " AND state IN ('pending', 'written', 'verified')", (bt.name, tenant.id)).fetchone()[0] \
            if journal_exists else 0
        if rule.action == "keep":
            lines.append(PlanLine(bt.name, tenant.id, tenant.jurisdiction, "keep", rule.source, None, 0, 0,
                                  0, 0, (), unfinished))
            continue
        cutoff = cutoff_for(conn, when, rule)
        holds = hold_filter(conn, bt.name, tenant.id, columns)
        held_cond = sql.SQL("true") if holds.everything else holds.held_expr(ALIAS)
        bind_tenant(conn, tenant.id)
        ts = sql.Identifier(ALIAS, bt.policy.timestamp_column)
        expired, held = conn.execute(sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE {}) FROM {} WHERE {} AND {} < %s").format(
            held_cond, from_clause(bt), tenant_filter(bt.scope, bt.tenant_scope, ALIAS), ts),
            (ts_value(bt, cutoff),)).fetchone()
        free = expired - held
        lines.append(PlanLine(
            bt.name, tenant.id, tenant.jurisdiction, rule.action, rule.source, cutoff, expired, held,
            free if rule.action == "archive-then-delete" else 0, free, tuple(h.id for h in holds.holds),
            unfinished))
    return lines
