"""The code location: loads, validates, and its asset materializes against a real database."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import pytest

from dr_pipelines.definitions import build_definitions


@pytest.fixture
def defs(set_drp_env: Callable[..., dict[str, str]], demo_db: str) -> dg.Definitions:
    set_drp_env(source=demo_db)
    return build_definitions()


def test_definitions_load_and_validate(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert dg.AssetKey("source_profile") in keys
    assert defs.resolve_schedule_def("source_profile_hourly").cron_schedule == "0 * * * *"
    assert defs.resolve_sensor_def("run_failure_alert") is not None
    assert dg.AssetKey("wal_archive") in keys
    assert defs.resolve_sensor_def("wal_archive_watch").minimum_interval_seconds == 30
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key == dg.AssetKey("wal_archive")}
    assert checks == {"wal_continuity", "wal_archive_lag"}
    assert defs.resolve_job_def("tenant_restore_job").partitions_def.name == "clinics"  # type: ignore[union-attr]
    assert dg.AssetKey("tenant_restore_drill") in keys
    assert defs.resolve_schedule_def("tenant_restore_drill_schedule").cron_schedule == "0 5 8 * *"


def test_schedules_and_sensors_default_stopped_unless_demo(set_drp_env: Callable[..., dict[str, str]], defs: dg.Definitions) -> None:
    assert defs.resolve_schedule_def("source_profile_hourly").default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("run_failure_alert").default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_schedule_def("tenant_restore_drill_schedule").default_status == dg.DefaultScheduleStatus.STOPPED
    set_drp_env(schedules_running="true")
    running = build_definitions()
    assert running.resolve_schedule_def("source_profile_hourly").default_status == dg.DefaultScheduleStatus.RUNNING
    assert running.resolve_sensor_def("run_failure_alert").default_status == dg.DefaultSensorStatus.RUNNING


def test_secret_is_bound_as_env_var_not_literal(defs: dg.Definitions, demo_db: str) -> None:
    resource = defs.resources["drp"]
    assert isinstance(resource.source_dsn, dg.EnvVar)  # shown as DRP_SOURCE_DSN in the UI, value never stored
    assert resource.source_dsn.env_var_name == "DRP_SOURCE_DSN"


def test_source_profile_materializes_with_real_metadata(defs: dg.Definitions, demo_db: str) -> None:
    result = defs.resolve_job_def("source_profile_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    (mat,) = result.asset_materializations_for_node("source_profile")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["server_version"].startswith("15")
    assert meta["schema_version"] == 6
    assert meta["size_bytes"] > 1_000_000
    assert "public.patients" in meta["largest_tables"]
    assert "password" not in str(meta)


def test_invalid_settings_fail_loading_with_the_key_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from dr_pipelines.core.errors import ConfigError

    monkeypatch.setenv("DRP_BACKUP_CRON", "not a cron")
    with pytest.raises(ConfigError, match="backup_cron"):
        build_definitions()
