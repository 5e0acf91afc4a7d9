"""What one migration statement does to the tables it touches, and which lint rules it breaks.

Walks a file's parsed statements (pglast) in order, remembering what earlier ones did (tables
created in the file, lock_timeout set, CHECK (col IS NOT NULL) validated), and classifies each:
the lock mode per table (PostgreSQL's explicit-locking table, checked against pg_locks in the
tests), the work done under it, and the rule ids it breaks. ``lint.py`` turns those into
findings (severity, suppressions, squawk).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums import AlterTableType as AT
from pglast.enums import ConstrType, NullTestType, ObjectType, VariableSetKind

from dr_pipelines.core.migrate import locks

ERROR, WARNING, INFO = "error", "warning", "info"

# rule id -> (default severity, what it catches). docs/migrations.md lists the same rules.
RULES: dict[str, tuple[str, str]] = {
    "create-index-not-concurrently": (ERROR, "CREATE INDEX on an existing table blocks writes for the whole build"),
    "concurrently-in-transaction": (ERROR, "CONCURRENTLY cannot run inside a transaction: PostgreSQL refuses it"),
    "add-column-volatile-default": (ERROR, "ADD COLUMN whose value is computed per row rewrites the table"),
    "alter-column-type-rewrite": (ERROR, "ALTER COLUMN TYPE that is not a binary-compatible widening rewrites"),
    "alter-column-type-unverified": (INFO, "ALTER COLUMN TYPE that is safe only if it widens the live type"),
    "set-not-null-without-check": (ERROR, "SET NOT NULL scans the table under ACCESS EXCLUSIVE"),
    "add-constraint-without-not-valid": (ERROR, "ADD FOREIGN KEY / CHECK validates every row under the lock"),
    "add-unique-without-index": (ERROR, "ADD UNIQUE / PRIMARY KEY builds its index under ACCESS EXCLUSIVE"),
    "drop-column": (ERROR, "DROP COLUMN loses data and breaks code that still reads the column"),
    "rename-column": (ERROR, "RENAME COLUMN breaks code that uses the old name"),
    "drop-table": (ERROR, "DROP TABLE loses data and breaks code that still uses the table"),
    "rename-table": (ERROR, "RENAME TABLE breaks code that uses the old name"),
    "truncate": (ERROR, "TRUNCATE deletes every row under ACCESS EXCLUSIVE"),
    "vacuum-full": (ERROR, "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE"),
    "cluster": (ERROR, "CLUSTER rewrites the table under ACCESS EXCLUSIVE"),
    "reindex-not-concurrently": (ERROR, "REINDEX blocks writes, and reads that use the index"),
    "no-lock-timeout": (ERROR, "a strong lock requested without lock_timeout queues every query behind it"),
    "do-block-not-analysed": (INFO, "the statements inside a DO block are not visible to lint"),
    "suppression-without-reason": (ERROR, "a drp:allow comment must say why"),
    "suppression-unused": (WARNING, "a drp:allow comment that matches no finding of its statement"),
}

# Functions whose value differs per row: as a new column's default they force a rewrite.
VOLATILE_FUNCTIONS = frozenset({
    "random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid", "uuid_generate_v1",
    "uuid_generate_v1mc", "uuid_generate_v4", "uuidv4", "uuidv7", "nextval", "setseed", "txid_current",
    "pg_current_xact_id", "gen_random_bytes", "gen_salt",
})
# Known non-volatile functions common in defaults; anything else is "cannot tell offline".
NON_VOLATILE_FUNCTIONS = frozenset({
    "now", "transaction_timestamp", "statement_timestamp", "current_setting", "lower", "upper", "length", "lpad",
    "rpad", "concat", "coalesce", "jsonb_build_object", "json_build_object", "to_jsonb", "make_interval",
    "date_trunc", "timezone", "array_length", "abs", "round", "greatest", "least", "md5", "btrim", "trim",
})
_SERIALS = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
# Target types that can be a binary-compatible widening (no rewrite) of a narrower live column type.
WIDENING_TARGETS = frozenset({"text", "varchar", "numeric", "varbit", "citext"})
_SET_CONFIG_LOCK_TIMEOUT = re.compile(r"set_config\s*\(\s*'lock_timeout'\s*,\s*'(?P<value>[^']*)'", re.I)


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

_KINDS = {
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


def _kind(node: ast.Node) -> str:
    name = type(node).__name__
    return _KINDS.get(name) or re.sub(r"(?<!^)(?=[A-Z])", " ", name.removesuffix("Stmt")).upper()


def _qualified(rv: ast.RangeVar) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname


@dataclass
class _Stmt:
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


class Walker:
    """Visits a file's statements in order, remembering what earlier ones did (new tables, lock_timeout)."""

    def __init__(self, transactional: bool) -> None:
        self.transactional = transactional
        self.created: set[tuple[str | None, str]] = set()  # (schema, name) of tables created in this file
        self.lock_timeout = False
        self.lock_timeout_flagged: bool | None = None  # None: not yet; False: as a warning; True: as an error
        self.checks: dict[tuple[str, str], str] = {}  # (table, constraint) -> column of a CHECK (col IS NOT NULL)
        self.not_null_proven: set[tuple[str, str]] = set()  # (table, column) with a validated such CHECK

    def visit(self, node: ast.Node, index: int, line: int, text: str) -> tuple[StatementInfo, list[Issue]]:
        st = _Stmt()
        handler = getattr(self, f"_{type(node).__name__}", None)
        if handler:
            handler(node, st)
        elif _SET_CONFIG_LOCK_TIMEOUT.search(text):
            self.lock_timeout = _SET_CONFIG_LOCK_TIMEOUT.search(text)["value"].strip() not in ("", "0")
        mode = locks.strongest(list(st.locks.values()))
        self._lock_timeout_rule(st, mode)
        info = StatementInfo(index, line, text, _kind(node), mode, tuple(st.locks), st.rewrites, st.scans,
                             st.destructive, tuple(dict.fromkeys(st.work)), tuple(st.locks.items()))
        return info, st.issues

    def _lock_timeout_rule(self, st: _Stmt, mode: str | None) -> None:
        """Once per file (one SET at the top fixes all), again if a later statement is worse than the first."""
        if self.lock_timeout or self.lock_timeout_flagged or not locks.is_strong(mode):
            return
        severe = mode == locks.ACCESS_EXCLUSIVE or st.rewrites or st.scans
        if self.lock_timeout_flagged is False and not severe:
            return
        self.lock_timeout_flagged = severe
        tables = ", ".join(st.locks)
        st.issues.append((
            "no-lock-timeout",
            f"{'' if severe else '~'}{mode} on {tables} is requested without lock_timeout: while it waits for running "
            f"queries, every new query on {tables} that conflicts waits behind it",
            "put SET lock_timeout = '2s'; at the top of the file (the runner retries on timeout)",
        ))

    # -- helpers --

    def _is_new(self, rv: ast.RangeVar) -> bool:
        return any(name == rv.relname and (schema is None or rv.schemaname is None or schema == rv.schemaname)
                   for schema, name in self.created)

    def _existing(self, rv: ast.RangeVar | None, st: _Stmt, mode: str) -> bool:
        """Record mode on rv if the table existed before this file; True if so."""
        if rv is None or self._is_new(rv):
            return False
        st.lock(_qualified(rv), mode)
        return True

    def _flag(self, st: _Stmt, rule: str, message: str, fix: str) -> None:
        st.issues.append((rule, message, fix))

    # -- statements --

    def _VariableSetStmt(self, node: ast.VariableSetStmt, st: _Stmt) -> None:
        if (node.name or "").lower() != "lock_timeout":
            return
        if node.kind == VariableSetKind.VAR_SET_VALUE and node.args:
            val = node.args[0].val
            value = getattr(val, "sval", None) or getattr(val, "ival", None)
            self.lock_timeout = str(value).strip().lower() not in ("0", "0s", "0ms", "", "none")
        else:  # RESET, SET ... TO DEFAULT
            self.lock_timeout = False

    def _CreateStmt(self, node: ast.CreateStmt, st: _Stmt) -> None:
        rv = node.relation
        self.created.add((rv.schemaname, rv.relname))
        if node.partbound is not None:  # PARTITION OF parent: ACCESS EXCLUSIVE on the parent
            for parent in node.inhRelations or ():
                self._existing(parent, st, locks.ACCESS_EXCLUSIVE)
        for elt in node.tableElts or ():
            constraints = elt.constraints if isinstance(elt, ast.ColumnDef) else (elt,)
            for con in constraints or ():
                if isinstance(con, ast.Constraint) and con.contype == ConstrType.CONSTR_FOREIGN:
                    self._existing(con.pktable, st, locks.SHARE_ROW_EXCLUSIVE)

    def _CreateTableAsStmt(self, node: ast.CreateTableAsStmt, st: _Stmt) -> None:
        into = node.into.rel if node.into else None
        if into is not None:
            self.created.add((into.schemaname, into.relname))

    def _IndexStmt(self, node: ast.IndexStmt, st: _Stmt) -> None:
        name = _qualified(node.relation)
        if node.concurrent:
            self._existing(node.relation, st, locks.SHARE_UPDATE_EXCLUSIVE)
            st.does("index-build")
            self._refuse_in_transaction(st, f"CREATE INDEX CONCURRENTLY on {name}")
            return
        if self._existing(node.relation, st, locks.SHARE):
            st.does("index-build")
            self._flag(st, "create-index-not-concurrently",
                       f"CREATE {'UNIQUE ' if node.unique else ''}INDEX {node.idxname or '(unnamed)'} on existing "
                       f"table {name} "
                       "blocks writes to it for the whole index build",
                       "CREATE INDEX CONCURRENTLY in its own migration whose first line is -- drp:no-transaction")

    def _refuse_in_transaction(self, st: _Stmt, what: str) -> None:
        if self.transactional:
            self._flag(st, "concurrently-in-transaction",
                       f"{what} cannot run inside a transaction: PostgreSQL refuses it and the migration fails",
                       "move it into its own migration whose first line is -- drp:no-transaction")

    def _DropStmt(self, node: ast.DropStmt, st: _Stmt) -> None:
        kind = node.removeType
        names = [".".join(p.sval for p in obj) for obj in node.objects or () if isinstance(obj, tuple)]
        if kind == ObjectType.OBJECT_INDEX:
            mode = locks.SHARE_UPDATE_EXCLUSIVE if node.concurrent else locks.ACCESS_EXCLUSIVE
            for n in names:
                st.lock(n, mode)  # the index; its table is locked as strongly
            if node.concurrent:
                self._refuse_in_transaction(st, "DROP INDEX CONCURRENTLY")
            return
        if kind not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW,
                        ObjectType.OBJECT_FOREIGN_TABLE):
            st.destructive = kind in (ObjectType.OBJECT_SCHEMA, ObjectType.OBJECT_FUNCTION, ObjectType.OBJECT_TYPE,
                                      ObjectType.OBJECT_SEQUENCE)
            return
        for n in names:
            schema, _, rel = n.rpartition(".")
            rv = ast.RangeVar(schemaname=schema or None, relname=rel)
            if self._existing(rv, st, locks.ACCESS_EXCLUSIVE):
                st.destructive = True
                what = {ObjectType.OBJECT_VIEW: "VIEW", ObjectType.OBJECT_MATVIEW: "MATERIALIZED VIEW"}.get(kind, "TABLE")
                loses = "" if kind == ObjectType.OBJECT_VIEW else "loses its data and "
                self._flag(st, "drop-table", f"DROP {what} {n} {loses}breaks code that still uses it",
                           "first deploy code that no longer uses it, take a backup, then drop it in a later "
                           "migration with -- drp:allow drop-table reason: <why>")

    def _RenameStmt(self, node: ast.RenameStmt, st: _Stmt) -> None:
        rv = node.relation
        kind = node.renameType
        if rv is None:
            return
        name = _qualified(rv)
        if kind == ObjectType.OBJECT_INDEX:
            self._existing(rv, st, locks.SHARE_UPDATE_EXCLUSIVE)
            return
        if not self._existing(rv, st, locks.ACCESS_EXCLUSIVE):
            return
        if kind == ObjectType.OBJECT_COLUMN:
            st.destructive = True
            self._flag(st, "rename-column",
                       f"RENAME COLUMN {node.subname} of {name} to {node.newname} breaks code that uses the old name",
                       "add the new column, write both, backfill, move readers, then drop the old one later")
        elif kind in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW):
            st.destructive = True
            self._flag(st, "rename-table", f"RENAME of {name} to {node.newname} breaks code that uses the old name",
                       "rename, then CREATE VIEW <old name> AS SELECT * FROM <new name> until no code uses the "
                       "old name")

    def _TruncateStmt(self, node: ast.TruncateStmt, st: _Stmt) -> None:
        for rv in node.relations or ():
            if self._existing(rv, st, locks.ACCESS_EXCLUSIVE):
                st.destructive = True
                self._flag(st, "truncate", f"TRUNCATE {_qualified(rv)} deletes every row under ACCESS EXCLUSIVE",
                           "delete in small batches (DELETE ... WHERE id IN (SELECT ... LIMIT 10000)), "
                           "or suppress with a reason if the data is really disposable")

    def _VacuumStmt(self, node: ast.VacuumStmt, st: _Stmt) -> None:
        full = any(o.defname == "full" and getattr(o.arg, "boolval", True) is not False for o in node.options or ())
        rels = [r.relation for r in node.rels or () if r.relation is not None]
        mode = locks.ACCESS_EXCLUSIVE if full else locks.SHARE_UPDATE_EXCLUSIVE
        for rv in rels:
            if self._existing(rv, st, mode):
                st.does("rewrite" if full else "scan")
                if full:
                    self._flag(st, "vacuum-full", f"VACUUM FULL {_qualified(rv)} rewrites it under ACCESS EXCLUSIVE",
                               "use pg_repack (online), or plain VACUUM outside a migration")

    def _ClusterStmt(self, node: ast.ClusterStmt, st: _Stmt) -> None:
        if self._existing(node.relation, st, locks.ACCESS_EXCLUSIVE):
            st.does("rewrite")
            self._flag(st, "cluster", f"CLUSTER {_qualified(node.relation)} rewrites it under ACCESS EXCLUSIVE",
                       "use pg_repack --order-by (online) outside a migration")

    def _ReindexStmt(self, node: ast.ReindexStmt, st: _Stmt) -> None:
        concurrent = any(p.defname == "concurrently" for p in node.params or ())
        if node.relation is None:  # SCHEMA / DATABASE / SYSTEM
            return
        if concurrent:
            self._existing(node.relation, st, locks.SHARE_UPDATE_EXCLUSIVE)
            st.does("index-build")
            self._refuse_in_transaction(st, "REINDEX CONCURRENTLY")
        elif self._existing(node.relation, st, locks.SHARE):
            st.does("index-build")
            self._flag(st, "reindex-not-concurrently",
                       f"REINDEX {_qualified(node.relation)} blocks writes, and reads that use the index, while it "
                       "rebuilds", "REINDEX (CONCURRENTLY) in its own migration whose first line is "
                       "-- drp:no-transaction")

    def _CreateTrigStmt(self, node: ast.CreateTrigStmt, st: _Stmt) -> None:
        self._existing(node.relation, st, locks.SHARE_ROW_EXCLUSIVE)

    def _LockStmt(self, node: ast.LockStmt, st: _Stmt) -> None:
        mode = locks.MODES[(node.mode or 8) - 1]
        for rv in node.relations or ():
            self._existing(rv, st, mode)

    def _RefreshMatViewStmt(self, node: ast.RefreshMatViewStmt, st: _Stmt) -> None:
        mode = locks.EXCLUSIVE if node.concurrent else locks.ACCESS_EXCLUSIVE
        if self._existing(node.relation, st, mode):
            st.does("rewrite")

    def _dml(self, node: Any, st: _Stmt) -> None:
        self._existing(node.relation, st, locks.ROW_EXCLUSIVE)

    _UpdateStmt = _InsertStmt = _MergeStmt = _dml

    def _DeleteStmt(self, node: ast.DeleteStmt, st: _Stmt) -> None:
        self._dml(node, st)
        st.destructive = node.whereClause is None and bool(st.locks)

    def _DoStmt(self, node: ast.DoStmt, st: _Stmt) -> None:
        self._flag(st, "do-block-not-analysed",
                   "a DO block runs statements lint cannot see: their locks are not checked",
                   "prefer plain statements; review the block's statements by hand")

    # -- ALTER TABLE --

    def _AlterTableStmt(self, node: ast.AlterTableStmt, st: _Stmt) -> None:
        rv = node.relation
        if node.objtype not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_INDEX,
                                ObjectType.OBJECT_FOREIGN_TABLE):
            return
        new = self._is_new(rv)
        name = _qualified(rv)
        for cmd in node.cmds or ():
            if isinstance(cmd.def_, ast.PartitionCmd):  # the partition attached or detached: first, it is scanned
                self._existing(cmd.def_.name, st, locks.ACCESS_EXCLUSIVE)
            if not new:
                st.lock(name, _alter_lock(cmd))
            con = cmd.def_ if isinstance(cmd.def_, ast.Constraint) else None
            inline = cmd.def_.constraints or () if isinstance(cmd.def_, ast.ColumnDef) else ()
            for c in (con, *inline):  # a foreign key locks the referenced table too
                if c is not None and c.contype == ConstrType.CONSTR_FOREIGN:
                    self._existing(c.pktable, st, locks.SHARE_ROW_EXCLUSIVE)
            self._remember_check(name, cmd, con)
            if not new:
                self._alter_cmd(name, cmd, con, st)

    def _remember_check(self, table: str, cmd: ast.AlterTableCmd, con: ast.Constraint | None) -> None:
        """Track CHECK (col IS NOT NULL): once validated, SET NOT NULL on col needs no scan."""
        if cmd.subtype == AT.AT_ValidateConstraint and (table, cmd.name) in self.checks:
            self.not_null_proven.add((table, self.checks[(table, cmd.name)]))
        if con is None or con.contype != ConstrType.CONSTR_CHECK:
            return
        expr = con.raw_expr
        if (isinstance(expr, ast.NullTest) and expr.nulltesttype == NullTestType.IS_NOT_NULL
                and isinstance(expr.arg, ast.ColumnRef)):
            column = expr.arg.fields[-1].sval
            if con.conname:
                self.checks[(table, con.conname)] = column
            if not con.skip_validation:
                self.not_null_proven.add((table, column))

    def _alter_cmd(self, name: str, cmd: ast.AlterTableCmd, con: ast.Constraint | None, st: _Stmt) -> None:
        sub = cmd.subtype
        if sub == AT.AT_AddColumn:
            self._add_column(name, cmd.def_, st)
        elif sub == AT.AT_AlterColumnType:
            self._alter_type(name, cmd, st)
        elif sub == AT.AT_SetNotNull:
            if (name, cmd.name) not in self.not_null_proven:
                st.does("scan")
                self._flag(st, "set-not-null-without-check",
                           f"SET NOT NULL on {name}.{cmd.name} scans every row under ACCESS EXCLUSIVE",
                           f"first ADD CONSTRAINT {cmd.name}_not_null CHECK ({cmd.name} IS NOT NULL) NOT VALID, then "
                           "VALIDATE CONSTRAINT it (no write lock), then SET NOT NULL (no scan) and drop the CHECK")
        elif sub == AT.AT_AddConstraint and con is not None:
            self._add_constraint(name, con, st)
        elif sub == AT.AT_ValidateConstraint:
            st.does("scan")  # under SHARE UPDATE EXCLUSIVE: reads and writes go on
        elif sub == AT.AT_DropColumn:
            st.destructive = True
            self._flag(st, "drop-column", f"DROP COLUMN {cmd.name} of {name} loses its data and breaks code that "
                       "still reads or writes it",
                       "first deploy code that no longer uses the column, then drop it in a later migration with "
                       "-- drp:allow drop-column reason: <why>")
        elif sub in (AT.AT_SetLogged, AT.AT_SetUnLogged, AT.AT_SetAccessMethod, AT.AT_SetTableSpace):
            st.does("rewrite")
        elif sub == AT.AT_AttachPartition:
            st.does("scan")  # the partition is scanned unless a CHECK constraint proves the bound

    def _add_column(self, table: str, col: ast.ColumnDef, st: _Stmt) -> None:
        serial = type_parts(col.typeName)[0] in _SERIALS  # a nextval() default per row
        for con in (*(col.constraints or ()), *((None,) if serial else ())):
            if con is None or con.contype in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED):
                what = ("a serial column" if con is None else "an identity column"
                        if con.contype == ConstrType.CONSTR_IDENTITY else "a stored generated column")
                st.does("rewrite")
                self._flag(st, "add-column-volatile-default",
                           f"ADD COLUMN {col.colname} to {table} as {what} computes a value per row: the table is "
                           "rewritten under ACCESS EXCLUSIVE",
                           "add a plain nullable column, fill it in batches, then add the default/trigger")
            elif con.contype == ConstrType.CONSTR_DEFAULT:
                volatile, unknown = _volatility(con.raw_expr)
                if volatile or unknown:
                    if volatile:
                        st.does("rewrite")
                    names = ", ".join(sorted(volatile or unknown))
                    self._flag(st, "add-column-volatile-default",
                               f"{'' if volatile else '~'}ADD COLUMN {col.colname} to {table} with default {names}(): "
                               + ("volatile, so every row is rewritten under ACCESS EXCLUSIVE" if volatile else
                                  "if that function is volatile, every row is rewritten under ACCESS EXCLUSIVE "
                                  "(lint cannot tell offline)"),
                               "add the column without a default (or with a constant one), then fill it in batches "
                               "and SET DEFAULT afterwards")

    def _alter_type(self, table: str, cmd: ast.AlterTableCmd, st: _Stmt) -> None:
        col: ast.ColumnDef = cmd.def_
        target = _type_name(col.typeName)
        if col.raw_default is None and type_parts(col.typeName)[0] in WIDENING_TARGETS:
            self._flag(st, "alter-column-type-unverified",
                       f"ALTER COLUMN {cmd.name} of {table} TYPE {target}: no rewrite only if it widens the live type "
                       "(varchar(n) to varchar(m>n) or text, numeric(p,s) to numeric(p'>p,s) or numeric)",
                       "run the impact estimate against the database (it checks the live type)")
            return
        st.does("rewrite")
        using = " with USING" if col.raw_default is not None else ""
        self._flag(st, "alter-column-type-rewrite",
                   f"ALTER COLUMN {cmd.name} of {table} TYPE {target}{using} rewrites the table and rebuilds its "
                   "indexes under ACCESS EXCLUSIVE",
                   "add a new column of the new type, backfill it in batches, switch readers, then drop the old one")

    def _add_constraint(self, table: str, con: ast.Constraint, st: _Stmt) -> None:
        ct = con.contype
        if ct in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK) and not con.skip_validation:
            st.does("fk-validation" if ct == ConstrType.CONSTR_FOREIGN else "scan")
            what = "FOREIGN KEY" if ct == ConstrType.CONSTR_FOREIGN else "CHECK"
            blocked = "writes to both tables" if ct == ConstrType.CONSTR_FOREIGN else "reads and writes"
            self._flag(st, "add-constraint-without-not-valid",
                       f"ADD {what} {con.conname or ''} on {table} checks every row while blocking {blocked}",
                       f"ADD CONSTRAINT ... {what} ... NOT VALID, then VALIDATE CONSTRAINT in a later statement "
                       "(it takes only SHARE UPDATE EXCLUSIVE)")
        elif ct in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_EXCLUSION) \
                and not con.indexname:
            st.does("index-build")
            what = {ConstrType.CONSTR_UNIQUE: "UNIQUE", ConstrType.CONSTR_PRIMARY: "PRIMARY KEY"}.get(ct, "EXCLUDE")
            self._flag(st, "add-unique-without-index",
                       f"ADD {what} on {table} builds its index under ACCESS EXCLUSIVE (reads and writes blocked)",
                       f"CREATE UNIQUE INDEX CONCURRENTLY first (no-transaction migration), then ADD CONSTRAINT ... "
                       f"{what} USING INDEX <name>")


