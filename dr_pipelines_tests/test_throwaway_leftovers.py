"""kill -9 of the real `drp` processes that make throwaway clusters or stage plaintext.

A killed run cleans nothing up. What it leaves must not be open to other local users (the
cluster refuses a password-less login, staged plaintext is 0600 in a 0700 folder), and the
next command that makes such things stops and deletes them and says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.logical import RESTORE_PHASE, RestoreOptions, restore_backup
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.backup import foreign_identity
from dr_pipelines_tests.support.procs import BIN, drp, wait_for
from dr_pipelines_tests.support.verification import (
    Good,
    clone_storage,
    drp_env,
    entry_for,
    good_backup,
    reap_clusters,
    work_dir_under,
)

# A probe that holds the verification open (restored data in place) long enough to kill the run.
SLOW_PROBE = "- name: hold\n  sql: SELECT 1 FROM pg_sleep(600)\n"  # the run is killed long before it ends


@pytest.fixture(scope="module")
def source(pg_cluster: LocalCluster, demo_template: str, work_base: Path) -> Iterator[Good]:
    with good_backup(pg_cluster, demo_template, work_base, "orphan") as backup:
        yield backup


@pytest.fixture
def env(source: Good, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in list(os.environ):
        if name.startswith("DRP_"):
            monkeypatch.delenv(name)
    work = work_dir_under(source.base)
    yield drp_env(source, clone_storage(source.storage_dir, tmp_path / "storage"), work)
    reap_clusters(work)


def start_drp(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "drp"), *args], env={**os.environ, **env}, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def postmaster(data_dir: Path) -> tuple[int, int]:
    """(pid, port) from postmaster.pid."""
    lines = data_dir.joinpath("postmaster.pid").read_text().splitlines()
    return int(lines[0]), int(lines[3])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_refuses_passwordless_tcp(port: int, tmp_path: Path) -> None:
    """What any local user could try: 127.0.0.1, user postgres, no password (and no passfile of ours)."""
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres passfile={tmp_path}/none",
                        connect_timeout=5).close()


def holding_probe(work: Path) -> Path | None:
    """The data dir of the running verification cluster once the slow probe runs (restore done)."""
    for pid_file in work.rglob("postmaster.pid"):
        cluster = LocalCluster.attach(pid_file.parent)
        with psycopg.connect(cluster.dsn(), connect_timeout=2) as conn:
            if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%'"
                            " AND pid <> pg_backend_pid()").fetchone()[0]:
                return pid_file.parent
    return None


@pytest.mark.parametrize("command", [("verify", "--no-record"), ("drill", "run")], ids=["verify", "drill"])
def test_killed_verification_leaves_a_locked_cluster_that_the_next_run_removes(
    command: tuple[str, ...], env: dict[str, str], source: Good, tmp_path: Path
) -> None:
    work = Path(env["DRP_WORK_DIR"])
    probes = tmp_path / "slow-probes.yaml"
    probes.write_text(SLOW_PROBE)
    proc = start_drp(*command, env={**env, "DRP_VERIFICATION_PROBES_FILE": str(probes)})
    try:
        data_dir = wait_for(lambda: holding_probe(work), timeout=180, interval=0.2, what="the verification's probe")
    finally:
        kill9(proc)
    pid, port = postmaster(data_dir)
    assert alive(pid)  # the orphan: a running server with the restored copy in it
    assert_refuses_passwordless_tcp(port, tmp_path)
    database = psycopg.conninfo.conninfo_to_dict(source.source_dsn)["dbname"]
    with psycopg.connect(LocalCluster.attach(data_dir).dsn(database)) as conn:  # the refusal is auth, not a dead server
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0
    passfile = data_dir / "drp.pgpass"
    assert passfile.stat().st_mode & 0o777 == 0o600

    again = drp("verify", "--no-record", env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    lease = data_dir.parent
    assert f"removed leftover clusters/{lease.name} of {command[0]}" in again.stderr.replace("\n", " ")
    assert f"pid {proc.pid}, gone" in again.stderr
    assert not alive(pid)
    assert not lease.exists()
    assert subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True).returncode == 1  # no process for it


def test_killed_new_cluster_restore_leaves_no_readable_plaintext_and_is_swept(
    env: dict[str, str], source: Good, tmp_path: Path, work_base: Path
) -> None:
    work = Path(env["DRP_WORK_DIR"])
    target = work_base / f"kept-{tmp_path.name}"[:40]
    proc = start_drp("restore", "latest", "--new-cluster", str(target), "--jobs", "2", env=env)  # parallel: staged in clear
    try:
        staged = wait_for(lambda: next(iter(work.rglob("database.dump")), None), timeout=120, interval=0.01,
                          what="the staged dump")
    finally:
        kill9(proc)
    # Everything it leaves under the work dir is private: no file readable by group or others,
    # and the folder holding the plaintext is 0700.
    assert staged.exists()
    readable = [f"{p} {oct(p.stat().st_mode)}" for p in work.rglob("*") if p.is_file() and p.stat().st_mode & 0o077]
    assert readable == []
    assert staged.parent.stat().st_mode & 0o777 == 0o700
    pid, port = postmaster(target)
    assert alive(pid)
    assert_refuses_passwordless_tcp(port, tmp_path)

    again = drp("verify", "--no-record", env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    swept = again.stderr.replace("\n", " ")
    assert f"removed leftover staging/{staged.parent.name} of restore-{source.manifest.id}" in swept
    assert "removed leftover clusters/new-cluster-" in swept and f"{target} deleted" in swept
    assert not staged.parent.exists() and not target.exists()
    assert not alive(pid)


def test_new_cluster_restore_is_password_protected_and_says_how_to_connect(
    env: dict[str, str], source: Good, tmp_path: Path, work_base: Path
) -> None:
    target = work_base / f"kept-ok-{tmp_path.name}"[:40]
    run = drp("restore", "latest", "--new-cluster", str(target), env=env, timeout=300)
    try:
        assert run.returncode == 0, run.stderr
        cluster = LocalCluster.attach(target)
        database = psycopg.conninfo.conninfo_to_dict(source.source_dsn)["dbname"]
        assert f'psql "{cluster.dsn(database)}"' in run.stdout.replace("\n", "")
        assert_refuses_passwordless_tcp(cluster.port, tmp_path)
        password = cluster.passfile.read_text().strip().rsplit(":", 1)[1]
        assert len(password) >= 32 and password not in run.stdout + run.stderr
        with psycopg.connect(cluster.dsn(database)) as conn:
            assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0
        assert list((Path(env["DRP_WORK_DIR"]) / "clusters").iterdir()) == []  # the user's now: no lease
    finally:
        if target.exists():
            LocalCluster.attach(target).remove()


def test_one_job_restore_streams_the_dump_and_stages_no_plaintext_of_it(
    source: Good, pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    storage = LocalStorage(source.storage_dir)
    entry = entry_for(storage, source.manifest.id)
    work = work_dir_under(source.base)
    staged: dict[str, bytes] = {}

    def watch(phase: str, done: int, total: int | None) -> None:  # called while pg_restore runs
        if phase == RESTORE_PHASE:
            staged.update({f.name: f.read_bytes()[:5] for f in (work / "staging").rglob("*") if f.is_file()})

    name = f"stream_{uuid.uuid4().hex[:8]}"
    target = pg_cluster.create_database(name, template="template0")
    try:
        with pytest.raises(DecryptionError):  # a wrong key fails before pg_restore writes anything
            restore_backup(storage, entry, [foreign_identity()], target, work_dir=work, options=RestoreOptions(jobs=1))
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                                ).fetchone()[0] == 0
        result = restore_backup(storage, entry, source.key.identities, target, work_dir=work,
                                options=RestoreOptions(jobs=1), progress=watch)
        restored = {t.name: (t.rows, t.checksum) for t in database_checksums(target)}
    finally:
        pg_cluster.drop_database(name)
    assert restored == {t.name: (t.rows, t.checksum) for t in source.manifest.tables}
    assert set(staged) == {"owner.json", "database.dump.zst.age", "globals.sql"}  # the dump only as ciphertext
    assert staged["database.dump.zst.age"] != b"PGDMP"
    assert result.plain_bytes == sum(o.plain_bytes or 0 for o in source.manifest.objects)
    assert list((work / "staging").iterdir()) == []
