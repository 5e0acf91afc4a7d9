"""Verification and DR drills on base backups, on one real archiving cluster (issue 13 item 7).

A base backup verifies by being extracted, proven with pg_verifybackup (its WAL fetched), recovered
to its stop point and checked; the row counts and checksums it records equal the source's right
after the backup. A base backup whose WAL object is gone from the archive is FAILED naming the
segment. The drill is a real PITR to the end of the archive: its RPO is the simulated loss moment
minus the commit time of the newest row recovered, its RTO the wall time to a checked cluster.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import find_backup, list_backups
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.crypto import parse_recipients
from dr_pipelines.core.layout import DRILL_REPORT_NAME, VERIFICATION_NAME, WAL, backup_prefix, drill_prefix
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage import Storage, open_storage
from dr_pipelines.core.verify.drill import run_drill
from dr_pipelines.core.verify.restore import verify_backup
from dr_pipelines.core.wal.archive import push_wal
from dr_pipelines.core.wal.names import object_key, sidecar_key
from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.backups.assets import BASE_KEY
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.verification.definitions import VERIFICATION_KEY
from dr_pipelines_tests.support.wal import WalRig, wait_archived
from dr_pipelines_tests.support.webhook import webhook_receiver


@dataclass
class Source:
    rig: WalRig
    cluster: LocalCluster
    storage: Storage
    backup_id: str
    checksums: list  # the source's tables right after the base backup (nothing written in between)

    @property
    def identities(self) -> list[object]:
        return context.identities(self.rig.settings())

    def sql(self, query: str) -> object:
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchone()[0] if cur.description else None

    def switch(self) -> None:
        """Complete a segment and wait for it to be archived; the WAL record first makes sure there is one
        to complete (pg_switch_wal on an empty segment does nothing)."""
        self.sql("SELECT pg_logical_emit_message(false, 'drp-test', 'switch')")
        wait_archived(self.cluster, str(self.sql("SELECT pg_walfile_name(pg_switch_wal())")))


@pytest.fixture(scope="module")
def source(work_base: Path) -> Iterator[Source]:
    rig = WalRig.make(work_base / f"bv-{uuid.uuid4().hex[:8]}")
    cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
    try:
        with rig.archiver():
            storage = context.storage(rig.settings())
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("CREATE TABLE visits (id bigserial PRIMARY KEY, at timestamptz NOT NULL "
                             "DEFAULT clock_timestamp(), note text)")
                conn.execute("CREATE INDEX ON visits (at)")
                conn.execute("INSERT INTO visits (note) SELECT md5(g::text) FROM generate_series(1, 500) g")
            manifest = run_base_backup(cluster.dsn(), storage, rig.settings().encryption_recipients)
            checksums = database_checksums(cluster.dsn())
            src = Source(rig, cluster, storage, manifest.id, checksums)
            src.switch()
            yield src
    finally:
        cluster.remove()


def test_a_base_backup_verifies_and_records_the_tables_at_its_stop_point(source: Source) -> None:
    entry = find_backup(source.storage, source.backup_id)
    report = verify_backup(source.storage, entry, source.identities, source.rig.root / "work")
    assert report.passed, report.to_markdown()
    assert report.kind == "base"
    names = [c.name for c in report.checks]
    assert names[:2] == ["pg_verifybackup", "recovery"] and {"amcheck", "foreign_keys", "sequences"} <= set(names)
    amcheck = next(c for c in report.checks if c.name == "amcheck")
    assert amcheck.checked >= 2  # the primary key and the index on visits.at
    recorded = {t["table"]: (t["rows"], t["checksum"]) for t in report.tables}
    assert recorded == {t.name: (t.rows, t.checksum) for t in source.checksums}
    assert recorded["public.visits"][0] == 500
    stored = json.loads(source.storage.get_bytes(f"{backup_prefix(entry.id)}/{VERIFICATION_NAME}"))
    assert stored["passed"] is True and stored["kind"] == "base" and stored["tables"] == report.tables
    after = next(e for e in list_backups(source.storage) if e.id == entry.id)
    assert after.verification_state == "verified"
    listed = source.rig.drp("backup", "list")
    assert listed.returncode == 0 and "verified" in listed.stdout, listed.stdout + listed.stderr
    assert not any((source.rig.root / "work" / "clusters").iterdir())  # the recovered cluster is gone


def test_a_base_backup_whose_wal_is_gone_is_failed_naming_the_segment(source: Source) -> None:
    entry = find_backup(source.storage, source.backup_id)
    segment = entry.manifest.extra["wal_start"]
    stored = Path(source.rig.storage_dir) / object_key(segment)
    saved = stored.read_bytes()
    stored.unlink()
    try:
        shown = source.rig.drp("verify", "--kind", "base", "--json", DRP_WORK_DIR=str(source.rig.root / "work"))
        assert shown.returncode == 1, shown.stdout + shown.stderr
        report = json.loads(shown.stdout)
        assert report["backup_id"] == entry.id and report["kind"] == "base" and not report["passed"]
        assert segment in report["error"], report["error"]
        listed = next(e for e in list_backups(source.storage) if e.id == entry.id)
        assert listed.verification_state == "failed" and not listed.restorable
    finally:
        stored.write_bytes(saved)
        source.storage.delete(f"{backup_prefix(entry.id)}/{VERIFICATION_NAME}")  # restorable again for the drill


def test_the_drill_is_a_pitr_measuring_rpo_against_the_newest_row_recovered(source: Source) -> None:
    for batch in range(3):  # writes just before the simulated loss, all archived
        source.sql(f"INSERT INTO visits (note) SELECT 'late-{batch}-' || g FROM generate_series(1, 10) g")
    newest_row = source.sql("SELECT max(at) FROM visits")
    source.switch()
    report = run_drill(source.storage, source.identities, source.rig.root / "work", rto_target_minutes=60,
                       rpo_target_minutes=60, month="2026-11")
    assert report.kind == "base" and report.backup_id == source.backup_id, report.to_markdown()
    assert report.verification is not None and report.verification.passed, report.to_markdown()
    rows = {t["table"]: t["rows"] for t in report.verification.tables}
    assert rows["public.visits"] == 530  # every row written before the loss was recovered
    assert isinstance(newest_row, datetime) and report.restore_point is not None
    # the last transaction recovered is the last insert: committed just after its row's clock_timestamp()
    assert 0 <= (report.restore_point - newest_row).total_seconds() < 1
    assert report.rpo_seconds == pytest.approx((report.started_at - report.restore_point).total_seconds())
    assert 0 < report.rpo_seconds < 120 and report.rto_seconds > 0 and report.passed
    assert report.rpo_basis == "commit time of the last transaction recovered"
    stored = json.loads(source.storage.get_bytes(f"{drill_prefix('2026-11')}/{DRILL_REPORT_NAME}"))
    assert stored["kind"] == "base" and stored["rpo_seconds"] == round(report.rpo_seconds, 2)
    status = source.rig.drp("status")
    assert "RPO" in status.stdout and "(PITR)" in status.stdout, status.stdout + status.stderr


def test_rpo_sensor_follows_the_wal_archive_fresh_or_stale(source: Source, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A WAL archive alone restores nothing (no base backup to replay it on): breached. With the base
    backup beside it, an archive the server is caught up into is within the RPO; once the server has
    moved on past a push 3 h old (the archiver stopped), it alerts."""
    storage_dir = tmp_path / "storage"
    monkeypatch.setenv("DRP_CONFIG", str(source.rig.config))
    monkeypatch.setenv("DRP_SOURCE_DSN", source.cluster.dsn())
    monkeypatch.setenv("DRP_STORAGE_URL", str(storage_dir))
    storage = open_storage(str(storage_dir))
    name = str(source.sql("SELECT last_archived_wal FROM pg_stat_archiver"))
    recipients = parse_recipients(source.rig.settings().encryption_recipients)
    for info in source.storage.list(WAL + "/"):  # the archive up to now, without the base backup
        storage.put_bytes(info.key, source.storage.get_bytes(info.key))
    push_wal(storage, recipients, source.cluster.data_dir / "pg_wal" / name)
    sensor = build_definitions().resolve_sensor_def("rpo_breach_alert")
    with webhook_receiver() as (url, received):
        resource = DrpSettingsResource(config_path=str(source.rig.config), notify_webhook_url=url)
        instance = dg.DagsterInstance.ephemeral()
        alone = dg.build_sensor_context(instance=instance, resources={"drp": resource})
        assert "RPO breached" in str(sensor(alone)) and received[-1]["details"]["newest_restorable"] is None
        received.clear()
        for info in source.storage.list(backup_prefix(source.backup_id) + "/"):
            storage.put_bytes(info.key, source.storage.get_bytes(info.key))
        instance = dg.DagsterInstance.ephemeral()
        fresh = dg.build_sensor_context(instance=instance, resources={"drp": resource})
        assert f"RPO ok: newest restorable WAL segment {name} (server caught up)" in str(sensor(fresh))
        assert received == []
        sidecar = json.loads(storage.get_bytes(sidecar_key(name)))
        sidecar["pushed_at"] = (datetime.now(UTC) - timedelta(hours=3)).isoformat()  # the archiver stopped 3 h ago
        storage.put_bytes(sidecar_key(name), json.dumps(sidecar).encode())
        source.switch()  # the server completed a segment this archive never got
        stale = dg.build_sensor_context(instance=instance, resources={"drp": resource}, cursor=fresh.cursor)
        assert "RPO breached" in str(sensor(stale))
        assert len(received) == 1 and received[0]["details"]["newest_restorable"] == f"WAL segment {name}"
        assert 179 < received[0]["details"]["age_minutes"] < 182


