"""Apply pending migrations: in order, one transaction each, under lock_timeout with retries.

A transactional migration that cannot get a lock within lock_timeout (SQLSTATE 55P03) is
rolled back whole and retried after an exponential backoff, so it never queues in front of
the application's queries for long. A non-transactional one (`-- drp:no-transaction`) runs
statement by statement with the same timeouts but is not retried: its earlier statements
are already committed, so a person must look (docs/migrations.md, "Apply safely").
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.files import Migration
from dr_pipelines.core.migrate.fingerprint import split_statements
from dr_pipelines.core.migrate.tracking import applied, runner_session
from dr_pipelines.core.migrate.validate import compare, refuse_on_drift

MigrationProgress = Callable[[Migration, float], None]  # after each migration: (migration, seconds)
Log = Callable[[str], None]  # human-readable events: starting, retrying


@dataclass(frozen=True)
class ApplyOptions:
    lock_timeout_s: float = 5.0  # how long one statement may wait for a lock before the attempt is abandoned
    lock_retries: int = 5  # attempts after the first, for transactional migrations
    backoff_s: float = 1.0  # first wait between attempts; doubles each time
    max_backoff_s: float = 30.0
    statement_timeout_s: float = 0.0  # 0 = no limit
    runner_wait_s: float = 0.0  # how long to wait for another runner's advisory lock
    target_version: int | None = None  # apply up to and including this version
    backup_id: str | None = None  # the pre-migration backup, recorded on every row of this run
    applied_by: str | None = None  # default: the OS user


def apply_pending(
    dsn: str,
    migrations: list[Migration],
    options: ApplyOptions = ApplyOptions(),
    *,
    progress: MigrationProgress | None = None,
    log: Log | None = None,
) -> list[Migration]:
    """Apply every pending migration (up to options.target_version) in order; returns what was applied."""
    done: list[Migration] = []
    with runner_session(dsn, wait_seconds=options.runner_wait_s) as (conn, record):
        fill_fingerprints(conn, migrations, record)
        drift = compare(migrations, record)
        refuse_on_drift(drift)
        todo = [m for m in migrations if m.version not in record
                and (options.target_version is None or m.version <= options.target_version)]
        for i, m in enumerate(todo, 1):
            if log:
                log(f"applying {m.name} ({i}/{len(todo)}{'' if m.transactional else ', no transaction'})")
            started = time.monotonic()
            if m.transactional:
                _apply_transactional(conn, m, options, log)
            else:
                _apply_statements(conn, m, options)
            done.append(m)
            if progress:
                progress(m, time.monotonic() - started)
    return done


def fill_fingerprints(conn: psycopg.Connection, migrations: list[Migration], record: dict) -> None:
    """Rows from before fingerprints existed get one, when the file is unchanged (same sha256)."""
    for m in migrations:
        row = record.get(m.version)
        if row is not None and row.fingerprint is None and row.sha256 == m.sha256:
            conn.execute("UPDATE drp.schema_migrations SET fingerprint = %s WHERE version = %s AND fingerprint IS NULL",
                         (m.fingerprint, m.version))
    record.update(applied(conn))


def set_timeouts(conn: psycopg.Connection, options: ApplyOptions, *, local: bool) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
                 (f"{int(options.lock_timeout_s * 1000)}ms", local, f"{int(options.statement_timeout_s * 1000)}ms", local))


def _apply_transactional(conn: psycopg.Connection, m: Migration, options: ApplyOptions, log: Log | None) -> None:
    def body() -> None:
        started = time.monotonic()
        conn.execute(m.sql)
        _record(conn, m, started, options)

    in_transaction_with_retries(conn, m.name, options, log, body)


def in_transaction_with_retries(conn: psycopg.Connection, name: str, options: ApplyOptions, log: Log | None,
                                body: Callable[[], None]) -> None:
    """Run body in one transaction under the timeouts; on 55P03 roll back, back off, retry."""
    attempts = options.lock_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                set_timeouts(conn, options, local=True)
                body()
            return
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == attempts:
                raise MigrationError(
                    f"{name} gave up after {attempts} attempts: a lock was not granted within "
                    f"lock_timeout {options.lock_timeout_s:g}s ({first_line(exc)}); nothing of it was applied",
                    fix="find the blocking session (`drp health`, pg_stat_activity) and retry when it is done, "
                        "or raise DRP_MIGRATION_LOCK_TIMEOUT / DRP_MIGRATION_LOCK_RETRIES",
                ) from None
            delay = min(options.backoff_s * 2 ** (attempt - 1), options.max_backoff_s)
            if log:
                log(f"  {name}: lock not available (attempt {attempt}/{attempts}), retrying in {delay:g}s")
            time.sleep(delay)
        except psycopg.Error as exc:
            raise failed(name, exc, options, committed=False) from None


def _apply_statements(conn: psycopg.Connection, m: Migration, options: ApplyOptions) -> None:
    started = time.monotonic()
    outside_transaction(conn, m.name, m.sql, options, lambda: _record(conn, m, started, options))


def outside_transaction(conn: psycopg.Connection, name: str, sql: str, options: ApplyOptions,
                        then: Callable[[], None]) -> None:
    """Run a no-transaction script statement by statement under the timeouts, then `then` in a transaction."""
    set_timeouts(conn, options, local=False)
    try:
        for n, stmt in enumerate(split_statements(sql, name)):
            try:
                conn.execute(stmt.sql)
            except psycopg.Error as exc:
                raise failed(name, exc, options, committed=n > 0, line=stmt.line) from None
        with conn.transaction():
            then()
    finally:
        if not conn.broken:
            conn.execute("RESET lock_timeout; RESET statement_timeout")


def failed(name: str, exc: psycopg.Error, options: ApplyOptions, *, committed: bool,
            line: int | None = None) -> MigrationError:
    where = f" at line {line}" if line else ""
    if isinstance(exc, psycopg.errors.QueryCanceled) and options.statement_timeout_s:
        reason = f"a statement ran longer than statement_timeout {options.statement_timeout_s:g}s"
    else:
        reason = first_line(exc)
    if committed:
        fix = ("this migration runs without a transaction and its earlier statements are committed: check the "
               "database, make the script idempotent (IF NOT EXISTS) or undo by hand, then re-run")
    else:
        fix = "fix the SQL (nothing of this migration was applied) and re-run"
    return MigrationError(f"{name} failed{where}: {reason}", fix=fix)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _record(conn: psycopg.Connection, m: Migration, started: float, options: ApplyOptions) -> None:
    conn.execute(
        "INSERT INTO drp.schema_migrations (version, description, sha256, fingerprint, applied_by, duration_ms,"
        " backup_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (m.version, m.description, m.sha256, m.fingerprint, options.applied_by or getpass.getuser(),
         int((time.monotonic() - started) * 1000), options.backup_id),
    )
