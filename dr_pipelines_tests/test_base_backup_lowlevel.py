"""Base backups through the low-level API (core/backup/lowlevel.py) on real clusters archiving through `drp`.

One module-scoped archiving cluster. The backup is taken while a writer commits as fast as it can,
a table is dropped mid-stream (its files shrink or vanish), a temporary table and a temporary file
exist, and an unlogged table holds rows. Extracted and started with the archive as restore_command,
it recovers to exactly the rows the source had when the backup stopped; pg_verifybackup passes on
the backup_manifest drp wrote and names a tampered file; PostgreSQL's exclusions hold. A kill -9
mid-stream counts nothing and ends the server's backup session (a flipped byte in a low-level backup:
test_base_backup.py, test_a_flipped_byte_fails_extraction_naming_the_object).
`drp` in a mount namespace of its own sees nothing, another cluster, or a copy of this one at the
data directory's path: `auto` falls back to pg_basebackup, `lowlevel` refuses, naming why.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import crc32c
import psycopg
import pytest

from dr_pipelines.core import checkpoints, context
from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.backup.lowlevel import DataDirTar, wait_for_archive
from dr_pipelines.core.backup.physical import BaseBackupOptions, run_base_backup
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.physical import extract_base_backup, verify_base_backup
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import fetch_wal
from dr_pipelines.core.wal.names import Segment, parse_lsn
from dr_pipelines_tests.support.procs import BIN, start_paused, wait_for
from dr_pipelines_tests.support.wal import WalRig, in_recovery, start_recovering

ROWS = 40_000
LOWLEVEL = BaseBackupOptions(method="lowlevel")


@pytest.fixture(scope="module")
def rig(work_base: Path) -> Iterator[WalRig]:
    with WalRig.archiving(work_base / f"ll-{uuid.uuid4().hex[:8]}") as rig:
        yield rig


@pytest.fixture(scope="module")
def cluster(rig: WalRig) -> Iterator[LocalCluster]:
    c = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("60s"), tcp_trust=True)
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE patients (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO patients SELECT g, md5(g::text) FROM generate_series(1, %s) g", (ROWS,))
        conn.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, note text)")
        conn.execute("CREATE TABLE victim AS SELECT g, repeat(md5(g::text), 4) AS body FROM generate_series(1, 20000) g")
        conn.execute("VACUUM victim")  # its fsm and vm forks too
        conn.execute("CREATE UNLOGGED TABLE sessions AS SELECT g AS id FROM generate_series(1, 5000) g")
    yield c
    c.remove()


@pytest.fixture(scope="module")
def storage(rig: WalRig) -> Storage:
    return context.storage(rig.settings())


def _write_until(dsn: str, stop: threading.Event, written: list[int]) -> None:
    """A pgbench-like writer: one committed INSERT and UPDATE after another until told to stop."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            with conn.transaction():
                conn.execute("INSERT INTO ledger (note) SELECT md5(random()::text) FROM generate_series(1, 50)")
                conn.execute("UPDATE patients SET name = md5(random()::text) WHERE id = 1 + (random() * %s)::int",
                             (ROWS - 1,))
            written.append(1)


def _comparable(checksums: list) -> dict[str, tuple[int, str]]:
    """Table checksums to compare, without the unlogged table (restored empty by design)."""
    return {c.name: (c.rows, c.checksum) for c in checksums if c.name != "public.sessions"}


