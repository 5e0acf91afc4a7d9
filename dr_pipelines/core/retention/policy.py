"""Retention policies: a versioned YAML file, checked twice (its own shape, then against the database).

```yaml
version: 1
tenant_root: public.clinics        # the tenant table and its key (default public.clinics / id)
tenant_key: id
jurisdiction_column: jurisdiction  # column of the tenant root that jurisdiction overrides match
tables:
  public.audit_log:
    timestamp_column: occurred_at  # what ages a row
    period: 18 months              # N days | months | years, positive
    action: archive-then-delete    # | delete | keep
    overrides:                     # most specific wins: tenant > jurisdiction > the table's rule
      - {jurisdiction: DE, period: 24 months}
      - {tenant: "3", action: keep}
```

``parse_policies`` needs no database (the Dagster definitions load it); ``bind`` checks
tables, columns, primary keys and foreign keys on the live catalog and resolves each
tenant's rule. An override repeated with different values, or the same table named
twice, is a conflict and refused: the file must mean one thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ConfigError, read_config_yaml
from dr_pipelines.core.tenancy import Scope, TableScope, discover_scope

ACTIONS = ("archive-then-delete", "delete", "keep")
UNITS = {"day": "days", "days": "days", "month": "months", "months": "months", "year": "years", "years": "years"}
TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
_PERIOD = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
_RULE_KEYS = {"period", "action"}
_TABLE_KEYS = {"timestamp_column", "period", "action", "overrides"}
_TOP_KEYS = {"version", "tenant_root", "tenant_key", "jurisdiction_column", "tables"}


class PolicyError(ConfigError):
    """The retention policy file is malformed, or does not fit the database."""


@dataclass(frozen=True)
class Period:
    count: int
    unit: str  # days | months | years

    @classmethod
    def parse(cls, raw: Any, where: str) -> Period:
        m = _PERIOD.match(str(raw).lower()) if raw is not None else None
        if not m or m.group(2) not in UNITS:
            if raw is not None and re.match(r"^\s*-", str(raw)):
                raise PolicyError(f"{where}: period {raw!r} is not positive", fix="use a positive period, e.g. 18 months")
            raise PolicyError(f"{where}: period {raw!r} is not '<N> days|months|years'", fix="write e.g. 18 months")
        count = int(m.group(1))
        if count <= 0:
            raise PolicyError(f"{where}: period {raw!r} is not positive", fix="use a positive period, e.g. 18 months")
        return cls(count, UNITS[m.group(2)])

    @property
    def interval(self) -> str:
        """For binding as a parameter cast to interval."""
        return f"{self.count} {self.unit}"

    def __str__(self) -> str:
        return self.interval


@dataclass(frozen=True)
class Rule:
    action: str
    period: Period | None  # None only for keep
    source: str  # "table rule", "jurisdiction DE", "tenant 3": the why of a plan line

    def describe(self) -> str:
        return f"{self.action} after {self.period} ({self.source})" if self.period else f"keep ({self.source})"


@dataclass(frozen=True)
class Override:
    tenant: str | None
    jurisdiction: str | None
    action: str | None
    period: Period | None


@dataclass(frozen=True)
class TablePolicy:
    table: str  # schema.table
    timestamp_column: str
    rule: Rule
    overrides: tuple[Override, ...] = ()

    @property
    def may_archive(self) -> bool:
        """Whether any tenant's rule archives (then archives must be encryptable and readable back)."""
        return "archive-then-delete" in {self.rule.action, *(o.action or self.rule.action for o in self.overrides)}

    def rule_for(self, tenant: str, jurisdiction: str | None) -> Rule:
        """Tenant override, else jurisdiction override, else the table's rule; missing fields inherit."""
        for key, label in (("tenant", f"tenant {tenant}"), ("jurisdiction", f"jurisdiction {jurisdiction}")):
            for o in self.overrides:
                if (key == "tenant" and o.tenant == tenant) or (
                        key == "jurisdiction" and jurisdiction is not None and o.jurisdiction == jurisdiction):
                    action = o.action or self.rule.action
                    period = o.period or self.rule.period
                    return Rule(action, None if action == "keep" else period, f"{label} override")
        return self.rule


@dataclass(frozen=True)
class Policies:
    tables: dict[str, TablePolicy]
    tenant_root: str = "public.clinics"
    tenant_key: str = "id"
    jurisdiction_column: str = "jurisdiction"
    source: str = "<memory>"

    def table(self, name: str) -> TablePolicy:
        qualified = name if "." in name else f"public.{name}"
        if qualified not in self.tables:
            raise PolicyError(f"no retention policy for table {name}",
                              fix=f"choose one of {', '.join(self.tables) or '(none)'} or add it to {self.source}")
        return self.tables[qualified]


def load_policies(path: Path) -> Policies:
    data = read_config_yaml(Path(path), "retention policy file",
                            missing_fix="create it (see docs/retention.md) or correct DRP_RETENTION_POLICIES_FILE")
    return parse_policies(data, source=str(path))


