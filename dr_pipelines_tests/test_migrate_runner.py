"""The runner on real PostgreSQL: tracking columns, in-place upgrade, validate/baseline/repair, locks, rollback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.apply import ApplyOptions
from dr_pipelines.core.migrate.files import discover
from dr_pipelines.core.migrate.fingerprint import fingerprint, split_statements
from dr_pipelines.core.migrate.rollback import rollback
from dr_pipelines.core.migrate.runner import baseline, migrate, repair, status
from dr_pipelines.core.migrate.tracking import ADVISORY_LOCK_KEY
from dr_pipelines.core.pg.schema import schema_ddl
from dr_pipelines_tests.support.migrations import BASIC, table_exists, tracking_rows, versions, write_migrations

FAST_RETRY = ApplyOptions(lock_timeout_s=0.2, lock_retries=2, backoff_s=0.1)


@pytest.fixture
def mig_dir(tmp_path: Path) -> Path:
    return write_migrations(tmp_path / "migrations", BASIC)


# -- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_ignores_formatting_but_not_values() -> None:
    base = "CREATE TABLE t (id int DEFAULT 0);\nSELECT 1;"
    assert fingerprint(base) == fingerprint("-- a comment\ncreate   table t(\n  id INT default 0\n) ;  select 1")
    assert fingerprint(base) != fingerprint("CREATE TABLE t (id int DEFAULT 1);\nSELECT 1;")
    assert [(s.index, s.line, s.sql) for s in split_statements("SELECT 1;\n\n-- x\nSELECT 'a;b';")] == [
        (0, 1, "SELECT 1"), (1, 4, "SELECT 'a;b'")]
    with pytest.raises(MigrationError, match="does not parse at line 2"):
        split_statements("SELECT 1;\nSELEC 2;", "0009_bad.sql")


# -- apply and tracking --------------------------------------------------------------------------


def test_apply_records_fingerprint_user_duration_backup(fresh_db: str, mig_dir: Path) -> None:
    events: list[str] = []
    done = migrate(fresh_db, mig_dir, options=ApplyOptions(backup_id="20260101T000000.000Z", applied_by="alice"),
                   log=events.append)
    assert [m.version for m in done] == [1, 2, 3]
    assert events[0] == "applying 0001_accounts.sql (1/3)"
    rows = tracking_rows(fresh_db)
    files = discover(mig_dir)
    assert [(r["sha256"], r["fingerprint"]) for r in rows] == [(m.sha256, m.fingerprint) for m in files]
    assert {r["applied_by"] for r in rows} == {"alice"} and {r["backup_id"] for r in rows} == {"20260101T000000.000Z"}
    assert all(r["duration_ms"] >= 0 and r["applied_at"] and not r["baselined"] for r in rows)
    assert migrate(fresh_db, mig_dir) == []  # re-run: nothing pending
    st = status(fresh_db, files)
    assert st.ok and st.current_version == 3 and st.as_dict()["pending"] == []


def test_old_tracking_table_is_upgraded_in_place(fresh_db: str, mig_dir: Path) -> None:
    first = discover(mig_dir)[0]
    with psycopg.connect(fresh_db) as conn:  # the layout the first runner created
        conn.execute("CREATE SCHEMA drp; CREATE TABLE drp.schema_migrations (version integer PRIMARY KEY,"
                     " description text NOT NULL, sha256 text NOT NULL, applied_by text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL)")
        conn.execute(first.sql)
        conn.execute("INSERT INTO drp.schema_migrations VALUES (1, 'accounts', %s, 'old', now(), 5)", (first.sha256,))
    assert [m.version for m in migrate(fresh_db, mig_dir)] == [2, 3]
    rows = tracking_rows(fresh_db)
    assert rows[0]["applied_by"] == "old" and rows[0]["fingerprint"] == first.fingerprint  # filled from the file
    assert rows[0]["backup_id"] is None and rows[0]["baselined"] is False


def test_pending_list_respects_target_version(fresh_db: str, mig_dir: Path) -> None:
    assert [m.version for m in migrate(fresh_db, mig_dir, options=ApplyOptions(target_version=2))] == [1, 2]
    assert [m.version for m in status(fresh_db, discover(mig_dir)).pending] == [3]


def test_failed_migration_leaves_previous_version(fresh_db: str, mig_dir: Path) -> None:
    (mig_dir / "0003_orders.sql").write_text("CREATE TABLE orders (id bigint);\nSELECT no_such_column FROM orders;\n")
    with pytest.raises(MigrationError, match=r"0003_orders.sql failed: .*no_such_column") as info:
        migrate(fresh_db, mig_dir)
    assert "nothing of this migration was applied" in str(info.value)
    assert versions(fresh_db) == [1, 2] and not table_exists(fresh_db, "orders")


# -- validate / baseline / repair ----------------------------------------------------------------


def test_validate_finds_edited_formatting_missing_out_of_order(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir)
    (mig_dir / "0001_accounts.sql").write_text(BASIC["0001_accounts.sql"].replace("(2, 'b')", "(2, 'c')"))
    (mig_dir / "0002_accounts_email.sql").write_text("-- reviewed\n" + BASIC["0002_accounts_email.sql"].upper()
                                                     .replace("ACCOUNTS_EMAIL_IDX", "accounts_email_idx"))
    (mig_dir / "0003_orders.sql").unlink()
    (mig_dir / "0003_orders.down.sql").unlink()
    write_migrations(mig_dir, {"0004_late.sql": "SELECT 1;\n"})
    with psycopg.connect(fresh_db) as conn:  # version 5 applied elsewhere: 4 is now out of order
        conn.execute("INSERT INTO drp.schema_migrations (version, description, sha256, applied_by, duration_ms)"
                     " VALUES (5, 'new', repeat('0', 64), 'bob', 1)")
    drift = {d.version: d.kind for d in status(fresh_db, discover(mig_dir)).drift}
    assert drift == {1: "edited", 2: "formatting_only", 3: "missing", 4: "out_of_order", 5: "missing"}
    with pytest.raises(MigrationError, match="0001_accounts.sql was edited after it was applied"):
        migrate(fresh_db, mig_dir)


def test_repair_accepts_reviewed_changes_and_records_who(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir)
    edited = mig_dir / "0001_accounts.sql"
    edited.write_text("-- now with a comment\n" + BASIC["0001_accounts.sql"])
    assert [d.kind for d in status(fresh_db, discover(mig_dir)).drift] == ["formatting_only"]
    with pytest.raises(MigrationError, match=r"not applied: \[7\]"):
        repair(fresh_db, discover(mig_dir), [7])
    repair(fresh_db, discover(mig_dir), [1], by="carol")
    row = tracking_rows(fresh_db)[0]
    assert row["repaired_by"] == "carol" and row["repaired_at"] is not None
    assert row["sha256"] == discover(mig_dir)[0].sha256
    assert status(fresh_db, discover(mig_dir)).ok


def test_baseline_adopts_an_existing_database(fresh_db: str, mig_dir: Path) -> None:
    files = discover(mig_dir)
    with psycopg.connect(fresh_db) as conn:  # schema made by hand up to version 2
        for m in files[:2]:
            conn.execute(m.sql)
    with pytest.raises(MigrationError, match="no migration file with version 9"):
        baseline(fresh_db, files, 9)
    assert [m.version for m in baseline(fresh_db, files, 2, by="dave")] == [1, 2]
    assert [(r["version"], r["baselined"], r["applied_by"]) for r in tracking_rows(fresh_db)] == [
        (1, True, "dave"), (2, True, "dave")]
    assert [m.version for m in migrate(fresh_db, mig_dir)] == [3]
    with pytest.raises(MigrationError, match="already tracks migrations"):
        baseline(fresh_db, files, 2)


# -- concurrency and locks -----------------------------------------------------------------------


def test_second_runner_is_refused_not_queued(fresh_db: str, mig_dir: Path) -> None:
    with psycopg.connect(fresh_db, autocommit=True, application_name="other runner") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        started = time.monotonic()
        with pytest.raises(MigrationError, match="another migration runner.*'other runner'"):
            migrate(fresh_db, mig_dir, options=ApplyOptions(runner_wait_s=0.3))
        assert time.monotonic() - started < 5
    assert migrate(fresh_db, mig_dir)  # released: runs


def test_lock_timeout_gives_up_after_retries(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir, options=ApplyOptions(target_version=1))
    events: list[str] = []
    with psycopg.connect(fresh_db) as blocker:
        blocker.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")  # a long-running reader
        with pytest.raises(MigrationError, match="0002_accounts_email.sql gave up after 3 attempts") as info:
            migrate(fresh_db, mig_dir, options=FAST_RETRY, log=events.append)
    assert "lock_timeout 0.2s" in str(info.value) and "nothing of it was applied" in str(info.value)
    assert sum("lock not available" in e for e in events) == 2
    assert versions(fresh_db) == [1]


def test_lock_timeout_retry_succeeds_when_lock_is_released(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir, options=ApplyOptions(target_version=1))
    blocker = psycopg.connect(fresh_db)
    blocker.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")
    release = threading.Timer(0.4, blocker.rollback)
    release.start()
    try:
        events: list[str] = []
        done = migrate(fresh_db, mig_dir, options=ApplyOptions(lock_timeout_s=0.2, lock_retries=4, backoff_s=0.2),
                       log=events.append)
    finally:
        release.join()
        blocker.close()
    assert [m.version for m in done] == [2, 3]
    assert any("lock not available" in e for e in events)


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_restores_previous_schema_exactly(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir, options=ApplyOptions(target_version=1))
    at_version_1 = schema_ddl(fresh_db)
    migrate(fresh_db, mig_dir)
    assert schema_ddl(fresh_db) != at_version_1
    undone = rollback(fresh_db, discover(mig_dir), 1)
    assert [m.version for m in undone] == [3, 2]
    assert schema_ddl(fresh_db) == at_version_1
    assert versions(fresh_db) == [1]


def test_rollback_refused_when_a_down_script_is_missing(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir)
    (mig_dir / "0002_accounts_email.down.sql").unlink()
    before = schema_ddl(fresh_db)
    with pytest.raises(MigrationError, match="no down script for 0002_accounts_email.sql") as info:
        rollback(fresh_db, discover(mig_dir), 0)
    assert "nothing was rolled back" in str(info.value)
    assert schema_ddl(fresh_db) == before and versions(fresh_db) == [1, 2, 3]
    assert [m.version for m in rollback(fresh_db, discover(mig_dir), 2)] == [3]  # 3's down exists


def test_no_transaction_migration_runs_statement_by_statement(fresh_db: str, mig_dir: Path) -> None:
    write_migrations(mig_dir, {
        "0004_orders_index.sql": "-- drp:no-transaction\nCREATE INDEX CONCURRENTLY orders_account_idx ON orders"
                                 " (account_id);\nCREATE INDEX CONCURRENTLY accounts_name_idx ON accounts (name);\n",
        "0004_orders_index.down.sql": "-- drp:no-transaction\nDROP INDEX CONCURRENTLY orders_account_idx;\n"
                                      "DROP INDEX CONCURRENTLY accounts_name_idx;\n",
    })
    assert [m.version for m in migrate(fresh_db, mig_dir)] == [1, 2, 3, 4]
    assert table_exists(fresh_db, "orders_account_idx")
    rollback(fresh_db, discover(mig_dir), 3)
    assert not table_exists(fresh_db, "orders_account_idx") and versions(fresh_db) == [1, 2, 3]


def test_statement_timeout_and_half_applied_no_transaction_migration(fresh_db: str, mig_dir: Path) -> None:
    migrate(fresh_db, mig_dir)
    write_migrations(mig_dir, {"0004_slow.sql": "SELECT pg_sleep(2);\n"})
    with pytest.raises(MigrationError, match="ran longer than statement_timeout 0.2s"):
        migrate(fresh_db, mig_dir, options=ApplyOptions(statement_timeout_s=0.2))
    (mig_dir / "0004_slow.sql").write_text("-- drp:no-transaction\nCREATE INDEX CONCURRENTLY accounts_name_idx ON "
                                           "accounts (name);\nCREATE INDEX CONCURRENTLY accounts_name_idx ON accounts (name);\n")
    with pytest.raises(MigrationError, match="0004_slow.sql failed at line 3: .*already exists") as info:
        migrate(fresh_db, mig_dir)
    assert "earlier statements are committed" in str(info.value)
    assert versions(fresh_db) == [1, 2, 3] and table_exists(fresh_db, "accounts_name_idx")
