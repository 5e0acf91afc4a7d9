"""Base backups (pg_basebackup -Ft -X none) on a real cluster archiving its WAL through `drp` (issue 13, item 1).

One module-scoped archiving cluster (WalRig + `drp wal archiver`). A base backup taken, extracted and
started with the archive as restore_command recovers to exactly the rows the source had at the
backup's stop; pg_verifybackup passes on it and names a tampered file; a kill -9 mid-stream leaves
nothing complete and the next run sweeps it; a flipped byte fails the extraction naming the object;
a missing stop segment keeps it 'waiting for WAL'; each bad input is refused with its fix.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import (
    BackupKindError,
    BackupNotFoundError,
    find_backup,
    list_backups,
    pin_backup,
)
from dr_pipelines.core.backup.gfs import RetentionPolicy
from dr_pipelines.core.backup.integrity import manifest_problems, object_problems
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.backup.physical import BaseBackupOptions, run_base_backup
from dr_pipelines.core.backup.prune import prune_backups
from dr_pipelines.core.crypto import parse_recipients
from dr_pipelines.core.frames import KEY as FRAMES_KEY
from dr_pipelines.core.layout import BASE_OBJECT, backup_prefix
from dr_pipelines.core.manifest import MANIFEST_NAME, Manifest, write_manifest
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.guards import RestoreError
from dr_pipelines.core.restore.physical import extract_base_backup, verify_base_backup
from dr_pipelines.core.restore.untar import SafeUntar, TarFormatError, _writeback_starter
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines.core.stream import seal
from dr_pipelines.core.verified_read import CorruptObjectError
from dr_pipelines.core.wal.archive import fetch_wal
from dr_pipelines.core.wal.names import sidecar_key
from dr_pipelines_tests.support.procs import start_paused, wait_for
from dr_pipelines_tests.support.s3 import MotoServer
from dr_pipelines_tests.support.wal import WalRig, give_to_pg, in_recovery, pid_alive, start_recovering

ROWS = 60_000
PG_BASEBACKUP = BaseBackupOptions(method="pg_basebackup")  # the low-level method: test_base_backup_lowlevel.py


@pytest.fixture(scope="module")
def rig(work_base: Path) -> Iterator[WalRig]:
    with WalRig.archiving(work_base / f"bb-{uuid.uuid4().hex[:8]}") as rig:
        yield rig


@pytest.fixture(scope="module")
def cluster(rig: WalRig) -> Iterator[LocalCluster]:
    c = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("60s"), tcp_trust=True)
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE patients (id bigint PRIMARY KEY, name text, born date)")
        conn.execute("INSERT INTO patients SELECT g, md5(g::text), date '1950-01-01' + g %% 20000 "
                     "FROM generate_series(1, %s) g", (ROWS,))
        conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, patient bigint REFERENCES patients, body text)")
        conn.execute("INSERT INTO notes (patient, body) SELECT g % 1000 + 1, repeat(md5(g::text), 8) "
                     "FROM generate_series(1, 20000) g")
    yield c
    c.remove()


@pytest.fixture(scope="module")
def storage(rig: WalRig) -> Storage:
    return context.storage(rig.settings())


@pytest.fixture(scope="module")
def taken(rig: WalRig, cluster: LocalCluster, storage: Storage) -> tuple[Manifest, list]:
    """One base backup and the source's table checksums right after it (nothing written in between)."""
    progress: list[tuple[str, int, int | None]] = []
    manifest = run_base_backup(cluster.dsn(), storage, rig.settings().encryption_recipients, options=PG_BASEBACKUP,
                               progress=lambda *a: progress.append(a))
    checksums = database_checksums(cluster.dsn())
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:  # after the stop: must not be recovered
        conn.execute("INSERT INTO patients VALUES (%s, 'after the backup', now())", (ROWS + 1,))
    assert len(progress) >= 3 and progress[-1][1] == manifest.object("base").plain_bytes
    return manifest, checksums


def _drp(rig: WalRig, cluster: LocalCluster, *args: str, **env: str):
    return rig.drp(*args, DRP_SOURCE_DSN=cluster.dsn(), DRP_WORK_DIR=str(rig.root / "work"), **env)


def _entry(storage: Storage, backup_id: str):
    return next(e for e in list_backups(storage) if e.id == backup_id)


