"""What keeps an apply from touching what it must not: other clinics, sequences, retention archives.

All of it runs inside the apply's one live transaction (core/tenant_restore/apply.py):

- **Other clinics.** No row that is not the clinic's may change. Proved cheaply, and exactly:

  1. ``xact_writes`` reads, before the first write and again before COMMIT, how many rows this
     transaction has inserted, updated and deleted in every table (``pg_stat_get_xact_tuples_*``:
     the backend's own not-yet-flushed counts plus those of its live subtransactions, attempts
     in rolled-back subtransactions included; PG15 src/backend/utils/adt/pgstatfuncs.c), leaf
     partitions added up under their root, and each table's relfilenode (a TRUNCATE or rewrite
     changes it without counting rows). The difference is what happened in between, whatever
     the session did before (pending counts of earlier transactions cancel out).
  2. ``unexplained_writes`` compares it with the rowcounts of the apply's own INSERTs and
     UPDATEs. A row moved to another partition by an UPDATE counts as one delete and one insert,
     so a table is explained when ``inserted - deleted`` and ``updated + deleted`` equal our
     inserts and updates (all counts are non-negative: any extra write breaks one of the two).
     Explained everywhere means no trigger, rule or cascade wrote anything else.
  3. ``rows_not_the_clinics`` checks that every row the apply wrote is the clinic's *after* the
     writes (its tenant filter true): a restored child hung under a parent that is now another
     clinic's, or a reverted foreign key pointing at one, would otherwise move a row across.
  4. Only a table with unexplained writes is checksummed (``other_tenants_checksums``, the
     content checksum of its rows that are not the clinic's): after the writes in the apply's
     transaction, before them in a session that adopted the apply's snapshot as exported before
     the first write (so both sides see the same moment; other sessions' writes are invisible to
     both). A difference raises IsolationError (rolled back). A table with unexplained writes
     outside the tenant scope holds no clinic's rows: it is reported, not refused (a global
     audit table written by a trigger).

- **Sequences never move backwards.** Restored rows keep their ids (inserted explicitly,
  ``OVERRIDING SYSTEM VALUE`` for identity columns GENERATED ALWAYS). ``advance_sequences``
  then moves a column's sequence (identity, serial, OWNED BY, or named in its default) forward
  to the largest restored value when that is above what it has handed out, and never sets it lower.
  (Restored ids come from an earlier state of this database, so they are normally below the
  sequence already.) setval is not transactional: a rolled-back apply may leave a sequence
  moved forward, never backward.
- **Retention archives.** A row archived and deleted by retention (core/retention/) since the
  restore point is gone from live on purpose: it is not "deleted". ``archived_condition`` matches
  a past row against the journal ``drp.archive_segments``: segments of the table and clinic in
  state ``verified`` (being deleted) or ``deleted``, the row's timestamp in the segment's month and
  before its cutoff, and the row not among the segment's kept rows (``drp.archive_kept``: rows
  the delete left in place, which a later deletion by someone else makes "deleted" again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.checksums import default_method, relation_checksum
from dr_pipelines.core.retention.kept import pk_text
from dr_pipelines.core.retention.segment import month_bounds
from dr_pipelines.core.tenancy import Scope, TableScope, read_relation, tenant_filter

ARCHIVED_STATES = ("verified", "deleted")  # rows of a verified segment are being deleted by retention


class IsolationError(DrpError):
    """The apply changed rows that are not the clinic's: rolled back, nothing applied."""


class ArchiveJournalError(DrpError):
    """The retention journal names a segment whose rows cannot be told apart: the apply is refused."""

    exit_code = 2


