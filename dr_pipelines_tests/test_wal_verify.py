"""`drp wal verify` across timelines, on a real storage backend (segments pushed by push_wal).

Timeline switches need a promotion, which these fast tests fake with the files PostgreSQL would
archive: segments on timelines 1 and 2 and the 00000002.history file naming the switch point.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyrage import x25519

from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.wal.archive import push_wal
from dr_pipelines.core.wal.names import object_key, sidecar_key
from dr_pipelines.core.wal.verify import verify_archive
from dr_pipelines_tests.support.procs import drp
from dr_pipelines_tests.support.wal import fake_segment


@pytest.fixture
def archive(tmp_path: Path) -> LocalStorage:
    """Timeline 1: segments 1-3 (3 also exists on 2: the switch at 0/3000100); timeline 2: segments 3-4."""
    storage = LocalStorage(tmp_path / "storage")
    recipients = [x25519.Identity.generate().to_public()]
    files = tmp_path / "pg_wal"
    files.mkdir()
    for name in ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003",
                 "000000020000000000000003", "000000020000000000000004"]:
        (files / name).write_bytes(fake_segment(name))
        push_wal(storage, recipients, files / name)
    (files / "00000002.history").write_text("1\t0/3000100\tno recovery target specified\n")
    push_wal(storage, recipients, files / "00000002.history")
    return storage


def test_continuity_follows_the_history_file_across_timelines(archive: LocalStorage) -> None:
    report = verify_archive(archive)
    assert report.ok, report.as_dict()
    assert (report.start, report.end, report.found) == ("000000010000000000000001", "000000020000000000000004", 5)
    assert verify_archive(archive, start="0/2000028").start == "000000010000000000000002"  # an LSN works too


def test_a_gap_on_the_new_timeline_and_a_missing_history_file_are_named(archive: LocalStorage) -> None:
    for key in (object_key("000000020000000000000003"), sidecar_key("000000020000000000000003")):
        archive.delete(key)
    report = verify_archive(archive)
    assert not report.ok
    assert [(g.timeline, g.first, g.status) for g in report.gaps] == [(2, "000000020000000000000003", "missing")]

    archive.delete(sidecar_key("00000002.history"))
    assert {"name": "00000002.history", "status": "in-flight",  # young: maybe still being pushed
            "detail": "object without sidecar: a push did not finish"} in verify_archive(archive).problems
    report = verify_archive(archive, grace_s=0)
    assert {"name": "00000002.history", "status": "missing-history",
            "detail": "timeline 2 has no history file: its branch point is unknown"} in report.problems
    assert {"name": "00000002.history", "status": "uncommitted",
            "detail": "object without sidecar: a push did not finish"} in report.problems


def test_cli_reports_the_gap_without_a_server(archive: LocalStorage, tmp_path: Path) -> None:
    archive.delete(sidecar_key("000000010000000000000002"))
    result = drp("wal", "verify", "--no-server", "--in-flight-grace", "0", "--json",
                 env={"DRP_STORAGE_URL": str(archive.root), "DRP_CONFIG": "", "DRP_ENCRYPTION_RECIPIENTS": ""})
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["gaps"] == [{"timeline": 1, "first": "000000010000000000000002", "last": "000000010000000000000002",
                               "count": 1, "status": "missing"}]
    assert {"name": "000000010000000000000002", "status": "uncommitted",
            "detail": "object without sidecar: a push did not finish"} in report["problems"]
