"""archive_command's and restore_command's client (core/wal/client.py) as PostgreSQL runs it: ``python -I -S``,
from the data directory, with %p relative to it, against a real unix-socket server (daemon.serving)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dr_pipelines.core.wal import client
from dr_pipelines.core.wal.daemon import serving


class Recorder:
    """A served Service that records each request line and answers with the next canned reply."""

    def __init__(self, *replies: str) -> None:
        self.lines: list[str] = []
        self.replies = list(replies)

    def answer(self, line: str) -> str:
        self.lines.append(line)
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def run_client(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", client.__file__, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_relative_paths_reach_the_server_absolute_and_the_reply_decides_the_exit(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    (data_dir / "pg_wal").mkdir(parents=True)
    sock = tmp_path / "sock" / "a.sock"
    service = Recorder("ok archived", "error WAL file 000000010000000000000002 is already archived", "ok fetched",
                       "missing 000000010000000000000009")
    with serving(service, sock):
        pushed = run_client(data_dir, str(sock), "-", "pg_wal/000000010000000000000001")
        refused = run_client(data_dir, str(sock), "-", "pg_wal/000000010000000000000002")
        fetched = run_client(data_dir, "fetch", str(sock), "-", "000000010000000000000003", "pg_wal/RECOVERYXLOG")
        missing = run_client(data_dir, "fetch", str(sock), "-", "000000010000000000000009", str(data_dir / "x"))
    assert service.lines == [f"{data_dir}/pg_wal/000000010000000000000001",
                             f"{data_dir}/pg_wal/000000010000000000000002",
                             f"fetch\t000000010000000000000003\t{data_dir}/pg_wal/RECOVERYXLOG",
                             f"fetch\t000000010000000000000009\t{data_dir}/x"]
    assert (pushed.returncode, refused.returncode, fetched.returncode, missing.returncode) == (0, 1, 0, 1)
    assert "already archived (000000010000000000000002)" in refused.stderr


def test_the_client_imports_neither_os_nor_socket(tmp_path: Path) -> None:
    """PostgreSQL starts it once per segment, in series: os and socket were 1.4 and ~10 ms of its CPU."""
    probe = run_client(tmp_path, str(tmp_path / "none.sock"), "-", "pg_wal/000000010000000000000001")
    imported = {line.split("|")[-1].strip() for line in probe.stderr.splitlines() if line.startswith("import time:")}
    assert "_socket" in imported and not imported & {"os", "socket", "enum", "selectors", "collections"}, imported
    assert probe.returncode == 1 and f"drp wal archiver not reachable at {tmp_path / 'none.sock'}" in probe.stderr
