"""The retention assets: one per policy, monthly partitions, checks and metadata from a real run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dr_pipelines.core.settings import load_settings
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.retention import definitions as retention
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.retention import POLICY, key_env


def test_an_asset_per_policy_and_a_stopped_schedule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    defs = _with_resource(retention.build(load_settings(env=drp_env(retention_policies_file=policy))))
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert keys == {retention.asset_key(t) for t in POLICY["tables"]}
    assert defs.resolve_schedule_def("retention_schedule").default_status == dg.DefaultScheduleStatus.STOPPED
    assert _with_resource(retention.build(load_settings(env={}))).resolve_all_asset_specs() == []
    assert retention.as_of_for("2026-01-01", now=datetime(2027, 1, 1, tzinfo=UTC)) == datetime(2026, 2, 1, tzinfo=UTC)


def test_materializing_a_month_archives_and_passes_its_checks(monkeypatch: pytest.MonkeyPatch, demo_db: str,
                                                              tmp_path: Path) -> None:
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    env = {**drp_env(source=demo_db, storage=tmp_path / "store", retention_policies_file=policy), **key_env(tmp_path)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    defs = _with_resource(retention.build(load_settings()))
    result = dg.materialize([defs.get_assets_def(retention.asset_key("public.audit_log"))],
                            resources={"drp": DrpSettingsResource()}, partition_key="2026-01-01",
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    (mat,) = result.asset_materializations_for_node("retention__public__audit_log")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["rows_archived"] > 0 and meta["rows_archived"] == meta["rows_deleted"]
    assert meta["batches"] > 0 and meta["longest_batch_seconds"] >= 0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {name: True for name in retention.CHECKS}
    assert "password" not in str(meta)


def _with_resource(defs: dg.Definitions) -> dg.Definitions:
    return dg.Definitions.merge(defs, dg.Definitions(resources={"drp": DrpSettingsResource()}))
