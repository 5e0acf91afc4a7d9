"""Dry-run: run the pending migrations for real, statement by statement, record locks and times, undo.

On the target: every pending migration in ONE transaction, pg_locks of our own backend read
after each statement (exact: a transaction keeps its locks to the end), then ROLLBACK. The
locks are real, so lock_timeout applies and the run holds the advisory lock like an apply.

A migration marked `-- drp:no-transaction` cannot be rolled back, so when one is pending the
whole dry-run happens on a throwaway cluster restored from the newest backup (restore_dryrun.py);
there the locks of statements outside a transaction are sampled from a second connection.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from dr_pipelines.core.migrate.apply import ApplyOptions, Log, first_line, set_timeouts
from dr_pipelines.core.migrate.files import Migration
from dr_pipelines.core.migrate.fingerprint import Statement
from dr_pipelines.core.migrate.tracking import APPLICATION_NAME, applied, runner_lock
from dr_pipelines.core.migrate.validate import compare, refuse_on_drift
from dr_pipelines.core.pg.connect import connect

# Relation locks of one backend on tables, views and sequences (index locks follow their table's and
# only add noise), named; a relation created and dropped within the run has no name left.
OWN_LOCKS = """
SELECT coalesce(n.nspname || '.' || c.relname, 'relation ' || l.relation::text) AS relation, l.mode
FROM pg_locks l
LEFT JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = %s AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema')
  AND coalesce(n.nspname, '') NOT LIKE 'pg_toast%%'
  AND coalesce(c.relkind, 'r') NOT IN ('i', 'I')
"""


@dataclass(frozen=True)
class Lock:
    relation: str
    mode: str  # as pg_locks names it, e.g. AccessExclusiveLock


@dataclass
class StatementRun:
    migration: str
    index: int
    line: int
    sql: str
    seconds: float
    locks: list[Lock]  # taken by this statement (not held already by an earlier one in the run)
    transactional: bool = True


@dataclass
class DryRunReport:
    where: str  # "target" or "restore of backup <id>"
    migrations: list[str]
    statements: list[StatementRun] = field(default_factory=list)
    error: str | None = None  # the statement that failed, and why
    rolled_back: bool = True  # False on a throwaway restore (thrown away instead)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.statements)

    def locks_by_relation(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for s in self.statements:
            for lock in s.locks:
                modes = out.setdefault(lock.relation, [])
                if lock.mode not in modes:
                    modes.append(lock.mode)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"where": self.where, "ok": self.ok, "error": self.error, "rolled_back": self.rolled_back,
                "seconds": round(self.seconds, 4), "migrations": self.migrations,
                "locks": self.locks_by_relation(), "statements": [asdict(s) for s in self.statements]}


def pending_for(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Pending migrations of the database conn is on; drift (edited, missing, out of order) refused."""
    record = applied(conn)
    refuse_on_drift(compare(migrations, record))
    return [m for m in migrations if m.version not in record]


def dry_run_on_target(dsn: str, migrations: list[Migration], options: ApplyOptions = ApplyOptions(),
                      *, log: Log | None = None) -> DryRunReport:
    """Every pending migration in one transaction on dsn, locks and times recorded, then rolled back."""
    with connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
        with runner_lock(conn, wait_seconds=options.runner_wait_s):
            todo = pending_for(conn, migrations)
            report = DryRunReport("target", [m.name for m in todo])
            pid = conn.info.backend_pid
            with conn.transaction():
                set_timeouts(conn, options, local=True)
                held: set[Lock] = set()
                for m in todo:
                    if log:
                        log(f"dry-run {m.name}")
                    if not run_statements(conn, pid, m, held, report):
                        break
                raise psycopg.Rollback()  # the transaction block rolls back and swallows it
    return report


def run_statements(conn: psycopg.Connection, pid: int, m: Migration, held: set[Lock], report: DryRunReport) -> bool:
    """Run m's statements inside the caller's transaction; False (and report.error) on the first failure."""
    for stmt in m.statements:
        seconds = _timed(conn, m, stmt, report)
        if seconds is None:
            return False
        now = {Lock(r, mode) for r, mode in conn.execute(OWN_LOCKS, (pid,)).fetchall()}
        _record(report, m, stmt, seconds, now - held, transactional=True)
        held |= now
    return True


def run_outside_transaction(conn: psycopg.Connection, sampler_dsn: str, m: Migration, report: DryRunReport) -> bool:
    """Run a no-transaction migration statement by statement, sampling its locks from a second connection."""
    for stmt in m.statements:
        with LockSampler(sampler_dsn, conn.info.backend_pid) as sampler:
            seconds = _timed(conn, m, stmt, report)
        if seconds is None:
            return False
        _record(report, m, stmt, seconds, sampler.seen, transactional=False)
    return True


def _timed(conn: psycopg.Connection, m: Migration, stmt: Statement, report: DryRunReport) -> float | None:
    """Seconds the statement took, or None with report.error set."""
    started = time.monotonic()
    try:
        conn.execute(stmt.sql)
    except psycopg.Error as exc:
        report.error = f"{m.name} line {stmt.line}: {first_line(exc)}"
        return None
    return time.monotonic() - started


def _record(report: DryRunReport, m: Migration, stmt: Statement, seconds: float, locks: set[Lock], *,
            transactional: bool) -> None:
    report.statements.append(StatementRun(m.name, stmt.index, stmt.line, _short(stmt.sql), seconds,
                                          sorted(locks, key=lambda lk: (lk.relation, lk.mode)), transactional))


class LockSampler:
    """Polls pg_locks for one backend every few milliseconds while a statement runs outside a transaction."""

    def __init__(self, dsn: str, pid: int, interval: float = 0.005) -> None:
        self.dsn, self.pid, self.interval = dsn, pid, interval
        self.seen: set[Lock] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn = connect(dsn, autocommit=True, application_name="drp migrate dry-run sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= {Lock(r, mode) for r, mode in self._conn.execute(OWN_LOCKS, (self.pid,)).fetchall()}
            self._stop.wait(self.interval)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def _short(sql: str, limit: int = 200) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