def parse_policies(data: Any, *, source: str = "<memory>") -> Policies:
    """Check the file's own shape: keys, actions, periods, conflicts. No database needed."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source} must be a mapping with 'version' and 'tables'", fix="see docs/retention.md")
    _no_unknown(data, _TOP_KEYS, source)
    if data.get("version") != 1:
        raise PolicyError(f"{source}: version is {data.get('version')!r}, this drp reads version 1", fix="set version: 1")
    tables_raw = data.get("tables")
    if not isinstance(tables_raw, dict) or not tables_raw:
        raise PolicyError(f"{source}: 'tables' must map table names to rules", fix="add at least one table")
    tables: dict[str, TablePolicy] = {}
    for raw_name, body in tables_raw.items():
        name = str(raw_name) if "." in str(raw_name) else f"public.{raw_name}"
        where = f"{source}: tables.{raw_name}"
        if name in tables:
            raise PolicyError(f"{where}: {name} has two rules (named twice)", fix="keep one entry per table")
        if not isinstance(body, dict):
            raise PolicyError(f"{where} must be a mapping", fix="give timestamp_column, period and action")
        _no_unknown(body, _TABLE_KEYS, where)
        column = body.get("timestamp_column")
        if not isinstance(column, str) or not column:
            raise PolicyError(f"{where}: timestamp_column is missing", fix="name the column that ages a row")
        rule = _rule(body, where, "table rule")
        tables[name] = TablePolicy(name, column, rule, _overrides(body.get("overrides"), rule, where))
    return Policies(tables, str(data.get("tenant_root", "public.clinics")), str(data.get("tenant_key", "id")),
                    str(data.get("jurisdiction_column", "jurisdiction")), source)


def _no_unknown(body: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(map(str, set(body) - allowed))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}", fix=f"valid keys: {', '.join(sorted(allowed))}")


def _action(raw: Any, where: str) -> str:
    if raw not in ACTIONS:
        raise PolicyError(f"{where}: action {raw!r} is not one of {', '.join(ACTIONS)}", fix="pick one of them")
    return str(raw)


def _rule(body: dict[str, Any], where: str, source: str) -> Rule:
    action = _action(body.get("action"), where)
    if action == "keep":
        if body.get("period") is not None:
            raise PolicyError(f"{where}: action keep conflicts with a period", fix="drop the period, or change the action")
        return Rule(action, None, source)
    return Rule(action, Period.parse(body.get("period"), where), source)


def _overrides(raw: Any, base: Rule, where: str) -> tuple[Override, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError(f"{where}.overrides must be a list", fix="write '- {tenant: \"3\", period: 24 months}'")
    out: list[Override] = []
    seen: dict[tuple[str, str], Override] = {}
    for i, item in enumerate(raw):
        w = f"{where}.overrides[{i}]"
        if not isinstance(item, dict):
            raise PolicyError(f"{w} must be a mapping", fix="give tenant or jurisdiction, and period and/or action")
        _no_unknown(item, _RULE_KEYS | {"tenant", "jurisdiction"}, w)
        has_tenant, has_jur = item.get("tenant") is not None, item.get("jurisdiction") is not None
        if has_tenant == has_jur:
            raise PolicyError(f"{w}: give exactly one of tenant or jurisdiction", fix="split it into two overrides")
        if not (_RULE_KEYS & set(item)):
            raise PolicyError(f"{w}: overrides nothing", fix="give a period and/or an action")
        action = _action(item["action"], w) if "action" in item else None
        period = Period.parse(item["period"], w) if item.get("period") is not None else None
        if (action or base.action) == "keep" and period is not None:
            raise PolicyError(f"{w}: action keep conflicts with a period", fix="drop the period, or change the action")
        if (action or base.action) != "keep" and period is None and base.period is None:
            raise PolicyError(f"{w}: action {action} needs a period", fix="add a period, e.g. 24 months")
        o = Override(str(item["tenant"]) if has_tenant else None,
                     str(item["jurisdiction"]) if has_jur else None, action, period)
        key = ("tenant", o.tenant) if has_tenant else ("jurisdiction", o.jurisdiction)
        if key in seen and seen[key] != o:
            raise PolicyError(f"{w}: conflicting rules for {key[0]} {key[1]} (given twice, differently)",
                              fix="keep one override per tenant and per jurisdiction")
        seen[key] = o
        out.append(o)
    return tuple(out)


# -- against the database ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    id: str
    jurisdiction: str | None


@dataclass(frozen=True)
class BoundTable:
    """A policy checked against the catalog, with what the SQL builders need."""

    policy: TablePolicy
    scope: TableScope
    tenant_scope: Scope
    pk: tuple[str, ...]
    pk_types: tuple[str, ...]
    timestamp_type: str
    partitioned: bool

    @property
    def name(self) -> str:
        return self.policy.table

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.scope.schema, self.scope.table)


@dataclass(frozen=True)
class Bound:
    policies: Policies
    tables: dict[str, BoundTable]
    tenants: tuple[Tenant, ...] = field(default_factory=tuple)

    def tenant(self, tenant_id: str) -> Tenant:
        for t in self.tenants:
            if t.id == str(tenant_id):
                return t
        raise PolicyError(f"unknown tenant {tenant_id!r}: no such row in {self.policies.tenant_root}",
                          fix=f"pass an existing {self.policies.tenant_root}.{self.policies.tenant_key} value")


_PK_QUERY = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)
"""
_REFERENCED_BY = """
SELECT DISTINCT con.conrelid::regclass::text FROM pg_constraint con
WHERE con.contype = 'f' AND con.conparentid = 0 AND con.confrelid = %s::regclass AND con.conrelid <> con.confrelid
"""


