"""WAL archiving on a real PostgreSQL (archive_mode=on, archive_command = our client / `drp wal push`).

Local storage: segments arrive encrypted and round-trip byte-exact through `drp wal fetch`; an identical
re-push is a no-op, a different one a loud refusal; kill -9 of the archiver mid-push loses nothing;
a deleted segment is named by `drp wal verify`; a flipped byte makes fetch refuse naming the segment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.crypto import parse_recipients
from dr_pipelines.core.pg.cluster import LocalCluster, server_python
from dr_pipelines.core.wal import client
from dr_pipelines.core.wal.archive import fetch_wal, push_wal
from dr_pipelines.core.wal.names import Segment, object_key, sidecar_key
from dr_pipelines_tests.support.procs import PAUSED, wait_for, wait_for_line
from dr_pipelines_tests.support.wal import (
    WalRig,
    archiver_stats,
    pg_wal_file,
    pid_alive,
    switch_wal,
    wait_archived,
)


@pytest.fixture(scope="module")
def rig(work_base: Path) -> WalRig:
    return WalRig.make(work_base / f"wal-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def cluster(rig: WalRig) -> Iterator[LocalCluster]:
    c = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings(), tcp_trust=True)  # the archiver runs as postgres
    yield c
    c.remove()


def stored(rig: WalRig, key: str) -> Path:
    return rig.storage_dir / key


def test_segments_are_archived_encrypted_and_fetch_back_byte_exact(rig: WalRig, cluster: LocalCluster,
                                                                   tmp_path: Path) -> None:
    names = [switch_wal(cluster) for _ in range(2)]
    wait_archived(cluster, names[-1])
    settings = rig.settings()
    for i, name in enumerate(names):
        ciphertext = stored(rig, object_key(name)).read_bytes()
        assert ciphertext.startswith(b"age-encryption.org/v1")
        sidecar = json.loads(stored(rig, sidecar_key(name)).read_text())
        original = pg_wal_file(cluster, name)
        assert sidecar["plain_bytes"] == len(original) == 16 * 1024 * 1024
        if i == 0:  # the restore_command path, once
            result = rig.drp("wal", "fetch", name, str(tmp_path / name))
            assert result.returncode == 0, result.stderr
        else:
            fetch_wal(context.storage(settings), context.identities(settings), name, tmp_path / name)
        assert (tmp_path / name).read_bytes() == original
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600


def test_fetch_prefetches_the_next_segments_into_a_private_spool(rig: WalRig, cluster: LocalCluster,
                                                                 tmp_path: Path) -> None:
    names = [switch_wal(cluster) for _ in range(3)]
    wait_archived(cluster, names[-1])
    spool = tmp_path / "spool"
    first = rig.drp("wal", "fetch", names[0], str(tmp_path / names[0]), "--spool", str(spool), "--prefetch", "2")
    assert first.returncode == 0, first.stderr
    assert "restored from archive" in first.stderr
    assert spool.stat().st_mode & 0o777 == 0o700
    following = [s.name for s in Segment.parse(names[0]).following(2)]  # = names[1:] unless a timeout switched
    assert sorted(p.name for p in spool.iterdir()) == following
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in spool.iterdir())
    second = rig.drp("wal", "fetch", following[0], str(tmp_path / following[0]), "--spool", str(spool),
                     "--prefetch", "2")
    assert second.returncode == 0 and "restored from spool" in second.stderr, second.stderr
    for name in (names[0], following[0]):
        assert (tmp_path / name).read_bytes() == pg_wal_file(cluster, name)
    assert following[0] not in [p.name for p in spool.iterdir()]  # moved out, not copied


def test_identical_repush_is_a_no_op_and_different_content_is_refused(rig: WalRig, cluster: LocalCluster,
                                                                      tmp_path: Path) -> None:
    name = switch_wal(cluster)
    wait_archived(cluster, name)
    before = stored(rig, object_key(name)).read_bytes(), stored(rig, sidecar_key(name)).read_bytes()

    same = rig.drp("wal", "push", str(cluster.data_dir / "pg_wal" / name))
    assert same.returncode == 0, same.stderr
    assert f"{name}: exists" in same.stderr

    forged = tmp_path / name
    data = bytearray(pg_wal_file(cluster, name))
    data[4096] ^= 0xFF
    forged.write_bytes(bytes(data))
    different = rig.drp("wal", "push", str(forged))
    assert different.returncode != 0
    assert name in different.stderr and "different content" in different.stderr
    assert "Traceback" not in different.stderr
    assert (stored(rig, object_key(name)).read_bytes(), stored(rig, sidecar_key(name)).read_bytes()) == before
    events = [p.name for p in (rig.storage_dir / "wal" / "events").iterdir()]
    assert any(e.endswith(f"{name}.conflict.json") for e in events)


def test_kill_9_of_the_archiver_mid_push_loses_nothing(rig: WalRig, cluster: LocalCluster, tmp_path: Path) -> None:
    first = switch_wal(cluster)
    wait_archived(cluster, first)
    failed_before = archiver_stats(cluster)[2]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            switch_wal(cluster, rows=500)
            time.sleep(0.3)

    writer = threading.Thread(target=load, daemon=True)
    with rig.archiver("--read-ahead", "0", "--workers", "1") as daemon:  # every push is one PostgreSQL asked for
        writer.start()
        try:
            assert daemon.stderr is not None
            line = ""
            while "push start" not in line:
                line = daemon.stderr.readline()
                assert line, "archiver exited before pushing"
            victim = line.split()[-1]
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=10)
            assert not pid_alive(daemon.pid)
            assert f"push done {victim}" not in daemon.stderr.read()  # it really died mid-push
        finally:
            stop.set()
            writer.join(timeout=30)
    wait_for(lambda: archiver_stats(cluster)[2] > failed_before, timeout=30, what="PostgreSQL seeing the failed push",
             interval=0.2)
    with rig.archiver():  # restarted (as systemd would): PostgreSQL's retries go through it
        last = switch_wal(cluster)
        wait_archived(cluster, last, timeout=60)
    fetched = rig.drp("wal", "fetch", victim, str(tmp_path / victim))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / victim).read_bytes() == pg_wal_file(cluster, victim)
    verify = rig.drp("wal", "verify", "--start", first, "--json", DRP_SOURCE_DSN=cluster.dsn())
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"], verify.stdout + verify.stderr
    assert report["found"] >= 3


@pytest.mark.parametrize(("point", "stored_then"), [
    ("wal-after-object", {"object"}),  # stored, no sidecar: not committed
    ("wal-after-sidecar", {"object", "sidecar"}),  # committed, PostgreSQL not told
])
def test_kill_9_of_the_archiver_after_storing_loses_nothing(rig: WalRig, cluster: LocalCluster, tmp_path: Path,
                                                            point: str, stored_then: set[str]) -> None:
    """The other two kill points of the issue (the first: mid-push, above). PostgreSQL retries the segment;
    the retry overwrites an uncommitted object or finds the committed copy identical: no conflict, no repair."""
    first = switch_wal(cluster)
    wait_archived(cluster, first)
    failed_before = archiver_stats(cluster)[2]
    with rig.archiver("--read-ahead", "0", "--workers", "1", pause_at=point) as daemon:
        switched = switch_wal(cluster)
        seen = wait_for_line(daemon, f"{PAUSED} {point}", timeout=60)
        # One worker, no read-ahead: the paused push is the last one started, a segment PostgreSQL asked for.
        # Usually `switched`; an earlier one when the server closed a segment on its own in between
        # (archive_timeout after autovacuum's WAL: seen under load), which is as good a victim.
        started = [line.split()[-1] for line in seen.splitlines() if " push start " in line]
        assert started and first < started[-1] <= switched, seen
        victim = started[-1]
        present = {what for what, key in (("object", object_key(victim)), ("sidecar", sidecar_key(victim)))
                   if stored(rig, key).exists()}
        assert present == stored_then
        committed = stored(rig, sidecar_key(victim)).read_bytes() if "sidecar" in present else None
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)
        assert not pid_alive(daemon.pid)
    wait_for(lambda: archiver_stats(cluster)[2] > failed_before, timeout=30, what="PostgreSQL seeing the failed push")
    with rig.archiver():  # restarted: PostgreSQL's retry goes through it (or the direct-push fallback before it)
        wait_archived(cluster, victim, timeout=90)
    if committed is not None:
        assert stored(rig, sidecar_key(victim)).read_bytes() == committed  # the retry was a no-op
    fetched = rig.drp("wal", "fetch", victim, str(tmp_path / victim))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / victim).read_bytes() == pg_wal_file(cluster, victim)
    assert not list(rig.storage_dir.glob(f"wal/events/*{victim}*"))  # no conflict, no repair
    verify = rig.drp("wal", "verify", "--start", first, "--json", DRP_SOURCE_DSN=cluster.dsn())
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout + verify.stderr


def test_rpo_bound_the_archiver_forces_a_switch_after_writes(rig: WalRig, cluster: LocalCluster) -> None:
    """One small commit on an otherwise quiet server is archived within --switch-after plus a push.

    archive_timeout is off here: without the archiver's switcher this commit would wait for 16 MiB
    of other writes (or archive_timeout, which is dead until the checkpointer first wakes: docs/wal.md).
    """
    set_archive_timeout(cluster, "0")
    try:
        with rig.archiver("--switch-after", "1", DRP_SOURCE_DSN=cluster.dsn()) as daemon:
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS rpo_probe (at timestamptz)")
                time.sleep(2.5)  # the switcher has seen this segment at least once
                name = conn.execute("INSERT INTO rpo_probe VALUES (now())"
                                    " RETURNING pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            started = time.monotonic()
            wait_for(lambda: stored(rig, sidecar_key(name)).exists(), timeout=30, what=f"{name} archived", interval=0.1)
            assert time.monotonic() - started < 15
            daemon.terminate()
            assert daemon.stderr is not None
            assert f"forced WAL switch: {name}" in daemon.stderr.read()
    finally:
        set_archive_timeout(cluster, "2s")


def test_archive_timeout_holds_once_the_checkpointer_has_been_woken(work_base: Path) -> None:
    """Why archive_timeout "did not fire" on fresh clusters (docs/wal.md, RPO): PostgreSQL 15's checkpointer
    computes its first sleep while recovery is still in progress, when archive_timeout is not considered, and
    sleeps a whole checkpoint_timeout. Nothing wakes it after a clean start, so a commit waits for that (or
    16 MiB of WAL); once anything sets its latch (here pg_reload_conf()), archive_timeout holds. PostgreSQL
    alone (archive_command = cp), so this pins the server's behaviour the archiver's --switch-after covers.
    The first half (nothing archived before the wake) is measured by benchmarks/archive_timeout.py, not
    asserted here: on a loaded machine anything may wake the checkpointer early (a CI run saw it)."""
    archive = work_base / f"cp-archive-{uuid.uuid4().hex[:8]}"
    archive.mkdir(mode=0o777)
    archive.chmod(0o777)
    settings = {"wal_level": "replica", "archive_mode": "on", "archive_timeout": "'1s'",
                "archive_command": f"'cp %p {archive}/%f'"}
    with LocalCluster.create(archive.with_name(archive.name + "-pg"), settings=settings, tcp_trust=True) as fresh:
        with psycopg.connect(fresh.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
            name = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
            conn.execute("SELECT pg_reload_conf()")  # sets every process's latch, the checkpointer's too
            wait_for(lambda: (archive / name).exists(), timeout=5, what=f"{name} switched by archive_timeout",
                     interval=0.1)


def set_archive_timeout(cluster: LocalCluster, value: str) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET archive_timeout = '{value}'")  # a test constant, not user input
        conn.execute("SELECT pg_reload_conf()")


def test_verify_names_a_deleted_segment_and_fetch_refuses_a_flipped_byte(rig: WalRig, cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    names = [switch_wal(cluster) for _ in range(3)]
    wait_archived(cluster, names[-1])
    deleted, flipped = names[1], names[2]
    stored(rig, object_key(deleted)).unlink()
    stored(rig, sidecar_key(deleted)).unlink()
    path = stored(rig, object_key(flipped))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    verify = rig.drp("wal", "verify", "--start", names[0], "--json", DRP_SOURCE_DSN=cluster.dsn())
    assert verify.returncode == 1, verify.stderr
    report = json.loads(verify.stdout)
    assert {"timeline": 1, "first": deleted, "last": deleted, "count": 1, "status": "lost"} in report["gaps"]
    assert {"name": flipped, "status": "corrupt", "detail": "stored SHA-256 differs from the sidecar"} in report["problems"]

    fetch = rig.drp("wal", "fetch", flipped, str(tmp_path / flipped))
    assert fetch.returncode != 0
    assert flipped in fetch.stderr and "corrupted" in fetch.stderr and "Traceback" not in fetch.stderr
    assert not (tmp_path / flipped).exists()

    settings = rig.settings()
    for name in (deleted, flipped):  # PostgreSQL still holds them (wal_keep_size): a re-push repairs
        pushed = push_wal(context.storage(settings), parse_recipients(settings.encryption_recipients),
                          cluster.data_dir / "pg_wal" / name)
        assert pushed.status == "archived"
    repaired = rig.drp("wal", "verify", "--start", names[0], "--json", DRP_SOURCE_DSN=cluster.dsn())
    assert repaired.returncode == 0, repaired.stdout


def test_the_client_postgresql_starts_per_segment_does_not_import_the_socket_module(rig: WalRig) -> None:
    """PostgreSQL starts archive_command's client once per segment: it uses _socket, not socket (which pulls in
    enum, selectors and collections and doubled the client's start-up CPU, docs/wal.md). Run as archive_command
    runs it (``python -I -S``), with nothing listening and no fallback: it fails, naming the socket."""
    probe = subprocess.run([server_python(), "-I", "-S", "-X", "importtime", client.__file__, str(rig.socket), "-",
                            "/nonexistent/000000010000000000000001"], capture_output=True, text=True, timeout=30)
    imported = {line.split("|")[-1].strip() for line in probe.stderr.splitlines() if line.startswith("import time:")}
    assert "_socket" in imported and not imported & {"socket", "enum", "selectors", "collections"}, imported
    assert probe.returncode == 1 and f"drp wal archiver not reachable at {rig.socket}" in probe.stderr
