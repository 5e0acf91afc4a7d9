"""`drp migrate ...` as a person runs it: the installed entry point in subprocesses, real databases and storage."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.migrate.files import discover
from dr_pipelines.core.migrate.runner import MigrationStatus, status
from dr_pipelines.core.pg.schema import schema_ddl
from dr_pipelines.core.storage import open_storage
from dr_pipelines.demo.schema import MIGRATIONS_DIR
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.migrations import BASIC, tracking_rows, versions, write_migrations
from dr_pipelines_tests.test_backup_cli import assert_clean_error, ok, run


@pytest.fixture
def env(fresh_db: str, tmp_path: Path) -> dict[str, str]:
    keys = Keys.make(tmp_path / "keys")
    return drp_env(source=fresh_db, storage=tmp_path / "storage", keys=keys, work=tmp_path / "work",
                   migrations_dir=write_migrations(tmp_path / "migrations", BASIC))


def status_of(dsn: str, directory: Path) -> MigrationStatus:
    return status(dsn, discover(directory))


def drp_json(*args: str, env: dict[str, str]) -> object:
    return json.loads(ok(run("migrate", *args, "--json", env=env)).stdout)


def test_apply_with_backup_status_validate_rollback(env: dict[str, str], tmp_path: Path) -> None:
    fresh_db, directory = env["DRP_SOURCE_DSN"], Path(env["DRP_MIGRATIONS_DIR"])
    status = drp_json("status", env=env)
    assert status["current_version"] is None and [p["version"] for p in status["pending"]] == [1, 2, 3]

    applied = ok(run("migrate", "apply", "--target", "2", env=env))
    assert "applying 0001_accounts.sql (1/2)" in applied.stderr and "done 0002_accounts_email.sql" in applied.stderr
    backup_id = list_backups(open_storage(env["DRP_STORAGE_URL"]))[-1].id
    assert f"pre-migration backup: {backup_id}" in applied.stdout
    assert {r["backup_id"] for r in tracking_rows(fresh_db)} == {backup_id}
    at_2 = schema_ddl(fresh_db)

    outcome = drp_json("apply", "--no-backup", env=env)
    assert outcome == {"applied": ["0003_orders.sql"], "backup_id": None, "lint_errors_allowed": 0}
    assert tracking_rows(fresh_db)[-1]["backup_id"] is None
    assert drp_json("validate", env=env) == {"ok": True, "drift": [], "pending": []}

    (directory / "0001_accounts.sql").write_text(BASIC["0001_accounts.sql"] + "-- a trailing comment\n")
    (directory / "0002_accounts_email.sql").write_text(BASIC["0002_accounts_email.sql"].replace("email)", "lower(email))"))
    validate = run("migrate", "validate", env=env)
    assert validate.returncode == 1 and "formatting_only" not in validate.stdout  # the table shows severities
    assert "warning" in validate.stdout and "0002_accounts_email.sql was edited" in validate.stdout
    assert_clean_error(run("migrate", "apply", env=env), "0002_accounts_email.sql was edited after it was applied")
    ok(run("migrate", "repair", "--version", "1", "--version", "2", env=env))
    assert status_of(fresh_db, directory).ok
    (directory / "0003_orders.down.sql").rename(tmp_path / "moved.down.sql")
    assert_clean_error(run("migrate", "rollback", "--to", "2", env=env), "no down script for 0003_orders.sql")
    (tmp_path / "moved.down.sql").rename(directory / "0003_orders.down.sql")
    assert drp_json("rollback", "--to", "2", env=env) == {"rolled_back": ["0003_orders.sql"], "version": 2}
    assert schema_ddl(fresh_db) == at_2 and versions(fresh_db) == [1, 2]


def test_lint_blocks_apply_unless_allowed(env: dict[str, str]) -> None:
    directory = Path(env["DRP_MIGRATIONS_DIR"])
    ok(run("migrate", "apply", "--no-backup", env=env))
    write_migrations(directory, {"0004_orders_index.sql": "CREATE INDEX orders_account_idx ON orders (account_id);\n"})
    lint = run("migrate", "lint", "--json", env=env)
    assert lint.returncode == 1
    findings = [f for r in json.loads(lint.stdout) for f in r["findings"] if f["severity"] == "error" and not f["suppressed"]]
    assert findings and all(f["line"] == 1 for f in findings)
    assert_clean_error(run("migrate", "apply", "--no-backup", env=env), "lint found", "0004_orders_index.sql line 1",
                       "--allow-lint-errors")
    assert versions(env["DRP_SOURCE_DSN"]) == [1, 2, 3]
    allowed = ok(run("migrate", "apply", "--no-backup", "--allow-lint-errors", env=env))
    assert "lint error allowed: 0004_orders_index.sql" in allowed.stderr
    assert versions(env["DRP_SOURCE_DSN"]) == [1, 2, 3, 4]


def test_baseline_and_dry_run_from_the_cli(env: dict[str, str]) -> None:
    fresh_db, directory = env["DRP_SOURCE_DSN"], Path(env["DRP_MIGRATIONS_DIR"])
    with psycopg.connect(fresh_db) as conn:  # a database built by hand up to version 2
        for name in ("0001_accounts.sql", "0002_accounts_email.sql"):
            conn.execute((directory / name).read_text())
    assert drp_json("baseline", "--version", "2", env=env) == {"baselined": ["0001_accounts.sql",
                                                                             "0002_accounts_email.sql"]}
    plan = drp_json("plan", env=env)
    assert plan["current_version"] == 2 and [p["name"] for p in plan["pending"]] == ["0003_orders.sql"]
    (pending,) = plan["pending"]
    assert pending["lint"]["statements"][0]["kind"] == "CREATE TABLE"
    assert {i["table"] for i in pending["impact"]} <= {"accounts", "public.accounts"}
    assert "0003_orders.sql" in ok(run("migrate", "plan", env=env)).stdout
    before = schema_ddl(fresh_db)
    report = drp_json("dry-run", env=env)
    assert report["ok"] and report["migrations"] == ["0003_orders.sql"] and report["rolled_back"]
    assert "AccessExclusiveLock" in report["locks"]["public.orders"]
    assert schema_ddl(fresh_db) == before
    table = ok(run("migrate", "dry-run", env=env)).stdout
    assert "AccessExclusiveLock on public.orders" in table and "rolled back" in table


def test_demo_schema_migrations_go_through_the_cli(fresh_db: str, tmp_path: Path) -> None:
    env = drp_env(source=fresh_db, storage=tmp_path / "storage", migrations_dir=MIGRATIONS_DIR)
    assert len(drp_json("status", env=env)["pending"]) == len(discover(MIGRATIONS_DIR))
    lint = ok(run("migrate", "lint", env=env)).stdout
    assert "no-lock-timeout [drp]" in lint and "0 blocking error(s)" in lint  # info only: the runner sets it
    ok(run("migrate", "apply", "--no-backup", env=env))
    assert status_of(fresh_db, MIGRATIONS_DIR).ok
    assert_clean_error(run("migrate", "status", "--dir", str(tmp_path / "nowhere"), env=env), "does not exist")


def test_no_migrations_dir_configured_is_refused_with_the_fix(fresh_db: str, tmp_path: Path) -> None:
    """No default directory: without --dir or migrations_dir, drp migrate names the fix instead of
    showing (or applying) the demo's schema history against a deployment's database."""
    env = drp_env(source=fresh_db, storage=tmp_path / "storage")
    result = run("migrate", "status", env=env)
    assert result.returncode == 2
    assert_clean_error(result, "no migrations directory configured", "--dir", "DRP_MIGRATIONS_DIR",
                       "migrations_dir in the settings file")
    assert drp_json("status", "--dir", str(MIGRATIONS_DIR), env=env)["current_version"] is None
