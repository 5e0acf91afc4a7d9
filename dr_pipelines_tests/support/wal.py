"""A PostgreSQL cluster archiving its WAL through `drp` (as the server's OS user), for the WAL tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

from dr_pipelines.core.crypto import generate_identity_file
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.settings import Settings, load_settings
from dr_pipelines.core.wal import client
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS
from dr_pipelines_tests.support.procs import drp, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def pg_os_user() -> str | None:
    """The OS user PostgreSQL (and so archive_command) runs as: 'postgres' when we are root."""
    return "postgres" if os.geteuid() == 0 else None


def give_to_pg(path: Path) -> None:
    user = pg_os_user()
    if user:
        shutil.chown(path, user, user)


@dataclass
class WalRig:
    """Settings file, key, storage and socket paths shared by the cluster's archive_command and the test."""

    root: Path
    config: Path
    identity: Path
    storage_dir: Path
    socket: Path

    @classmethod
    def make(cls, root: Path, *, storage: dict[str, str] | None = None) -> WalRig:
        root.mkdir(mode=0o755)
        identity = root / "key.txt"
        recipient = generate_identity_file(identity)
        give_to_pg(identity)
        storage_dir = root / "storage"
        storage_dir.mkdir(mode=0o700)
        give_to_pg(storage_dir)
        sock_dir = root / "sock"
        sock_dir.mkdir(mode=0o700)
        give_to_pg(sock_dir)
        rig = cls(root, root / "drp.yaml", identity, storage_dir, sock_dir / "archiver.sock")
        rig.write_config(storage or {"storage_url": str(storage_dir)}, recipient)
        rig.drp_for_pg.write_text(_drp_wrapper())
        os.chmod(rig.drp_for_pg, 0o755)
        return rig

    @property
    def drp_for_pg(self) -> Path:
        """`drp` runnable by the PostgreSQL OS user (the test venv's interpreter may sit under /root)."""
        return self.root / "drp"

    def write_config(self, values: dict[str, str], recipient: str) -> None:
        body = {"encryption_recipients": [recipient], "age_identity_file": str(self.identity), **values}
        self.config.write_text(yaml.safe_dump(body))
        os.chmod(self.config, 0o600)
        give_to_pg(self.config)

    def archive_command(self) -> str:
        """env PYTHONPATH/DRP_CONFIG + the isolated stdlib client, falling back to `drp wal push`."""
        parts = ["env", f"DRP_CONFIG={self.config}", pg_python(), "-I", "-S",
                 client.__file__, str(self.socket), str(self.drp_for_pg), "%p"]
        assert not any("'" in p or " " in p for p in parts)
        return " ".join(parts)

    def cluster_settings(self, archive_timeout: str = "2s") -> dict[str, str]:
        return {**TEST_CLUSTER_SETTINGS, "wal_level": "replica", "archive_mode": "on",
                "archive_command": f"'{self.archive_command()}'",
                "archive_timeout": f"'{archive_timeout}'", "wal_keep_size": "'1GB'"}

    def settings(self) -> Settings:
        """The same settings the CLI and archive_command read, for in-process calls."""
        return load_settings(self.config, env={})

    def drp(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return drp(*args, env={"DRP_CONFIG": str(self.config), **env}, timeout=timeout)

    @contextmanager
    def archiver(self, *args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
        """`drp wal archiver` as the PostgreSQL OS user (its pid is the daemon's own), stopped after."""
        user = pg_os_user()
        proc = subprocess.Popen(
            [str(self.drp_for_pg), "wal", "archiver", "--socket", str(self.socket), *args],
            env={**os.environ, "DRP_CONFIG": str(self.config), **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, user=user, group=user, cwd="/",
        )
        try:
            wait_for(lambda: self.socket.exists() or proc.poll() is not None, timeout=30, what="archiver", interval=0.1)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def pg_python() -> str:
    """A Python 3.11 the PostgreSQL OS user may execute: the system one when we are root."""
    return "/usr/bin/python3" if pg_os_user() and os.access("/usr/bin/python3", os.X_OK) else sys.executable


def _drp_wrapper() -> str:
    """A `drp` that imports this checkout and the test venv's packages under pg_python()."""
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    return (f"#!/bin/sh\nPYTHONPATH={REPO_ROOT}:{site} exec {pg_python()} -c "
            "'import sys; from dr_pipelines.cli import main; sys.argv[0] = \"drp\"; main()' \"$@\"\n")


def switch_wal(cluster: LocalCluster, rows: int = 100) -> str:
    """Write something, then close the segment; the name of the segment just completed."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_load (id bigserial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO wal_load (note) SELECT md5(g::text) FROM generate_series(1, %s) g", (rows,))
        return conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]


def archiver_stats(cluster: LocalCluster) -> tuple[str | None, int, int]:
    """(last_archived_wal, archived_count, failed_count) from pg_stat_archiver."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT last_archived_wal, archived_count, failed_count FROM pg_stat_archiver").fetchone()


def wait_archived(cluster: LocalCluster, name: str, timeout: float = 60) -> None:
    def done() -> bool:
        last = archiver_stats(cluster)[0]
        return last is not None and last[:24] >= name

    wait_for(done, timeout=timeout, what=f"archiving of {name}", interval=0.2)


def pg_wal_file(cluster: LocalCluster, name: str) -> bytes:
    return (cluster.data_dir / "pg_wal" / name).read_bytes()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