def bind(conn: psycopg.Connection, policies: Policies, *, tables: list[str] | None = None) -> Bound:
    """Check every (or the named) table's policy against the database; resolve the tenants."""
    scope = discover_scope(conn, root=policies.tenant_root, key_column=policies.tenant_key)
    by_name = {t.name: t for t in scope.tables}
    wanted = [policies.table(n).table for n in tables] if tables else list(policies.tables)
    bound: dict[str, BoundTable] = {}
    for name in wanted:
        bound[name] = _bind_table(conn, policies, policies.tables[name], scope, by_name)
    return Bound(policies, bound, _tenants(conn, policies, scope))


def _bind_table(conn: psycopg.Connection, policies: Policies, p: TablePolicy, scope: Scope,
                by_name: dict[str, TableScope]) -> BoundTable:
    where = f"{policies.source}: tables.{p.table}"
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(*p.table.split(".", 1)).as_string(conn),)
                          ).fetchone()[0]
    if not exists:
        raise PolicyError(f"{where}: unknown table {p.table}", fix="name an existing table as schema.table")
    if p.table not in by_name:
        raise PolicyError(f"{where}: {p.table} has no foreign-key path to the tenant root {scope.root} "
                          "(or is a leaf partition)", fix="give the policy to a tenant-owned table (a partition's parent)")
    t = by_name[p.table]
    ident = sql.Identifier(t.schema, t.table).as_string(conn)
    col = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass"
                       " AND attname = %s AND attnum > 0 AND NOT attisdropped", (ident, p.timestamp_column)).fetchone()
    if col is None:
        raise PolicyError(f"{where}: unknown column {p.timestamp_column!r} in {p.table}",
                          fix="name the timestamp column that ages a row")
    if col[0] not in TIMESTAMP_TYPES:
        raise PolicyError(f"{where}: column {p.timestamp_column} is {col[0]}, not a timestamp or date",
                          fix="use a timestamptz, timestamp or date column")
    pk = conn.execute(_PK_QUERY, (ident,)).fetchall()
    acts = {p.rule.action, *(o.action for o in p.overrides if o.action)}
    if not pk and acts & {"archive-then-delete", "delete"}:
        raise PolicyError(f"{where}: {p.table} has no primary key", fix="archival deletes rows by primary key: add one")
    referenced = [r[0] for r in conn.execute(_REFERENCED_BY, (ident,)).fetchall()]
    if referenced and acts & {"archive-then-delete", "delete"}:
        raise PolicyError(f"{where}: rows of {p.table} are referenced by {', '.join(referenced)} (foreign keys)",
                          fix="deleting them would fail or cascade: give a policy to the referencing tables instead")
    return BoundTable(p, t, scope, tuple(r[0] for r in pk), tuple(r[1] for r in pk), col[0], t.kind == "partitioned")


def _tenants(conn: psycopg.Connection, policies: Policies, scope: Scope) -> tuple[Tenant, ...]:
    schema, table = scope.root.split(".", 1)
    ident = sql.Identifier(schema, table).as_string(conn)
    has_jur = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s"
                           " AND attnum > 0 AND NOT attisdropped", (ident, policies.jurisdiction_column)).fetchone()
    uses_jur = any(o.jurisdiction for p in policies.tables.values() for o in p.overrides)
    if uses_jur and not has_jur:
        raise PolicyError(f"{policies.source}: jurisdiction overrides need column {policies.jurisdiction_column!r} "
                          f"in {scope.root}, which has none", fix="set jurisdiction_column to the right column")
    jur = sql.Identifier(policies.jurisdiction_column) if has_jur else sql.SQL("NULL")
    rows = conn.execute(sql.SQL("SELECT {}::text, {}::text FROM {} ORDER BY {}").format(
        sql.Identifier(scope.key_column), jur, sql.Identifier(schema, table), sql.Identifier(scope.key_column))).fetchall()
    return tuple(Tenant(r[0], r[1]) for r in rows)

