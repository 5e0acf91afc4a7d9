"""Legal holds: rows that must not be archived or deleted, whatever the policy says.

A hold names a tenant and optionally a table and a predicate (a boolean SQL expression over
that table's columns). Without a table it holds every row of the tenant; with a table and
no predicate, every row of that table for the tenant. Released holds stay in the table
(released_by/at) as the record of who held what and when.

Predicates are user SQL, so they are the one place where text typed by a person becomes
part of a query. They are parsed with PostgreSQL's own parser (pglast) and accepted only
as one boolean expression built from column references of the held table, constants,
comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS [NOT] NULL, CASE, COALESCE, casts to plain
types and a short list of immutable functions. Subqueries, other functions (anything
with side effects or access to other data), parameters, qualified names and system
columns are refused. What is stored and applied is the parser's own rendering of the
expression (deparsed): a trailing ``-- comment`` or other text the parser skips never
reaches a query. They are validated when placed and again whenever applied (holds stored
by an earlier release are deparsed then too); a hold whose predicate no longer validates
holds the whole table for its tenant (fail safe). A NULL predicate result holds the row too.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, replace
from datetime import datetime

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.drp_schema import HOLDS_DDL, LEGAL_HOLDS_LOCK, ensure_table

ALLOWED_FUNCTIONS = frozenset({
    "lower", "upper", "length", "char_length", "btrim", "ltrim", "rtrim", "substr", "substring", "abs",
    "date_trunc", "date_part", "extract", "coalesce", "nullif", "greatest", "least", "starts_with",
})
ALLOWED_TYPES = frozenset({
    "text", "varchar", "int2", "int4", "int8", "integer", "bigint", "smallint", "numeric", "bool", "boolean",
    "date", "timestamp", "timestamptz", "interval", "float4", "float8", "jsonb", "bpchar", "char",
})
_ALLOWED_NODES = frozenset({
    "A_Expr", "BoolExpr", "ColumnRef", "A_Const", "String", "Integer", "Float", "Boolean", "BitString",
    "NullTest", "BooleanTest", "TypeCast", "TypeName", "CaseExpr", "CaseWhen", "CoalesceExpr", "MinMaxExpr",
    "NullIfExpr", "FuncCall", "A_ArrayExpr", "SQLValueFunction", "RowExpr",
})


class HoldError(DrpError):
    """A legal hold is malformed, unsafe, or does not exist."""

    exit_code = 2


@dataclass(frozen=True)
class Hold:
    id: int
    tenant_id: str
    table_name: str | None
    predicate: str | None
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str | None = None
    released_at: datetime | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(self).items()}

    def describe(self) -> str:
        what = self.table_name or "all tables"
        cond = f" where {self.predicate}" if self.predicate else ""
        return f"hold {self.id} ({what}{cond}): {self.reason}"


def ensure_holds_table(conn: psycopg.Connection) -> None:
    ensure_table(conn, "drp.legal_holds", HOLDS_DDL, LEGAL_HOLDS_LOCK)


def validate_predicate(predicate: str, columns: set[str]) -> str:
    """The predicate, deparsed, if it is one safe boolean expression over ``columns``; else HoldError.

    The deparsed form (not the text typed) is what is stored and put into queries: comments and
    anything else the parser skips are gone, so the expression cannot swallow the SQL around it.
    """
    from pglast import ast, parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream
    from pglast.visitors import Visitor

    text = predicate.strip()
    if not text:
        raise HoldError("the hold predicate is empty", fix="leave it out to hold the whole table, or write an expression")
    try:
        stmts = parse_sql(f"SELECT 1 WHERE {text}")
    except ParseError as exc:
        raise HoldError(f"the hold predicate does not parse: {exc}", fix="write one boolean SQL expression") from None
    stmt = stmts[0].stmt if len(stmts) == 1 else None
    if (not isinstance(stmt, ast.SelectStmt) or stmt.whereClause is None or stmt.fromClause or stmt.groupClause
            or stmt.havingClause or stmt.sortClause or stmt.limitCount or len(stmt.targetList or ()) != 1):
        raise HoldError(f"the hold predicate {text!r} is not a single boolean expression",
                        fix="write only a condition, e.g. entity = 'patient' AND entity_id = 42")
    problems: list[str] = []

    class Check(Visitor):  # type: ignore[misc]
        def visit(self, ancestors: object, node: object) -> None:
            kind = type(node).__name__
            if kind not in _ALLOWED_NODES:
                problems.append("subqueries are not allowed" if kind == "SubLink" else f"{kind} is not allowed")
            elif isinstance(node, ast.FuncCall):
                name = ".".join(str(getattr(n, "sval", n)) for n in node.funcname)
                if name.removeprefix("pg_catalog.") not in ALLOWED_FUNCTIONS:
                    problems.append(f"function {name}() is not allowed")
            elif isinstance(node, ast.TypeName):
                name = str(getattr(node.names[-1], "sval", ""))
                if name not in ALLOWED_TYPES:
                    problems.append(f"cast to {name} is not allowed")
            elif isinstance(node, ast.ColumnRef):
                parts = [getattr(f, "sval", None) for f in node.fields]
                if len(parts) != 1 or parts[0] is None:
                    problems.append("only plain column names are allowed (no table prefix, no *)")
                elif parts[0] not in columns:
                    problems.append(f"unknown column {parts[0]!r}")

    Check()(stmt.whereClause)
    if problems:
        raise HoldError(f"the hold predicate {text!r} is refused: {'; '.join(dict.fromkeys(problems))}",
                        fix="use columns of the held table, constants, comparisons, AND/OR/NOT and simple functions")
    return str(RawStream()(stmt.whereClause))


def column_names(conn: psycopg.Connection, table: str) -> set[str]:
    """The names of `table`'s columns, for validating a hold; HoldError if there is no such table.

    (parquet.table_columns is the other question: each column's type, for writing files.)"""
    ident = sql.Identifier(*table.split(".", 1)).as_string(conn)
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ident,)).fetchone()[0]:
        raise HoldError(f"unknown table {table}", fix="name an existing table as schema.table")
    return {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                       " AND attnum > 0 AND NOT attisdropped", (ident,)).fetchall()}


