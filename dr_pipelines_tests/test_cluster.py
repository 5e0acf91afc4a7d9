"""The local cluster harness, on real PostgreSQL: lifecycle, settings, bad input, cleanup."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.errors import ClusterError, PostgresNotFoundError
from dr_pipelines.core.pg import binaries
from dr_pipelines.core.pg.cluster import LocalCluster, ephemeral_cluster, free_port


def test_fixture_cluster_and_fresh_db(pg_cluster: LocalCluster, fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SHOW data_checksums").fetchone()[0] == "on"
        assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1)")
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_lifecycle_settings_restart_and_removal(work_base: Path) -> None:
    data_dir = work_base / "lifecycle"
    cluster = LocalCluster.create(data_dir, settings={"work_mem": "'7MB'"})
    try:
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SHOW work_mem").fetchone()[0] == "7MB"
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('survives restart')")
        cluster.stop()
        assert not cluster.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(), connect_timeout=2)
        again = LocalCluster.attach(data_dir)
        assert again.port == cluster.port
        again.start()
        with psycopg.connect(again.dsn()) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone()[0] == "survives restart"
    finally:
        cluster.remove()
    assert not data_dir.exists()


def test_ephemeral_cluster_removed_on_error(work_base: Path) -> None:
    with pytest.raises(RuntimeError):
        with ephemeral_cluster(work_base, "ephemeral") as cluster:
            port = cluster.port
            raise RuntimeError("boom")
    assert not (work_base / "ephemeral").exists()
    with socket.socket() as s:
        # SO_REUSEADDR: a connection the server closed may sit in TIME_WAIT on that port; Linux still
        # refuses the bind if anything listens there, which is what this checks.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # nobody listens there any more


def test_explicit_port_in_use_is_refused_and_nothing_left(work_base: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} .* already in use") as info:
            LocalCluster.create(work_base / "busy", port=port)
    assert "fix:" in str(info.value)
    assert not (work_base / "busy").exists()


def test_auto_port_retries_when_taken_between_choice_and_start(work_base: Path) -> None:
    cluster = LocalCluster.create(work_base / "retry", start=False)
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", cluster.port))
            busy.listen()
            taken = cluster.port
            cluster.start(retry_other_port=True)
        assert cluster.port != taken
        assert LocalCluster.attach(work_base / "retry").port == cluster.port
    finally:
        cluster.remove()


def test_failed_start_removes_what_it_created(work_base: Path) -> None:
    with pytest.raises(ClusterError, match="pg_ctl start failed") as info:
        LocalCluster.create(work_base / "badconf", settings={"shared_buffers": "'lots'"})
    assert "shared_buffers" in str(info.value)  # the log tail says why
    assert not (work_base / "badconf").exists()


def test_non_empty_data_dir_refused(work_base: Path) -> None:
    d = work_base / "occupied"
    d.mkdir()
    (d / "precious.txt").write_text("do not touch")
    with pytest.raises(ClusterError, match="not empty"):
        LocalCluster.create(d)
    assert (d / "precious.txt").read_text() == "do not touch"


def test_missing_binaries_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binaries.find_pg_binaries.cache_clear()
    monkeypatch.setattr(binaries, "_candidates", lambda: [tmp_path])
    try:
        with pytest.raises(PostgresNotFoundError) as info:
            binaries.find_pg_binaries()
        assert "initdb" in str(info.value) and "apt-get install postgresql" in str(info.value)
    finally:
        binaries.find_pg_binaries.cache_clear()


def test_bin_dir_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    real = binaries.find_pg_binaries().bin_dir
    binaries.find_pg_binaries.cache_clear()
    monkeypatch.setenv("DRP_PG_BIN_DIR", str(real))
    try:
        assert binaries._candidates()[0] == real
        assert binaries.find_pg_binaries().major >= 15
    finally:
        binaries.find_pg_binaries.cache_clear()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_folder_of_symlinks_resolves_to_the_real_bin_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Some images link initdb/pg_ctl/postgres into /usr/local/bin; pg_basebackup & co live only in the real folder."""
    real = binaries.find_pg_binaries().bin_dir
    for tool in binaries.SERVER_TOOLS:
        (tmp_path / tool).symlink_to(real / tool)
    binaries.find_pg_binaries.cache_clear()
    monkeypatch.setenv("DRP_PG_BIN_DIR", str(tmp_path))
    try:
        assert binaries.find_pg_binaries().bin_dir == real
        assert binaries.find_pg_binaries().tool("pg_basebackup").startswith(str(real))
    finally:
        binaries.find_pg_binaries.cache_clear()
