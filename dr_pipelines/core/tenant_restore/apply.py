"""Write one clinic's past rows back into the live database: one transaction, only that clinic.

``apply_restore(past_dsn, live_dsn, scope, clinic, ...)``:

1. ``drp.tenant_restores`` gets a ``started`` row (core/tenant_restore/audit.py); every outcome
   after it appends one more (``succeeded`` / ``refused`` / ``failed``).
2. **One live transaction**, REPEATABLE READ, with ``lock_timeout``; a serialization failure,
   deadlock, lock timeout or a unique violation from a concurrent insert rolls it back and the
   whole attempt is recomputed from scratch (bounded retries with backoff):

   - its snapshot is exported first, before anything is written (core/pg/snapshots.py);
   - the tables whose clinic rows are the same at the restore point and live (row count and content
     checksum, the past's computed on a thread) are set aside: nothing in them is restored;
   - **undo**: the clinic's current rows are exported with the existing export path
     (core/export/run.py ``export_tenants``, CSV, every table of the scope whose rows differ: the
     others are not written) to ``undo.storage``
     *in that snapshot*, by a thread on its own session, while the steps below run: the undo
     holds exactly the rows the apply reads and overwrites (a row another session changes after
     the snapshot cannot be overwritten without a serialization failure, which starts over with
     a new snapshot and a new undo). The storage must encrypt at rest (S3 with server-side
     encryption) unless ``allow_plaintext`` is given on purpose. COMMIT waits for the undo
     export; if it failed or does not hold every table of the scope, nothing is committed;
   - the clinic's past rows are streamed into TEMP tables of that transaction (transfer.py);
   - compare.py's ``only_past_keys`` / ``changed_keys`` (the one definition the preview uses)
     select the rows to insert (*restore-deleted*) and to revert (*revert-changed*); rows added
     since are kept; rows retention archived since are not "deleted" (guard.py) and are reported;
   - conflicts (conflicts.py) refuse the apply, or with ``on_conflict="skip"`` drop those rows
     and the rows depending on them;
   - this transaction's write counts are read (guard.py ``xact_writes``);
   - inserts in foreign-key order (parents first, from the FK graph), explicit ids,
     ``OVERRIDING SYSTEM VALUE`` where an identity is GENERATED ALWAYS, generated columns left
     to PostgreSQL; then reverts, every UPDATE also filtered on the clinic; sequences moved
     forward when a restored id is above them, never backward;
   - before COMMIT, the isolation guard (guard.py): the transaction's writes must be exactly the
     apply's own statements' rowcounts, and every written row the clinic's; a table with other
     writes (a trigger, a cascade) gets the exact fallback, its other clinics' rows checksummed
     before (the exported snapshot) and after; any difference rolls back (IsolationError);
   - the ``succeeded`` audit row is inserted in the same transaction, so it commits with the rows.

Nothing is ever deleted from live. A process killed anywhere before COMMIT leaves live as it
was (and the audit's ``started`` row); running the apply again starts over. An attempt that rolls
back (refused, failed, retried) deletes its own undo export (``discarded`` in the export audit);
a killed one leaves it, complete and encrypted.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.checkpoints import reached
from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.export.housekeeping import discard_export
from dr_pipelines.core.export.run import ExportOptions, ExportResult, export_tenants
from dr_pipelines.core.export.tables import tenant_checksum
from dr_pipelines.core.pg.checksums import RENDER_SETTINGS
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.snapshots import adopted_session, export_snapshot
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, TableScope, read_relation, tenant_filter, tenant_select
from dr_pipelines.core.tenant_restore import audit
from dr_pipelines.core.tenant_restore.compare import changed_keys, compared_columns, only_past_keys, rows_only_in
from dr_pipelines.core.tenant_restore.conflicts import (
    Conflict,
    ConflictError,
    TablePlan,
    constraints_of,
    find_conflicts,
)
from dr_pipelines.core.tenant_restore.guard import (
    IsolationError,
    SequenceMove,
    XactWrites,
    advance_sequences,
    archived_condition,
    check_unexplained,
    rows_not_the_clinics,
    unexplained_writes,
    xact_writes,
)
from dr_pipelines.core.tenant_restore.transfer import (
    bind_clinic,
    copy_tenant_rows,
    pin_output,
    primary_key,
    table_columns,
)

POLICIES = ("restore-deleted", "revert-changed")
ON_CONFLICT = (None, "skip")
SNAPSHOT_TAKEN = "tenant-restore-snapshot-taken"  # checkpoint: the attempt's snapshot exported, nothing read yet
BEFORE_COMMIT = "tenant-restore-before-commit"  # checkpoint: everything written, COMMIT next
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
             psycopg.errors.LockNotAvailable, psycopg.errors.UniqueViolation)
UNDO_FORMATS = ("csv",)


class ApplyError(DrpError):
    """The apply did not complete; its transaction was rolled back, nothing applied."""


class UndoExportError(DrpError):
    """The undo export of the clinic's current rows could not be written: nothing applied."""


