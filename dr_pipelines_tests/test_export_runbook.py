"""runbooks/tenant-export.md is executed: every ```bash block, in order, exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg

from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.demo.generate import TRICKY_CLINIC_SLUG
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import BIN

RUNBOOK = Path(__file__).resolve().parents[1] / "runbooks" / "tenant-export.md"


def test_tenant_export_runbook_runs(demo_db: str, tmp_path: Path, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    psql_dir = Path(shutil.which("psql") or pg_cluster.binaries.bin_dir / "psql").parent
    env = {**os.environ, "PATH": f"{BIN}:{psql_dir}:{os.environ['PATH']}", **drp_env(source=demo_db, storage=tmp_path / "store"), "OUT": str(tmp_path),
           "CLINIC_SLUG": TRICKY_CLINIC_SLUG,  # quotes, backslashes and SQL metacharacters
           "REQUESTER": "dpo@clinic.example"}
    script = "\n".join(re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), flags=re.S))
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    with psycopg.connect(demo_db) as conn:
        clinic = conn.execute("SELECT id::text FROM clinics WHERE slug = %s", (TRICKY_CLINIC_SLUG,)).fetchone()[0]
        audit = conn.execute("SELECT status, requester, tenant_ids, export_id FROM drp.export_audit ORDER BY id").fetchall()
    assert [(a[0], a[1], a[2]) for a in audit] == [("started", "dpo@clinic.example", [clinic]),
                                                  ("succeeded", "dpo@clinic.example", [clinic])]
    export_id = audit[-1][3]
    assert f"export {export_id}" in run.stdout and "succeeded" in run.stdout
    manifest = read_manifest(LocalStorage(tmp_path / "store"), f"exports/{export_id}")
    assert manifest.extra["tenant_ids"] == [clinic] and any(o.role == "bundle" for o in manifest.objects)

    # A slug nobody has stops the runbook at step 1, before anything is exported.
    wrong = subprocess.run(["bash", "-c", script], env={**env, "CLINIC_SLUG": "no-such-clinic"},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "no clinic with slug no-such-clinic" in wrong.stdout