def other_tenants_checksums(conn: psycopg.Connection, scope: Scope,
                            tables: list[TableScope]) -> dict[str, tuple[int, str]]:
    """(rows, checksum) of the rows of each table that are not the bound tenant's (``conn`` must be
    in a transaction with the tenant bound and RENDER_SETTINGS pinned)."""
    out = {}
    for t in tables:
        source = sql.SQL("(SELECT t.* FROM {} AS t WHERE ({}) IS NOT TRUE)").format(
            read_relation(t.schema, t.table, t.kind), tenant_filter(t, scope, "t"))
        result = relation_checksum(conn, t.name, source, default_method(conn, t.schema, t.table))
        out[t.name] = (result.rows, result.checksum)
    return out


def check_untouched(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]], clinic: str) -> None:
    """IsolationError naming every table whose other-clinic rows differ (the caller rolls back)."""
    changed = [f"{name} ({before[name][0]} rows {before[name][1]} -> {after.get(name, (0, '?'))[0]} rows "
               f"{after.get(name, (0, '?'))[1]})" for name in before if after.get(name) != before[name]]
    if changed:
        raise IsolationError(
            f"restoring clinic {clinic} would have changed rows of other clinics in {', '.join(changed)}: "
            "rolled back, nothing applied",
            fix="this is a bug in drp (or a trigger writing across clinics): report it with the tables named")


# -- what this transaction wrote -------------------------------------------------------------------

# Every permanent table and materialized view of the database (leaf partitions under their root's
# name) with this transaction's row counts so far and its relfilenode. TEMP relations (the apply's
# own), catalogs and TOAST tables are left out: DDL and big values write there.
_XACT_WRITES = """
SELECT c.oid, rn.nspname || '.' || r.relname, c.relfilenode,
       pg_stat_get_xact_tuples_inserted(c.oid), pg_stat_get_xact_tuples_updated(c.oid),
       pg_stat_get_xact_tuples_deleted(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class r ON r.oid = coalesce(pg_partition_root(c.oid), c.oid)
JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
"""


@dataclass(frozen=True)
class XactWrites:
    """``xact_writes``: leaf relation oid -> (root table name, relfilenode, inserted, updated, deleted)."""

    relations: Mapping[int, tuple[str, int, int, int, int]]


@dataclass(frozen=True)
class Unexplained:
    """A table whose rows this transaction changed beyond what the apply's own statements did."""

    table: str
    inserted: int
    updated: int
    deleted: int
    expected: tuple[int, int]  # the apply's own (inserted, updated)
    rewritten: bool  # truncated, rewritten or dropped (its relfilenode changed)

    def describe(self) -> str:
        what = f"{self.inserted} inserted, {self.updated} updated, {self.deleted} deleted"
        return f"{self.table} ({what}{'; truncated or rewritten' if self.rewritten else ''}; the apply wrote " \
               f"{self.expected[0]} inserted, {self.expected[1]} updated)"


def xact_writes(conn: psycopg.Connection) -> XactWrites:
    """This transaction's writes so far, per table (see the module docstring, step 1)."""
    return XactWrites({oid: (name, node, int(i), int(u), int(d))
                       for oid, name, node, i, u, d in conn.execute(_XACT_WRITES).fetchall()})


def unexplained_writes(before: XactWrites, after: XactWrites,
                       expected: Mapping[str, tuple[int, int]]) -> list[Unexplained]:
    """Tables whose writes between ``before`` and ``after`` are not exactly ``expected`` (table -> our
    (inserted, updated)); a table not in ``expected`` must not have been written at all."""
    totals: dict[str, list[int]] = {}
    rewritten: set[str] = set()
    for oid, (name, node, i, u, d) in after.relations.items():
        was = before.relations.get(oid)
        if was is not None and was[1] != node:
            rewritten.add(name)
        base = was[2:] if was is not None else (0, 0, 0)
        acc = totals.setdefault(name, [0, 0, 0])
        for k, (now, then) in enumerate(zip((i, u, d), base, strict=True)):
            acc[k] += now - then
    for oid, (name, *_rest) in before.relations.items():
        if oid not in after.relations:  # dropped since
            rewritten.add(name)
            totals.setdefault(name, [0, 0, 0])
    out = []
    for name in sorted(set(totals) | set(expected)):
        i, u, d = totals.get(name, [0, 0, 0])
        want = expected.get(name, (0, 0))
        if name in rewritten or i - d != want[0] or u + d != want[1]:
            out.append(Unexplained(name, i, u, d, want, name in rewritten))
    return out


