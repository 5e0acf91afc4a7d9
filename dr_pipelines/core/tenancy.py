"""Which tables belong to a tenant, and how each one reaches the tenant root, from the FK graph.

Nothing here is a hand-written list: the scope is derived from ``pg_constraint``.

- The tenant root is a table (``public.clinics``) and its key column (``id``).
- Edges are foreign keys, child -> parent. A breadth-first search from the root over the
  reversed edges gives every table that can reach the root, with a *shortest* FK path.
- A table with a direct FK on the root's key filters on its own FK column (no join).
  Others join along their path up to the first table that has such a column.
- Ties (several shortest paths) are broken deterministically: parents are visited in BFS
  order (depth, then qualified name), edges in constraint-name order. The other
  equally-short routes are reported in ``TableScope.alternatives`` so a reviewer can see
  where the choice mattered (e.g. pagila's rental: via customer or via inventory/staff).
- Tables with no path are excluded and listed, as are tables excluded by configuration.
- Declaratively partitioned tables are exported through their parent (which reads every
  partition); leaf partitions and FK constraints cloned onto partitions are skipped.
  Inheritance children (pagila's ``payment_p2007_01 INHERITS (payment)``) are separate
  tables: each is read with ``ONLY`` so a parent never repeats its children's rows.

All identifiers go through ``psycopg.sql.Identifier``. Tenant ids are never formatted into
SQL: the export binds them with ``set_config('drp.export_tenants', %s, true)`` and the
queries built here read them back with ``current_setting`` (COPY cannot take parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ConfigError

TENANTS_SETTING = "drp.export_tenants"  # a custom GUC, set transaction-locally to the tenant id array

_SYSTEM_SCHEMAS_SQL = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
"""

# Ordinary and partitioned tables, leaf partitions left out, extension members left out.
TABLES_QUERY = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND {_SYSTEM_SCHEMAS_SQL}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

# Foreign keys (constraints cloned onto partitions, conparentid <> 0, left out), with their
# column pairs in key order.
FKS_QUERY = """
SELECT con.conname, con.conrelid, con.confrelid,
       array_agg(ca.attname ORDER BY k.ord) AS child_cols,
       array_agg(pa.attname ORDER BY k.ord) AS parent_cols,
       bool_or(NOT ca.attnotnull) AS nullable
FROM pg_constraint con
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(child_att, parent_att, ord)
JOIN pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_att
JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_att
WHERE con.contype = 'f' AND con.conparentid = 0
GROUP BY con.oid, con.conname, con.conrelid, con.confrelid
ORDER BY con.conname
"""


class ScopeError(ConfigError):
    """The tenant root cannot be found or the tenant scope cannot be derived."""


@dataclass(frozen=True)
class Hop:
    """One foreign key followed from child to parent."""

    constraint: str
    child: str  # qualified "schema.table"
    parent: str
    pairs: tuple[tuple[str, str], ...]  # (child column, parent column)
    nullable: bool = False

    def describe(self) -> str:
        cols = ", ".join(c for c, _ in self.pairs)
        pcols = ", ".join(p for _, p in self.pairs)
        return f"{self.child}({cols}) -> {self.parent}({pcols})"


@dataclass(frozen=True)
class TableScope:
    """A tenant-owned table and how its rows are tied to a tenant."""

    schema: str
    table: str
    kind: str  # "table" or "partitioned"
    # Empty for the root itself; else the FK hops from this table to the root, the last hop
    # being the table whose own column holds the tenant key.
    path: tuple[Hop, ...]
    tenant_column: str  # the column compared with the tenant ids, on the path's last table
    alternatives: tuple[str, ...] = ()  # other equally short routes, described

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def is_root(self) -> bool:
        return not self.path

    @property
    def via(self) -> tuple[str, ...]:
        """The tables joined on the way to the tenant column (the table itself excluded)."""
        return tuple(h.parent for h in self.path[:-1])

    def describe(self) -> str:
        if self.is_root:
            return f"{self.name}.{self.tenant_column} (tenant root)"
        if len(self.path) == 1:
            return f"{self.name}.{self.tenant_column} -> root"
        route = " -> ".join([self.name, *self.via])
        return f"{route}.{self.tenant_column} -> root"

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "kind": self.kind,
            "tenant_column": self.tenant_column,
            "via": list(self.via),
            "path": [h.describe() for h in self.path],
            "alternatives": list(self.alternatives),
        }


