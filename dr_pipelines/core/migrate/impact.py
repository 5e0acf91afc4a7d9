"""How long a migration's locks would block the application, from the live table sizes and calibrated speeds.

Lint says which lock each statement takes and what work it does under it (rewrite, index
build, scan, foreign-key validation); here that meets the database: rows (pg_class.reltuples,
else pg_stat_all_tables.n_live_tup), heap and total size (a partitioned table counts all its
partitions), and throughputs measured on this machine by ``benchmarks/migration_locks.py
--calibrate``. In a transactional migration a lock is held until the file commits, so a
statement's estimate includes the statements after it. Read-only: nothing is executed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pglast
import psycopg
from pglast.enums import AlterTableType

from dr_pipelines.core.migrate import locks
from dr_pipelines.core.migrate.lint import LintReport
from dr_pipelines.core.migrate.syntax import StatementInfo, type_parts

MB = 2**20


@dataclass(frozen=True)
class Calibration:
    """Throughputs in MB (2**20 bytes) per second, measured by benchmarks/migration_locks.py --calibrate."""

    rewrite_mb_s: float = 60.0  # table + TOAST + indexes written per second (ALTER TYPE, VACUUM FULL, CLUSTER)
    index_build_mb_s: float = 81.0  # table MB read per second while building one B-tree index
    scan_mb_s: float = 600.0  # table MB per second for a validating scan (SET NOT NULL, CHECK)
    fk_validation_mb_s: float = 650.0  # referencing + referenced table MB per second (FOREIGN KEY validation)
    measured: str = "defaults"  # where the numbers come from


# The defaults above: four runs of benchmarks/migration_locks.py on the 1 GB demo, 2026-11-27, reference
# machine (2 cores, PostgreSQL 15, load 3-4 from other jobs), rounded toward the slower runs (an estimate
# that is too low is the worse error), checked by a fifth. docs/benchmarks.md "Migration lock impact".
DEFAULT_CALIBRATION = Calibration(measured="benchmarks/migration_locks.py, 2026-11-27, 2 cores")


@dataclass(frozen=True)
class ImpactThresholds:
    warn_seconds: float = 1.0
    error_seconds: float = 10.0


@dataclass(frozen=True)
class Impact:
    statement_index: int
    table: str
    lock: str
    rows: int  # live estimate
    bytes: int  # total size for a rewrite or a catalog-only change, table (heap + TOAST) size for scans
    seconds: float  # estimated time the lock is held
    blocks: str  # "reads and writes" | "writes" | "nothing"
    severity: str  # "info" | "warning" | "error"
    text: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Size:
    exists: bool
    rows: int = 0
    table_bytes: int = 0
    total_bytes: int = 0
    indexes: int = 0


_SIZE_SQL = """
WITH r AS (SELECT to_regclass(%s) AS oid)
SELECT count(*),
       coalesce(sum(CASE WHEN c.reltuples > 0 THEN c.reltuples ELSE coalesce(s.n_live_tup, 0) END), 0)::bigint,
       coalesce(sum(pg_table_size(t.relid)), 0)::bigint,
       coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint,
       coalesce(sum((SELECT count(*) FROM pg_index i WHERE i.indrelid = t.relid)), 0)::int
FROM (  -- the leaves of a partitioned table, else the relation itself
    SELECT p.relid FROM r, pg_partition_tree(r.oid) p WHERE p.isleaf
    UNION
    SELECT r.oid FROM r WHERE r.oid IS NOT NULL AND NOT EXISTS (SELECT FROM pg_partition_tree(r.oid))
) t
JOIN pg_class c ON c.oid = t.relid
LEFT JOIN pg_stat_all_tables s ON s.relid = t.relid
"""

_COLUMN_TYPE_SQL = """
SELECT t.typname, a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped
"""

_NOT_NULL_CHECK_SQL = """
SELECT EXISTS (SELECT FROM pg_constraint WHERE conrelid = to_regclass(%(t)s) AND contype = 'c' AND convalidated
               AND pg_get_constraintdef(oid) = format('CHECK ((%%s IS NOT NULL))', quote_ident(%(c)s)))
