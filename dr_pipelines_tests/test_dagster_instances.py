"""Dagster for real: a headless webserver answering GraphQL, and a dagster-postgres instance running a job."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.definitions import build_definitions
from dr_pipelines.demo.ui import code_locations
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import BIN, wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def webserver(tmp_path: Path, dagster_home: Path, demo_db: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), **drp_env(source=demo_db)}
    log = (tmp_path / "webserver.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
@pytest.mark.heavy(30)
def test_headless_webserver_lists_this_locations_assets(webserver: str) -> None:
    locations = wait_for(lambda: [l for l in code_locations(webserver) if l.name == "dr_pipelines" and l.assets],
                         timeout=120, what="dagster-webserver", interval=0.2)
    (loc,) = locations
    assert loc.error is None
    assert "source_profile" in loc.assets
    # The UI shows exactly what the code location defines (loaded here with the same settings).
    defs = build_definitions()
    assert set(loc.assets) == {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"logical_backup", "backup_verification", "dr_drill", "dr_status", "tenant_export", "analytics_export",
            "schema_migrations"} <= set(loc.assets)
    assert set(loc.schedules) == {s.name for s in defs.schedules or []}
    assert set(loc.sensors) == {s.name for s in defs.sensors or []}
    assert {"logical_backup_schedule", "verification_schedule", "dr_drill_schedule"} <= set(loc.schedules)
    assert {"run_failure_alert", "rpo_breach_alert", "clinic_partitions_sync"} <= set(loc.sensors)
    assert set(loc.schedules.values()) | set(loc.sensors.values()) == {"STOPPED"}  # Dagster's default


@pytest.fixture
def postgres_instance(tmp_path: Path, pg_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """An instance built from the documented production file, deploy/dagster-postgres.yaml."""
    name = "dagster_" + tmp_path.name[-8:].replace("-", "_").lower()
    pg_cluster.create_database(name)
    for key, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg_cluster.port),
                       "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": "unused-trust-auth",
                       "DAGSTER_PG_DB": name}.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()
        pg_cluster.drop_database(name)


@pytest.mark.slow
def test_job_runs_end_to_end_on_dagster_postgres_storage(
    postgres_instance: dg.DagsterInstance, pg_cluster: LocalCluster, demo_db: str, set_drp_env: Callable[..., dict[str, str]]
) -> None:
    from dagster_postgres import PostgresRunStorage

    assert isinstance(postgres_instance.run_storage, PostgresRunStorage)
    set_drp_env(source=demo_db)
    result = build_definitions().resolve_job_def("source_profile_job").execute_in_process(instance=postgres_instance)
    assert result.success
    record = postgres_instance.get_latest_materialization_event(dg.AssetKey("source_profile"))
    assert record is not None and record.run_id == result.run_id
    # The run really lives in PostgreSQL, not in a SQLite file.
    db = os.environ["DAGSTER_PG_DB"]
    with psycopg.connect(pg_cluster.dsn(db)) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,)).fetchone()
    assert status == ("SUCCESS",)
