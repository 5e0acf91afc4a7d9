"""Tenant restore in Dagster (issue 14): the job for one clinic partition, and the monthly drill on a scratch copy.

A logical backup of a fresh demo database is the past; the job runs in process against the real
cluster (preview, then apply), the drill restores that backup twice into throwaway clusters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.tenancy import discover_scope, tenant_keys
from dr_pipelines.core.tenant_restore.drill import Checksums, clinic_checksums, damage_clinic
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.exports.definitions import CLINICS
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.s3 import MotoServer
from dr_pipelines_tests.support.verification import work_dir_under


@dataclass
class Site:
    live: str
    work: Path
    backup_id: str


@pytest.fixture
def site(set_drp_env: Callable[..., dict[str, str]], tmp_path: Path, work_base: Path, demo_db: str,
         s3_server: MotoServer, s3_bucket: str) -> Site:
    """The demo database, S3 storage with server-side encryption (the undo export's requirement), a logical backup."""
    keys = Keys.make(tmp_path / "keys")
    work = work_dir_under(work_base)
    set_drp_env(source=demo_db, storage=f"s3://{s3_bucket}/site", s3=s3_server, keys=keys, identity=True, work=work)
    backup = run_logical_backup(demo_db, context.storage(load_settings()), [keys.recipient])
    return Site(demo_db, work, backup.id)


def checksums(dsn: str) -> Checksums:
    with psycopg.connect(dsn) as conn:
        scope = discover_scope(conn)
        clinics = tenant_keys(conn)
    return clinic_checksums(dsn, scope, clinics)


def test_damage_changes_only_the_chosen_clinics_rows_in_the_tables_it_names(demo_db: str) -> None:
    before = checksums(demo_db)
    with psycopg.connect(demo_db) as conn:
        scope = discover_scope(conn)
    damage = damage_clinic(demo_db, scope, "2")
    after = checksums(demo_db)
    assert {k for d in damage.values() for k in d} == {"deleted", "corrupted"}
    assert all(n > 0 for d in damage.values() for n in d.values())
    assert after["1"] == before["1"] and after["3"] == before["3"]
    assert {t for t in before["2"] if after["2"][t] != before["2"][t]} == set(damage)
    for table, done in damage.items():
        rows_before, rows_after = before["2"][table][0], after["2"][table][0]
        assert rows_before - rows_after == done.get("deleted", 0)


def run_job(defs: dg.Definitions, instance: dg.DagsterInstance, clinic: str, **config: object) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(CLINICS.name, [clinic])
    return defs.resolve_job_def("tenant_restore_job").execute_in_process(
        instance=instance, partition_key=clinic, raise_on_error=False,
        run_config={"ops": {"tenant_restore_op": {"config": config}}})


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (event,) = [e for e in result.all_node_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_tenant_restore_job_previews_then_applies_one_clinic(site: Site) -> None:
    originals = checksums(site.live)
    with psycopg.connect(site.live) as conn:
        scope = discover_scope(conn)
    damage = damage_clinic(site.live, scope, "2")
    defs, instance = build_definitions(), dg.DagsterInstance.ephemeral()

    preview = run_job(defs, instance, "2", backup_id=site.backup_id)
    assert preview.success
    meta = output_metadata(preview)
    assert meta["mode"] == "preview" and meta["clinic"] == "2" and site.backup_id in str(meta["restore_point"])
    deleted = sum(d.get("deleted", 0) for d in damage.values())
    assert meta["total_deleted"] == deleted and meta["total_changed"] == sum(d.get("corrupted", 0) for d in damage.values())
    assert meta["total_added"] == 0
    reports = [Path(str(meta["report_json"])), Path(str(meta["report_md"]))]
    assert all(p.exists() and p.stat().st_mode & 0o777 == 0o600 for p in reports)
    assert "samples" not in str(meta)  # keys stay in the 0600 reports
    for table in damage:
        assert f"| {table} |" in str(meta["tables"])
    assert checksums(site.live)["2"] != originals["2"]  # a preview writes nothing

    refused = run_job(defs, instance, "2", backup_id=site.backup_id, mode="apply", policy="both")
    assert not refused.success and "--reason and --requester" in str(refused.all_events)

    applied = run_job(defs, instance, "2", backup_id=site.backup_id, mode="apply", policy="both",
                      requester="dpo@clinic-2.example", reason="ticket 4242")
    assert applied.success
    assert checksums(site.live) == originals  # clinic 2 back exactly; 1 and 3 untouched


def test_tenant_restore_job_refuses_an_unknown_clinic_and_a_schema_mode_without_a_name(site: Site) -> None:
    defs, instance = build_definitions(), dg.DagsterInstance.ephemeral()
    unknown = run_job(defs, instance, "999", backup_id=site.backup_id)
    assert not unknown.success and "clinic '999' is not in live's public.clinics" in str(unknown.all_events)
    unnamed = run_job(defs, instance, "2", backup_id=site.backup_id, mode="into_schema")
    assert not unnamed.success and "mode into_schema needs the schema to create" in str(unnamed.all_events)
    assert not list((site.work / "clusters").glob("*")) if (site.work / "clusters").exists() else True


def test_tenant_restore_drill_restores_a_damaged_clinic_on_a_scratch_copy(site: Site) -> None:
    production = checksums(site.live)
    defs = build_definitions()
    result = defs.resolve_job_def("tenant_restore_drill_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key="2026-12-01",
        run_config={"ops": {"tenant_restore_drill": {"config": {"clinic": "3"}}}})
    assert result.success
    (mat,) = result.asset_materializations_for_node("tenant_restore_drill")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["passed"] is True and meta["backup_id"] == site.backup_id and meta["clinic"] == "3"
    assert meta["clinics"] == 3 and meta["mismatches"] == 0 and meta["checksums_compared"] == 3 * len(production["1"])
    assert {k for d in meta["damage"].values() for k in d} == {"deleted", "corrupted"}  # type: ignore[union-attr]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "all_clinics_equal_originals" and check.passed
    assert checksums(site.live) == production  # production was never written
    clusters = site.work / "clusters"
    assert not clusters.exists() or list(clusters.iterdir()) == []  # both scratch clusters removed
