"""Rows an apply cannot write as they were: found before anything is written, listed, refused or skipped.

A *restore-deleted* row goes back with its old key values; a *revert-changed* row gets its old
values back. Either can collide with what live holds now:

- ``unique``: one of the row's unique keys (the primary key or any unique constraint or unique
  index without predicate or expression) is now used by another live row (a new row took the
  id, another clinic's row holds the same number, ...);
- ``missing-parent``: a foreign key of the row names a parent that no longer exists in live
  and is not being restored (or is skipped itself);
- ``legal-hold``: the live row a revert would overwrite is under an active legal hold
  (core/retention/holds.py): held data is evidence and is never overwritten by a restore.
  Restoring a deleted row under a hold is allowed: it adds, it does not overwrite.

By default the apply is refused and every conflict listed (table, key, constraint). With
``on_conflict="skip"`` the conflicting rows are dropped from the plan and so are rows that
depend on them (children whose parent is no longer restored), found by repeating the check
until nothing changes; every skipped row is reported.

The plan lives in two TEMP tables per table (rows to insert, rows to revert), in the live
transaction; the checks are SQL over them and the live tables, in the same snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.retention.holds import hold_filter
from dr_pipelines.core.tenancy import TableScope, read_relation, split_name

LISTED_PER_CHECK = 100  # conflicts listed per (table, constraint, kind); all are counted


class ConflictError(DrpError):
    """The past rows collide with live rows: the apply is refused, nothing applied."""

    exit_code = 4


@dataclass(frozen=True)
class Conflict:
    table: str
    kind: str  # unique | missing-parent | legal-hold
    constraint: str  # the constraint, index or hold that the row runs into
    key: dict[str, Any]  # the past row's primary key (or the unique key checked, for a table without one)
    policy: str  # restore-deleted | revert-changed

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "kind": self.kind, "constraint": self.constraint, "key": self.key,
                "policy": self.policy}


@dataclass
class Conflicts:
    listed: list[Conflict] = field(default_factory=list)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (table, kind, constraint) -> rows

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, found: list[Conflict], total: int) -> None:
        if total:
            c = found[0]
            key = (c.table, c.kind, c.constraint)
            self.counts[key] = self.counts.get(key, 0) + total
            self.listed.extend(found)

    def describe(self, limit: int = 20) -> str:
        lines = [f"{t}: {n} row(s) {kind} ({con})" for (t, kind, con), n in sorted(self.counts.items())]
        return "; ".join(lines[:limit]) + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")


@dataclass(frozen=True)
class UniqueKey:
    name: str
    columns: tuple[str, ...]
    primary: bool


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: str  # schema.table
    parent_columns: tuple[str, ...]
    parent_kind: str  # "table" (read with ONLY) or "partitioned"


@dataclass
class TablePlan:
    """One table's share of the apply: its TEMP relations of rows to insert and to revert."""

    scope: TableScope
    insert: sql.Identifier
    revert: sql.Identifier
    pk: tuple[str, ...]
    unique: list[UniqueKey]
    fks: list[ForeignKey]
    empty: bool = False  # the table is identical: nothing to restore, its relations are never made


_UNIQUE_QUERY = """
SELECT ic.relname, i.indisprimary,
       array_agg(a.attname ORDER BY k.ord)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
  AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid, ic.relname, i.indisprimary
ORDER BY NOT i.indisprimary, 1
"""

_FK_QUERY = """
SELECT con.conname, array_agg(ca.attname ORDER BY k.ord), pn.nspname || '.' || pc.relname,
       array_agg(pa.attname ORDER BY k.ord), pc.relkind
FROM pg_constraint con
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(child_att, parent_att, ord)
JOIN pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_att
JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_att
JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE con.contype = 'f' AND con.conparentid = 0 AND con.conrelid = %s::regclass
GROUP BY con.oid, con.conname, pn.nspname, pc.relname, pc.relkind
ORDER BY con.conname
"""


def constraints_of(conn: psycopg.Connection, t: TableScope) -> tuple[list[UniqueKey], list[ForeignKey]]:
    """The table's unique keys (primary first) and its foreign keys, from the catalog."""
    rel = sql.Identifier(t.schema, t.table).as_string(conn)
    unique = [UniqueKey(name, tuple(cols), primary) for name, primary, cols in conn.execute(_UNIQUE_QUERY, (rel,))]
    fks = [ForeignKey(name, tuple(cols), parent, tuple(pcols), "partitioned" if kind == "p" else "table")
           for name, cols, parent, pcols, kind in conn.execute(_FK_QUERY, (rel,))]
    return unique, fks


def _key_json(columns: tuple[str, ...], alias: str) -> sql.Composable:
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier(alias, c)) for c in columns))


def _equal(columns: tuple[str, ...], a: str, b: str, b_columns: tuple[str, ...] | None = None) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier(a, x), sql.Identifier(b, y))
                                 for x, y in zip(columns, b_columns or columns, strict=True))


def _not_null(columns: tuple[str, ...], alias: str) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(alias, c)) for c in columns)


