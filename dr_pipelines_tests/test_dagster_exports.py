"""Exports in Dagster: clinic partitions kept in sync with the database, on-demand tenant export, daily analytics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow.parquet as pq
import pytest

from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.exports.definitions import CLINICS
from dr_pipelines.defs.lib.resources import DrpSettingsResource


@pytest.fixture
def export_env(set_drp_env: Callable[..., dict[str, str]], tmp_path: Path, demo_db: str) -> Path:
    storage_dir = tmp_path / "storage"
    set_drp_env(source=demo_db, storage=storage_dir, work=tmp_path / "work")
    return storage_dir


def sync(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def("clinic_partitions_sync")
    with dg.build_sensor_context(instance=instance, resources={"drp": DrpSettingsResource()}) as ctx:
        result = sensor(ctx)
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def test_sensor_adds_new_and_removes_deleted_clinics(export_env: Path, demo_db: str) -> None:
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(CLINICS.name, ["999"])  # a clinic that no longer exists
    sync(defs, instance)
    assert sorted(instance.get_dynamic_partitions(CLINICS.name)) == ["1", "2", "3"]
    assert sync(defs, instance).skip_reason is not None  # in sync: nothing to do

    with psycopg.connect(demo_db, autocommit=True) as conn:
        new_id = conn.execute("INSERT INTO clinics (slug, name, jurisdiction, timezone, currency) VALUES ('new-clinic', 'New', 'DE', 'UTC', 'EUR')"
                              " RETURNING id::text").fetchone()[0]
    sync(defs, instance)
    assert sorted(instance.get_dynamic_partitions(CLINICS.name)) == sorted(["1", "2", "3", new_id])
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DELETE FROM clinics WHERE id = %s::bigint", (new_id,))
    sync(defs, instance)
    assert sorted(instance.get_dynamic_partitions(CLINICS.name)) == ["1", "2", "3"]


def test_tenant_export_partition_with_run_config(export_env: Path) -> None:
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    sync(defs, instance)
    job = defs.resolve_job_def("tenant_export_job")
    config = {"ops": {"tenant_export": {"config": {"formats": ["csv", "parquet"], "tables": ["public.patients"],
                                                      "requester": "dpo@clinic-2.example"}}}}
    result = job.execute_in_process(instance=instance, partition_key="2", run_config=config)
    assert result.success
    (mat,) = result.asset_materializations_for_node("tenant_export")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["tenant_ids"] == "2" and meta["formats"] == "csv, parquet" and meta["requester"] == "dpo@clinic-2.example"
    assert meta["rows"] > 0 and meta["bytes"] > 0 and meta["rows_per_second"] > 0
    manifest = read_manifest(LocalStorage(export_env), f"exports/{meta['export_id']}")
    assert [t.name for t in manifest.tables] == ["public.patients"] and manifest.total_rows == meta["rows"]
    assert manifest.extra["tenant_ids"] == ["2"] and manifest.extra["requester"] == "dpo@clinic-2.example"
    assert meta["storage_uri"].endswith(f"exports/{meta['export_id']}")


def test_analytics_export_daily_partition_holds_every_tenant(export_env: Path, demo_db: str) -> None:
    defs = build_definitions()
    result = defs.resolve_job_def("analytics_export_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key="2026-11-26")
    assert result.success
    (mat,) = result.asset_materializations_for_node("analytics_export")
    meta = {k: v.value for k, v in mat.metadata.items()}
    storage = LocalStorage(export_env)
    prefix = f"analytics/2026-11-26/{meta['export_id']}"
    manifest = read_manifest(storage, prefix)
    assert manifest.extra["formats"] == ["parquet"] and manifest.extra["tenant_ids"] == ["1", "2", "3"]
    patients = next(o for o in manifest.objects if o.key == "public.patients.parquet")
    with storage.open(f"{prefix}/{patients.key}") as f:
        table = pq.read_table(f)
    with psycopg.connect(demo_db) as conn:
        total = conn.execute("SELECT count(*) FROM patients").fetchone()[0]
    assert table.num_rows == total and sorted(set(table.column("clinic_id").to_pylist())) == [1, 2, 3]

    schedule = defs.resolve_schedule_def("analytics_export_schedule")
    with dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 27, 3, tzinfo=UTC),
                                   repository_def=defs.get_repository_def()) as ctx:
        request = schedule.evaluate_tick(ctx).run_requests[0]
    assert request.partition_key == "2026-11-26"
