"""The WAL archive is bound to one cluster (its system identifier), and only real segments go in.

Real PostgreSQL: the system identifier read from a segment's long page header equals
pg_control_system()'s; a second cluster archiving into the same prefix is refused loudly (named,
with an event) while the first one's archive stays intact; backups/SOURCE.json binds the archive
too; a file named like a segment but of the wrong size or content, or a name PostgreSQL never
archives, is refused with a clear error and no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dr_pipelines.core.backup.catalog import SourceMismatchError, check_source, record_source
from dr_pipelines.core.crypto import generate_identity_file, parse_recipients
from dr_pipelines.core.layout import wal_system_key
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.wal.archive import push_wal
from dr_pipelines.core.wal.binding import WalForeignSystemError
from dr_pipelines.core.wal.header import read_segment_header
from dr_pipelines.core.wal.names import object_key, sidecar_key
from dr_pipelines_tests.support.procs import wait_for
from dr_pipelines_tests.support.wal import (
    WalRig,
    archiver_stats,
    pg_wal_file,
    switch_wal,
    system_identifier,
    wait_archived,
)


@pytest.fixture(scope="module")
def rig(work_base: Path) -> WalRig:
    return WalRig.make(work_base / f"wal-sys-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def cluster(rig: WalRig) -> Iterator[LocalCluster]:
    c = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("0"), tcp_trust=True)
    yield c
    c.remove()


def events(rig: WalRig, kind: str) -> list[dict]:
    folder = rig.storage_dir / "wal" / "events"
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*.{kind}.json"))] if folder.exists() else []


def test_the_segment_header_holds_the_clusters_system_identifier(rig: WalRig, cluster: LocalCluster) -> None:
    name = switch_wal(cluster)
    header = read_segment_header(pg_wal_file(cluster, name), name)
    assert header.system_identifier == system_identifier(cluster)
    assert (header.segment_bytes, header.block_bytes, header.timeline) == (16 * 1024 * 1024, 8192, 1)
    wait_archived(cluster, name)
    bound = json.loads((rig.storage_dir / wal_system_key()).read_text())
    assert bound["system_identifier"] == system_identifier(cluster)
    assert json.loads((rig.storage_dir / sidecar_key(name)).read_text())["system_identifier"] == bound["system_identifier"]


def test_a_second_cluster_archiving_into_the_same_prefix_is_refused(rig: WalRig, cluster: LocalCluster) -> None:
    """Its segment names are free in the archive (retention pruned the first cluster's oldest ones,
    as it does in any long-lived archive): without the binding they would be stored, mixing two
    clusters' WAL under one timeline."""
    first = [switch_wal(cluster) for _ in range(4)]
    wait_archived(cluster, first[-1])
    for path in (rig.storage_dir / "wal" / "00000001").iterdir():  # "retention": the oldest segments are gone
        if path.name[:24] < first[-1]:
            path.unlink()
    kept = {p: p.read_bytes() for p in (rig.storage_dir / "wal").rglob("*") if p.is_file()}

    other = LocalCluster.create(rig.root / "pg-other", settings=rig.cluster_settings("0"), tcp_trust=True)
    try:
        intruder = switch_wal(other)
        assert intruder < first[-1]  # a name the archive does not hold any more
        wait_for(lambda: archiver_stats(other)[2] > 0, timeout=60, what="the second cluster's refused push")
        assert archiver_stats(other)[:2] == (None, 0)  # nothing of it archived
        refused = [e for e in events(rig, "foreign-system") if e["system_identifier"] == system_identifier(other)]
        assert refused and refused[0]["bound_to"] == {wal_system_key(): system_identifier(cluster)}
        push = rig.drp("wal", "push", str(other.data_dir / "pg_wal" / intruder))
        assert push.returncode == 1 and "Traceback" not in push.stderr
        assert system_identifier(other) in push.stderr and system_identifier(cluster) in push.stderr
        assert "own storage prefix" in push.stderr
    finally:
        other.remove()
    assert not (rig.storage_dir / object_key(intruder)).exists()
    for path, data in kept.items():  # the first cluster's archive is untouched (events aside)
        assert path.read_bytes() == data
    latest = switch_wal(cluster)  # and it goes on archiving
    wait_archived(cluster, latest)
    verify = rig.drp("wal", "verify", "--start", first[-1], "--json", DRP_SOURCE_DSN=cluster.dsn())
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout


def test_backups_source_binds_an_empty_wal_archive(cluster: LocalCluster, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    record_source(storage, {"system_identifier": "6999999999999999999", "database": "clinic", "server": "db1"})
    name = switch_wal(cluster)
    recipients = parse_recipients([generate_identity_file(tmp_path / "key.txt")])
    with pytest.raises(WalForeignSystemError, match="6999999999999999999") as refused:
        push_wal(storage, recipients, cluster.data_dir / "pg_wal" / name)
    assert "backups/SOURCE.json" in str(refused.value)
    assert not storage.exists(object_key(name)) and not storage.exists(wal_system_key())


def test_a_backup_of_another_cluster_is_refused_by_the_wal_binding(rig: WalRig, cluster: LocalCluster) -> None:
    """The other direction: the prefix's WAL archive names the cluster, so a backup of another one is refused
    before it writes (check_source, which every backup calls)."""
    wait_archived(cluster, switch_wal(cluster))
    storage = LocalStorage(rig.storage_dir)
    mine = {"system_identifier": system_identifier(cluster), "database": "postgres", "server": "here"}
    check_source(storage, mine)
    with pytest.raises(SourceMismatchError, match=f"{wal_system_key()}.*one prefix holds one cluster"):
        check_source(storage, {**mine, "system_identifier": "6999999999999999999"})


@pytest.mark.parametrize(("label", "mutate", "message"), [
    ("truncated", lambda data: data[: len(data) // 2], "its header says segments are 16,777,216 bytes"),
    ("not a segment", lambda data: b"\0" * len(data), "does not start with a WAL segment header"),
    ("another segment's pages", None, "holds the pages of another segment"),
])
def test_push_refuses_a_file_that_is_not_the_segment_its_name_says(rig: WalRig, cluster: LocalCluster, tmp_path: Path,
                                                                  label: str, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    names = [switch_wal(cluster) for _ in range(2)]
    data = pg_wal_file(cluster, names[0])
    fake = tmp_path / names[1]  # named like the newer segment
    fake.write_bytes(mutate(data) if mutate else data)
    result = rig.drp("wal", "push", str(fake))
    assert result.returncode == 2, result.stderr
    assert names[1] in result.stderr and message in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_refuses_a_name_postgresql_never_archives(rig: WalRig, tmp_path: Path) -> None:
    stray = tmp_path / "postgresql.conf"
    stray.write_text("archive_mode = on\n")
    result = rig.drp("wal", "push", str(stray))
    assert result.returncode == 2 and "not a WAL file name" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((rig.storage_dir / "wal").rglob("postgresql.conf*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the archiver runs as another user than the backups")
def test_a_backups_folder_the_archiver_may_not_read_does_not_stop_archiving(rig: WalRig, cluster: LocalCluster) -> None:
    """Backups run as root into 0700 folders (the demo); archive_command runs as postgres. It cannot read
    backups/SOURCE.json: wal/SYSTEM.json binds it, and the backup side checks the WAL binding instead."""
    record_source(LocalStorage(rig.storage_dir), {"system_identifier": system_identifier(cluster),
                                                 "database": "postgres", "server": "here"})
    try:
        name = switch_wal(cluster)
        wait_archived(cluster, name, timeout=30)
    finally:
        shutil.rmtree(rig.storage_dir / "backups")