"""
_SCANNING = (AlterTableType.AT_AddConstraint, AlterTableType.AT_ValidateConstraint, AlterTableType.AT_AttachPartition)

_WORK_WORDS = {"rewrite": "full rewrite", "index-build": "index build", "scan": "full scan",
               "fk-validation": "foreign-key validation"}


def estimate(conn: psycopg.Connection, report: LintReport, thresholds: ImpactThresholds | None = None,
             calibration: Calibration | None = None) -> list[Impact]:
    """One Impact per (statement, existing table it locks), in statement order."""
    thresholds = thresholds or ImpactThresholds()
    cal = calibration or DEFAULT_CALIBRATION
    sizes: dict[str, _Size] = {}

    def size(table: str) -> _Size:
        if table not in sizes:
            sizes[table] = _size(conn, table)
        return sizes[table]

    plans = []
    for info in report.statements:
        if not info.lock or not info.tables:
            continue
        work, notes = _live_work(conn, info)
        own = sum(_seconds(w, info, size, cal) for w in work)
        plans.append((info, work, notes, own))
    impacts: list[Impact] = []
    for i, (info, work, notes, own) in enumerate(plans):
        later = sum(p[3] for p in plans[i + 1:]) if report.transactional else 0.0
        for table in info.tables:
            impacts.append(_impact(info, table, size(table), work, notes, own, later, thresholds))
    return impacts


def _size(conn: psycopg.Connection, table: str) -> _Size:
    relations, rows, table_bytes, total_bytes, indexes = conn.execute(_SIZE_SQL, (_regclass_text(table),)).fetchone()
    return _Size(relations > 0, int(rows), int(table_bytes), int(total_bytes), int(indexes))


def _regclass_text(table: str) -> str:
    """'public.appointments' -> '"public"."appointments"': to_regclass must not fold or split the names again."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


def _seconds(work: str, info: StatementInfo, size, cal: Calibration) -> float:  # type: ignore[no-untyped-def]
    main = size(info.tables[0])
    if work == "rewrite":
        return main.total_bytes / MB / cal.rewrite_mb_s
    if work == "index-build":
        builds = max(1, main.indexes) if info.kind == "REINDEX" else 1
        return builds * main.table_bytes / MB / cal.index_build_mb_s
    if work == "fk-validation":
        referenced = size(info.tables[1]).table_bytes if len(info.tables) > 1 else 0
        return (main.table_bytes + referenced) / MB / cal.fk_validation_mb_s
    return main.table_bytes / MB / cal.scan_mb_s


def _live_work(conn: psycopg.Connection, info: StatementInfo) -> tuple[list[str], list[str]]:
    """Lint's work list, corrected by what only the live database knows.

    An ALTER COLUMN TYPE that may widen becomes a rewrite if the live type is not widened; a SET NOT
    NULL whose column already has a validated CHECK (col IS NOT NULL) needs no scan (PostgreSQL 12+).
    """
    work = list(info.work)
    notes: list[str] = []
    if info.kind != "ALTER TABLE":
        return work, notes
    table = _regclass_text(info.tables[0])
    cmds = pglast.parse_sql(info.sql)[0].stmt.cmds or ()
    for cmd in cmds:
        if cmd.subtype != AlterTableType.AT_AlterColumnType or "rewrite" in info.work:
            continue
        new = type_parts(cmd.def_.typeName)
        row = conn.execute(_COLUMN_TYPE_SQL, (table, cmd.name)).fetchone()
        if row and not _widens(row[0], row[1], *new):
            work.append("rewrite")
            notes.append(f"{cmd.name} is {row[0]} now, so {new[0]} is not a widening")
        elif row:
            notes.append(f"{cmd.name}: {row[0]} to {new[0]} widens without a rewrite")
    set_not_null = [c.name for c in cmds if c.subtype == AlterTableType.AT_SetNotNull]
    other_scans = any(c.subtype in _SCANNING for c in cmds)
    if "scan" in work and set_not_null and not other_scans and all(
            conn.execute(_NOT_NULL_CHECK_SQL, {"t": table, "c": column}).fetchone()[0] for column in set_not_null):
        work.remove("scan")
        notes.append("a validated CHECK (... IS NOT NULL) spares the scan")
    return list(dict.fromkeys(work)), notes


