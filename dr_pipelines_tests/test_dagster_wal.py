"""wal_archive in Dagster, against one real archiving cluster (WalRig: archive_command -> client -> archiver).

The sensor reports a materialization when a segment is archived and none when nothing changed; the checks
pass on a clean archive, and continuity fails (ERROR, the blocking check fails the run) once a segment's
sidecar in the middle of the archive is deleted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.core.wal.names import sidecar_key
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.wal.assets import WAL_KEY
from dr_pipelines.defs.wal.sensors import CHECKS_JOB
from dr_pipelines_tests.support.wal import WalRig, switch_wal, wait_archived


@pytest.fixture(scope="module")
def rig(work_base: Path) -> WalRig:
    return WalRig.make(work_base / f"wal-dagster-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def cluster(rig: WalRig) -> Iterator[LocalCluster]:
    c = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings(archive_timeout="0"), tcp_trust=True)
    with rig.archiver():
        yield c
    c.remove()


@pytest.fixture(scope="module")
def defs(rig: WalRig) -> dg.Definitions:
    return build_definitions()


@pytest.fixture
def resources(rig: WalRig, cluster: LocalCluster) -> dict[str, object]:
    return {"drp": DrpSettingsResource(config_path=str(rig.config), source_dsn=cluster.dsn())}


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict[str, object],
         cursor: str | None) -> tuple[list[dg.AssetMaterialization], list[dg.RunRequest], str | None]:
    sensor = defs.resolve_sensor_def("wal_archive_watch")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        data = sensor.evaluate_tick(context)
    return list(data.asset_events), list(data.run_requests or []), data.cursor


def test_the_sensor_reports_a_materialization_per_newly_archived_segment_only(
        defs: dg.Definitions, resources: dict[str, object], rig: WalRig, cluster: LocalCluster) -> None:
    first = switch_wal(cluster)
    wait_archived(cluster, first)
    with dg.DagsterInstance.ephemeral() as instance:
        events, requests, cursor = tick(defs, instance, resources, None)
        assert [e.asset_key for e in events] == [WAL_KEY] and requests == []
        meta = {k: v.value for k, v in events[0].metadata.items()}
        assert meta["newest_segment"] == first and meta["reason"] == "new segment"
        assert meta["ready_count"] == 0 and meta["archive_lag_s"] == 0.0 and meta["pg_wal_bytes"] >= 16 * 2**20
        assert meta["pushed_at"].startswith("20") and meta["server"] == "ok"
        assert json.loads(cursor)["segment"] == first

        assert tick(defs, instance, resources, cursor)[0] == []  # nothing archived since: no event

        second = switch_wal(cluster)
        wait_archived(cluster, second)
        assert tick(defs, instance, resources, cursor)[0] == []  # rate limit: the last report is < RPO / 2 old
        events, _, cursor = tick(defs, instance, resources, aged(cursor))
        assert [(e.metadata["newest_segment"].value, e.metadata["reason"].value) for e in events] == [
            (second, "new segment")]

        # an idle, caught-up server: a "caught up" report once the last one is half an RPO old
        events, _, _ = tick(defs, instance, resources, aged(cursor))
        assert [(e.metadata["newest_segment"].value, e.metadata["reason"].value) for e in events] == [
            (second, "caught up")]

        # no server to ask (storage only): nothing changed is no event, however old the last report
        blind = {"drp": DrpSettingsResource(config_path=str(rig.config), source_dsn=f"host=127.0.0.1 port={free_port()}")}
        events, _, blind_cursor = tick(defs, instance, blind, aged(cursor))
        assert events == [] and json.loads(blind_cursor)["segment"] == second
        third = switch_wal(cluster)
        wait_archived(cluster, third)
        events, _, _ = tick(defs, instance, blind, aged(cursor))
        assert [e.metadata["newest_segment"].value for e in events] == [third]
        assert events[0].metadata["server"].value.startswith("cannot connect to PostgreSQL at 127.0.0.1")


def aged(cursor: str | None) -> str:
    """The cursor as if its last report were half an RPO old (the rate limit passed)."""
    return json.dumps({**json.loads(cursor or "{}"), "reported_at": 0})


def test_checks_pass_then_continuity_fails_on_a_deleted_sidecar_in_the_middle(
        defs: dg.Definitions, resources: dict[str, object], rig: WalRig, cluster: LocalCluster) -> None:
    names = [switch_wal(cluster) for _ in range(3)]
    wait_archived(cluster, names[-1])
    job = defs.resolve_job_def(CHECKS_JOB)
    with dg.DagsterInstance.ephemeral() as instance:
        clean = job.execute_in_process(instance=instance, resources=resources)
        assert clean.success
        assert {e.check_name: e.passed for e in clean.get_asset_check_evaluations()} == {
            "wal_continuity": True, "wal_archive_lag": True}

        (rig.storage_dir / sidecar_key(names[1])).unlink()
        broken = job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
        evaluation = {e.check_name: e for e in broken.get_asset_check_evaluations()}["wal_continuity"]
        assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert f"uncommitted {names[1]}" in evaluation.metadata["problems"].value
        assert f"lost {names[1]}..{names[1]} (1)" in evaluation.metadata["problems"].value
        assert not broken.success  # blocking: the run fails, so run_failure_alert notifies


def test_an_alert_asks_for_one_checks_run_per_episode_and_the_lag_check_fails(
        defs: dg.Definitions, resources: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRP_WAL_PG_WAL_ALERT_BYTES", "1")  # pg_wal is always bigger: `drp wal status` alerts
    with dg.DagsterInstance.ephemeral() as instance:
        _, requests, cursor = tick(defs, instance, resources, None)
        assert [r.tags["drp/wal-alert"][:12] for r in requests] == ["pg_wal holds"]
        assert tick(defs, instance, resources, cursor)[1] == []  # still alerting: no second run
        run = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance, resources=resources,
                                                                  raise_on_error=False)
        lag = {e.check_name: e for e in run.get_asset_check_evaluations()}["wal_archive_lag"]
        assert lag.passed is False and "pg_wal holds" in lag.description and not run.success
