"""runbooks/schema-migration.md, executed: every bash block in order, exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyrage import x25519

from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.pg.schema import schema_ddl
from dr_pipelines.core.storage import open_storage
from dr_pipelines.demo.schema import MIGRATIONS_DIR
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.migrations import versions, write_migrations

RUNBOOK = Path(__file__).resolve().parents[1] / "runbooks" / "schema-migration.md"
NEW_MIGRATION = {
    "0007_appointment_room.sql": "ALTER TABLE appointments ADD COLUMN room text;\n",
    "0007_appointment_room.down.sql": "ALTER TABLE appointments DROP COLUMN room;\n",
}


@pytest.mark.heavy(25)
def test_schema_migration_runbook_runs_as_written(demo_db: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    write_migrations(directory, NEW_MIGRATION)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRP_")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **drp_env(source=demo_db, storage=tmp_path / "storage",
                  encryption_recipients=x25519.Identity.generate().to_public(), migrations_dir=directory),
        "COLUMNS": "200",
    })
    before = schema_ddl(demo_db)
    script = "set -euo pipefail\n" + "\n".join(re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), flags=re.S))
    run = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "current version: 6" in run.stdout
    assert "applying 0007_appointment_room.sql (1/1)" in run.stderr
    assert "AccessExclusiveLock on public.appointments" in run.stdout  # the dry-run's table
    (backup,) = list_backups(open_storage(str(tmp_path / "storage")))
    assert f"backup {backup.id}" in run.stdout  # `drp backup show` of the recorded pre-migration backup
    assert "rolled back 1 migration(s); now at version 6" in run.stdout
    assert schema_ddl(demo_db) == before and versions(demo_db) == [1, 2, 3, 4, 5, 6]
