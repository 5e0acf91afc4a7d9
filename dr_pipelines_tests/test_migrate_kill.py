"""An apply killed with SIGKILL mid-way leaves the last fully applied version and a consistent tracking table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from dr_pipelines.core.migrate.runner import migrate
from dr_pipelines_tests.support.migrations import BASIC, table_exists, tracking_rows, write_migrations
from dr_pipelines_tests.support.procs import wait_for

# Migration 2 sleeps only when the session says so (PGOPTIONS), so the re-run is quick with the same file.
SLOW_SECOND = {
    **BASIC,
    "0002_accounts_email.sql": BASIC["0002_accounts_email.sql"]
    + "SELECT pg_sleep(CASE WHEN current_setting('drp_test.slow', true) = 'on' THEN 30 ELSE 0 END);\n",
}


def _sleeping_backend(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                           " AND application_name = 'drp migrate' AND query LIKE '%pg_sleep%'").fetchone()
    return row[0] if row else None


def _backends_gone(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()


def test_apply_killed_during_second_migration(fresh_db: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "migrations", SLOW_SECOND)
    code = "import sys; from dr_pipelines.core.migrate.runner import migrate; migrate(sys.argv[1], sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", code, fresh_db, str(directory)],
                            env={**os.environ, "PGOPTIONS": "-c drp_test.slow=on"})
    try:
        pid = wait_for(lambda: _sleeping_backend(fresh_db), timeout=30, what="migration 2 running", interval=0.1)
        assert table_exists(fresh_db, "accounts")  # migration 1 committed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The orphaned backend sleeps on until it next talks to its client: end it as an operator would.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: _backends_gone(fresh_db, pid), timeout=10, what="orphaned backend gone", interval=0.1)

    rows = tracking_rows(fresh_db)
    assert [r["version"] for r in rows] == [1]  # the last fully applied version
    with psycopg.connect(fresh_db) as conn:  # nothing of migration 2 survived
        cols = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns"
                                           " WHERE table_name = 'accounts'").fetchall()}
    assert cols == {"id", "name"}

    assert [m.version for m in migrate(fresh_db, directory)] == [2, 3]  # the advisory lock died with the session
    assert [r["version"] for r in tracking_rows(fresh_db)] == [1, 2, 3]
