"""Every installed PostgreSQL major, not only the one the suite runs on: a backup/restore round trip on each.

The whole suite runs on the cluster the harness finds first (DRP_PG_BIN_DIR, PATH, pg_config, then the
newest installed); this file adds one cheap round trip per installed major (choose with --pg-majors 15,17),
proven by content: the restored tables match the checksums the manifest recorded from the source.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from dr_pipelines.core.backup.catalog import find_backup
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.pg.binaries import PgBinaries
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.logical import restore_backup
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.demo.generate import seed_demo
from dr_pipelines_tests.support.backup import Keys, assert_restored_equals_manifest, assert_same_schema
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS


def test_backup_restore_round_trip_on_each_installed_major(
    pg_binaries_of_major: PgBinaries, work_base: Path, tmp_path: Path
) -> None:
    major = pg_binaries_of_major.major
    cluster = LocalCluster.create(work_base / f"pg{major}-{uuid.uuid4().hex[:8]}", binaries=pg_binaries_of_major,
                                 settings=TEST_CLUSTER_SETTINGS)
    try:
        source = cluster.create_database("clinic")
        with psycopg.connect(source) as conn:
            assert int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000 == major
        seed_demo(source, clinics=2, scale=0.2, seed=11)
        storage, keys = LocalStorage(tmp_path / "storage"), Keys.make(tmp_path / "keys")

        manifest = run_logical_backup(source, storage, [keys.recipient])
        assert manifest.source["server_version_num"] // 10000 == major
        assert sum(t.rows for t in manifest.tables) > 100

        target = cluster.create_database("restored", template="template0")
        restore_backup(storage, find_backup(storage, "latest"), keys.identities, target, work_dir=tmp_path / "work")
        assert_same_schema(source, target)
        assert_restored_equals_manifest(target, manifest)
    finally:
        cluster.remove()