def test_manifest_records_the_backup_and_its_wal_becomes_archived(rig: WalRig, cluster: LocalCluster,
                                                                 storage: Storage, taken: tuple) -> None:
    manifest, _ = taken
    x = manifest.extra
    assert manifest.kind == "base-backup"
    assert [(o.key, o.role, o.format) for o in manifest.objects] == [(BASE_OBJECT, "base", "tar")]
    assert manifest_problems(manifest) == [] and object_problems(storage, backup_prefix(manifest.id), manifest) == []
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        sysid = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
        start_seg = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (x["start_lsn"],)).fetchone()[0]
        stop_seg = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (x["stop_lsn"],)).fetchone()[0]
    assert (x["system_identifier"], manifest.source["system_identifier"]) == (sysid, sysid)
    assert (x["timeline"], x["wal_start"], x["wal_stop"]) == (1, start_seg, stop_seg)
    assert x["segment_bytes"] == 16 * 1024 * 1024 and x["data_checksums"] is True and x["pg_version_num"] >= 150000
    assert x["start_time"] < x["stop_time"] and isinstance(x["next_xid"], int)
    assert (x["method"], x["method_note"]) == ("pg_basebackup", None) and "pg_basebackup" in manifest.tools
    entry = wait_for(lambda: (e := _entry(storage, manifest.id)).wal_archived and e, timeout=60, what="WAL archived",
                     interval=0.3)
    assert entry.kind == "base" and entry.status == "complete" and entry.restorable
    assert entry.restore_point.isoformat() == x["stop_time"]
    listed = _drp(rig, cluster, "backup", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["id"] == manifest.id)
    assert (row["kind"], row["status"]) == ("base", "complete")
    shown = _drp(rig, cluster, "backup", "show", manifest.id)
    assert shown.returncode == 0 and f"{x['start_lsn']} .. {x['stop_lsn']}" in shown.stdout, shown.stdout
    assert f"{x['wal_start']} .. {x['wal_stop']} (archived)" in shown.stdout


def test_round_trip_recovers_exactly_the_rows_at_the_backups_stop(rig: WalRig, storage: Storage, taken: tuple,
                                                                  tmp_path: Path) -> None:
    manifest, checksums = taken
    entry = wait_for(lambda: (e := _entry(storage, manifest.id)).wal_archived and e, timeout=60, what="WAL",
                     interval=0.3)
    data_dir = rig.root / f"restored-{uuid.uuid4().hex[:6]}"
    extract_base_backup(storage, entry, context.identities(rig.settings()), data_dir)
    assert data_dir.stat().st_mode & 0o777 == 0o700 and (data_dir / "backup_manifest").exists()
    modes = {path.stat().st_mode & 0o777 for path in data_dir.rglob("*") if path.is_dir()}
    assert modes == {0o700}  # as pg_basebackup wrote them (tarfile's data filter left them 0755)
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    for name in (manifest.extra["wal_start"], manifest.extra["wal_stop"]):
        fetch_wal(storage, context.identities(rig.settings()), name, wal_dir / name)
    assert verify_base_backup(data_dir, wal_dir) == []
    restored = start_recovering(rig, data_dir)
    try:
        wait_for(lambda: not in_recovery(restored), timeout=60, what="promotion", interval=0.3)
        assert database_checksums(restored.dsn()) == checksums
        with psycopg.connect(restored.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM patients WHERE id > %s", (ROWS,)).fetchone()[0] == 0
            assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"
    finally:
        restored.remove()


def test_pg_verifybackup_names_a_tampered_file(rig: WalRig, storage: Storage, taken: tuple) -> None:
    data_dir = rig.root / f"tampered-{uuid.uuid4().hex[:6]}"
    extract_base_backup(storage, _entry(storage, taken[0].id), context.identities(rig.settings()), data_dir)
    try:
        victim = data_dir / "global" / "pg_control"
        raw = bytearray(victim.read_bytes())
        raw[200] ^= 0xFF
        victim.write_bytes(bytes(raw))
        problems = verify_base_backup(data_dir)
        assert any('"global/pg_control"' in p and "checksum mismatch" in p for p in problems), problems
    finally:
        shutil.rmtree(data_dir)


def test_a_flipped_byte_fails_extraction_naming_the_object(rig: WalRig, cluster: LocalCluster, storage: Storage,
                                                           tmp_path: Path) -> None:
    manifest = run_base_backup(cluster.dsn(), storage, rig.settings().encryption_recipients,  # both methods store
                               options=BaseBackupOptions(method="lowlevel"))  # the same object: the other one here
    stored = rig.storage_dir / backup_prefix(manifest.id) / BASE_OBJECT
    original = stored.read_bytes()
    try:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        stored.write_bytes(bytes(flipped))
        with pytest.raises(CorruptObjectError, match=f"{manifest.id}/{BASE_OBJECT} is corrupted"):
            extract_base_backup(storage, _entry(storage, manifest.id), context.identities(rig.settings()),
                                tmp_path / "pgdata")
        assert not (tmp_path / "pgdata").exists()
    finally:
        stored.write_bytes(original)


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data), link, 0o600
    return info, data


