"""A PostgreSQL cluster archiving its WAL through `drp` (as the server's OS user), for the WAL tests."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

from dr_pipelines.core.crypto import generate_identity_file
from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.core.settings import Settings, load_settings
from dr_pipelines.core.wal import client
from dr_pipelines.demo.archiving import drp_wrapper_script, give_to_pg, pg_python
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS
from dr_pipelines_tests.support.procs import drp, wait_for, wait_for_line


def pg_os_user() -> str | None:
    """The OS user PostgreSQL (and so archive_command) runs as: 'postgres' when we are root."""
    return "postgres" if os.geteuid() == 0 else None


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
        for wrapper, module in ((rig.drp_for_pg, None), (rig.paused_drp_for_pg, "dr_pipelines_tests.support.paused_drp")):
            wrapper.write_text(drp_wrapper_script(module))
            os.chmod(wrapper, 0o755)
        return rig

    @classmethod
    @contextmanager
    def archiving(cls, root: Path) -> Iterator[WalRig]:
        """A rig with `drp wal archiver` running (read-ahead 4), stopped after: what the base backup tests share."""
        rig = cls.make(root)
        with rig.archiver("--read-ahead", "4"):
            yield rig

    @property
    def drp_for_pg(self) -> Path:
        """`drp` runnable by the PostgreSQL OS user (the test venv's interpreter may sit under /root)."""
        return self.root / "drp"

    @property
    def paused_drp_for_pg(self) -> Path:
        """The same, stopping at the checkpoint named by its first argument (support/paused_drp.py)."""
        return self.root / "paused-drp"

    def write_config(self, values: dict[str, str], recipient: str) -> None:
        body = {"encryption_recipients": [recipient], "age_identity_file": str(self.identity), **values}
        self.config.write_text(yaml.safe_dump(body))
        os.chmod(self.config, 0o600)
        give_to_pg(self.config)

    def archive_command(self) -> str:
        """DRP_CONFIG=… + the isolated stdlib client, falling back to `drp wal push` (as `drp wal archive-command`)."""
        parts = [f"DRP_CONFIG={self.config}", pg_python(), "-I", "-S",
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
    def archiver(self, *args: str, pause_at: str | None = None, **env: str) -> Iterator[subprocess.Popen[str]]:
        """`drp wal archiver` as the PostgreSQL OS user (its pid is the daemon's own), stopped after.

        ``pause_at``: a push stops at that checkpoint (core/checkpoints.py) for the test to kill -9 it there.
        """
        user = pg_os_user()
        command = [str(self.paused_drp_for_pg), pause_at] if pause_at else [str(self.drp_for_pg)]
        proc = subprocess.Popen(
            [*command, "wal", "archiver", "--socket", str(self.socket), *args],
            env={**os.environ, "DRP_CONFIG": str(self.config), **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, user=user, group=user, cwd="/",
        )
        try:
            # Its own "listening" line, not the socket file: a kill -9 leaves the old daemon's socket behind, and
            # a test that went on at the sight of it had PostgreSQL's client refused there (it falls back to a
            # direct push) while the new daemon was still importing: the segment it was meant to see bypassed it.
            wait_for_line(proc, f"archiver listening on {self.socket}", timeout=60)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # paused at a checkpoint: never leave it holding the socket
                    proc.kill()
                    proc.wait(timeout=10)


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
    """Wait until segment ``name`` is archived: its ``.done`` status file, or a later segment archived.

    pg_stat_archiver's last_archived_wal alone is not enough: PostgreSQL may archive a backup history
    file (``…6E.00000028.backup``) after the next segment (``…6F``), and it is then the "last" one.
    """
    def done() -> bool:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            last, marked = conn.execute(
                "SELECT last_archived_wal, EXISTS (SELECT FROM pg_ls_archive_statusdir() WHERE name = %s)"
                " FROM pg_stat_archiver", (f"{name}.done",)).fetchone()
        return marked or (last is not None and last[:24] >= name)

    wait_for(done, timeout=timeout, what=f"archiving of {name}", interval=0.2)


def pg_wal_file(cluster: LocalCluster, name: str) -> bytes:
    return (cluster.data_dir / "pg_wal" / name).read_bytes()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def system_identifier(cluster: LocalCluster) -> str:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]


def fake_segment(name: str, system_id: int = 7_300_000_000_000_000_001, size: int = 16 * 1024 * 1024) -> bytes:
    """A segment-sized file with the long page header PostgreSQL writes (for tests without a cluster):
    magic, XLP_LONG_HEADER, timeline, the segment's start LSN, then sysid, segment and page size."""
    start = (int(name[8:16], 16) * (0x100000000 // size) + int(name[16:24], 16)) * size
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, int(name[:8], 16), start, 0, system_id, size, 8192)
    return (header + name.encode()).ljust(size, b"\0")


def start_recovering(rig: WalRig, data_dir: Path, *, archive: bool = False,
                     recovery: dict[str, str] | None = None) -> LocalCluster:
    """Start an extracted base backup with the rig's archive as restore_command (as the server's OS user).

    ``recovery``: recovery_target* settings (default: stop at consistency and promote). ``archive``: keep
    archiving into the rig, as a promoted standby of the same cluster would (a new timeline); otherwise off.
    """
    restore = f"env DRP_CONFIG={rig.config} {rig.drp_for_pg} wal fetch %f %p"
    lines = {"port": str(free_port()), "unix_socket_directories": "''", "restore_command": f"'{restore}'",
             **({"recovery_target": "'immediate'", "recovery_target_action": "'promote'"} if recovery is None
                else recovery)}
    lines |= rig.cluster_settings() if archive else {"archive_mode": "off"}
    with open(data_dir / "postgresql.auto.conf", "a") as conf:  # later lines win
        conf.writelines(f"{k} = {v}\n" for k, v in lines.items())
    (data_dir / "recovery.signal").touch()
    give_to_pg(data_dir / "recovery.signal")
    cluster = LocalCluster.attach(data_dir)
    cluster.start()
    return cluster


def in_recovery(cluster: LocalCluster) -> bool:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