def rows_not_the_clinics(conn: psycopg.Connection, scope: Scope, t: TableScope, pk: tuple[str, ...],
                         written: list[sql.Composable]) -> int:
    """How many rows the apply just wrote to ``t`` are not the bound clinic's now (their tenant filter
    is not true). ``written``: relations holding the written rows (by primary key; a table without
    one only gets inserts, checked on the rows inserted)."""
    if not written:
        return 0
    if pk:
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in pk)
        union = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT {} FROM {}").format(keys, rel) for rel in written)
        join = sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("t", k), sql.Identifier("w", k))
                                     for k in pk)
        query = sql.SQL("SELECT count(*) FROM ({}) AS w JOIN {} AS t ON {} WHERE ({}) IS NOT TRUE").format(
            union, read_relation(t.schema, t.table, t.kind), join, tenant_filter(t, scope, "t"))
    else:
        union = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT * FROM {}").format(rel) for rel in written)
        query = sql.SQL("SELECT count(*) FROM ({}) AS t WHERE ({}) IS NOT TRUE").format(
            union, tenant_filter(t, scope, "t"))
    return int(conn.execute(query).fetchone()[0])


def check_unexplained(after: psycopg.Connection, before: Callable[[], psycopg.Connection], scope: Scope,
                      unexplained: list[Unexplained], clinic: str) -> dict[str, str]:
    """The exact fallback (module docstring, step 4) for the tables with unexplained writes: IsolationError
    if another clinic's rows differ; else what was checked, per table. ``before()`` opens (once) the
    session on the snapshot taken before the first write, with the clinic bound."""
    checked: dict[str, str] = {}
    in_scope = [u for u in unexplained if u.table in scope.names]
    for u in unexplained:
        if u.table not in scope.names:
            checked[u.table] = f"outside the tenant scope, not checked: {u.describe()}"
    if not in_scope:
        return checked
    tables = [scope.table(u.table) for u in in_scope]
    was = other_tenants_checksums(before(), scope, tables)
    now = other_tenants_checksums(after, scope, tables)
    check_untouched(was, now, clinic)
    for u in in_scope:
        checked[u.table] = (f"writes not all the apply's ({u.describe()}); other clinics' rows checksummed, "
                            f"equal: {now[u.table][0]} rows {now[u.table][1]}")
    return checked


# -- sequences -----------------------------------------------------------------------------------

# Sequences feeding a column: owned by it (identity 'i', serial/OWNED BY 'a') or named in its default.
_COLUMN_SEQUENCES = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), s.oid, sn.nspname, s.relname
FROM pg_attribute a
JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
                AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE a.attrelid = %(rel)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
