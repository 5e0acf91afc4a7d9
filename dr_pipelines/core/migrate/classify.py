"""What one migration statement does to the tables it touches, and which lint rules it breaks.

Walks a file's parsed statements (pglast) in order, remembering what earlier ones did (tables
created in the file, lock_timeout set, CHECK (col IS NOT NULL) validated), and classifies each:
the lock mode per table (PostgreSQL's explicit-locking table, checked against pg_locks in the
tests), the work done under it, and the rule ids it breaks. ``lint.py`` turns those into
findings (severity, suppressions, squawk).
"""

from __future__ import annotations

from typing import Any

from pglast import ast
from pglast.enums import AlterTableType as AT
from pglast.enums import ConstrType, NullTestType, ObjectType, VariableSetKind

from dr_pipelines.core.migrate import locks
from dr_pipelines.core.migrate.rules import (
    SERIALS,
    SET_CONFIG_LOCK_TIMEOUT,
    WIDENING_TARGETS,
)
from dr_pipelines.core.migrate.syntax import (
    Issue,
    StatementInfo,
    StmtEffects,
    alter_lock,
    qualified_name,
    statement_kind,
    type_name,
    type_parts,
    volatility,
)


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
        st = StmtEffects()
        handler = getattr(self, f"_{type(node).__name__}", None)
        if handler:
            handler(node, st)
        elif SET_CONFIG_LOCK_TIMEOUT.search(text):
            self.lock_timeout = SET_CONFIG_LOCK_TIMEOUT.search(text)["value"].strip() not in ("", "0")
        mode = locks.strongest(list(st.locks.values()))
        self._lock_timeout_rule(st, mode)
        info = StatementInfo(index, line, text, statement_kind(node), mode, tuple(st.locks), st.rewrites, st.scans,
                             st.destructive, tuple(dict.fromkeys(st.work)), tuple(st.locks.items()))
        return info, st.issues

    def _lock_timeout_rule(self, st: StmtEffects, mode: str | None) -> None:
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

    def _existing(self, rv: ast.RangeVar | None, st: StmtEffects, mode: str) -> bool:
        """Record mode on rv if the table existed before this file; True if so."""
        if rv is None or self._is_new(rv):
            return False
        st.lock(qualified_name(rv), mode)
        return True

    def _flag(self, st: StmtEffects, rule: str, message: str, fix: str) -> None:
        st.issues.append((rule, message, fix))

    # -- statements --

    def _VariableSetStmt(self, node: ast.VariableSetStmt, st: StmtEffects) -> None:
        if (node.name or "").lower() != "lock_timeout":
            return
        if node.kind == VariableSetKind.VAR_SET_VALUE and node.args:
            val = node.args[0].val
            value = getattr(val, "sval", None) or getattr(val, "ival", None)
            self.lock_timeout = str(value).strip().lower() not in ("0", "0s", "0ms", "", "none")
        else:  # RESET, SET ... TO DEFAULT
            self.lock_timeout = False

    def _CreateStmt(self, node: ast.CreateStmt, st: StmtEffects) -> None:
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

    def _CreateTableAsStmt(self, node: ast.CreateTableAsStmt, st: StmtEffects) -> None:
        into = node.into.rel if node.into else None
        if into is not None:
            self.created.add((into.schemaname, into.relname))

    def _IndexStmt(self, node: ast.IndexStmt, st: StmtEffects) -> None:
        name = qualified_name(node.relation)
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

    def _refuse_in_transaction(self, st: StmtEffects, what: str) -> None:
        if self.transactional:
            self._flag(st, "concurrently-in-transaction",
                       f"{what} cannot run inside a transaction: PostgreSQL refuses it and the migration fails",
                       "move it into its own migration whose first line is -- drp:no-transaction")

    def _DropStmt(self, node: ast.DropStmt, st: StmtEffects) -> None:
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

    def _RenameStmt(self, node: ast.RenameStmt, st: StmtEffects) -> None:
        rv = node.relation
        kind = node.renameType
        if rv is None:
            return
        name = qualified_name(rv)
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

    def _TruncateStmt(self, node: ast.TruncateStmt, st: StmtEffects) -> None:
        for rv in node.relations or ():
            if self._existing(rv, st, locks.ACCESS_EXCLUSIVE):
                st.destructive = True
                self._flag(st, "truncate", f"TRUNCATE {qualified_name(rv)} deletes every row under ACCESS EXCLUSIVE",
                           "delete in small batches (DELETE ... WHERE id IN (SELECT ... LIMIT 10000)), "
                           "or suppress with a reason if the data is really disposable")

    def _VacuumStmt(self, node: ast.VacuumStmt, st: StmtEffects) -> None:
        full = any(o.defname == "full" and getattr(o.arg, "boolval", True) is not False for o in node.options or ())
        rels = [r.relation for r in node.rels or () if r.relation is not None]
        mode = locks.ACCESS_EXCLUSIVE if full else locks.SHARE_UPDATE_EXCLUSIVE
        for rv in rels:
            if self._existing(rv, st, mode):
                st.does("rewrite" if full else "scan")
                if full:
                    self._flag(st, "vacuum-full", f"VACUUM FULL {qualified_name(rv)} rewrites it under ACCESS EXCLUSIVE",
                               "use pg_repack (online), or plain VACUUM outside a migration")

    def _ClusterStmt(self, node: ast.ClusterStmt, st: StmtEffects) -> None:
        if self._existing(node.relation, st, locks.ACCESS_EXCLUSIVE):
            st.does("rewrite")
            self._flag(st, "cluster", f"CLUSTER {qualified_name(node.relation)} rewrites it under ACCESS EXCLUSIVE",
                       "use pg_repack --order-by (online) outside a migration")

    def _ReindexStmt(self, node: ast.ReindexStmt, st: StmtEffects) -> None:
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
                       f"REINDEX {qualified_name(node.relation)} blocks writes, and reads that use the index, while it "
                       "rebuilds", "REINDEX (CONCURRENTLY) in its own migration whose first line is "
                       "-- drp:no-transaction")

    def _CreateTrigStmt(self, node: ast.CreateTrigStmt, st: StmtEffects) -> None:
        self._existing(node.relation, st, locks.SHARE_ROW_EXCLUSIVE)

    def _LockStmt(self, node: ast.LockStmt, st: StmtEffects) -> None:
        mode = locks.MODES[(node.mode or 8) - 1]
        for rv in node.relations or ():
            self._existing(rv, st, mode)

    def _RefreshMatViewStmt(self, node: ast.RefreshMatViewStmt, st: StmtEffects) -> None:
        mode = locks.EXCLUSIVE if node.concurrent else locks.ACCESS_EXCLUSIVE
        if self._existing(node.relation, st, mode):
            st.does("rewrite")

    def _dml(self, node: Any, st: StmtEffects) -> None:
        self._existing(node.relation, st, locks.ROW_EXCLUSIVE)

    _UpdateStmt = _InsertStmt = _MergeStmt = _dml

    def _DeleteStmt(self, node: ast.DeleteStmt, st: StmtEffects) -> None:
        self._dml(node, st)
        st.destructive = node.whereClause is None and bool(st.locks)

    def _DoStmt(self, node: ast.DoStmt, st: StmtEffects) -> None:
        self._flag(st, "do-block-not-analysed",
                   "a DO block runs statements lint cannot see: their locks are not checked",
                   "prefer plain statements; review the block's statements by hand")

    # -- ALTER TABLE --

    def _AlterTableStmt(self, node: ast.AlterTableStmt, st: StmtEffects) -> None:
        rv = node.relation
        if node.objtype not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_INDEX,
                                ObjectType.OBJECT_FOREIGN_TABLE):
            return
        new = self._is_new(rv)
        name = qualified_name(rv)
        for cmd in node.cmds or ():
            if isinstance(cmd.def_, ast.PartitionCmd):  # the partition attached or detached: first, it is scanned
                self._existing(cmd.def_.name, st, locks.ACCESS_EXCLUSIVE)
            if not new:
                st.lock(name, alter_lock(cmd))
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

    def _alter_cmd(self, name: str, cmd: ast.AlterTableCmd, con: ast.Constraint | None, st: StmtEffects) -> None:
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

    def _add_column(self, table: str, col: ast.ColumnDef, st: StmtEffects) -> None:
        serial = type_parts(col.typeName)[0] in SERIALS  # a nextval() default per row
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
                volatile, unknown = volatility(con.raw_expr)
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

    def _alter_type(self, table: str, cmd: ast.AlterTableCmd, st: StmtEffects) -> None:
        col: ast.ColumnDef = cmd.def_
        target = type_name(col.typeName)
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

    def _add_constraint(self, table: str, con: ast.Constraint, st: StmtEffects) -> None:
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
