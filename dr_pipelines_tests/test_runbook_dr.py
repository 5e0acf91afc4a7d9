"""runbooks/disaster-recovery.md, executed: each scenario's commands run in order, exactly as written."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pyrage import x25519

from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage import open_storage
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.runbook import sections as runbook_sections

RUNBOOK = Path(__file__).resolve().parents[1] / "runbooks" / "disaster-recovery.md"
PROBES = Path(__file__).resolve().parents[1] / "dr_pipelines" / "demo" / "probes.yaml"


def sections() -> dict[str, list[str]]:
    """Heading -> the bash blocks under it (support/runbook.py)."""
    return runbook_sections(RUNBOOK)


SCENARIOS = [h for h in sections() if h.startswith("Scenario:")] + ["After the incident"]


def test_every_scenario_the_issue_names_is_covered() -> None:
    names = " ".join(SCENARIOS).lower()
    for scenario in ("database lost", "host lost", "storage lost", "backup corrupt", "bad deploy"):
        assert scenario in names
    assert all(sections()[s] for s in SCENARIOS), "every scenario has commands"


@pytest.fixture
def incident(tmp_path: Path, work_base: Path, pg_cluster: LocalCluster, demo_db: str) -> Iterator[dict[str, str]]:
    """Two backups in storage (the newest corrupted later where a scenario needs it) and the on-call's env."""
    identity = x25519.Identity.generate()
    key = tmp_path / "backup-key.txt"
    key.write_text(f"{identity}\n")
    storage_dir = tmp_path / "storage"
    storage = open_storage(str(storage_dir))
    first = run_logical_backup(demo_db, storage, [str(identity.to_public())])
    second = run_logical_backup(demo_db, storage, [str(identity.to_public())])
    side = f"side_{uuid.uuid4().hex[:8]}"
    restore_dir = work_base / f"dr-restore-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{pg_cluster.binaries.bin_dir}:{os.environ['PATH']}",
        **drp_env(source=demo_db, storage=storage_dir, work=work_base / "dr-work", encryption_recipients=identity.to_public(),
                  age_identity_file=key, verification_probes_file=PROBES),
        "RESTORE_DIR": str(restore_dir),
        "SIDE_DSN": pg_cluster.create_database(side),
        "NEW_STORAGE_URL": str(tmp_path / "new-storage"),
        "BAD_BACKUP_ID": second.id,
        "GOOD_BACKUP_ID": first.id,
        "BEFORE_DEPLOY_BACKUP_ID": first.id,
    }
    env.pop("DRP_CONFIG", None)
    yield env
    if (restore_dir / "PG_VERSION").exists():
        LocalCluster.attach(restore_dir).remove()
    pg_cluster.drop_database(side)


def run_section(name: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    blocks = sections()["Before any scenario: the environment"] + sections()[name]
    script = "set -euo pipefail\n" + "\n".join(blocks)
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def corrupt_newest(env: dict[str, str]) -> None:
    path = Path(env["DRP_STORAGE_URL"]) / "backups" / env["BAD_BACKUP_ID"] / "database.dump.zst.age"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_runbook_scenario_runs_as_written(scenario: str, incident: dict[str, str], tmp_path: Path, demo_db: str) -> None:
    if scenario.startswith("Scenario: backup corrupt"):
        corrupt_newest(incident)
    run = run_section(scenario, incident, tmp_path)
    assert run.returncode == 0, f"{scenario}\n--- stdout\n{run.stdout[-4000:]}\n--- stderr\n{run.stderr[-4000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-1500:]

    storage = open_storage(incident["DRP_STORAGE_URL"])
    if scenario.startswith("Scenario: database lost"):
        restored = LocalCluster.attach(incident["RESTORE_DIR"])
        db = psycopg.conninfo.conninfo_to_dict(demo_db)["dbname"]
        source = {t.name: (t.rows, t.checksum) for t in database_checksums(demo_db)}
        assert {t.name: (t.rows, t.checksum) for t in database_checksums(restored.dsn(db))} == source
        assert "verified" in run.stdout
        newest = [e for e in list_backups(storage) if e.complete][-1]  # the restored primary was backed up
        assert newest.manifest.source["server"].startswith(f"127.0.0.1:{restored.port}/")
    elif scenario.startswith("Scenario: storage lost"):
        new = [e for e in list_backups(open_storage(incident["NEW_STORAGE_URL"])) if e.complete]
        assert len(new) == 1 and new[0].verification and new[0].verification["passed"]
    elif scenario.startswith("Scenario: backup corrupt"):
        assert "verification failed" in run.stdout
        entries = {e.id: e for e in list_backups(storage)}
        assert entries[incident["BAD_BACKUP_ID"]].pin is not None
        assert entries[incident["BAD_BACKUP_ID"]].verification["passed"] is False
        with psycopg.connect(incident["SIDE_DSN"]) as conn:
            assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0
    elif scenario.startswith("Scenario: bad deploy"):
        with psycopg.connect(incident["SIDE_DSN"]) as conn:
            tables = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r' "
                                                 "AND relnamespace = 'public'::regnamespace")}
        assert tables == {"clinical_notes"}