def _with_fileobj(member: tuple[tarfile.TarInfo, bytes]) -> tuple[tarfile.TarInfo, io.BytesIO]:
    return member[0], io.BytesIO(member[1])


def _evil_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(*_with_fileobj(_member("PG_VERSION", data=b"15\n")))  # a harmless first member, written before the refusal
        for info, data in members:
            tar.addfile(*_with_fileobj((info, data)))
    return out.getvalue()


@pytest.mark.parametrize(("members", "refusal", "outside"), [
    ([_member("../escaped", data=b"x")], "'..' component", "escaped"),
    ([_member("{tmp}/absolute", data=b"x")], "absolute path", "absolute"),
    ([_member("pg_tblspc/16400", tarfile.SYMTYPE, link="{tmp}"), _member("pg_tblspc/16400/linked", data=b"x")],
     "symbolic link", "linked"),
    ([_member("global/../../escaped-link", tarfile.SYMTYPE, link="/etc/passwd")], "symbolic link", "escaped-link"),
    ([_member("pg_stat/dev", tarfile.CHRTYPE)], "character device", None),
    ([_member("PG_VERSION.hard", tarfile.LNKTYPE, link="/etc/passwd")], "hard link", None),
], ids=["dotdot", "absolute", "symlink-escape", "dotdot-symlink", "device", "hardlink"])
def test_an_unsafe_tar_member_is_refused_and_nothing_is_left(rig: WalRig, storage: Storage, taken: tuple,
                                                             tmp_path: Path, members: list, refusal: str,
                                                             outside: str | None) -> None:
    """A stored base backup object replaced by a validly encrypted tar with an unsafe member, and its manifest by
    one naming that object's size and SHA-256, without a frame table (anyone with the public recipient key and
    write access to storage can make both): refused naming the member, data dir gone."""
    members = [(info.replace(name=info.name.format(tmp=tmp_path), linkname=info.linkname.format(tmp=tmp_path)),
                data) for info, data in members]
    manifest = taken[0]
    prefix = backup_prefix(manifest.id)
    stored, manifest_file = rig.storage_dir / prefix / BASE_OBJECT, rig.storage_dir / prefix / MANIFEST_NAME
    original, original_manifest = stored.read_bytes(), manifest_file.read_bytes()
    try:
        evil = seal(_evil_tar(*members), parse_recipients(rig.settings().encryption_recipients), level=3)
        stored.write_bytes(evil)
        obj = dataclasses.replace(manifest.object("base"), bytes=len(evil), sha256=hashlib.sha256(evil).hexdigest())
        write_manifest(storage, prefix, dataclasses.replace(
            manifest, objects=[obj], extra={k: v for k, v in manifest.extra.items() if k != FRAMES_KEY}))
        with pytest.raises(RestoreError, match=f"cannot unpack .*{refusal}") as refused:
            extract_base_backup(storage, _entry(storage, manifest.id), context.identities(rig.settings()),
                                tmp_path / "pgdata")
        assert "fix:" in str(refused.value) and repr(members[0][0].name) in str(refused.value)  # named
        assert not (tmp_path / "pgdata").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing outside the data directory either
        if outside:
            assert not (tmp_path / outside).exists()
    finally:
        stored.write_bytes(original)
        manifest_file.write_bytes(original_manifest)


def test_an_object_replaced_under_its_manifest_is_refused_before_its_tar_is_read(
        rig: WalRig, storage: Storage, taken: tuple, tmp_path: Path) -> None:
    """The same unsafe tar without a matching manifest: the manifest's size says where the age payload ends, so
    its chunks fail to authenticate at once and the object is named corrupted (the hash decides); nothing left."""
    manifest = taken[0]
    stored = rig.storage_dir / backup_prefix(manifest.id) / BASE_OBJECT
    original = stored.read_bytes()
    try:
        stored.write_bytes(seal(_evil_tar(_member("../escaped", data=b"x")),
                                parse_recipients(rig.settings().encryption_recipients), level=3))
        with pytest.raises(CorruptObjectError, match="is corrupted"):
            extract_base_backup(storage, _entry(storage, manifest.id), context.identities(rig.settings()),
                                tmp_path / "pgdata")
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    finally:
        stored.write_bytes(original)