@dataclass(frozen=True)
class ExcludedTable:
    name: str
    reason: str  # "no foreign-key path to the tenant root" or "excluded by configuration"

    def as_dict(self) -> dict[str, str]:
        return {"table": self.name, "reason": self.reason}


@dataclass(frozen=True)
class Scope:
    root: str  # qualified
    key_column: str
    key_type: str  # format_type of the key column, e.g. "bigint"
    tables: tuple[TableScope, ...]  # root first, then by BFS depth and name
    excluded: tuple[ExcludedTable, ...] = field(default_factory=tuple)

    def table(self, name: str) -> TableScope:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tables]

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "key_column": self.key_column,
            "key_type": self.key_type,
            "tables": [t.as_dict() for t in self.tables],
            "excluded": [e.as_dict() for e in self.excluded],
        }


def split_name(name: str) -> tuple[str, str]:
    """'schema.table' -> (schema, table); a bare name is in public."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", schema)


def tenant_keys(conn: psycopg.Connection, root: str = "public.clinics", key_column: str = "id") -> list[str]:
    """Every tenant's key as text, in key order (Dagster keeps one partition per tenant from this)."""
    schema, table = split_name(root)
    try:
        with conn.transaction():
            rows = conn.execute(sql.SQL("SELECT {key}::text FROM {root} ORDER BY {key}").format(
                key=sql.Identifier(key_column), root=sql.Identifier(schema, table))).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        raise ScopeError(f"tenant root {root}.{key_column} does not exist in this database",
                         fix="set export_tenant_root / export_tenant_key to the table and column naming tenants") from None
    return [r[0] for r in rows]


def discover_scope(
    conn: psycopg.Connection,
    *,
    root: str = "public.clinics",
    key_column: str = "id",
    exclude: tuple[str, ...] | list[str] = (),
) -> Scope:
    """The tenant scope of the database behind ``conn`` (read-only catalog queries)."""
    root_schema, root_table = split_name(root)
    rels = conn.execute(TABLES_QUERY).fetchall()
    by_oid = {oid: (f"{schema}.{rel}", schema, rel, kind) for oid, schema, rel, kind in rels}
    names = {v[0]: oid for oid, v in by_oid.items()}
    root_name = f"{root_schema}.{root_table}"
    root_oid, key_type = _root_key(conn, names, root_name, key_column)
    excluded_by_config = _exclusions(names, root_name, exclude)
    routes = _Routes.search(_fk_children(conn, by_oid), names, by_oid, root_oid)

    def direct_to_root(hop: Hop) -> bool:
        return hop.parent == root_name and len(hop.pairs) == 1 and hop.pairs[0][1] == key_column

    tables: list[TableScope] = []
    excluded: list[ExcludedTable] = []
    for oid in routes.order:
        name, schema, rel, kind = by_oid[oid]
        if name in excluded_by_config:
            continue
        hops = routes.path[oid]
        if not hops:
            tenant_column = key_column
        elif direct_to_root(hops[-1]):
            tenant_column = hops[-1].pairs[0][0]  # the last hop is kept for the record only
        else:
            tenant_column = key_column  # the path's last hop joins the root table itself
        tables.append(TableScope(schema, rel, "partitioned" if kind == "p" else "table", hops, tenant_column,
                                 tuple(routes.alternatives.get(oid, ()))))
    for oid, (name, _schema, _rel, _kind) in sorted(by_oid.items(), key=lambda kv: kv[1][0]):
        if name in excluded_by_config:
            excluded.append(ExcludedTable(name, "excluded by configuration"))
        elif oid not in routes.depth:
            excluded.append(ExcludedTable(name, "no foreign-key path to the tenant root"))
    return Scope(root_name, key_column, key_type, tuple(tables), tuple(excluded))


