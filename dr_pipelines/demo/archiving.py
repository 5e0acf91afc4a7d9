"""WAL archiving in the demo, from the start: archive_mode on, `drp wal archiver --switch-after 30` beside Dagster.

PostgreSQL runs archive_command as its own OS user ('postgres' when we are root), so the archiver runs as
that user too (its socket's directory is 0700). That user often cannot execute this checkout's interpreter
(a pyenv or virtualenv under /root): `drp_for_pg` is a `drp` made of a Python it can run plus this
checkout and its site-packages on PYTHONPATH (the WAL tests use the same, dr_pipelines_tests/support/wal.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from dr_pipelines.core.pg.cluster import LocalCluster, server_os_user, server_python
from dr_pipelines.core.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
SWITCH_AFTER_S = 30  # with archive_timeout 30 s: RPO about a minute (docs/wal.md, "RPO")
SETTINGS = {"wal_level": "replica", "archive_mode": "on", "archive_timeout": "30s"}


def pg_python() -> str:
    """A Python 3.11 the PostgreSQL OS user may execute: the system one when we are root."""
    return server_python()


def drp_wrapper_script(module: str | None = None) -> str:
    """A `drp` that imports this checkout and this interpreter's packages under pg_python().

    ``module``: run that module instead of the CLI (the tests' paused drp, core/checkpoints.py).
    """
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    run = f"-m {module}" if module else "-c 'import sys; from dr_pipelines.cli import main; sys.argv[0] = \"drp\"; main()'"
    return f"#!/bin/sh\nPYTHONPATH={REPO_ROOT}:{site} exec {pg_python()} {run} \"$@\"\n"


def give_to_pg(path: Path) -> None:
    """Hand ``path`` to the PostgreSQL OS user when we are root (archive_command and the archiver run as it)."""
    user = server_os_user()
    if user:
        shutil.chown(path, user, user)


class DemoArchiving:
    """Files of the demo's archiving under <demo>/wal: the `drp` for PostgreSQL, the socket, pid and log."""

    def __init__(self, demo_root: Path, storage: Path, settings_file: Path) -> None:
        self.root, self.storage, self.settings_file = demo_root / "wal", storage, settings_file

    @property
    def drp(self) -> Path:
        return self.root / "drp"

    @property
    def socket(self) -> Path:
        return self.root / "sock" / "archiver.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "archiver.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "archiver.log"

    def prepare(self) -> None:
        """The wrapper, a 0700 socket folder and storage's wal/ owned by the PostgreSQL OS user, settings readable."""
        (self.root / "sock").mkdir(parents=True, exist_ok=True, mode=0o700)
        give_to_pg(self.root / "sock")
        self.drp.write_text(drp_wrapper_script())
        os.chmod(self.drp, 0o755)
        self.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
        if server_os_user():
            os.chmod(self.storage, 0o711)  # traversable (not listable) by postgres, for wal/ only
        (self.storage / "wal").mkdir(exist_ok=True, mode=0o700)
        give_to_pg(self.storage / "wal")
        give_to_pg(self.settings_file)  # 0600; it holds no secret (docs: the demo trusts local connections)

    def configure(self, cluster: LocalCluster) -> bool:
        """archive_mode, wal_level, archive_timeout and archive_command via ALTER SYSTEM; restarts the cluster
        only when a setting needs it (the first start after this was added). True when it restarted."""
        from dr_pipelines.cli.wal import archive_command

        command = archive_command(self.socket, python=pg_python(), drp=self.drp, config=self.settings_file)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for name, value in {**SETTINGS, "archive_command": command}.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")
            # What the running server uses, not pending_restart: the reload is asynchronous, so right after
            # it pending_restart may not be set yet (seen: an archiver refused to start, archive_mode off).
            running = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE context = 'postmaster' "
                                        "AND name = ANY(%s)", (list(SETTINGS),)).fetchall())
        pending = any(running.get(name) not in (None, value) for name, value in SETTINGS.items())
        if pending:
            cluster.stop()
            cluster.start()
        return bool(pending)

    def start(self) -> subprocess.Popen[bytes]:
        """`drp wal archiver --switch-after 30` as the PostgreSQL OS user, in its own session (stop() ends it).

        Not waited for: until its socket answers, archive_command's client falls back to `drp wal push`.
        """
        self.stop()  # one left by a `demo up` that was killed
        user = server_os_user()
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [str(self.drp), "wal", "archiver", "--socket", str(self.socket), "--switch-after", str(SWITCH_AFTER_S)],
                env={**os.environ, "DRP_CONFIG": str(self.settings_file)}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, user=user, group=user, cwd="/", start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def stop(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Stop the archiver this demo started: ``proc`` when we started it (waited for), else by its recorded pid."""
        if proc is not None:
            stop_process(proc, 10)
            self.pid_file.unlink(missing_ok=True)
            return
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        cmdline = Path(f"/proc/{pid}/cmdline")
        try:
            ours = not cmdline.parent.parent.is_dir() or str(self.socket).encode() in cmdline.read_bytes()
        except OSError:
            ours = False  # gone already
        if ours:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):  # its socket must be free for the next one
                    time.sleep(0.1)
                    os.kill(pid, 0)
            except ProcessLookupError:
                pass
        self.pid_file.unlink(missing_ok=True)
