"""Enforce the retention policies: archive, verify, then delete, resumable after a crash at any point.

Per table, under an advisory lock (one run per table at a time):

1. **Resume.** Unfinished segments from an earlier run are finished first: ``pending``
   ones (the crash came before their manifest) are removed from storage and abandoned,
   ``written`` ones are verified, ``verified`` ones are deleted from ``next_offset`` on.
2. **Archive.** Month by month (oldest first), for every tenant whose rule archives, the
   expired rows not under a legal hold are written in segments of at most
   ``segment_rows`` rows (primary-key order), each stored, then read back and verified.
3. **Delete.** For a partitioned table whose month fills one leaf partition exactly
   (count and checksum of the partition equal the sum of the month's verified segments),
   the partition is detached and dropped in one transaction. Otherwise rows are deleted in
   batches of ``batch_size`` by primary key, only if their hash still equals the archived
   one and no hold covers them now; each batch commits with its journal counters and the
   keys of the rows it kept (``drp.archive_kept``). Before a segment is marked deleted, its
   kept rows are stored next to its manifest (``kept.json``): the archive says by itself
   which of its rows were never removed (a later run may archive their current version).

Tenants whose rule is ``delete`` lose expired rows in batches without an archive; ``keep``
touches nothing. Held rows are never selected and every hold that kept rows is reported.

Checkpoints (core/checkpoints.py) where the crash tests kill -9 a real run: ``after-write``
(objects and manifest stored, segment still pending), ``after-archive`` (a segment verified,
nothing deleted) and ``mid-delete`` (one delete batch committed, more to come).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.checkpoints import reached
from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.layout import DATA_NAME, new_segment_id, segment_prefix
from dr_pipelines.core.manifest import ManifestError
from dr_pipelines.core.pg.checksums import pin_render_settings
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.drp_schema import retention_lock_name
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.retention import journal
from dr_pipelines.core.retention.holds import HoldFilter, column_names, ensure_holds_table, hold_filter
from dr_pipelines.core.retention.kept import Kept, pk_text, write_kept
from dr_pipelines.core.retention.partitions import drop_month_partition
from dr_pipelines.core.retention.policy import Bound, BoundTable, Policies, Rule, bind
from dr_pipelines.core.retention.results import (
    ApplyIncompleteError,
    ApplyOptions,
    ApplyResult,
    HeldSkip,
    RetentionBusyError,
    TableResult,
)
from dr_pipelines.core.retention.segment import (
    ALIAS,
    ArchiveError,
    bind_tenant,
    fetched,
    from_clause,
    month_bounds,
    parquet_keys,
    pk_tuple,
    remove_objects,
    row_hash,
    select_to_parquet,
    store,
    table_method,
    ts_value,
    verify,
)
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.tenancy import tenant_filter

LOCK_TIMEOUT = "5s"


def prepare(conn: psycopg.Connection) -> None:
    """Session setup shared by every retention connection (pinned rendering: the text checksum needs it)."""
    pin_render_settings(conn)
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))


def resolve_as_of(conn: psycopg.Connection, as_of: datetime | None) -> datetime:
    return as_of or conn.execute("SELECT statement_timestamp()").fetchone()[0]


def cutoff_for(conn: psycopg.Connection, as_of: datetime, rule: Rule) -> datetime | None:
    if rule.period is None:
        return None
    return conn.execute("SELECT %s::timestamptz - %s::interval", (as_of, rule.period.interval)).fetchone()[0]


def apply_policies(dsn: str, storage: Storage, policies: Policies, options: ApplyOptions | None = None, *,
                   progress: Progress | None = None) -> ApplyResult:
    """Enforce ``policies`` (or the tables in ``options.tables``) and return what was done."""
    options = options or ApplyOptions()
    if options.batch_size < 1 or options.segment_rows < 1:
        raise ConfigError("batch size and segment rows must be positive", fix="use e.g. --batch-size 1000")
    run_id = options.run_id or uuid.uuid4().hex
    with connect(dsn, autocommit=True) as conn:
        prepare(conn)
        ensure_holds_table(conn)
        journal.ensure_journal_table(conn)
        bound = bind(conn, policies, tables=list(options.tables) or None)
        if any(bt.policy.may_archive for bt in bound.tables.values()):
            options.keys.check_for_archiving()  # before anything: no plaintext archive, no unverifiable one
        as_of = resolve_as_of(conn, options.as_of)
        results, failures = [], []
        for bt in bound.tables.values():  # one table's failure is reported, the others still run
            try:
                results.append(_run_table(conn, storage, bound, bt, options, run_id, as_of, progress))
            except DrpError as exc:
                failures.append(exc)
        result = ApplyResult(run_id, as_of, results)
        if failures:
            raise ApplyIncompleteError(failures, result)
        return result


def _run_table(conn: psycopg.Connection, storage: Storage, bound: Bound, bt: BoundTable, options: ApplyOptions,
               run_id: str, as_of: datetime, progress: Progress | None) -> TableResult:
    """One table's run under its advisory lock; a database error becomes an ArchiveError naming the table."""
    if not _lock(conn, bt.name):
        raise RetentionBusyError(f"another retention run is working on {bt.name}",
                                 fix="wait for it to finish (a crashed run's lock is released with its session)")
    try:
        return _TableRun(conn, storage, bound, bt, options, run_id, as_of, progress).run()
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArchiveError(f"retention of {bt.name} stopped: {reason}",
                           fix="no row was deleted without a verified archive; fix the cause and run "
                           "again: the run resumes where this one stopped") from exc
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (retention_lock_name(bt.name),))