def _alter_lock(cmd: ast.AlterTableCmd) -> str:
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


_SQL_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real", "float8": "double precision",
              "bool": "boolean", "bpchar": "char"}


def _type_name(tn: ast.TypeName) -> str:
    """As a person writes it: 'integer', 'varchar(200)' (the parser says int4, pg_catalog.varchar)."""
    base = _SQL_NAMES.get(tn.names[-1].sval, tn.names[-1].sval)
    mods = [str(getattr(m.val, "ival", "")) for m in tn.typmods or () if isinstance(m, ast.A_Const)]
    return f"{base}({','.join(mods)})" if mods else base


def type_parts(tn: ast.TypeName) -> tuple[str, tuple[int, ...]]:
    """('varchar', (200,)) for varchar(200): the base name and its modifiers."""
    mods = tuple(int(m.val.ival) for m in tn.typmods or () if isinstance(m, ast.A_Const) and hasattr(m.val, "ival"))
    return tn.names[-1].sval, mods


def _volatility(expr: ast.Node | None) -> tuple[set[str], set[str]]:
    """Function names in expr that are volatile, and those whose volatility lint does not know."""
    volatile: set[str] = set()
    unknown: set[str] = set()
    for node in _walk(expr):
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower()
            if name in VOLATILE_FUNCTIONS:
                volatile.add(name)
            elif name not in NON_VOLATILE_FUNCTIONS:
                unknown.add(name)
    return volatile, unknown


def _walk(node: Any) -> Iterable[ast.Node]:
    if isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from _walk(getattr(node, attr))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