@dataclass(frozen=True)
class UndoTarget:
    """Where the undo export goes. Health data: refused unless the storage encrypts at rest
    (S3 with server-side encryption), or ``allow_plaintext`` says so on purpose."""

    storage: Storage
    allow_plaintext: bool = False

    def check(self) -> None:
        if not (self.storage.encrypts_at_rest or self.allow_plaintext):
            raise UndoExportError(
                f"the undo export's storage {self.storage.url} does not encrypt what it stores: the clinic's "
                "current rows (health data) would be written in plaintext",
                fix="send the undo export to S3 with server-side encryption (DRP_S3_SSE=AES256 or aws:kms)")


@dataclass
class TableResult:
    table: str
    inserted: int = 0
    updated: int = 0
    skipped: int = 0  # rows left out because of conflicts (on_conflict="skip")
    archived: int = 0  # rows gone because retention archived them: not restored
    sequences: list[SequenceMove] = field(default_factory=list)
    identical: bool = False  # the clinic's rows had the same checksum in the past and live: not copied

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "inserted": self.inserted, "updated": self.updated, "skipped": self.skipped,
                "archived": self.archived, "identical": self.identical,
                "sequences": [{"sequence": s.sequence, "column": s.column, "restored_max": s.restored_max,
                               "moved": s.moved} for s in self.sequences]}


