"""Migrations in Dagster on a real database: the job (dry-run and apply with backup), the sync check, the sensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from pyrage import x25519

from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.storage import open_storage
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.migrations.jobs import SCHEMA_KEY
from dr_pipelines_tests.support.migrations import BASIC, table_exists, tracking_rows, versions, write_migrations


@pytest.fixture
def mig_env(set_drp_env: Callable[..., dict[str, str]], tmp_path: Path, fresh_db: str) -> Path:
    directory = write_migrations(tmp_path / "migrations", {k: v for k, v in BASIC.items() if not k.startswith("0003")})
    set_drp_env(source=fresh_db, storage=tmp_path / "storage",
                encryption_recipients=x25519.Identity.generate().to_public(), migrations_dir=directory)
    return directory


def sync_check(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job(
        "schema_and_check", selection=dg.AssetSelection.assets(SCHEMA_KEY))])).resolve_job_def("schema_and_check")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_job_dry_run_then_apply_with_backup_and_the_check(mig_env: Path, fresh_db: str, tmp_path: Path) -> None:
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("migrations_job")

    pending = sync_check(defs, instance)
    assert pending.passed is False and pending.severity == dg.AssetCheckSeverity.ERROR
    assert "pending: 0001_accounts.sql" in str(pending.metadata["problems"].value)

    dry = job.execute_in_process(instance=instance)  # dry_run defaults to true
    assert dry.success and dry.output_for_node("apply_migrations_op")["rolled_back"] is True
    assert dry.output_for_node("pre_migration_backup") is None and not (tmp_path / "storage").exists()
    assert not table_exists(fresh_db, "drp.schema_migrations")  # the dry-run left nothing behind

    applied = job.execute_in_process(instance=instance, run_config={"dry_run": False, "target_version": 1})
    assert applied.success
    backup_id = applied.output_for_node("pre_migration_backup")
    assert [e.id for e in list_backups(open_storage(str(tmp_path / "storage")))] == [backup_id]
    (row,) = tracking_rows(fresh_db)
    assert row["backup_id"] == backup_id and row["applied_by"].startswith("dagster run ")
    assert instance.get_latest_materialization_event(SCHEMA_KEY) is not None

    assert job.execute_in_process(instance=instance, run_config={"dry_run": False, "skip_backup": True}).success
    assert versions(fresh_db) == [1, 2] and tracking_rows(fresh_db)[1]["backup_id"] is None
    assert sync_check(defs, instance).passed is True

    (mig_env / "0001_accounts.sql").write_text(BASIC["0001_accounts.sql"].replace("'b'", "'z'"))
    drifted = sync_check(defs, instance)
    assert drifted.passed is False and "edited: 0001_accounts.sql was edited" in str(drifted.metadata["problems"].value)


def test_job_fails_on_lint_errors_before_anything_runs(mig_env: Path, fresh_db: str) -> None:
    write_migrations(mig_env, {"0003_orders.sql": "CREATE TABLE orders (id int);\nALTER TABLE accounts DROP COLUMN name;\n"})
    result = build_definitions().resolve_job_def("migrations_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), run_config={"dry_run": False}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "lint_migrations" and "lint found" in failure.event_specific_data.user_failure_data.description
    assert not table_exists(fresh_db, "drp.schema_migrations")


def test_sensor_requests_a_dry_run_for_new_files_only(mig_env: Path) -> None:
    sensor = build_definitions().resolve_sensor_def("new_migration_files")
    resources = {"drp": DrpSettingsResource()}
    instance = dg.DagsterInstance.ephemeral()
    first = dg.build_sensor_context(instance=instance, resources=resources)
    (request,) = sensor.evaluate_tick(first).run_requests
    assert request.run_config == {"dry_run": True} and "0001_accounts.sql" in request.tags["drp/migrations"]
    cursor = sensor.evaluate_tick(first).cursor
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor))
    assert again.run_requests == [] and "no new migration files" in str(again.skip_message)

    write_migrations(mig_env, {"0003_orders.sql": BASIC["0003_orders.sql"]})
    new = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor))
    (request,) = new.run_requests
    assert new.cursor != cursor and new.cursor.startswith("3:") and request.run_key == new.cursor