def _lock(conn: psycopg.Connection, table: str) -> bool:
    return bool(conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (retention_lock_name(table),)).fetchone()[0])


class _TableRun:
    def __init__(self, conn: psycopg.Connection, storage: Storage, bound: Bound, bt: BoundTable,
                 options: ApplyOptions, run_id: str, as_of: datetime, progress: Progress | None) -> None:
        self.conn, self.storage, self.bound, self.bt = conn, storage, bound, bt
        self.options, self.run_id, self.as_of, self.progress = options, run_id, as_of, progress
        self.result = TableResult(bt.name)
        self.method = table_method(conn, bt)
        self.columns: set[str] | None = None

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TableResult:
        resumed = set()
        for seg in journal.segments(self.conn, table=self.bt.name, states=journal.UNFINISHED):
            self.result.resumed += 1
            resumed.add(seg.id)
            self._finish(seg)
        self._enforce()
        touched = [s for s in journal.segments(self.conn, table=self.bt.name)
                   if s.run_id == self.run_id or s.id in resumed]
        totals = journal.balance(touched)
        self.result.balance = {"segments": len(touched), "archived": totals.archived, "deleted": totals.deleted,
                               "kept": totals.kept, "ok": totals.ok}
        return self.result

    def _enforce(self) -> None:
        tenants = [self.bound.tenant(t) for t in self.options.tenants] if self.options.tenants else self.bound.tenants
        months: dict[date, list[tuple[str, str, datetime, HoldFilter]]] = {}
        for tenant in tenants:
            rule = self.bt.policy.rule_for(tenant.id, tenant.jurisdiction)
            if rule.action == "keep":
                continue
            cutoff = cutoff_for(self.conn, self.as_of, rule)
            assert cutoff is not None
            holds = hold_filter(self.conn, self.bt.name, tenant.id, self._columns())
            self._report_held(tenant.id, cutoff, holds)
            if holds.everything:
                continue
            if rule.action == "delete":
                self._delete_unarchived(tenant.id, cutoff, holds)
                continue
            for month in self._expired_months(tenant.id, cutoff, holds):
                months.setdefault(month, []).append((tenant.id, rule.describe(), cutoff, holds))
        for month in sorted(months):
            done = []
            for tenant_id, rule_text, cutoff, holds in months[month]:
                done += self._archive(tenant_id, month, rule_text, cutoff, holds)
            for seg in self._drop_partition(month, done):
                self._delete_batches(seg)

    def _columns(self) -> set[str]:
        if self.columns is None:
            self.columns = column_names(self.conn, self.bt.name)
        return self.columns

    def _finish(self, seg: journal.Segment) -> None:
        if seg.storage_url != self.storage.url:
            raise ArchiveError(f"segment {seg.id} of {seg.table_name} was written to {seg.storage_url}, not to "
                               f"{self.storage.url}", fix="run retention against the storage it started with")
        if seg.state == "pending":
            self._abandon(seg.id, seg.prefix, "interrupted before its manifest was written")
            return
        if seg.state == "written":
            try:
                verify(self.conn, self.storage, self.bt, seg.prefix, rows=seg.rows or 0, checksum=seg.checksum or "",
                       work_dir=self.options.work_dir, identities=self.options.keys.identities)
            except (ArchiveError, ManifestError) as exc:
                self._abandon(seg.id, seg.prefix, exc.problem)
                return
            journal.advance(self.conn, seg.id, "verified")
        self._delete_batches(seg)

    def _abandon(self, seg_id: str, prefix: str, why: str) -> None:
        remove_objects(self.storage, prefix)
        journal.advance(self.conn, seg_id, "abandoned", error=why[:2000])
        self.result.abandoned += 1

    # -- selection --------------------------------------------------------------------------------

    def _report_held(self, tenant_id: str, cutoff: datetime, holds: HoldFilter) -> None:
        if not holds.holds:
            return
        bind_tenant(self.conn, tenant_id)
        cond = sql.SQL("true") if holds.everything else holds.held_expr(ALIAS)
        n = self.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} AND {} < %s AND {}").format(
            from_clause(self.bt), tenant_filter(self.bt.scope, self.bt.tenant_scope, ALIAS),
            sql.Identifier(ALIAS, self.bt.policy.timestamp_column), cond), (ts_value(self.bt, cutoff),)).fetchone()[0]
        if n:
            self.result.held.append(HeldSkip(self.bt.name, tenant_id, n, [h.id for h in holds.holds]))

    def _expired_months(self, tenant_id: str, cutoff: datetime, holds: HoldFilter) -> list[date]:
        bind_tenant(self.conn, tenant_id)
        ts = sql.Identifier(ALIAS, self.bt.policy.timestamp_column)
        utc = sql.SQL(" AT TIME ZONE 'UTC'") if self.bt.timestamp_type == "timestamp with time zone" else sql.SQL("")
        rows = self.conn.execute(sql.SQL(
            "SELECT DISTINCT date_trunc('month', {}{})::date FROM {} WHERE {} AND {} < %s AND NOT {} ORDER BY 1").format(
            ts, utc, from_clause(self.bt), tenant_filter(self.bt.scope, self.bt.tenant_scope, ALIAS), ts,
            holds.held_expr(ALIAS)), (ts_value(self.bt, cutoff),)).fetchall()
        wanted = set(self.options.months)
        return [r[0] for r in rows if not wanted or r[0] in wanted]

    # -- archive ----------------------------------------------------------------------------------

    def _archive(self, tenant_id: str, month: date, rule_text: str, cutoff: datetime,
                 holds: HoldFilter) -> list[journal.Segment]:
        m0, m1 = month_bounds(month)
        params = {"cutoff": ts_value(self.bt, cutoff), "m0": ts_value(self.bt, m0), "m1": ts_value(self.bt, m1)}
        predicate = (f"{self.bt.scope.describe()} = {tenant_id} AND {self.bt.policy.timestamp_column} < "
                     f"{cutoff.isoformat()} AND {self.bt.policy.timestamp_column} in [{m0:%Y-%m-%d}, {m1:%Y-%m-%d})"
                     + (f" AND NOT held by {', '.join(str(h.id) for h in holds.partial)}" if holds.partial else ""))
        after: tuple[Any, ...] | None = None
        done: list[journal.Segment] = []
        while True:
            with tempfile.TemporaryDirectory(prefix="drp-archive-", dir=self.options.work_dir) as tmp, \
                    self.result.timed("archive"):
                with self.conn.transaction():
                    bind_tenant(self.conn, tenant_id)
                    written = select_to_parquet(self.conn, self.bt, self.method, holds.held_expr(ALIAS), params, after,
                                                self.options.segment_rows, Path(tmp) / DATA_NAME)
                if written.rows == 0:
                    return done
                seg_id = new_segment_id()
                prefix = segment_prefix(self.bt.name, tenant_id, month, seg_id)
                journal.insert_pending(self.conn, {
                    "id": seg_id, "run_id": self.run_id, "table_name": self.bt.name, "tenant_id": tenant_id,
                    "month": month, "storage_url": self.storage.url, "prefix": prefix, "cutoff": cutoff,
                    "predicate": predicate, "rule": rule_text})
                nbytes, sha = store(self.storage, prefix, written, {
                    "table": self.bt.name, "method": self.method, "tenant_id": tenant_id, "month": month.isoformat(),
                    "cutoff": cutoff.isoformat(), "as_of": self.as_of.isoformat(), "rule": rule_text,
                    "predicate": predicate, "primary_key": list(self.bt.pk),
                    "timestamp_column": self.bt.policy.timestamp_column, "row_hash_column": "__drp_row_hash",
                    "run_id": self.run_id, "segment_id": seg_id, "holds_excluded": [h.id for h in holds.partial]},
                    self.options.keys)
                reached("after-write")
                journal.advance(self.conn, seg_id, "written", rows=written.rows, bytes=nbytes, sha256=sha,
                                checksum=written.checksum, method=self.method)
            with self.result.timed("verify"):
                verify(self.conn, self.storage, self.bt, prefix, rows=written.rows, checksum=written.checksum,
                       work_dir=self.options.work_dir, identities=self.options.keys.identities)
            journal.advance(self.conn, seg_id, "verified")
            self.result.archived_rows += written.rows
            self.result.bytes += nbytes
            self.result.segments += 1
            if self.progress:
                self.progress(f"archive {self.bt.name}", self.result.archived_rows, None)
            reached("after-archive")
            (seg,) = [s for s in journal.segments(self.conn, table=self.bt.name, tenant_id=tenant_id,
                                                  states=("verified",)) if s.id == seg_id]
            done.append(seg)
            after = written.last_pk
            if written.rows < self.options.segment_rows:
                return done

    # -- delete -----------------------------------------------------------------------------------

    def _delete_batches(self, seg: journal.Segment) -> None:
        """Delete a verified segment's rows by primary key, hash-guarded, hold-aware, batch by batch.

        The rows a batch keeps (changed since the archive, or held now) are recorded in
        drp.archive_kept in the batch's transaction; kept.json is written from there before the
        segment is marked deleted.
        """
        holds = hold_filter(self.conn, self.bt.name, seg.tenant_id, self._columns())
        # A whole hold placed after the archive: nothing of this tenant's table may go, every row is kept.
        held = sql.SQL("true") if holds.everything else holds.held_expr(ALIAS)
        arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in (*self.bt.pk_types, "bigint"))
        names = [sql.Identifier(f"k{i}") for i in range(len(self.bt.pk))]
        keys_tuple = sql.SQL(", ").join(sql.SQL("drp_keys.{}").format(n) for n in names)
        gone = [sql.Identifier(f"g{i}") for i in range(len(self.bt.pk))]

        ts = sql.Identifier(ALIAS, self.bt.policy.timestamp_column)
        # The month bounds are redundant with the keys and hashes, but let PostgreSQL prune partitions.
        stmt = sql.SQL(
            "WITH drp_keys AS MATERIALIZED (SELECT * FROM unnest({}) AS u({}, h)),"
            " gone AS (DELETE FROM {} USING drp_keys WHERE {} = ({}) AND {} = drp_keys.h AND {}"
            " AND {} >= %s AND {} < %s AND NOT {} RETURNING {}),"
            " kept AS (INSERT INTO drp.archive_kept (segment_id, pk, row_hash) SELECT %s, {}, drp_keys.h FROM drp_keys"
            " WHERE NOT EXISTS (SELECT FROM gone WHERE ({}) = ({})) RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM kept)"
        ).format(arrays, sql.SQL(", ").join(names), from_clause(self.bt), pk_tuple(self.bt), keys_tuple,
                 row_hash(self.method), tenant_filter(self.bt.scope, self.bt.tenant_scope, ALIAS), ts, ts, held,
                 sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.Identifier(ALIAS, c), g)
                                    for c, g in zip(self.bt.pk, gone, strict=True)),
                 pk_text([f"k{i}" for i in range(len(self.bt.pk))], "drp_keys"),
                 sql.SQL(", ").join(sql.SQL("gone.{}").format(g) for g in gone), keys_tuple)
        m0, m1 = (ts_value(self.bt, b) for b in month_bounds(seg.month))
        with fetched(self.storage, seg.prefix, self.options.work_dir,
                     identities=self.options.keys.identities) as (manifest, path), \
                self.result.timed("delete"):
            for end, keys, hashes in parquet_keys(path, self.bt, self.options.batch_size, seg.next_offset):
                started = time.monotonic()
                with self.conn.transaction():
                    bind_tenant(self.conn, seg.tenant_id)
                    deleted, kept = self.conn.execute(stmt, (*keys, hashes, m0, m1, seg.id)).fetchone()
                    seconds = time.monotonic() - started
                    journal.record_batch(self.conn, seg.id, deleted=deleted, kept=kept, next_offset=end,
                                         seconds=seconds)
                self.result.batch(time.monotonic() - started)
                self.result.deleted_rows += deleted
                self.result.kept_changed += kept
                if self.progress:
                    self.progress(f"delete {self.bt.name}", self.result.deleted_rows, None)
                if end < (seg.rows or 0):
                    reached("mid-delete")
            self._store_kept(seg, manifest.extra["primary_key"], (manifest.encryption or {}).get("recipients", ()))
        journal.advance(self.conn, seg.id, "deleted", removed_by="batches")

    def _store_kept(self, seg: journal.Segment, primary_key: list[str], recipients: list[str]) -> None:
        """Write the segment's kept.json from the journal (idempotent), sealed as its archive is."""
        count, entries = journal.kept(self.conn, seg.id)
        if len(entries) != count:
            raise ArchiveError(f"segment {seg.id} counts {count} kept row(s) but the journal lists {len(entries)}",
                               fix="this is a bug in drp: report it; the segment stays unfinished")
        if entries:
            write_kept(self.storage, seg.prefix, Kept([k for k, _h in entries], [h for _k, h in entries]),
                       segment_id=seg.id, table=self.bt.name, primary_key=primary_key, recipients=recipients)

    def _drop_partition(self, month: date, segs: list[journal.Segment]) -> list[journal.Segment]:
        """Drop the month's partition if it holds exactly the verified segments (see partitions.py); else keep them."""
        if not (self.bt.partitioned and self.options.partition_drop and segs):
            return segs
        return drop_month_partition(self.conn, self.bt, self.method, month, segs, self.result)

    def _delete_unarchived(self, tenant_id: str, cutoff: datetime, holds: HoldFilter) -> None:
        """`delete` rules: expired, unheld rows go in primary-key batches, no archive."""
        ts = sql.Identifier(ALIAS, self.bt.policy.timestamp_column)
        pk_plain = sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in self.bt.pk))
        stmt = sql.SQL("DELETE FROM {} WHERE {} IN (SELECT {} FROM {} WHERE {} AND {} < %s AND NOT {} LIMIT %s)").format(
            self.bt.ident if self.bt.partitioned else sql.SQL("ONLY {}").format(self.bt.ident), pk_plain,
            sql.SQL(", ").join(sql.Identifier(ALIAS, c) for c in self.bt.pk), from_clause(self.bt), tenant_filter(self.bt.scope, self.bt.tenant_scope, ALIAS), ts,
            holds.held_expr(ALIAS))
        while True:
            started = time.monotonic()
            with self.result.timed("delete"), self.conn.transaction():
                bind_tenant(self.conn, tenant_id)
                n = self.conn.execute(stmt, (ts_value(self.bt, cutoff), self.options.batch_size)).rowcount
            self.result.batch(time.monotonic() - started)
            self.result.deleted_unarchived += n
            if n < self.options.batch_size:
                return