def _root_key(conn: psycopg.Connection, names: dict[str, int], root_name: str, key_column: str) -> tuple[int, str]:
    """The root table's oid and its key column's type; ScopeError if either is missing."""
    if root_name not in names:
        raise ScopeError(
            f"tenant root table {root_name} does not exist (or is a partition, view or system table)",
            fix="pass the tenant root as schema.table of an ordinary or partitioned table, e.g. public.clinics",
        )
    root_oid = names[root_name]
    key = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (root_oid, key_column),
    ).fetchone()
    if key is None:
        raise ScopeError(
            f"tenant root {root_name} has no column {key_column!r}",
            fix="pass the root's key column (the one tenant-owned tables reference), e.g. id",
        )
    return root_oid, key[0]


def _exclusions(names: dict[str, int], root_name: str, exclude: tuple[str, ...] | list[str]) -> set[str]:
    """The configured exclusions, qualified; ConfigError for an unknown table or the root itself."""
    excluded_by_config = {n if "." in n else f"public.{n}" for n in exclude}
    unknown = sorted(excluded_by_config - set(names))
    if unknown:
        raise ConfigError(
            f"cannot exclude {', '.join(unknown)}: no such table",
            fix="name tables as schema.table (leaf partitions cannot be excluded on their own: name the parent)",
        )
    if root_name in excluded_by_config:
        raise ConfigError(f"the tenant root {root_name} cannot be excluded", fix="remove it from the exclusions")
    return excluded_by_config


def _fk_children(conn: psycopg.Connection, by_oid: dict[int, tuple[str, str, str, str]]) -> dict[int, list[Hop]]:
    """children[parent oid] -> FKs pointing at it (only between tables we consider)."""
    children: dict[int, list[Hop]] = {}
    for conname, child_oid, parent_oid, child_cols, parent_cols, nullable in conn.execute(FKS_QUERY).fetchall():
        if child_oid not in by_oid or parent_oid not in by_oid or child_oid == parent_oid:
            continue
        hop = Hop(conname, by_oid[child_oid][0], by_oid[parent_oid][0],
                  tuple(zip(child_cols, parent_cols, strict=True)), bool(nullable))
        children.setdefault(parent_oid, []).append(hop)
    return children


@dataclass
class _Routes:
    """Shortest FK routes from every reachable table to the root."""

    depth: dict[int, int]
    path: dict[int, tuple[Hop, ...]]  # the first (chosen) shortest path per table
    alternatives: dict[int, list[str]]  # other equally short routes, described
    order: list[int]  # breadth-first, by name within a level

    @classmethod
    def search(cls, children: dict[int, list[Hop]], names: dict[str, int],
               by_oid: dict[int, tuple[str, str, str, str]], root_oid: int) -> _Routes:
        """BFS from the root; depth and the first (chosen) path per table, other shortest ones recorded."""
        depth = {root_oid: 0}
        path: dict[int, tuple[Hop, ...]] = {root_oid: ()}
        alternatives: dict[int, list[str]] = {}
        level = [root_oid]
        frontier_order: list[int] = [root_oid]
        while level:
            next_level: list[int] = []
            for parent in level:
                for hop in sorted(children.get(parent, []), key=lambda h: (h.child, h.constraint)):
                    child = names[hop.child]
                    if child == root_oid:
                        continue
                    # An FK to the root on another column than the key (say a unique slug) still
                    # leads to the root: its query then joins the root table itself.
                    if child not in depth:
                        depth[child] = depth[parent] + 1
                        path[child] = (hop, *path[parent])
                        next_level.append(child)
                    elif depth[child] == depth[parent] + 1 and path[child][0] != hop:
                        route = " -> ".join([hop.child, hop.parent, *[h.parent for h in path[parent]]])
                        alternatives.setdefault(child, []).append(f"{route} ({hop.constraint})")
            level = sorted(next_level, key=lambda o: by_oid[o][0])
            frontier_order += level
        return cls(depth, path, alternatives, frontier_order)


