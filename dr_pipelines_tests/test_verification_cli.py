"""`drp verify`, `drp drill run|list` and `drp status` as the on-call engineer runs them: real subprocesses.

Exit codes are the contract (0: proven / targets met, 1: failed, 2: configuration), and
every error is one message with a fix, never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dr_pipelines.core.backup.catalog import backup_prefix
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.procs import drp
from dr_pipelines_tests.support.verification import (
    CHANGE_ONE_PATIENT,
    AgeKey,
    Good,
    clone_storage,
    drp_env,
    entry_for,
    good_backup,
    reap_clusters,
    tamper_backup,
    work_dir_under,
)

Source = Good


@pytest.fixture(scope="module")
def source(pg_cluster: LocalCluster, demo_template: str, work_base: Path) -> Iterator[Source]:
    """A copy of the demo database and one good backup of it."""
    with good_backup(pg_cluster, demo_template, work_base, "vcli") as backup:
        yield backup


@dataclass
class Env:
    storage: LocalStorage
    work: Path
    vars: dict[str, str]


@pytest.fixture
def env(source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A clone of the source's storage and the DRP_* variables a deployment would set (nothing else)."""
    for name in list(os.environ):
        if name.startswith("DRP_"):
            monkeypatch.delenv(name)
    storage = clone_storage(source.storage_dir, tmp_path / "storage")
    work = work_dir_under(source.base)
    yield Env(storage, work, drp_env(source, storage, work))
    assert reap_clusters(work) == []


def no_traceback(result) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


@pytest.mark.heavy(30)
def test_status_verify_drill_list_status(env: Env, source: Source, tmp_path: Path) -> None:
    before = drp("status", "--json", env=env.vars)
    assert before.returncode == 1, before.stderr
    status = json.loads(before.stdout)
    assert status["ok"] is False and status["newest_restorable"] == source.manifest.id
    assert "no backup has been verified" in status["problems"] and "no DR drill has run" in status["problems"]

    markdown = tmp_path / "verification.md"
    verified = drp("verify", "--json", "--markdown", str(markdown), env=env.vars)
    assert verified.returncode == 0, verified.stderr
    no_traceback(verified)
    report = json.loads(verified.stdout)
    assert report["passed"] is True and report["backup_id"] == source.manifest.id and report["error"] is None
    assert "probe:invoice_total_mismatch" in [c["name"] for c in report["checks"]]
    assert markdown.read_text().startswith(f"# Verification of backup {source.manifest.id}: PASSED")
    assert json.loads(env.storage.get_bytes(f"{backup_prefix(source.manifest.id)}/verification.json"))["passed"] is True

    between = drp("status", "--json", env=env.vars)
    assert between.returncode == 1 and json.loads(between.stdout)["problems"] == ["no DR drill has run"]

    drill = drp("drill", "run", "--json", env=env.vars)
    assert drill.returncode == 0, drill.stderr
    no_traceback(drill)
    drilled = json.loads(drill.stdout)
    month = datetime.now(UTC).strftime("%Y-%m")
    assert drilled["passed"] is True and drilled["month"] == month and drilled["backup_id"] == source.manifest.id
    assert drilled["rto_seconds"] > 0 and drilled["rpo_seconds"] > 0 and drilled["rto_met"] and drilled["rpo_met"]

    listed = drp("drill", "list", "--json", env=env.vars)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{k: drilled[k] for k in ("month", "passed", "backup_id", "rto_seconds",
                                                                  "rpo_seconds", "finished_at")}]
    table = drp("drill", "list", env=env.vars)
    assert table.returncode == 0 and month in table.stdout and "passed" in table.stdout

    after = drp("status", "--json", env=env.vars)
    assert after.returncode == 0, after.stdout + after.stderr
    status = json.loads(after.stdout)
    assert status["ok"] is True and status["problems"] == [] and status["success_rate_30d"] == 1.0
    assert status["last_drill"]["month"] == month and status["last_verification"]["passed"] is True
    human = drp("status", env=env.vars)
    assert human.returncode == 0 and f"last drill:         {month} passed" in human.stdout


def test_verify_of_a_tampered_backup_exits_1_naming_the_table(
    env: Env, source: Source, tmp_path: Path, pg_cluster: LocalCluster, demo_template: str
) -> None:
    tamper_backup(env.storage, entry_for(env.storage, source.manifest.id), source.key, pg_cluster, tmp_path,
                  CHANGE_ONE_PATIENT, same_content_as=demo_template)  # the source is a copy of demo_template

    result = drp("verify", env=env.vars)

    assert result.returncode == 1, result.stdout + result.stderr
    no_traceback(result)
    assert "public.patients" in result.stdout
    assert f"backup {source.manifest.id} FAILED verification: content differs from the backup in: public.patients" \
        in result.stdout
    status = drp("status", "--json", env=env.vars)
    assert status.returncode == 1
    problems = json.loads(status.stdout)["problems"]
    assert f"last verification failed (backup {source.manifest.id})" in problems and "no restorable backup" in problems


def test_errors_are_one_message_with_a_fix(env: Env, source: Source, tmp_path: Path) -> None:
    no_identity = {k: v for k, v in env.vars.items() if k != "DRP_AGE_IDENTITY_FILE"}
    for args in (["verify"], ["drill", "run"]):
        result = drp(*args, env=no_identity)
        assert result.returncode == 2, result.stdout + result.stderr
        no_traceback(result)
        assert result.stderr.startswith("error: no age identity given")
        assert "fix:" in result.stderr and "DRP_AGE_IDENTITY_FILE" in result.stderr

    unknown = drp("verify", "20200101T000000Z-0000", env=env.vars)
    assert unknown.returncode == 1 and "no backup '20200101T000000Z-0000'" in unknown.stderr
    no_traceback(unknown)

    bad_probes = tmp_path / "probes.yaml"
    bad_probes.write_text("- name: only_a_name\n")
    probes = drp("verify", env={**env.vars, "DRP_VERIFICATION_PROBES_FILE": str(bad_probes)})
    assert probes.returncode == 2 and "probe #1" in probes.stderr and "error:" in probes.stderr
    no_traceback(probes)

    # The wrong key: named as a key problem, and the backup is not marked broken.
    other = AgeKey.make(tmp_path / "other-key")
    wrong = drp("verify", "--identity", str(other.identity_file), env=env.vars)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    no_traceback(wrong)
    assert "error: cannot decrypt" in wrong.stderr and "fix:" in wrong.stderr
    assert not env.storage.exists(f"{backup_prefix(source.manifest.id)}/verification.json")
