"""Verification, drills and status in Dagster: jobs executed in process, checks blocking, schedules evaluated."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from dr_pipelines.core.backup.catalog import list_backups, newest_restorable
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.drills.definitions import DRILL_KEY
from dr_pipelines.defs.verification.definitions import VERIFICATION_KEY
from dr_pipelines_tests.support.verification import (
    CHANGE_ONE_PATIENT,
    DEMO_PROBES,
    AgeKey,
    leftover_clusters,
    reap_clusters,
    tamper_backup,
    work_dir_under,
)
from dr_pipelines_tests.support.webhook import alerts_for_failed_run


@dataclass
class Env:
    storage: LocalStorage
    work: Path
    key: AgeKey


@pytest.fixture
def env(set_drp_env: Callable[..., dict[str, str]], tmp_path: Path, work_base: Path, demo_db: str) -> Iterator[Env]:
    key = AgeKey.make(tmp_path / "keys")
    work = work_dir_under(work_base)
    set_drp_env(source=demo_db, storage=tmp_path / "storage", keys=key, identity=True,
                verification_probes_file=DEMO_PROBES, work=work)
    yield Env(LocalStorage(tmp_path / "storage"), work, key)
    assert reap_clusters(work) == []  # every throwaway cluster removed (and reaped if a test failed midway)


def metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:  # type: ignore[type-arg]
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def evaluation(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m-01")


def test_backup_verification_drill_and_status_materialize(env: Env) -> None:
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("logical_backup_job").execute_in_process(instance=instance).success
    (backup,) = list_backups(env.storage)

    verified = defs.resolve_job_def("verification_job").execute_in_process(instance=instance)
    assert verified.success
    check = evaluation(verified, "verification_passed")
    assert check.passed and check.asset_key == VERIFICATION_KEY
    meta = metadata(verified, "backup_verification")
    assert meta["backup_id"] == backup.id and meta["backup_verified"] is True
    assert meta["failed_checks"] == "none" and meta["error"] == "none"
    assert meta["restore_seconds"] > 0 and meta["checks_seconds"] > 0
    assert meta["checks"].startswith(f"# Verification of backup {backup.id}: PASSED")
    assert "| checksums | pass |" in meta["checks"] and "| probe:clinics_without_staff | pass |" in meta["checks"]
    # The job refreshes dr_status after a passing verification: verified now, but no drill yet.
    meta = metadata(verified, "dr_status")
    assert meta["ok"] is False and meta["problems"] == "- no DR drill has run"
    assert meta["last_verification"]["passed"] is True and meta["last_verification"]["backup_id"] == backup.id

    partition = this_month()
    drilled = defs.resolve_job_def("dr_drill_job").execute_in_process(instance=instance, partition_key=partition)
    assert drilled.success
    assert evaluation(drilled, "drill_passed").passed
    meta = metadata(drilled, "dr_drill")
    month = partition[:7]
    assert meta["passed"] is True and meta["backup_id"] == backup.id
    assert meta["rto_minutes"] > 0 and meta["rto_target_minutes"] == 240
    assert isinstance(meta["rpo_minutes"], float) and 0 <= meta["rpo_minutes"] < 60 and meta["rpo_target_minutes"] == 60
    assert meta["report_uri"] == f"{env.storage.url}/drills/{month}/report.md"
    assert meta["report"].startswith(f"# DR drill {month}: PASSED")
    stored = json.loads(env.storage.get_bytes(f"drills/{month}/report.json"))
    assert stored["passed"] is True and stored["backup_id"] == backup.id
    assert round(stored["rto_seconds"] / 60, 2) == meta["rto_minutes"]
    assert instance.get_materialized_partitions(DRILL_KEY) == {partition}

    status = defs.resolve_job_def("dr_status_job").execute_in_process(instance=instance)
    assert status.success
    meta = metadata(status, "dr_status")
    assert meta["ok"] is True and meta["problems"] == "none"
    assert meta["newest_restorable"] == backup.id and meta["rpo_met"] is True
    assert meta["backup_success_rate_30d_storage"] == "100.0%"
    assert meta["last_drill_month"] == month and meta["last_verification"]["passed"] is True
    assert leftover_clusters(env.work) == []


def test_failed_verification_blocks_fails_the_run_and_alerts(
    env: Env, pg_cluster: LocalCluster, demo_template: str, tmp_path: Path
) -> None:
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("logical_backup_job").execute_in_process(instance=instance).success
    (backup,) = list_backups(env.storage)
    tamper_backup(env.storage, backup, env.key, pg_cluster, tmp_path, CHANGE_ONE_PATIENT,
                  same_content_as=demo_template)  # demo_db is a copy of demo_template

    result = defs.resolve_job_def("verification_job").execute_in_process(instance=instance, raise_on_error=False)

    assert not result.success
    failed_steps = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed_steps == ["backup_verification_verification_passed"]  # the asset ran; its blocking check failed
    check = evaluation(result, "verification_passed")
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["failed_checks"].value == "checksums" and check.metadata["backup_id"].value == backup.id
    meta = metadata(result, "backup_verification")
    assert meta["backup_verified"] is False and "public.patients" in meta["checks"]
    assert result.asset_materializations_for_node("dr_status") == []  # the blocking check stopped it
    assert newest_restorable(list_backups(env.storage)) is None  # recorded: no longer counted as restorable
    assert leftover_clusters(env.work) == []

    received = alerts_for_failed_run(defs, instance, result)
    assert len(received) == 1
    assert received[0]["title"] == "dr_pipelines run failed: verification_job"
    assert received[0]["details"]["run_id"] == result.run_id


def test_drill_schedule_requests_the_month_partition() -> None:
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("dr_drill_schedule")
    assert schedule.job_name == "dr_drill_job" and schedule.cron_schedule == "0 5 1 * *"
    with dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral(), repository_def=defs.get_repository_def(),
                                   scheduled_execution_time=datetime(2026, 12, 1, 5, tzinfo=UTC)) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-12-01" and request.run_key == "drill-2026-12-01"


def test_drill_asset_has_a_cron_freshness_policy(set_drp_env: Callable[..., dict[str, str]]) -> None:
    spec = next(s for s in build_definitions().resolve_all_asset_specs() if s.key == DRILL_KEY)
    policy = spec.freshness_policy
    assert isinstance(policy, dg.FreshnessPolicy) and type(policy).__name__ == "CronFreshnessPolicy"
    assert policy.deadline_cron == "0 5 3 * *"  # two days after the default drill (1st, 05:00)
    assert policy.lower_bound_delta.days == 28

    set_drp_env(drill_cron="30 6 10 * *")
    spec = next(s for s in build_definitions().resolve_all_asset_specs() if s.key == DRILL_KEY)
    assert spec.freshness_policy.deadline_cron == "30 6 12 * *"  # type: ignore[union-attr]
    assert build_definitions().resolve_schedule_def("dr_drill_schedule").cron_schedule == "30 6 10 * *"


def test_verification_schedule_uses_the_configured_cron(set_drp_env: Callable[..., dict[str, str]]) -> None:
    set_drp_env(verify_cron="45 3 * * 2")
    schedule = build_definitions().resolve_schedule_def("verification_schedule")
    assert schedule.cron_schedule == "45 3 * * 2" and schedule.job_name == "verification_job"
    assert schedule.execution_timezone == "UTC"
    with dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral()) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.tags.get("dagster/schedule_name") == "verification_schedule"