class _Checker:
    """Runs every check of one table's plan; in skip mode, removes what it finds."""

    def __init__(self, conn: psycopg.Connection, plans: dict[str, TablePlan], clinic: str, skip: bool) -> None:
        self.conn, self.plans, self.clinic, self.skip = conn, plans, clinic, skip

    def run(self, plan: TablePlan, found: Conflicts, policies: set[str]) -> int:
        """Check ``plan``; conflicts go to ``found``; returns rows removed (skip mode)."""
        removed = 0
        if plan.empty:
            return 0
        if "restore-deleted" in policies:
            for uk in plan.unique:
                removed += self._check(plan, plan.insert, "unique", uk.name, "restore-deleted", found,
                                       self._collides(plan, uk, check_pk=False))
            for fk in plan.fks:
                removed += self._check(plan, plan.insert, "missing-parent", fk.name, "restore-deleted", found,
                                       self._orphan(fk))
        if "revert-changed" in policies and plan.pk:
            for uk in plan.unique:
                if uk.primary:
                    continue  # a reverted row keeps its primary key: that live row is the one updated
                removed += self._check(plan, plan.revert, "unique", uk.name, "revert-changed", found,
                                       self._collides(plan, uk, check_pk=True))
            for fk in plan.fks:
                removed += self._check(plan, plan.revert, "missing-parent", fk.name, "revert-changed", found,
                                       self._orphan(fk))
            removed += self._holds(plan, found)
        return removed

    def _collides(self, plan: TablePlan, uk: UniqueKey, *, check_pk: bool) -> sql.Composable:
        other = sql.SQL(" AND ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.Identifier("l", c) for c in plan.pk),
            sql.SQL(", ").join(sql.Identifier("p", c) for c in plan.pk)) if check_pk else sql.SQL("")
        return sql.SQL("{} AND EXISTS (SELECT 1 FROM {} AS l WHERE {}{})").format(
            _not_null(uk.columns, "p"), read_relation(plan.scope.schema, plan.scope.table, plan.scope.kind), _equal(uk.columns, "l", "p"), other)

    def _orphan(self, fk: ForeignKey) -> sql.Composable:
        parent = read_relation(*split_name(fk.parent), fk.parent_kind)
        cond = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} AS l WHERE {})").format(
            _not_null(fk.columns, "p"), parent, _equal(fk.parent_columns, "l", "p", fk.columns))
        restored = self.plans.get(fk.parent)
        if restored is not None and not restored.empty:
            cond = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} AS q WHERE {})").format(
                cond, restored.insert, _equal(fk.parent_columns, "q", "p", fk.columns))
        return cond

    def _holds(self, plan: TablePlan, found: Conflicts) -> int:
        holds = hold_filter(self.conn, plan.scope.name, self.clinic)
        if not holds.holds:
            return 0
        held = sql.SQL("true") if holds.everything else holds.held_expr("l")
        cond = sql.SQL("EXISTS (SELECT 1 FROM {} AS l WHERE {} AND {})").format(
            read_relation(plan.scope.schema, plan.scope.table, plan.scope.kind), _equal(plan.pk, "l", "p"), held)
        name = ", ".join(f"hold {h.id}" for h in holds.holds)
        return self._check(plan, plan.revert, "legal-hold", name, "revert-changed", found, cond)

    def _check(self, plan: TablePlan, rel: sql.Identifier, kind: str, constraint: str, policy: str,
               found: Conflicts, cond: sql.Composable) -> int:
        key_cols = plan.pk or next((u.columns for u in plan.unique), ())
        key = _key_json(key_cols, "p") if key_cols else sql.SQL("to_jsonb(p.*)")
        total, keys = self.conn.execute(sql.SQL(
            "SELECT count(*), (array_agg({} ORDER BY {}))[1:%s] FROM {} AS p WHERE {}").format(
                key, key, rel, cond), (LISTED_PER_CHECK,)).fetchone()
        found.add([Conflict(plan.scope.name, kind, constraint, k, policy) for k in keys or ()], int(total))
        if not (total and self.skip):
            return 0
        return self.conn.execute(sql.SQL("DELETE FROM {} AS p WHERE {}").format(rel, cond)).rowcount


def find_conflicts(conn: psycopg.Connection, plans: list[TablePlan], clinic: str, policies: set[str], *,
                   skip: bool) -> Conflicts:
    """Every conflict of the plan (tables in insert order). With ``skip``, conflicting rows and the
    rows depending on them are removed from the plan: passes repeat until one removes nothing."""
    by_name = {p.scope.name: p for p in plans}
    checker = _Checker(conn, by_name, clinic, skip)
    found = Conflicts()
    for _ in range(len(plans) + 1 if skip else 1):
        found_now = Conflicts()
        removed = sum(checker.run(plan, found_now, policies) for plan in plans)
        for (table, kind, con), n in found_now.counts.items():
            found.counts[(table, kind, con)] = found.counts.get((table, kind, con), 0) + n
        found.listed.extend(found_now.listed)
        if not removed:
            break
    return found
