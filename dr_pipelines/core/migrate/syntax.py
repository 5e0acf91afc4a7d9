"""What the classifier reads from pglast's parse tree and what it records per statement:
statement kinds, qualified names, ALTER TABLE subcommand locks, type names, volatile functions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums import AlterTableType as AT
from pglast.enums import ConstrType

from dr_pipelines.core.migrate import locks
from dr_pipelines.core.migrate.rules import NON_VOLATILE_FUNCTIONS, VOLATILE_FUNCTIONS


@dataclass(frozen=True)
class StatementInfo:
    index: int  # 0-based statement number in the file
    line: int  # 1-based line where it starts
    sql: str
    kind: str  # "ALTER TABLE", "CREATE INDEX", "UPDATE", ...
    lock: str | None  # strongest lock mode taken on an existing table; None if none
    tables: tuple[str, ...]  # existing tables it locks, schema-qualified when the SQL says so
    rewrites: bool  # rewrites the whole table
    scans: bool  # full scan under the lock (validation, index build)
    destructive: bool  # loses data or breaks running code
    work: tuple[str, ...] = ()  # what takes time under the lock: "rewrite", "index-build", "scan", "fk-validation"
    table_locks: tuple[tuple[str, str], ...] = ()  # (table, mode) per table: e.g. FK or ATTACH PARTITION

    def lock_on(self, table: str) -> str | None:
        """The mode this statement takes on one of its tables."""
        return dict(self.table_locks).get(table, self.lock)


Issue = tuple[str, str, str]  # rule, message ("~" first: the rule's weaker case), fix

KINDS = {
    "AlterTableStmt": "ALTER TABLE", "IndexStmt": "CREATE INDEX", "CreateStmt": "CREATE TABLE", "DropStmt": "DROP",
    "RenameStmt": "RENAME", "TruncateStmt": "TRUNCATE", "VacuumStmt": "VACUUM", "ClusterStmt": "CLUSTER",
    "ReindexStmt": "REINDEX", "UpdateStmt": "UPDATE", "InsertStmt": "INSERT", "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE", "SelectStmt": "SELECT", "VariableSetStmt": "SET", "DoStmt": "DO", "ViewStmt": "CREATE VIEW",
    "CreateTrigStmt": "CREATE TRIGGER", "LockStmt": "LOCK", "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "CreateSeqStmt": "CREATE SEQUENCE", "AlterSeqStmt": "ALTER SEQUENCE", "CreateEnumStmt": "CREATE TYPE",
    "CreateFunctionStmt": "CREATE FUNCTION", "CommentStmt": "COMMENT", "GrantStmt": "GRANT",
    "TransactionStmt": "TRANSACTION", "CreateTableAsStmt": "CREATE TABLE AS", "CreateSchemaStmt": "CREATE SCHEMA",
    "AlterEnumStmt": "ALTER TYPE", "CompositeTypeStmt": "CREATE TYPE", "CreateExtensionStmt": "CREATE EXTENSION",
}


def statement_kind(node: ast.Node) -> str:
    name = type(node).__name__
    return KINDS.get(name) or re.sub(r"(?<!^)(?=[A-Z])", " ", name.removesuffix("Stmt")).upper()


def qualified_name(rv: ast.RangeVar) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname


@dataclass
class StmtEffects:
    """What one statement does, filled in by the visitor."""

    locks: dict[str, str] = field(default_factory=dict)  # existing table -> strongest mode
    rewrites: bool = False
    scans: bool = False
    destructive: bool = False
    issues: list[Issue] = field(default_factory=list)
    work: list[str] = field(default_factory=list)

    def does(self, work: str) -> None:
        """Note time-consuming work under the lock (rewrite, index-build, scan, fk-validation)."""
        self.work.append(work)
        if work == "rewrite":
            self.rewrites = True
        else:
            self.scans = True

    def lock(self, table: str, mode: str) -> None:
        self.locks[table] = locks.strongest([self.locks.get(table), mode]) or mode




def alter_lock(cmd: ast.AlterTableCmd) -> str:
    """The lock one ALTER TABLE subcommand takes (PostgreSQL 15 docs, ALTER TABLE; ACCESS EXCLUSIVE unless noted)."""
    sub = cmd.subtype
    if sub in (AT.AT_SetStatistics, AT.AT_SetOptions, AT.AT_ResetOptions, AT.AT_ClusterOn, AT.AT_DropCluster,
               AT.AT_ValidateConstraint, AT.AT_SetRelOptions, AT.AT_ResetRelOptions, AT.AT_AttachPartition):
        return locks.SHARE_UPDATE_EXCLUSIVE
    if sub == AT.AT_DetachPartition and getattr(cmd.def_, "concurrent", False):
        return locks.SHARE_UPDATE_EXCLUSIVE
    if sub in (AT.AT_EnableTrig, AT.AT_EnableAlwaysTrig, AT.AT_EnableReplicaTrig, AT.AT_DisableTrig,
               AT.AT_EnableTrigAll, AT.AT_DisableTrigAll, AT.AT_EnableTrigUser, AT.AT_DisableTrigUser,
               AT.AT_AlterConstraint):
        return locks.SHARE_ROW_EXCLUSIVE
    if sub == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
            and cmd.def_.contype == ConstrType.CONSTR_FOREIGN:
        return locks.SHARE_ROW_EXCLUSIVE
    return locks.ACCESS_EXCLUSIVE


SQL_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real", "float8": "double precision",
              "bool": "boolean", "bpchar": "char"}


def type_name(tn: ast.TypeName) -> str:
    """As a person writes it: 'integer', 'varchar(200)' (the parser says int4, pg_catalog.varchar)."""
    base = SQL_NAMES.get(tn.names[-1].sval, tn.names[-1].sval)
    mods = [str(getattr(m.val, "ival", "")) for m in tn.typmods or () if isinstance(m, ast.A_Const)]
    return f"{base}({','.join(mods)})" if mods else base


def type_parts(tn: ast.TypeName) -> tuple[str, tuple[int, ...]]:
    """('varchar', (200,)) for varchar(200): the base name and its modifiers."""
    mods = tuple(int(m.val.ival) for m in tn.typmods or () if isinstance(m, ast.A_Const) and hasattr(m.val, "ival"))
    return tn.names[-1].sval, mods


def volatility(expr: ast.Node | None) -> tuple[set[str], set[str]]:
    """Function names in expr that are volatile, and those whose volatility lint does not know."""
    volatile: set[str] = set()
    unknown: set[str] = set()
    for node in walk_nodes(expr):
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower()
            if name in VOLATILE_FUNCTIONS:
                volatile.add(name)
            elif name not in NON_VOLATILE_FUNCTIONS:
                unknown.add(name)
    return volatile, unknown


def walk_nodes(node: Any) -> Iterable[ast.Node]:
    if isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from walk_nodes(getattr(node, attr))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from walk_nodes(item)