@pytest.fixture(scope="module")
def taken(rig: WalRig, cluster: LocalCluster, storage: Storage) -> tuple[Manifest, dict, str]:
    """The backup under load: writer running until the last data file is read, `victim` dropped mid-stream.

    Returns the manifest, the source's checksums when the writer stopped (nothing commits between that
    and pg_backup_stop, so recovery to the stop point must give exactly these) and the temporary
    relation's file.
    """
    hold = psycopg.connect(cluster.dsn(), autocommit=True)  # its temporary table exists during the backup
    hold.execute("CREATE TEMP TABLE scratch AS SELECT g FROM generate_series(1, 1000) g")
    temp_rel = hold.execute("SELECT pg_relation_filepath('scratch')").fetchone()[0]
    assert (cluster.data_dir / temp_rel).exists() and Path(temp_rel).name.startswith("t")
    tmp_dir = cluster.data_dir / "base" / "pgsql_tmp"
    tmp_dir.mkdir(exist_ok=True)
    (tmp_dir / "pgsql_tmp4242.0").write_bytes(b"x" * 8192)
    stop, written, seen = threading.Event(), [], {}
    writer = threading.Thread(target=_write_until, args=(cluster.dsn(), stop, written))

    def observe(point: str) -> None:
        if seen.get("active") and point == "base-backup-mid-stream":
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("DROP TABLE victim")
            seen["dropped_after"] = len(written)
        elif seen.get("active") and point == "base-backup-before-stop":
            stop.set()
            writer.join()
            seen["checksums"] = database_checksums(cluster.dsn())

    checkpoints.observe(observe)
    seen["active"] = True
    writer.start()
    wait_for(lambda: len(written) >= 5, timeout=30, what="writer under way", interval=0.05)
    try:
        manifest = run_base_backup(cluster.dsn(), storage, rig.settings().encryption_recipients, options=LOWLEVEL)
    finally:
        seen["active"] = False
        stop.set()
        writer.join()
        hold.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    assert "dropped_after" in seen and "checksums" in seen
    assert len(written) > seen["dropped_after"] > 5  # the writer committed before, during and after the drop
    # It returned only once PostgreSQL had archived what pg_backup_stop(wait_for_archive => true) waits for
    # (drp waits for it itself): the stop segment and the backup history file, by the names the server wrote.
    x = manifest.extra
    history = f"{x['wal_start']}.{parse_lsn(x['start_lsn']) % x['segment_bytes']:08X}.backup"
    status = cluster.data_dir / "pg_wal" / "archive_status"
    assert (status / f"{x['wal_stop']}.done").exists() and (status / f"{history}.done").exists()
    assert _entry(storage, manifest.id).wal_archived  # no wait: archived means stored by `drp wal push`
    return manifest, _comparable(seen["checksums"]), temp_rel


def _entry(storage: Storage, backup_id: str):
    return next(e for e in list_backups(storage) if e.id == backup_id)


def _extract(rig: WalRig, storage: Storage, backup_id: str, name: str) -> Path:
    entry = wait_for(lambda: (e := _entry(storage, backup_id)).wal_archived and e, timeout=60, what="WAL archived",
                     interval=0.3)
    data_dir = rig.root / f"{name}-{uuid.uuid4().hex[:6]}"
    extract_base_backup(storage, entry, context.identities(rig.settings()), data_dir)
    return data_dir


def test_under_load_it_recovers_exactly_the_rows_at_the_stop_and_pg_verifybackup_passes(
        rig: WalRig, storage: Storage, taken: tuple, tmp_path: Path) -> None:
    manifest, checksums, _ = taken
    x = manifest.extra
    assert (x["method"], x["method_note"], manifest.object("base").format) == ("lowlevel", None, "tar")
    assert "pg_basebackup" not in manifest.tools
    data_dir = _extract(rig, storage, manifest.id, "restored")
    start, stop = Segment.parse(x["wal_start"]), Segment.parse(x["wal_stop"])
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    for segment in [start, *start.following(stop.number() - start.number())]:
        fetch_wal(storage, context.identities(rig.settings()), segment.name, wal_dir / segment.name)
    assert verify_base_backup(data_dir, wal_dir) == []  # our backup_manifest, checked by PostgreSQL's tool
    restored = start_recovering(rig, data_dir)
    try:
        wait_for(lambda: not in_recovery(restored), timeout=60, what="promotion", interval=0.3)
        assert _comparable(database_checksums(restored.dsn())) == checksums
        assert "public.victim" not in checksums
        with psycopg.connect(restored.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0  # unlogged: reset, as PostgreSQL does
            assert conn.execute("SELECT to_regclass('victim')").fetchone()[0] is None
    finally:
        restored.remove()


def test_postgresql_exclusions_hold(rig: WalRig, cluster: LocalCluster, storage: Storage, taken: tuple) -> None:
    data_dir = _extract(rig, storage, taken[0].id, "excl")
    try:
        files = {str(p.relative_to(data_dir)) for p in data_dir.rglob("*")}
        assert not {"postmaster.pid", "postmaster.opts"} & files
        assert "backup_label" in files and "global/pg_control" in files and "backup_manifest" in files
        assert not [f for f in files if "pgsql_tmp" in f]
        assert taken[2] not in files and not [f for f in files if Path(f).name.startswith("t") and
                                               Path(f).parent.parent.name == "base"]
        assert {"pg_wal", "pg_wal/archive_status", "pg_stat_tmp", "pg_replslot", "pg_subtrans"} <= files
        assert [f for f in files if f.startswith(("pg_wal/", "pg_subtrans/", "pg_stat_tmp/"))] == ["pg_wal/archive_status"]
        with psycopg.connect(cluster.dsn()) as conn:
            unlogged = conn.execute("SELECT pg_relation_filepath('sessions')").fetchone()[0]
        assert f"{unlogged}_init" in files and unlogged not in files  # the init fork only
        listed = {f["Path"] for f in json.loads((data_dir / "backup_manifest").read_text())["Files"]}
        assert listed == {f for f in files if (data_dir / f).is_file()} - {"backup_manifest"}
    finally:
        shutil.rmtree(data_dir)


def test_pg_verifybackup_names_a_tampered_file(rig: WalRig, cluster: LocalCluster, storage: Storage,
                                              taken: tuple) -> None:
    data_dir = _extract(rig, storage, taken[0].id, "tampered")
    try:
        with psycopg.connect(cluster.dsn()) as conn:
            victim = data_dir / conn.execute("SELECT pg_relation_filepath('patients')").fetchone()[0]
        raw = bytearray(victim.read_bytes())
        raw[100] ^= 0xFF
        victim.write_bytes(bytes(raw))
        problems = verify_base_backup(data_dir)
        name = str(victim.relative_to(data_dir))
        assert any(f'"{name}"' in p and "checksum mismatch" in p for p in problems), problems
    finally:
        shutil.rmtree(data_dir)


def _backup_sessions(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_backup_start%%' "
                        "AND pid <> pg_backend_pid()").fetchone()[0]


def test_kill_9_mid_stream_counts_nothing_and_ends_the_servers_backup_session(
        rig: WalRig, cluster: LocalCluster, storage: Storage, taken: tuple) -> None:
    env = {"DRP_CONFIG": str(rig.config), "DRP_SOURCE_DSN": cluster.dsn()}
    before = {e.id for e in list_backups(storage) if e.complete}
    proc = start_paused(["backup", "run", "--physical", "--method", "lowlevel", "--no-prune"], env,
                        "base-backup-mid-stream")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert _backup_sessions(conn) == 1  # paused inside the server's backup
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: _backup_sessions(conn) == 0, timeout=30, what="backup session ended", interval=0.1)
    assert {e.id for e in list_backups(storage) if e.complete} == before
    again = rig.drp("backup", "run", "--physical", "--no-prune", "--json", DRP_SOURCE_DSN=cluster.dsn())
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["method"] == "lowlevel" and summary["id"] in {e.id for e in list_backups(storage) if e.complete}
    shown = rig.drp("backup", "show", summary["id"])
    assert shown.returncode == 0 and "method lowlevel" in " ".join(shown.stdout.split()), shown.stdout
    assert not list((rig.storage_dir / "backups").rglob("*.partial"))