@dataclass
class ApplyResult:
    clinic: str
    policies: tuple[str, ...]
    tables: dict[str, TableResult]
    conflicts: list[Conflict]
    conflict_counts: dict[tuple[str, str, str], int]
    undo_export_id: str | None
    audit_id: int | None
    attempts: int
    # table -> how its other clinics' rows were proved untouched (guard.py): "counts" (every write was
    # the apply's, every written row the clinic's), or the fallback checksum's result
    isolation: dict[str, str]

    @property
    def inserted(self) -> int:
        return sum(t.inserted for t in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(t.updated for t in self.tables.values())

    def counts(self) -> dict[str, Any]:
        return {name: {k: v for k, v in t.as_dict().items() if k in ("inserted", "updated", "skipped", "archived")}
                for name, t in self.tables.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"clinic": self.clinic, "policies": list(self.policies), "inserted": self.inserted,
                "updated": self.updated, "tables": [t.as_dict() for t in self.tables.values()],
                "conflicts": [c.as_dict() for c in self.conflicts],
                "undo_export_id": self.undo_export_id, "audit_id": self.audit_id, "attempts": self.attempts,
                "isolation": self.isolation}


@dataclass(frozen=True)
class _Request:
    scope: Scope
    clinic: str
    policies: frozenset[str]
    skip: bool
    lock_timeout: str
    undo: UndoTarget


def apply_restore(past_dsn: str, live_dsn: str, scope: Scope, clinic: str | int, *,
                  policies: Collection[str] = POLICIES, on_conflict: str | None = None,
                  requester: str | None = None, reason: str, undo: UndoTarget, restore_point: str = "",
                  lock_timeout: str = "5s", retries: int = 3, backoff_s: float = 0.5) -> ApplyResult:
    """Bring ``clinic``'s rows in ``live_dsn`` back to what ``past_dsn`` holds (see the module doc)."""
    clinic = str(clinic)
    request = _Request(scope, clinic, _check_policies(policies, on_conflict), on_conflict == "skip", lock_timeout,
                       undo)
    if not reason or not reason.strip():
        raise ConfigError("a tenant restore needs a reason (it is audited)",
                          fix="say why, e.g. the ticket: --reason 'TICKET-123 appointments deleted by mistake'")
    record = audit.RestoreRecord(
        requester=requester or getpass.getuser(), reason=reason.strip(), tenant_id=clinic,
        restore_point=restore_point or "(past database)", mode="apply", policies=sorted(request.policies),
        started_at=datetime.now(UTC), on_conflict=on_conflict, undo_storage=undo.storage.url)
    with connect(live_dsn, autocommit=True) as audit_conn:
        audit.ensure_restore_audit(audit_conn)
        audit.append(audit_conn, record, "started")
        try:
            undo.check()
            return _with_retries(past_dsn, live_dsn, request, record, retries, backoff_s)
        except BaseException as exc:
            status = "refused" if isinstance(exc, ConflictError | UndoExportError | ConfigError) else "failed"
            record.error = exc.problem[:2000] if isinstance(exc, DrpError) else f"{type(exc).__name__}: {exc}"[:2000]
            try:
                audit.append(audit_conn, record, status)
            except Exception:  # noqa: BLE001 - the original error matters more; 'started' is recorded
                pass
            raise


def _check_policies(policies: Collection[str], on_conflict: str | None) -> frozenset[str]:
    chosen = frozenset(policies)
    unknown = sorted(chosen - set(POLICIES))
    if not chosen or unknown:
        raise ConfigError(f"unknown or no restore policy: {', '.join(unknown) or '(none)'}",
                          fix=f"choose one or both of {', '.join(POLICIES)}")
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(f"unknown conflict policy {on_conflict!r}",
                          fix="leave it out (conflicts refuse the apply) or pass skip")
    return chosen


def _undo_export(live_dsn: str, request: _Request, requester: str, snapshot_id: str,
                 tables: tuple[str, ...]) -> ExportResult:
    """Export the clinic's current rows of ``tables`` through the export path, in the apply's snapshot
    ``snapshot_id`` (its transaction stays open until this returns)."""
    options = ExportOptions(formats=UNDO_FORMATS, root=request.scope.root, key_column=request.scope.key_column,
                            requester=requester, max_per_hour=None, ttl_days=None,
                            tables=tables, content_checksums=True, snapshot_id=snapshot_id)
    return export_tenants(live_dsn, request.undo.storage, [request.clinic], options)


def _undo_result(undo: Future[ExportResult] | None, tables: tuple[str, ...], request: _Request) -> str | None:
    """The undo export's id once it is complete (None: no table differed, nothing is written); UndoExportError
    (nothing is committed) if it failed or does not hold every table of ``tables`` for exactly this clinic."""
    if undo is None:
        return None
    try:
        done = undo.result()
    except DrpError as exc:
        raise UndoExportError(f"the undo export of clinic {request.clinic} failed, nothing was applied: {exc.problem}",
                              fix=exc.fix or "fix the export (storage, permissions) and run the apply again") from exc
    missing = sorted(set(tables) - {t.name for t in done.manifest.tables})
    if missing or done.manifest.extra.get("tenant_ids") != [request.clinic]:
        raise UndoExportError(
            f"the undo export {done.export_id} of clinic {request.clinic} is incomplete (tables missing: "
            f"{', '.join(missing) or 'none'}; clinics {done.manifest.extra.get('tenant_ids')}): nothing was applied",
            fix="this is a bug in drp's export: report it; run the apply again")
    return done.export_id


def _with_retries(past_dsn: str, live_dsn: str, request: _Request, record: audit.RestoreRecord, retries: int,
                  backoff_s: float) -> ApplyResult:
    """Run the transaction; on a retryable failure start over (everything recomputed), up to ``retries`` more times."""
    for attempt in range(1, retries + 2):
        record.attempts = attempt
        try:
            return _Attempt(past_dsn, live_dsn, request, record).run()
        except RETRYABLE as exc:
            if attempt > retries:
                raise ApplyError(
                    f"the apply of clinic {request.clinic} was rolled back {attempt} times by concurrent writes "
                    f"({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); nothing was applied",
                    fix="run it again when the clinic is quieter, or with a longer lock_timeout") from None
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# -- one attempt: one transaction ----------------------------------------------------------------------


def insert_order(tables: list[TableScope], parents: dict[str, set[str]]) -> list[TableScope]:
    """Parents before children (FK graph among the scope's tables); ties and cycles in scope order.

    ``parents[name]``: the scope tables ``name`` has a foreign key to (itself excluded).
    """
    pending = [t.name for t in tables]
    by_name = {t.name: t for t in tables}
    done: list[str] = []
    while pending:
        ready = [n for n in pending if not (parents.get(n, set()) & set(pending)) - {n}]
        # A cycle (no table ready): take the first in scope order; its FKs to the rest are checked as conflicts.
        nxt = ready[0] if ready else pending[0]
        done.append(nxt)
        pending.remove(nxt)
    return [by_name[n] for n in done]


class _Attempt:
    def __init__(self, past_dsn: str, live_dsn: str, request: _Request, record: audit.RestoreRecord) -> None:
        self.past_dsn, self.live_dsn, self.r, self.record = past_dsn, live_dsn, request, record
        self.undo: Future[ExportResult] | None = None  # the undo export, started once the differing tables are known
        self.undo_tables: tuple[str, ...] = ()

    def run(self) -> ApplyResult:
        with connect(self.live_dsn) as live, connect(self.past_dsn) as past:
            live.isolation_level = past.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            past.read_only = True
            with live.transaction(), past.transaction(), ExitStack() as stack:
                # The snapshot, before anything is written: the undo export and the guard's "before" read it.
                snapshot = export_snapshot(live).id
                pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="drp-undo-export"))

                def start_undo(tables: tuple[str, ...]) -> None:
                    self.undo_tables = tables
                    self.undo = pool.submit(_undo_export, self.live_dsn, self.r, self.record.requester, snapshot, tables)

                reached(SNAPSHOT_TAKEN)
                try:
                    return self._in_transaction(live, past, snapshot, start_undo, stack)
                except BaseException as exc:
                    # The export has adopted the snapshot or is about to: let it finish while this transaction
                    # is still open (its own audit says how it ended); then everything here rolls back.
                    if self.undo is not None and self.undo.exception() is None:
                        self._discard_undo(self.undo.result(), exc)
                    raise

    def _discard_undo(self, done: ExportResult, why: BaseException) -> None:
        """An attempt that rolls back wrote nothing its undo export would undo, and that export holds the
        clinic's rows as they still are: deleted and recorded ``discarded`` (core/export/housekeeping.py), so a
        refused or retried apply leaves no copy of health data behind. Best effort: a failure here leaves it
        (encrypted, in the export audit as succeeded) and never hides the apply's own error."""
        reason = f"{type(why).__name__}: {why.problem}" if isinstance(why, DrpError) else type(why).__name__
        try:
            with connect(self.live_dsn, autocommit=True) as conn:
                discard_export(conn, self.r.undo.storage, done.prefix,
                               f"undo export of a tenant restore apply of clinic {self.r.clinic} that rolled back "
                               f"({reason[:300]}): nothing it would undo was written")
        except Exception:  # noqa: BLE001 - the apply's error is the one to raise
            pass

    def _in_transaction(self, live: psycopg.Connection, past: psycopg.Connection, snapshot: str,
                        start_undo: Callable[[tuple[str, ...]], None], stack: ExitStack) -> ApplyResult:
        live.execute("SELECT set_config('lock_timeout', %s, true)", (self.r.lock_timeout,))
        for name, value in RENDER_SETTINGS.items():  # TimeZone UTC: the retention journal's month bounds
            live.execute("SELECT set_config(%s, %s, true)", (name, value))
        bind_clinic(live, self.r.clinic)
        bind_clinic(past, self.r.clinic)
        plans, results = self._plan(live, past, start_undo)
        found = find_conflicts(live, plans, self.r.clinic, set(self.r.policies), skip=self.r.skip)
        if found.total and not self.r.skip:
            self.record.conflicts = [c.as_dict() for c in found.listed]
            raise ConflictError(
                f"restoring clinic {self.r.clinic} runs into {found.total} conflict(s): {found.describe()}; "
                "nothing applied", fix="resolve them in live, or pass --on-conflict skip to leave those rows "
                "(and rows depending on them) out")
        if self.r.skip:
            for (table, _kind, _constraint), n in found.counts.items():
                results[table].skipped += n
        before = xact_writes(live)
        self._write(live, plans, results)
        reached(BEFORE_COMMIT)
        isolation = self._isolation(live, plans, results, before, snapshot, stack)
        self.record.undo_export_id = _undo_result(self.undo, self.undo_tables, self.r)
        if self.record.undo_export_id is None and any(r.inserted or r.updated for r in results.values()):
            raise ApplyError("rows were written without an undo export: rolled back, nothing applied",
                             fix="this is a bug in drp: report it")
        result = ApplyResult(self.r.clinic, tuple(sorted(self.r.policies)), {p.scope.name: results[p.scope.name]
                             for p in plans}, found.listed, found.counts, self.record.undo_export_id, None,
                             self.record.attempts, isolation)
        self.record.counts = result.counts()
        self.record.conflicts = [c.as_dict() for c in found.listed]
        result.audit_id = audit.append(live, self.record, "succeeded")  # commits with the rows, or not at all
        for i, p in enumerate(plans):
            for rel in () if p.empty else (p.insert, p.revert, _past(i)):
                live.execute(sql.SQL("DROP TABLE {}").format(rel))
        return result

    def _isolation(self, live: psycopg.Connection, plans: list[TablePlan], results: dict[str, TableResult],
                   before: XactWrites, snapshot: str, stack: ExitStack) -> dict[str, str]:
        """guard.py's proof that no other clinic's row changed (IsolationError if one did); per written or
        otherwise written table, how it was proved."""
        scope, clinic = self.r.scope, self.r.clinic
        outside = []
        for p in plans:
            res = results[p.scope.name]
            written = ([p.insert] if res.inserted else []) + ([p.revert] if res.updated else [])
            n = rows_not_the_clinics(live, scope, p.scope, p.pk, written)
            if n:
                outside.append(f"{p.scope.name} ({n} row(s))")
        if outside:
            raise IsolationError(
                f"restoring clinic {clinic} would have written rows that are not the clinic's in {', '.join(outside)}"
                " (a restored row under a parent that is now another clinic's?): rolled back, nothing applied",
                fix="look at those rows' parents in live; restore them with --into-schema and move them by hand")
        expected = {name: (r.inserted, r.updated) for name, r in results.items() if r.inserted or r.updated}
        unexplained = unexplained_writes(before, xact_writes(live), expected)
        checked = {name: "counts: every write the apply's own, every written row the clinic's" for name in expected}
        if unexplained:
            tenants = live.execute("SELECT current_setting(%s)", (TENANTS_SETTING,)).fetchone()[0]
            twin: list[psycopg.Connection] = []

            def before_session() -> psycopg.Connection:
                if not twin:
                    twin.append(stack.enter_context(adopted_session(
                        self.live_dsn, snapshot, {**RENDER_SETTINGS, TENANTS_SETTING: tenants})))
                return twin[0]

            checked.update(check_unexplained(live, before_session, scope, unexplained, clinic))
        return checked

    # -- planning: what to insert, what to revert ---------------------------------------------------------

    def _plan(self, live: psycopg.Connection, past: psycopg.Connection,
              start_undo: Callable[[tuple[str, ...]], None]) -> tuple[list[TablePlan], dict[str, TableResult]]:
        constraints = {t.name: constraints_of(live, t) for t in self.r.scope.tables}
        in_scope = set(constraints)
        parents = {name: {fk.parent for fk in fks if fk.parent in in_scope and fk.parent != name}
                   for name, (_u, fks) in constraints.items()}
        plans, results = [], {}
        identical = self._identical(live)
        differing = tuple(name for name in self.r.scope.names if name not in identical)
        if differing:  # the undo holds every row the apply can write: those of the tables that differ
            start_undo(differing)
        for i, t in enumerate(insert_order(list(self.r.scope.tables), parents)):
            unique, fks = constraints[t.name]
            plan = TablePlan(t, sql.Identifier("pg_temp", f"drp_restore_ins_{i}"),
                             sql.Identifier("pg_temp", f"drp_restore_rev_{i}"),
                             primary_key(live, t.schema, t.table), unique, fks, empty=t.name in identical)
            results[t.name] = TableResult(t.name, identical=plan.empty)
            if not plan.empty:  # an identical table has nothing to restore: no TEMP relation is made for it
                copy_tenant_rows(past, self.r.scope, t, live, _past(i))
                results[t.name].archived = self._select_rows(live, plan, _past(i))
            plans.append(plan)
        return plans, results

    def _identical(self, live: psycopg.Connection) -> set[str]:
        """The scope tables whose clinic rows are the same at the restore point and in live: same row count and
        content checksum (export's ``tenant_checksum``), live's in this transaction, the past's on a thread.
        Their rows are not copied over (an audit log of 100,000s of rows unchanged since is the common case);
        a differing checksum method or an enum's OID (a logical backup's past) only means they are copied."""
        with ThreadPoolExecutor(1, thread_name_prefix="drp-past-checksums") as pool:
            past = pool.submit(_clinic_checksums, self.past_dsn, self.r.scope, self.r.clinic)
            now = {t.name: tenant_checksum(live, self.r.scope, t) for t in self.r.scope.tables}
            then = past.result()
        return {name for name, sums in now.items() if then.get(name) == sums}

    def _select_rows(self, live: psycopg.Connection, plan: TablePlan, past_rel: sql.Identifier) -> int:
        """Fill the plan's TEMP tables; the number of deleted rows left out as archived by retention."""
        t, pk = plan.scope, plan.pk
        columns = {c.name: c.type_name for c in table_columns(live, t.schema, t.table)}
        live_rel = sql.SQL("({})").format(tenant_select(t, self.r.scope))
        compared = compared_columns(live, past_rel, list(columns))
        if pk:
            keys = sql.SQL(", ").join(sql.Identifier("p", k) for k in pk)
            deleted = sql.SQL("SELECT p.* FROM {} AS p WHERE ({}) IN ({})").format(
                past_rel, keys, only_past_keys(past_rel, live_rel, pk))
            changed = sql.SQL("SELECT p.* FROM {} AS p WHERE ({}) IN ({})").format(
                past_rel, keys, changed_keys(past_rel, live_rel, compared, pk))
        else:  # a multiset: the past rows live lacks; nothing is "changed"
            deleted = rows_only_in(past_rel, live_rel, compared)
            changed = sql.SQL("SELECT p.* FROM {} AS p WHERE false").format(past_rel)
        if "restore-deleted" not in self.r.policies:
            deleted = sql.SQL("SELECT p.* FROM ({}) AS p WHERE false").format(deleted)
        if "revert-changed" not in self.r.policies:
            changed = sql.SQL("SELECT p.* FROM ({}) AS p WHERE false").format(changed)
        live.execute(sql.SQL("CREATE TABLE {} AS {}").format(plan.insert, deleted))
        live.execute(sql.SQL("CREATE TABLE {} AS {}").format(plan.revert, changed))
        archived = archived_condition(live, t, self.r.clinic, columns, pk, "p")
        return live.execute(sql.SQL("DELETE FROM {} AS p WHERE {}").format(plan.insert, archived)).rowcount

    # -- writing -----------------------------------------------------------------------------------------

    def _write(self, live: psycopg.Connection, plans: list[TablePlan], results: dict[str, TableResult]) -> None:
        plans = [p for p in plans if not p.empty]
        for plan in plans:
            res = results[plan.scope.name]
            res.inserted = self._insert(live, plan)
            if res.inserted:
                res.sequences = advance_sequences(live, plan.scope, plan.insert)
        for plan in plans:
            results[plan.scope.name].updated = self._revert(live, plan)

    def _insert(self, live: psycopg.Connection, plan: TablePlan) -> int:
        t = plan.scope
        cols = _writable(live, t)
        if not cols:
            return 0
        always = live.execute("SELECT bool_or(attidentity = 'a') FROM pg_attribute WHERE attrelid = %s::regclass"
                              " AND attnum > 0 AND NOT attisdropped",
                              (sql.Identifier(t.schema, t.table).as_string(live),)).fetchone()[0]
        return live.execute(sql.SQL("INSERT INTO {} ({}) {}SELECT {} FROM {} AS p").format(
            sql.Identifier(t.schema, t.table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols),
            sql.SQL("OVERRIDING SYSTEM VALUE ") if always else sql.SQL(""),
            sql.SQL(", ").join(sql.SQL("CAST({} AS {})").format(sql.Identifier("p", c), sql.SQL(typ))
                               for c, typ in cols), plan.insert)).rowcount

    def _revert(self, live: psycopg.Connection, plan: TablePlan) -> int:
        t = plan.scope
        cols = [(c, typ) for c, typ in _writable(live, t, updatable=True) if c not in plan.pk]
        if not plan.pk or not cols:
            return 0
        expected = _rows(live, plan.revert)
        if not expected:
            return 0
        n = live.execute(sql.SQL("UPDATE {} AS l SET {} FROM {} AS p WHERE {} AND {}").format(
            read_relation(t.schema, t.table, t.kind),
            sql.SQL(", ").join(sql.SQL("{} = CAST({} AS {})").format(sql.Identifier(c), sql.Identifier("p", c),
                                                                     sql.SQL(typ)) for c, typ in cols),
            plan.revert, sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("l", k), sql.Identifier("p", k))
                                               for k in plan.pk),
            tenant_filter(t, self.r.scope, "l"))).rowcount
        if n != expected:
            raise ApplyError(f"{t.name}: {n} row(s) reverted, {expected} planned: rolled back, nothing applied",
                             fix="this is a bug in drp (a row left the clinic mid-apply?): report it")
        return n


def _clinic_checksums(dsn: str, scope: Scope, clinic: str) -> dict[str, tuple[int, str, str]]:
    """(rows, checksum, method) of the clinic's rows per scope table, in one snapshot of ``dsn``."""
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            bind_clinic(conn, clinic)
            pin_output(conn)
            return {t.name: tenant_checksum(conn, scope, t) for t in scope.tables}


def _past(i: int) -> sql.Identifier:
    return sql.Identifier("pg_temp", f"drp_restore_past_{i}")


def _rows(conn: psycopg.Connection, rel: sql.Composable) -> int:
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(rel)).fetchone()[0])


def _writable(conn: psycopg.Connection, t: TableScope, *, updatable: bool = False) -> list[tuple[str, str]]:
    """(column, format_type) a restore writes: not generated; for an UPDATE, not an identity GENERATED ALWAYS."""
    return [(name, typ) for name, typ in conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass"
        " AND attnum > 0 AND NOT attisdropped AND attgenerated = '' AND (NOT %s OR attidentity <> 'a')"
        " ORDER BY attnum", (sql.Identifier(t.schema, t.table).as_string(conn), updatable)).fetchall()]


