"""Dry-run: on the target in one rolled-back transaction (no trace), or on a throwaway restore."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.dryrun import Lock, dry_run_on_target
from dr_pipelines.core.migrate.files import discover
from dr_pipelines.core.migrate.runner import migrate
from dr_pipelines.core.migrate.service import dry_run
from dr_pipelines.core.pg.schema import schema_ddl
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.storage import open_storage
from dr_pipelines.demo.schema import MIGRATIONS_DIR
from dr_pipelines_tests.support.backup import Keys, own_checksums
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.migrations import BASIC, tracking_rows, write_migrations
from dr_pipelines_tests.support.verification import leftover_clusters, work_dir_under

# A migration on the demo schema that rewrites, indexes and updates: every kind of trace a dry-run must undo.
ALTER_APPOINTMENTS = {
    "0007_appointment_room.sql": "ALTER TABLE appointments ADD COLUMN room text NOT NULL DEFAULT 'A';\n"
                                 "UPDATE appointments SET room = 'B' WHERE id % 2 = 0;\n"
                                 "CREATE INDEX appointments_room_idx ON appointments (clinic_id, room);\n"
                                 "CREATE TABLE rooms (clinic_id bigint REFERENCES clinics, name text);\n",
    "0007_appointment_room.down.sql": "DROP TABLE rooms;\nALTER TABLE appointments DROP COLUMN room;\n",
}
CONCURRENT_INDEX = {
    "0004_accounts_name_idx.sql": "-- drp:no-transaction\n"
                                  "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_name_idx ON accounts (name);\n",
}


def demo_dir_with(tmp_path: Path, extra: dict[str, str]) -> Path:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    return write_migrations(directory, extra)


def test_dry_run_on_target_leaves_no_trace_and_reports_real_locks(demo_db: str, tmp_path: Path) -> None:
    migrations = discover(demo_dir_with(tmp_path, ALTER_APPOINTMENTS))
    schema, content, tracked = schema_ddl(demo_db), own_checksums(demo_db), tracking_rows(demo_db)

    report = dry_run_on_target(demo_db, migrations)

    assert report.ok and report.rolled_back and report.migrations == ["0007_appointment_room.sql"]
    assert [s.line for s in report.statements] == [1, 2, 3, 4]
    assert all(s.seconds >= 0 for s in report.statements)
    alter, update, index, create = report.statements
    assert Lock("public.appointments", "AccessExclusiveLock") in alter.locks
    assert update.locks == [Lock("public.appointments", "RowExclusiveLock")]  # pg_locks lists each mode taken
    assert Lock("public.clinics", "ShareRowExclusiveLock") in create.locks  # the new FK locks its target
    assert "AccessExclusiveLock" in report.locks_by_relation()["public.appointments"]
    assert index.sql.startswith("CREATE INDEX appointments_room_idx")

    assert schema_ddl(demo_db) == schema
    assert own_checksums(demo_db) == content
    assert tracking_rows(demo_db) == tracked


def test_dry_run_reports_the_failing_statement(demo_db: str, tmp_path: Path) -> None:
    migrations = discover(demo_dir_with(tmp_path, {"0007_bad.sql": "ALTER TABLE patients ADD COLUMN x int;\n"
                                                                    "ALTER TABLE patients ADD COLUMN x int;\n"}))
    schema = schema_ddl(demo_db)
    report = dry_run_on_target(demo_db, migrations)
    assert not report.ok and report.error is not None
    assert report.error.startswith("0007_bad.sql line 2:") and "already exists" in report.error
    assert schema_ddl(demo_db) == schema


def test_no_transaction_dry_run_needs_a_backup_then_uses_a_throwaway_restore(
    fresh_db: str, tmp_path: Path, work_base: Path
) -> None:
    keys = Keys.make(tmp_path / "keys")
    storage_dir, work_dir = tmp_path / "storage", work_dir_under(work_base)
    settings = load_settings(env=drp_env(source=fresh_db, storage=storage_dir, keys=keys, identity=True, work=work_dir))
    directory = write_migrations(tmp_path / "migrations", {k: v for k, v in BASIC.items() if not k.startswith("0003")})
    migrate(fresh_db, directory)
    write_migrations(directory, {"0003_orders.sql": BASIC["0003_orders.sql"], **CONCURRENT_INDEX})
    migrations = discover(directory)
    with pytest.raises(MigrationError, match="holds no restorable backup") as info:
        dry_run(settings, migrations)
    assert "drp backup run" in str(info.value)

    run_logical_backup(fresh_db, open_storage(str(storage_dir)), [keys.recipient])
    schema = schema_ddl(fresh_db)
    events: list[str] = []
    report = dry_run(settings, migrations, log=events.append)
    assert report.ok, report.error
    assert report.where.startswith("restore of backup ") and not report.rolled_back
    assert report.migrations == ["0003_orders.sql", "0004_accounts_name_idx.sql"]
    concurrent = report.statements[-1]
    assert not concurrent.transactional and concurrent.sql.startswith("CREATE INDEX CONCURRENTLY")
    assert any("cannot run in a transaction" in e for e in events)
    assert schema_ddl(fresh_db) == schema  # the target was never touched
    assert leftover_clusters(work_dir) == []
