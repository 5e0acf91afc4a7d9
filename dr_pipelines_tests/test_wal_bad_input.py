"""Bad input on the WAL archive side: each a clear error naming the fix, no traceback, non-zero exit.

Real PostgreSQL with wal_level=minimal and archive_mode=off: `drp wal status` says archiving is off
(exit 1), `drp wal verify` refuses instead of calling every absent segment "in flight", and
`drp wal archiver` refuses to start. Switched to archive_mode=on with an archive_command that is
not drp's, status warns. A socket directory open to others or owned by another user is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines_tests.support.wal import WalRig


@pytest.fixture(scope="module")
def rig(work_base: Path) -> WalRig:
    return WalRig.make(work_base / f"wal-bad-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def quiet(rig: WalRig) -> Iterator[LocalCluster]:
    """A server that archives nothing: wal_level=minimal (so archive_mode=off, no WAL senders)."""
    c = LocalCluster.create(rig.root / "pg", settings={"wal_level": "minimal", "archive_mode": "off",
                                                        "max_wal_senders": "0"}, tcp_trust=True)
    yield c
    c.remove()


def test_a_source_that_does_not_archive_is_named_by_status_verify_and_the_archiver(rig: WalRig,
                                                                                   quiet: LocalCluster) -> None:
    env = {"DRP_SOURCE_DSN": quiet.dsn()}
    status = rig.drp("wal", "status", **env)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "wal_level is minimal and archive_mode is off" in status.stdout and "archive_mode = on" in status.stdout

    verify = rig.drp("wal", "verify", **env)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "archive_mode is off" in verify.stderr and "fix:" in verify.stderr and "Traceback" not in verify.stderr

    rig.socket.unlink(missing_ok=True)
    archiver = subprocess.run([str(rig.drp_for_pg), "wal", "archiver", "--socket", str(rig.socket)],
                              env={**os.environ, "DRP_CONFIG": str(rig.config), **env}, capture_output=True,
                              text=True, timeout=60)
    assert archiver.returncode == 1, archiver.stderr
    assert "archive_mode is off" in archiver.stderr and "fix:" in archiver.stderr
    assert "Traceback" not in archiver.stderr and not rig.socket.exists()


def test_status_warns_when_archive_command_is_not_drp(rig: WalRig, quiet: LocalCluster) -> None:
    with psycopg.connect(quiet.dsn(), autocommit=True) as conn:
        for name, value in (("wal_level", "replica"), ("archive_mode", "on"), ("max_wal_senders", "10"),
                            ("archive_command", "/bin/true")):
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")  # test constants, not user input
    quiet.stop()
    quiet.start()
    result = rig.drp("wal", "status", "--json", DRP_SOURCE_DSN=quiet.dsn())
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["alerts"] == [], result.stdout
    assert len(report["warnings"]) == 1 and "archive_command does not run drp" in report["warnings"][0]
    assert report["archive_command_runs_drp"] is False and "/bin/true" not in result.stdout  # may hold secrets
    text = rig.drp("wal", "status", DRP_SOURCE_DSN=quiet.dsn())
    assert "WARNING: archive_command does not run drp" in text.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory owned by another user")
@pytest.mark.parametrize(("mode", "owner", "message"), [
    (0o755, "root", "is accessible by others (mode 0o755)"),
    (0o700, "postgres", "is owned by uid"),
])
def test_the_archiver_refuses_a_socket_directory_others_control(rig: WalRig, tmp_path: Path, mode: int, owner: str,
                                                                message: str) -> None:
    directory = tmp_path / "sock"
    directory.mkdir()
    os.chmod(directory, mode)
    shutil.chown(directory, owner, owner)
    result = rig.drp("wal", "archiver", "--socket", str(directory / "a.sock"), DRP_SOURCE_DSN="host=/nonexistent")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "fix:" in result.stderr and "Traceback" not in result.stderr
    assert not (directory / "a.sock").exists()