def place_hold(conn: psycopg.Connection, tenant_id: str, reason: str, *, table: str | None = None,
               predicate: str | None = None, placed_by: str | None = None,
               tenant_root: tuple[str, str] = ("public.clinics", "id")) -> Hold:
    """Record a hold (validated first); effective for every later archive and delete."""
    ensure_holds_table(conn)
    root = sql.Identifier(*tenant_root[0].split(".", 1))
    if conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {}::text = %s)").format(
            root, sql.Identifier(tenant_root[1])), (str(tenant_id),)).fetchone()[0]:
        raise HoldError(f"unknown tenant {tenant_id!r}: no such row in {tenant_root[0]}",
                        fix=f"pass an existing {tenant_root[0]}.{tenant_root[1]} value")
    if not reason.strip():
        raise HoldError("a legal hold needs a reason", fix="say why, e.g. the case or request number")
    if predicate is not None and table is None:
        raise HoldError("a hold predicate needs a table", fix="pass the table the predicate is about")
    if table is not None:
        table = table if "." in table else f"public.{table}"
        cols = column_names(conn, table)
        if predicate is not None:
            predicate = validate_predicate(predicate, cols)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO drp.legal_holds (tenant_id, table_name, predicate, reason, placed_by) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING *", (str(tenant_id), table, predicate, reason.strip(), placed_by or getpass.getuser())).fetchone()
    return Hold(*row)


def release_hold(conn: psycopg.Connection, hold_id: int, *, released_by: str | None = None) -> Hold:
    ensure_holds_table(conn)
    with conn.transaction():
        row = conn.execute("UPDATE drp.legal_holds SET released_by = %s, released_at = clock_timestamp()"
                           " WHERE id = %s AND released_at IS NULL RETURNING *",
                           (released_by or getpass.getuser(), hold_id)).fetchone()
    if row is None:
        raise HoldError(f"no active legal hold {hold_id}", fix="list holds with `drp retention hold list`")
    return Hold(*row)


def list_holds(conn: psycopg.Connection, *, active_only: bool = True, tenant_id: str | None = None) -> list[Hold]:
    ensure_holds_table(conn)
    rows = conn.execute("SELECT * FROM drp.legal_holds WHERE (NOT %s OR released_at IS NULL)"
                        " AND (%s::text IS NULL OR tenant_id = %s) ORDER BY id",
                        (active_only, tenant_id, tenant_id)).fetchall()
    return [Hold(*r) for r in rows]


@dataclass(frozen=True)
class HoldFilter:
    """What the active holds mean for one table and tenant."""

    whole: tuple[Hold, ...]  # holds on every row (no predicate, or a predicate that no longer validates)
    partial: tuple[Hold, ...]  # holds with a valid predicate

    @property
    def everything(self) -> bool:
        return bool(self.whole)

    @property
    def holds(self) -> tuple[Hold, ...]:
        return self.whole + self.partial

    def held_expr(self, alias: str) -> sql.Composable:
        """True for a held row of ``alias`` (only meaningful when not ``everything``)."""
        if not self.partial:
            return sql.SQL("false")
        # The predicate's bare column names resolve against the only table in scope: wrap it in a
        # sub-select over the row alias so a predicate can never see another relation.
        # Every query this goes into is executed with parameters, so a literal '%' (a LIKE wildcard,
        # the modulo operator) must be doubled or psycopg would read it as a placeholder.
        parts = [sql.SQL("(({}) IS NOT FALSE)").format(sql.SQL(h.predicate.replace("%", "%%")))  # type: ignore[union-attr]
                 for h in self.partial]
        return sql.SQL("(SELECT {} FROM (SELECT {}.*) AS drp_hold_row)").format(
            sql.SQL(" OR ").join(parts), sql.Identifier(alias))


def hold_filter(conn: psycopg.Connection, table: str, tenant_id: str, columns: set[str] | None = None) -> HoldFilter:
    """The active holds on ``table`` for ``tenant_id``, predicates re-validated (invalid = whole table).

    Creates nothing: a dry run must leave the database as it found it.
    """
    if not conn.execute("SELECT to_regclass('drp.legal_holds') IS NOT NULL").fetchone()[0]:
        return HoldFilter((), ())
    rows = conn.execute("SELECT * FROM drp.legal_holds WHERE released_at IS NULL AND tenant_id = %s"
                        " AND (table_name IS NULL OR table_name = %s) ORDER BY id", (str(tenant_id), table)).fetchall()
    if not rows:
        return HoldFilter((), ())
    columns = columns if columns is not None else column_names(conn, table)
    whole, partial = [], []
    for hold in (Hold(*r) for r in rows):
        if hold.predicate is None:
            whole.append(hold)
            continue
        try:
            partial.append(replace(hold, predicate=validate_predicate(hold.predicate, columns)))
        except HoldError:
            whole.append(hold)
    return HoldFilter(tuple(whole), tuple(partial))