def test_dagster_verification_verifies_the_base_backup(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a base backup in storage: the verification asset recovers and checks it (no logical one needed)."""
    monkeypatch.setenv("DRP_CONFIG", str(source.rig.config))
    monkeypatch.setenv("DRP_SOURCE_DSN", source.cluster.dsn())
    monkeypatch.setenv("DRP_WORK_DIR", str(source.rig.root / "work"))
    defs = build_definitions()
    only = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job(
        "verify_only", selection=dg.AssetSelection.assets(VERIFICATION_KEY))]))
    result = only.resolve_job_def("verify_only").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    (mat,) = result.asset_materializations_for_node("backup_verification")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["base_backup_id"] == source.backup_id and meta["base_backup_verified"] is True
    assert meta["backup_verified"] is True and meta["base_tables"] == len(source.checksums)


def test_base_backup_asset_materializes_with_its_checks(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last in the module: it adds a newer base backup."""
    monkeypatch.setenv("DRP_CONFIG", str(source.rig.config))
    monkeypatch.setenv("DRP_SOURCE_DSN", source.cluster.dsn())
    defs = build_definitions()
    assert defs.resolve_schedule_def("base_backup_schedule").cron_schedule == "0 1 * * *"
    only_base = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job(
        "base_only", selection=dg.AssetSelection.assets(BASE_KEY))]))  # no retention: the module's backups stay
    result = only_base.resolve_job_def("base_only").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"manifest_complete": True, "objects_present": True, "wal_archived": True}
    (mat,) = result.asset_materializations_for_node("base_backup")
    meta = {k: v.value for k, v in mat.metadata.items()}
    entry = find_backup(source.storage, str(meta["backup_id"]))
    assert entry.kind == "base" and entry.restorable and meta["wal_range"] == (
        f"{entry.manifest.extra['wal_start']} .. {entry.manifest.extra['wal_stop']}")