# -- queries ------------------------------------------------------------------------------------------


def tenant_array(key_type: str) -> sql.Composable:
    """The bound tenant ids, read back from the transaction-local setting as an array of the key type.

    ``key_type`` comes from format_type() on the catalog, which quotes names as needed.
    """
    return sql.SQL("current_setting({})::{}[]").format(sql.Literal(TENANTS_SETTING), sql.SQL(key_type))


def _ident(qualified: str) -> sql.Identifier:
    return sql.Identifier(*split_name(qualified))


def tenant_filter(t: TableScope, scope: Scope, alias: str = "t") -> sql.Composable:
    """A boolean SQL expression true for rows of ``alias`` that belong to one of the bound tenants."""
    tenants = tenant_array(scope.key_type)
    hops = list(t.path)
    if not hops:
        return sql.SQL("{} = ANY ({})").format(sql.Identifier(alias, scope.key_column), tenants)
    direct = (hops[-1].parent == scope.root and len(hops[-1].pairs) == 1
              and hops[-1].pairs[0][1] == scope.key_column)
    if len(hops) == 1 and direct:
        return sql.SQL("{} = ANY ({})").format(sql.Identifier(alias, t.tenant_column), tenants)
    # EXISTS over the join chain: never duplicates rows, whatever the FKs' uniqueness.
    if direct:
        last_alias = f"j{len(hops) - 1}"
        final = sql.SQL("{} = ANY ({})").format(sql.Identifier(last_alias, t.tenant_column), tenants)
        join_hops = hops[:-1]
    else:
        last_alias = f"j{len(hops)}"
        final = sql.SQL("{} = ANY ({})").format(sql.Identifier(last_alias, scope.key_column), tenants)
        join_hops = hops
    froms: list[sql.Composable] = []
    conds: list[sql.Composable] = []
    prev = alias
    for i, hop in enumerate(join_hops, start=1):
        cur = f"j{i}"
        froms.append(sql.SQL("{} AS {}").format(_ident(hop.parent), sql.Identifier(cur)))
        for c, p in hop.pairs:
            conds.append(sql.SQL("{} = {}").format(sql.Identifier(prev, c), sql.Identifier(cur, p)))
        prev = cur
    conds.append(final)
    return sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {})").format(
        sql.SQL(", ").join(froms), sql.SQL(" AND ").join(conds))


def read_relation(schema: str, table: str, kind: str) -> sql.Composed:
    """A table as a FROM (or UPDATE) target: ONLY for an ordinary table (an inheritance parent never
    repeats its children's rows), none for a partitioned one (its rows live in its partitions)."""
    only = sql.SQL("ONLY ") if kind == "table" else sql.SQL("")
    return sql.SQL("{}{}").format(only, sql.Identifier(schema, table))


def tenant_select(t: TableScope, scope: Scope, columns: sql.Composable | None = None, alias: str = "t") -> sql.Composed:
    """SELECT <columns> FROM [ONLY] table AS t WHERE <tenant filter>.

    ONLY for ordinary tables (an inheritance parent never repeats its children's rows);
    none for partitioned tables, whose rows live in their partitions.
    """
    return sql.SQL("SELECT {} FROM {} AS {} WHERE {}").format(
        columns if columns is not None else sql.SQL("{}.*").format(sql.Identifier(alias)),
        read_relation(t.schema, t.table, t.kind), sql.Identifier(alias), tenant_filter(t, scope, alias))