def test_not_restorable_while_its_stop_segment_is_not_archived(rig: WalRig, cluster: LocalCluster,
                                                               storage: Storage, taken: tuple) -> None:
    manifest = taken[0]
    sidecar = rig.storage_dir / sidecar_key(manifest.extra["wal_stop"])
    wait_for(sidecar.exists, timeout=60, what="stop segment archived", interval=0.3)
    saved = sidecar.read_bytes()
    sidecar.unlink()
    try:
        entry = _entry(storage, manifest.id)
        assert (entry.status, entry.restorable, entry.wal_archived) == ("waiting for WAL", False, False)
        with pytest.raises(BackupNotFoundError, match="waiting for WAL"):
            find_backup(storage, manifest.id, kind="base")
        assert all(e.id != manifest.id for e in list_backups(storage) if e.restorable)
        listed = _drp(rig, cluster, "backup", "list")
        assert "waiting for" in listed.stdout and manifest.id in listed.stdout, listed.stdout
    finally:
        sidecar.write_bytes(saved)
    assert _entry(storage, manifest.id).restorable


def test_kill_9_mid_stream_leaves_nothing_complete_and_the_next_run_sweeps_it(rig: WalRig, cluster: LocalCluster,
                                                                               storage: Storage) -> None:
    env = {"DRP_CONFIG": str(rig.config), "DRP_SOURCE_DSN": cluster.dsn()}
    before = {e.id for e in list_backups(storage)}
    proc = start_paused(["backup", "run", "--physical", "--method", "pg_basebackup", "--no-prune"], env,
                        "base-backup-mid-stream")
    partials = wait_for(lambda: list((rig.storage_dir / "backups").rglob(f".{BASE_OBJECT}.*.partial")), timeout=30,
                        what="upload under way", interval=0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {e.id for e in list_backups(storage) if e.complete} <= before  # nothing new counts as a backup
    killed_id = partials[0].parent.name
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:  # the orphaned pg_basebackup hit a broken pipe
        wait_for(lambda: conn.execute("SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'walsender'")
                 .fetchone()[0], timeout=30, what="walsender gone", interval=0.2)
    again = _drp(rig, cluster, "backup", "run", "--physical", "--method", "pg_basebackup", "--no-prune", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    ids = {e.id for e in list_backups(storage)}
    assert killed_id not in ids and summary["id"] in ids
    assert not partials[0].exists() and not list((rig.storage_dir / "backups").rglob("*.partial"))  # swept
    assert not pid_alive(proc.pid)


@pytest.fixture
def bad_cluster(work_base: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(work_base / f"bb-bad-{uuid.uuid4().hex[:6]}",
                            settings={"wal_level": "minimal", "max_wal_senders": "0"}, tcp_trust=True)
    yield c
    c.remove()


def _refused(result, *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "fix:" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_bad_inputs_are_refused_before_anything_runs(rig: WalRig, cluster: LocalCluster, storage: Storage,
                                                     bad_cluster: LocalCluster, taken: tuple, tmp_path: Path) -> None:
    other = {"DRP_STORAGE_URL": str(tmp_path / "other-prefix")}  # a prefix of its own: no source mismatch
    _refused(_drp(rig, bad_cluster, "backup", "run", "--physical", **other), "wal_level is 'minimal'")
    bad_cluster.write_settings({**bad_cluster._auto_conf(), "wal_level": "replica", "max_wal_senders": "10"})
    bad_cluster.stop()
    bad_cluster.start()
    _refused(_drp(rig, bad_cluster, "backup", "run", "--physical", **other), "archive_mode is off")
    bad_cluster.write_settings({**bad_cluster._auto_conf(), "archive_mode": "on"})  # and no archive_command
    bad_cluster.stop()
    bad_cluster.start()
    _refused(_drp(rig, bad_cluster, "backup", "run", "--physical", **other), "archive_command and archive_library are empty")
    _refused(_drp(rig, cluster, "backup", "run", "--physical", "--slot", "nope"), "replication slot 'nope' does not exist")
    space = rig.root / f"space-{uuid.uuid4().hex[:6]}"  # reachable by the postgres OS user
    space.mkdir()
    give_to_pg(space)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE bb_space LOCATION '{space}'")
        try:
            _refused(_drp(rig, cluster, "backup", "run", "--physical"), "user tablespaces (bb_space)")
        finally:
            conn.execute("DROP TABLESPACE bb_space")
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "backups").mkdir()
    (mismatch / "backups" / "SOURCE.json").write_text(json.dumps(
        {"system_identifier": "1234", "database": "postgres", "server": "elsewhere:5432/postgres"}))
    _refused(_drp(rig, cluster, "backup", "run", "--physical", DRP_STORAGE_URL=str(mismatch)),
             "system identifier 1234", "--source-replaced")
    base_id = taken[0].id
    _refused(_drp(rig, cluster, "restore", base_id, "--target", cluster.dsn("nowhere")),
             f"backup {base_id} is a base backup", "--pitr")
    logical = run_logical_backup(cluster.dsn(), storage, rig.settings().encryption_recipients).id  # and vice versa
    with pytest.raises(BackupKindError, match=f"backup {logical} is a logical backup"):
        find_backup(storage, logical, kind="base")
    with pytest.raises(RestoreError, match="is not a base backup"):
        extract_base_backup(storage, _entry(storage, logical), context.identities(rig.settings()), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not list((tmp_path / "other-prefix").rglob("manifest.json"))


def test_s3_take_and_extract(rig: WalRig, cluster: LocalCluster, s3_server: MotoServer, s3_bucket: str,
                             tmp_path: Path) -> None:
    s3 = S3Storage(s3_bucket, prefix="bb", **s3_server.storage_kwargs())
    manifest = run_base_backup(cluster.dsn(), s3, rig.settings().encryption_recipients)
    entry = _entry(s3, manifest.id)
    assert entry.status == "waiting for WAL"  # this prefix has no WAL archive: never restorable
    extract_base_backup(s3, entry, context.identities(rig.settings()), tmp_path / "pgdata")
    assert verify_base_backup(tmp_path / "pgdata") == []


def test_a_pinned_base_backup_survives_prune(rig: WalRig, cluster: LocalCluster, storage: Storage,
                                            taken: tuple) -> None:
    oldest = taken[0].id
    pin_backup(storage, oldest, reason="legal hold", by="test")
    newest = run_base_backup(cluster.dsn(), storage, rig.settings().encryption_recipients).id
    wait_for(lambda: _entry(storage, newest).restorable, timeout=60, what="WAL of the newest", interval=0.3)
    result = prune_backups(storage, RetentionPolicy(keep_last=1), dry_run=False)
    left = {e.id for e in list_backups(storage)}
    assert {oldest, newest} <= left and result.deleted and not set(result.deleted) & left


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_the_untar_reads_long_names_of_every_tar_format_in_any_chunking(tmp_path: Path, tar_format: int) -> None:
    """What pg_basebackup, GNU tar or Python write (GNU long names, pax headers, ustar prefixes, `./`), fed in
    odd-sized chunks as the decompressor hands them over: the same bytes as tarfile reads, modes never others'."""
    long_name = "base/16384/" + "d" * 90 + "/" + ("f" * 120 if tar_format != tarfile.USTAR_FORMAT else "f" * 60)
    members = {"./global/pg_control": os.urandom(8192), long_name: os.urandom(70_000), "empty": b""}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as tar:
        tar.addfile(_member("./", tarfile.DIRTYPE)[0])
        for name, data in members.items():
            info, _ = _member(name, data=data)
            tar.addfile(info.replace(mode=0o644), io.BytesIO(data))
    raw, untar = out.getvalue(), SafeUntar(tmp_path)
    for at in range(0, len(raw), 777):
        untar.write(raw[at:at + 777])
    untar.finish()
    untar.close()
    for name, data in members.items():
        assert (tmp_path / name).read_bytes() == data and (tmp_path / name).stat().st_mode & 0o777 == 0o640
    untar = SafeUntar(tmp_path / "truncated")
    (tmp_path / "truncated").mkdir()
    untar.write(raw[:1536])
    with pytest.raises(TarFormatError, match="truncated"):
        untar.finish()
    untar.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_untar_starts_each_files_writeback_and_reports_its_errors(tmp_path: Path) -> None:
    """On Linux the extraction only starts the writeback (PostgreSQL's start-up sync makes it durable): through
    libc's sync_file_range, whose failure raises like fdatasync's would (a closed descriptor here)."""
    start = _writeback_starter()
    assert start is not os.fdatasync
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(1 << 16))
    start(fd)
    os.close(fd)
    with pytest.raises(OSError) as failed:
        start(fd)
    assert failed.value.errno == errno.EBADF