UNION
SELECT a.attname, format_type(a.atttypid, a.atttypmod), s.oid, sn.nspname, s.relname
FROM pg_attrdef ad
JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE ad.adrelid = %(rel)s::regclass
ORDER BY 1, 4, 5
"""
_INTEGER_TYPES = ("smallint", "integer", "bigint")


@dataclass(frozen=True)
class SequenceMove:
    sequence: str
    column: str
    restored_max: int
    moved: bool  # False: the sequence was already past every restored value


def advance_sequences(conn: psycopg.Connection, table: TableScope, restored: sql.Composable) -> list[SequenceMove]:
    """Move each sequence feeding an integer column of ``table`` forward to the largest value in
    ``restored`` (the rows just inserted), if that is above what the sequence has handed out."""
    rel = sql.Identifier(table.schema, table.table).as_string(conn)
    moves = []
    for column, type_, seq_oid, seq_schema, seq_rel in conn.execute(_COLUMN_SEQUENCES, {"rel": rel}).fetchall():
        if type_ not in _INTEGER_TYPES:
            continue  # e.g. invoices.number: text built from a sequence, nothing to compare
        top = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), restored)).fetchone()[0]
        if top is None:
            continue
        increment = conn.execute("SELECT seqincrement FROM pg_sequence WHERE seqrelid = %s", (seq_oid,)).fetchone()[0]
        if increment < 0:
            continue  # a descending sequence hands out ever lower values: a restored value never catches up
        # One statement reads and sets (setval only forward), leaving the narrowest window to a concurrent nextval.
        moved = conn.execute(sql.SQL(
            "SELECT setval(%(seq)s::oid::regclass, %(top)s, true) FROM {} WHERE %(top)s >"
            " CASE WHEN is_called THEN last_value ELSE last_value - 1 END").format(
                sql.Identifier(seq_schema, seq_rel)), {"seq": seq_oid, "top": top}).fetchone() is not None
        moves.append(SequenceMove(f"{seq_schema}.{seq_rel}", column, int(top), moved))
    return moves


# -- retention archives --------------------------------------------------------------------------


def archived_condition(conn: psycopg.Connection, table: TableScope, clinic: str, columns: dict[str, str],
                       pk: tuple[str, ...], alias: str) -> sql.Composable:
    """A condition true for a row of ``alias`` that retention archived and deleted (journal, this clinic).

    ``columns``: the table's column names -> format_type. The segment's timestamp column is the
    one its predicate (written by core/retention/apply.py as "... AND <col> < <cutoff> AND <col> in
    [<month>, ...)") compares. Needs TimeZone UTC in the transaction (month bounds are UTC).
    """
    if not conn.execute("SELECT to_regclass('drp.archive_segments') IS NOT NULL").fetchone()[0]:
        return sql.SQL("false")
    rows = conn.execute(
        "SELECT id, month, cutoff, predicate FROM drp.archive_segments WHERE table_name = %s AND tenant_id = %s"
        " AND state = ANY (%s) ORDER BY id", (table.name, str(clinic), list(ARCHIVED_STATES))).fetchall()
    has_kept = conn.execute("SELECT to_regclass('drp.archive_kept') IS NOT NULL").fetchone()[0]
    terms = []
    for seg_id, month, cutoff, predicate in rows:
        ts = _segment_column(seg_id, predicate, columns, table.name)
        col, typ = sql.Identifier(alias, ts), sql.SQL(columns[ts])
        m0, m1 = month_bounds(month if isinstance(month, date) else date.fromisoformat(str(month)))
        term = sql.SQL("({col} >= CAST({m0}::timestamptz AS {t}) AND {col} < CAST({m1}::timestamptz AS {t})"
                       " AND {col} < CAST({cut}::timestamptz AS {t})").format(
            col=col, t=typ, m0=sql.Literal(m0), m1=sql.Literal(m1), cut=sql.Literal(cutoff))
        if has_kept and pk:
            term = sql.SQL("{} AND {} NOT IN (SELECT k.pk FROM drp.archive_kept AS k WHERE k.segment_id = {})").format(
                term, pk_text(list(pk), alias), sql.Literal(seg_id))
        terms.append(sql.SQL("{})").format(term))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(terms)) if terms else sql.SQL("false")


def _segment_column(seg_id: str, predicate: str, columns: dict[str, str], table: str) -> str:
    found = [c for c in columns if f" AND {c} < " in predicate and f" AND {c} in [" in predicate]
    if len(found) != 1:
        raise ArchiveJournalError(
            f"retention segment {seg_id} of {table} does not say which timestamp column it archived by "
            f"(predicate {predicate!r}): rows it deleted cannot be told from rows deleted by mistake",
            fix="restore that table's rows with --into-schema and pick them by hand, or exclude the table")
    return found[0]
