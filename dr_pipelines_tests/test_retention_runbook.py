"""runbooks/data-retention.md is executed: every ```bash block, in order, exactly as written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml

from dr_pipelines.core.retention.holds import list_holds
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import BIN
from dr_pipelines_tests.support.retention import AS_OF, POLICY, key_env

RUNBOOK = Path(__file__).resolve().parents[1] / "runbooks" / "data-retention.md"


@pytest.mark.heavy(15)
def test_data_retention_runbook_runs(demo_db: str, tmp_path: Path, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    import re

    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    psql_dir = Path(shutil.which("psql") or pg_cluster.binaries.bin_dir / "psql").parent
    env = {**os.environ, "PATH": f"{BIN}:{psql_dir}:{os.environ['PATH']}", **key_env(tmp_path),
           **drp_env(source=demo_db, storage=tmp_path / "store", retention_policies_file=policy),
           "TABLE": "public.audit_log", "TENANT": "1", "PERIOD": "2024-01..2024-04", "AS_OF": AS_OF.isoformat()}
    script = "\n".join(re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), flags=re.S))
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "archived " in run.stdout
    with psycopg.connect(demo_db) as conn:
        assert list_holds(conn) == []  # released at the end
        assert len(list_holds(conn, active_only=False)) == 1
