"""The backup path in Dagster: materialize with checks, blocking on failure, schedule and sensors evaluated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from pyrage import x25519

from dr_pipelines.core.backup.catalog import backup_prefix, list_backups
from dr_pipelines.core.pg.cluster import free_port
from dr_pipelines.core.storage import open_storage
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.backups.assets import BACKUP_KEY
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines_tests.support.webhook import alerts_for_failed_run, webhook_receiver

RETENTION_KEY = dg.AssetKey("backup_retention")


@pytest.fixture
def backup_env(set_drp_env: Callable[..., dict[str, str]], tmp_path: Path, demo_db: str) -> Path:
    storage_dir = tmp_path / "storage"
    set_drp_env(source=demo_db, storage=storage_dir, encryption_recipients=x25519.Identity.generate().to_public(),
                backup_retention="last=2")
    return storage_dir


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_backup_job_materializes_with_checks_and_retention(backup_env: Path) -> None:
    defs = build_definitions()
    job = defs.resolve_job_def("logical_backup_job")
    instance = dg.DagsterInstance.ephemeral()
    results = [job.execute_in_process(instance=instance) for _ in range(3)]
    assert all(r.success for r in results)
    assert check_results(results[-1]) == {"manifest_complete": True, "objects_present": True}

    (mat,) = results[-1].asset_materializations_for_node("logical_backup")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["storage_uri"].endswith(f"backups/{meta['backup_id']}")
    assert meta["stored_bytes"] > 10_000 and meta["plain_bytes"] > meta["stored_bytes"]
    assert meta["tables"] > 20 and meta["rows"] > 1000 and meta["throughput_mib_s"] > 0
    assert meta["success_rate_30d"] == "100.0% (2 of 2 runs)"  # the two earlier runs; this one is not finished

    complete = [e.id for e in list_backups(open_storage(str(backup_env))) if e.complete]
    assert len(complete) == 2 and complete[-1] == meta["backup_id"]  # retention last=2 applied after the backup
    assert instance.get_latest_materialization_event(RETENTION_KEY) is not None


def test_blocking_check_stops_retention(set_drp_env: Callable[..., dict[str, str]], backup_env: Path, fresh_db: str) -> None:
    set_drp_env(source=fresh_db)  # an empty database: the backup records no tables
    instance = dg.DagsterInstance.ephemeral()
    result = build_definitions().resolve_job_def("logical_backup_job").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert check_results(result)["manifest_complete"] is False
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "manifest_complete")
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "looks empty" in str(evaluation.metadata["problems"].value)
    assert instance.get_latest_materialization_event(RETENTION_KEY) is None  # downstream did not run


def test_objects_present_names_a_missing_object(backup_env: Path) -> None:
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("logical_backup_job").execute_in_process(instance=instance).success
    backup_id = list_backups(open_storage(str(backup_env)))[-1].id
    open_storage(str(backup_env)).delete(f"{backup_prefix(backup_id)}/database.dump.zst.age")
    checks_only = dg.Definitions.merge(
        defs, dg.Definitions(jobs=[dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks_for_assets(BACKUP_KEY))])
    )
    result = checks_only.resolve_job_def("checks_only").execute_in_process(instance=instance, raise_on_error=False)
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "objects_present")
    assert evaluation.passed is False
    assert "database.dump.zst.age is missing" in str(evaluation.metadata["problems"].value)


def test_schedule_uses_configured_cron_and_targets_backup_job(set_drp_env: Callable[..., dict[str, str]], backup_env: Path) -> None:
    set_drp_env(backup_cron="15 * * * *")  # hourly is possible
    schedule = build_definitions().resolve_schedule_def("logical_backup_schedule")
    assert schedule.cron_schedule == "15 * * * *"
    with dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral()) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert schedule.job_name == "logical_backup_job"
    assert request.tags.get("dagster/schedule_name") == "logical_backup_schedule"


def test_rpo_sensor_alerts_once_through_webhook(backup_env: Path) -> None:
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("rpo_breach_alert")
    with webhook_receiver() as (url, received):
        resource = DrpSettingsResource(notify_webhook_url=url)
        instance = dg.DagsterInstance.ephemeral()
        context = dg.build_sensor_context(instance=instance, resources={"drp": resource})
        result = sensor(context)  # empty storage: no restorable backup at all
        assert "RPO breached" in str(result)
        assert len(received) == 1 and received[0]["details"]["newest_restorable"] is None
        again = dg.build_sensor_context(instance=instance, resources={"drp": resource}, cursor=context.cursor)
        sensor(again)
        assert len(received) == 1  # no repeated alert for the same state

        assert defs.resolve_job_def("logical_backup_job").execute_in_process(instance=instance).success
        fresh = dg.build_sensor_context(instance=instance, resources={"drp": resource}, cursor=context.cursor)
        assert "RPO ok" in str(sensor(fresh))
        assert len(received) == 1


def test_run_failure_sensor_alerts(set_drp_env: Callable[..., dict[str, str]], backup_env: Path) -> None:
    set_drp_env(source=f"host=127.0.0.1 port={free_port()} dbname=x user=u password=hunter2")
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("logical_backup_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    received = alerts_for_failed_run(defs, instance, result)
    assert len(received) == 1
    assert "logical_backup_job" in received[0]["title"]
    assert "hunter2" not in str(received[0])