def _drp_seeing(rig: WalRig, mount: list[str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`drp args` in a mount namespace of its own, where ``mount`` (mount(8) arguments) changes what it finds at
    the source's data directory path: what another host would show there. The server sees its own files."""
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (root or CAP_SYS_ADMIN) to show drp another data directory at that path")
    script = f"mount {' '.join(shlex.quote(a) for a in mount)} && exec \"$0\" \"$@\""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(BIN / "drp"), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DRP_CONFIG": str(rig.config), **env})


def _refused(result, *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "fix:" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_auto_falls_back_to_pg_basebackup_when_the_data_directory_is_not_here(
        rig: WalRig, cluster: LocalCluster, tmp_path: Path) -> None:
    empty = ["-t", "tmpfs", "none", str(cluster.data_dir)]  # as on a backup host: nothing at that path
    env = {"DRP_SOURCE_DSN": cluster.dsn(), "DRP_STORAGE_URL": str(tmp_path / "fallback")}
    _refused(_drp_seeing(rig, empty, "backup", "run", "--physical", "--method", "lowlevel", "--no-prune", **env),
             f"data directory {cluster.data_dir} is not readable here", "pg_basebackup")
    result = _drp_seeing(rig, empty, "backup", "run", "--physical", "--no-prune", "--json", **env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == "pg_basebackup"
    assert "auto chose pg_basebackup" in result.stderr and "not readable here" in result.stderr
    shown = rig.drp("backup", "show", json.loads(result.stdout)["id"], "--json", **env)
    manifest = json.loads(shown.stdout)
    assert manifest["extra"]["method"] == "pg_basebackup" and "pg_basebackup" in manifest["tools"]
    assert "not readable here" in manifest["extra"]["method_note"]


def test_lowlevel_refuses_other_files_at_the_data_directory_path(
        rig: WalRig, cluster: LocalCluster, storage: Storage, taken: tuple, tmp_path: Path) -> None:
    other = LocalCluster.create(rig.root / f"other-{uuid.uuid4().hex[:6]}", start=False, tcp_trust=True)
    copy = _extract(rig, storage, taken[0].id, "copy")  # this cluster's files (same system identifier), no server
    env = {"DRP_SOURCE_DSN": cluster.dsn(), "DRP_STORAGE_URL": str(tmp_path / "wrong")}
    try:
        _refused(_drp_seeing(rig, ["--bind", str(other.data_dir), str(cluster.data_dir)],
                             "backup", "run", "--physical", "--method", "lowlevel", "--no-prune", **env),
                 f"not the source's {taken[0].extra['system_identifier']}", "another cluster sits at that path")
        _refused(_drp_seeing(rig, ["--bind", str(copy), str(cluster.data_dir)],
                             "backup", "run", "--physical", "--method", "lowlevel", "--no-prune", **env),
                 "is not the data directory of the server drp is connected to")
    finally:
        other.remove()
        shutil.rmtree(copy)
    assert not list((tmp_path / "wrong").rglob("manifest.json"))


def test_the_tar_skips_vanished_files_pads_shrunk_ones_and_cuts_grown_ones(tmp_path: Path) -> None:
    """DataDirTar on a plain directory, read in steps so files change between the listing and their read."""
    root = tmp_path / "data"
    (root / "global").mkdir(parents=True)
    (root / "global" / "pg_control").write_bytes(b"c" * 8192)
    (root / "base" / "1").mkdir(parents=True)
    names = ["f1", "f2", "f3", "f4"]
    original = {n: n[1].encode() * 3_000_000 for n in names}
    for n in names:
        (root / "base" / "1" / n).write_bytes(original[n])
    label = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nSTART TIMELINE: 1\n"
    tar = DataDirTar(root, lambda: ("0/3000100", label, ""))
    out, opened = io.BytesIO(), []
    while piece := tar.read(512):  # each header comes alone: change files between their lstat and read
        out.write(piece)
        if len(piece) == 512 and piece[257:262] == b"ustar":
            info = tarfile.TarInfo.frombuf(piece, "utf-8", "surrogateescape")
            if not (info.isfile() and info.name.startswith("base/1/")):
                continue
            opened.append(info.name.rsplit("/", 1)[1])
            path = root / "base" / "1" / opened[-1]
            if len(opened) == 1:  # base/1 is listed: one of the files not yet reached goes away
                gone = next(n for n in names if n != opened[0])
                (root / "base" / "1" / gone).unlink()
            elif len(opened) == 2:  # its header says 3 MB: it is truncated before its first read
                path.write_bytes(original[opened[-1]][:1000])
            elif len(opened) == 3:
                with open(path, "ab") as f:
                    f.write(b"+" * 100_000)
    first, shrunk, grown = opened
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(members["backup_manifest"])
    listed = {f["Path"]: (f["Size"], f["Checksum"]) for f in manifest["Files"]}
    assert f"base/1/{gone}" not in members and f"base/1/{gone}" not in listed  # vanished: skipped
    assert members[f"base/1/{shrunk}"] == original[shrunk][:1000] + bytes(3_000_000 - 1000)  # padded with zeros
    assert members[f"base/1/{grown}"] == original[grown] and members[f"base/1/{first}"] == original[first]
    for path, data in members.items():
        if path != "backup_manifest":
            assert listed[path] == (len(data), crc32c.crc32c(data).to_bytes(4, "little").hex()), path
    assert list(members)[-3:] == ["global/pg_control", "backup_label", "backup_manifest"]
    assert manifest["WAL-Ranges"] == [{"Timeline": 1, "Start-LSN": "0/3000028", "End-LSN": "0/3000100"}]


def test_wait_for_archive_returns_when_the_status_turns_done_and_names_what_it_waits_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server's test (XLogArchiveIsBusy) on a plain directory: .ready waits, .done or a file gone from pg_wal does not."""
    status = tmp_path / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    segment, history = "000000010000000000000007", "000000010000000000000005.00000028.backup"
    (tmp_path / "pg_wal" / segment).write_bytes(b"w")
    (status / f"{segment}.ready").touch()
    (status / f"{history}.done").touch()
    gone = "000000010000000000000002"  # recycled already: no file and no status, so archived

    def archive() -> None:
        (status / f"{segment}.ready").rename(status / f"{segment}.done")

    timer = threading.Timer(0.4, archive)
    started = time.monotonic()
    timer.start()
    with caplog.at_level("WARNING", logger="dr_pipelines.core.backup.lowlevel"):
        wait_for_archive(tmp_path, [segment, history, gone], poll=0.01, notice_after=0.1)
    waited = time.monotonic() - started
    timer.join()
    assert 0.4 <= waited < 1.0  # it waited for the rename, and returned well inside the server's 1 s poll
    assert [r.getMessage() for r in caplog.records if segment in r.getMessage() and history not in r.getMessage()]
    caplog.clear()
    started = time.monotonic()
    (tmp_path / "pg_wal" / "000000010000000000000008").write_bytes(b"w")  # no status yet: not archived
    blocked = threading.Thread(target=wait_for_archive, args=(tmp_path, ["000000010000000000000008"]),
                               kwargs={"poll": 0.01}, daemon=True)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()
    (status / "000000010000000000000008.done").touch()
    blocked.join(2)
    assert not blocked.is_alive()