def _widens(old: str, old_mod: int, new: str, new_mods: tuple[int, ...]) -> bool:
    """True if ALTER COLUMN TYPE old -> new is binary compatible with no tighter limit (no rewrite, no scan)."""
    if new == "text":
        return old in ("text", "varchar")
    if new in ("varchar", "varbit"):
        header = 4 if new == "varchar" else 0  # varchar's typmod is n + VARHDRSZ, varbit's is n
        if old != new and not (old == "text" and new == "varchar"):
            return False
        return not new_mods or (old == new and old_mod >= 0 and new_mods[0] >= old_mod - header)
    if new == "numeric" and old == "numeric":
        if not new_mods:
            return True
        if old_mod < 0:
            return False
        precision, scale = ((old_mod - 4) >> 16) & 0xFFFF, (old_mod - 4) & 0xFFFF
        new_scale = new_mods[1] if len(new_mods) > 1 else 0
        return new_scale == scale and new_mods[0] >= precision
    return False


def _impact(info: StatementInfo, table: str, size: _Size, work: list[str], notes: list[str], own: float,
            later: float, thresholds: ImpactThresholds) -> Impact:
    lock = info.lock_on(table) or locks.ACCESS_SHARE
    blocks = locks.blocks(lock)
    held = own + later
    if not size.exists:
        return Impact(info.index, table, lock, 0, 0, 0.0, blocks, "info",
                      f"{lock} on {table}: not in the database yet (created by an earlier pending migration?)")
    nbytes = size.table_bytes if work and "rewrite" not in work else size.total_bytes
    head = f"{lock} on {table} ({_rows(size.rows)} rows, {_bytes(nbytes)})"
    extra = f"; {'; '.join(notes)}" if notes else ""
    until_commit = f", held until the migration commits (with the statements after it: {_duration(held)})" \
        if later > 0 else ""
    if blocks == "nothing":
        severity = "info"
        text = f"{head}, {_what(work)}: reads and writes go on; takes {_duration(held)}{extra}"
    elif not work:
        severity = _severity(held, thresholds)
        text = (f"{head}, catalog change only: {blocks} blocked only briefly, but it waits behind running queries "
                f"and they queue behind it{until_commit}{extra}")
    else:
        severity = _severity(held, thresholds)
        text = f"{head}, {_what(work)}: {blocks} blocked for {_duration(own)}{until_commit}{extra}"
    return Impact(info.index, table, lock, size.rows, nbytes, held, blocks, severity, text)


def _severity(seconds: float, t: ImpactThresholds) -> str:
    return "error" if seconds >= t.error_seconds else "warning" if seconds >= t.warn_seconds else "info"


def _what(work: list[str]) -> str:
    return " + ".join(_WORK_WORDS.get(w, w) for w in work) or "catalog change only"


def _rows(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}k" if n >= 10_000 else str(n)


def _bytes(n: int) -> str:
    if n >= 10 * MB:
        return f"{n / MB:.0f} MB"
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.0f} kB"


def _duration(seconds: float) -> str:
    """'roughly 12 s', 'roughly 4 min', 'under 0.1 s'."""
    if seconds >= 120:
        return f"roughly {seconds / 60:.0f} min"
    if seconds < 0.1:
        return "under 0.1 s"
    return f"roughly {seconds:.0f} s" if seconds >= 10 else f"roughly {seconds:.1f} s"

