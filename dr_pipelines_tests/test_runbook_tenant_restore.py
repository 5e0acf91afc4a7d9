"""runbooks/restore-one-clinic.md, executed as written on a real archiving cluster (issue 14).

Clinic 2 deletes a month of appointments (the application logs each deletion in audit_log); then
clinic 2 books a new appointment and clinic 1 keeps writing. The runbook finds the time in the audit
log, previews, copies the past rows aside, applies restore-deleted, verifies, undoes, and cleans up.
Storage is S3 (moto) with server-side encryption, where the undo export may go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.tenancy import discover_scope, tenant_keys
from dr_pipelines.core.tenant_restore.drill import Checksums, clinic_checksums
from dr_pipelines.demo.generate import seed_demo
from dr_pipelines_tests.support.runbook import RUNBOOKS, run_sections, sections
from dr_pipelines_tests.support.s3 import MotoServer
from dr_pipelines_tests.support.wal import WalRig

RUNBOOK = RUNBOOKS / "restore-one-clinic.md"
STEPS = ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
# The application's bulk delete: the month with the most appointments of clinic 2 that have no visit, each logged.
DELETE_A_MONTH = """
WITH candidates AS (
    SELECT a.id, date_trunc('month', a.starts_at) AS month FROM appointments a
    WHERE a.clinic_id = 2 AND NOT EXISTS (SELECT 1 FROM visits v WHERE v.clinic_id = 2 AND v.appointment_id = a.id)),
worst AS (SELECT month FROM candidates GROUP BY month ORDER BY count(*) DESC, month LIMIT 1),
gone AS (DELETE FROM appointments WHERE id IN (SELECT id FROM candidates WHERE month = (SELECT month FROM worst))
         RETURNING clinic_id, id)
INSERT INTO audit_log (clinic_id, action, entity, entity_id) SELECT clinic_id, 'delete', 'appointment', id FROM gone
RETURNING entity_id
"""
BOOK_AFTER = ("INSERT INTO appointments (clinic_id, patient_id, staff_user_id, starts_at, reason) "
              "SELECT clinic_id, patient_id, staff_user_id, now() + interval '1 day', 'booked after the damage' "
              "FROM appointments WHERE clinic_id = 2 ORDER BY id LIMIT 1 RETURNING id")
OTHER_CLINIC_WRITES = ("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex) "
                       "VALUES (1, 'after-damage', 'Other', 'Clinic', '1980-01-01', 'other')")
APPOINTMENTS = ("SELECT count(*), md5(coalesce(string_agg(a::text, ',' ORDER BY id), '')) FROM appointments a "
                "WHERE clinic_id = 2 AND id <> {kept}")


@dataclass
class Site:
    rig: WalRig
    cluster: LocalCluster
    live: str

    def sql(self, query: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.live, autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def checksums(self) -> Checksums:
        with psycopg.connect(self.live) as conn:
            scope, clinics = discover_scope(conn), tenant_keys(conn)
        return clinic_checksums(self.live, scope, clinics)


@pytest.fixture(scope="module")
def site(work_base: Path, s3_server: MotoServer) -> Iterator[Site]:
    bucket = s3_server.create_bucket()
    rig = WalRig.make(work_base / f"runbook-tenant-{uuid.uuid4().hex[:8]}", storage={
        "storage_url": f"s3://{bucket}/site", "s3_endpoint_url": s3_server.endpoint_url, "s3_region": s3_server.region,
        "s3_access_key_id": s3_server.access_key, "s3_secret_access_key": s3_server.secret_key})
    cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
    try:
        with rig.archiver():
            live = cluster.create_database("clinics")
            seed_demo(live, clinics=3, scale=0.5, seed=7)
            settings = rig.settings()
            run_base_backup(live, context.storage(settings), settings.encryption_recipients)
            yield Site(rig, cluster, live)
    finally:
        cluster.remove()


def script(probe: str) -> str:
    """The preamble and steps 1-7 as written, with ``probe`` (test-only lines) between step 5 and step 6."""
    found = sections(RUNBOOK)
    blocks = list(found[""])
    for step in STEPS:
        heading = next(h for h in found if h.startswith(step))
        if step == "6.":
            blocks.append(probe)
        blocks += found[heading]
    return "set -euo pipefail\n" + "\n".join(blocks)


@pytest.mark.heavy(45)
def test_restore_one_clinic_runbook_runs_as_written(site: Site, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{site.cluster.binaries.bin_dir}:{os.environ['PATH']}",
           "DRP_CONFIG": str(site.rig.config), "DRP_SOURCE_DSN": site.live, "DRP_WORK_DIR": str(site.rig.root / "work"),
           "CLINIC": "2", "TICKET": "SUP-4242", "REQUESTER": "dpo@clinic-2.example", "JOB_ID": "import-7",
           "REPORT_DIR": str(tmp_path / "reports")}
    point = run_sections(RUNBOOK, ["Before a bulk job"], env, tmp_path)
    assert point.returncode == 0, point.stdout + point.stderr
    assert "restore point before-import-7: LSN " in point.stdout
    original = site.checksums()
    original_appointments = site.sql(APPOINTMENTS.format(kept=0))[0]  # ids start at 1: every row of clinic 2
    time.sleep(2)  # the restore point (a second before the first deletion) must be after the base backup's end
    deleted = [str(r[0]) for r in site.sql(DELETE_A_MONTH)]
    reported = site.sql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:00+00')")[0][0]
    kept = site.sql(BOOK_AFTER)[0][0]
    site.sql(OTHER_CLINIC_WRITES)
    damaged = site.checksums()
    assert len(deleted) >= 5 and damaged["2"] != original["2"]

    report_dir = tmp_path / "reports"
    env["REPORTED"] = str(reported)
    probe = f'psql -X -A -t -v ON_ERROR_STOP=1 -d "$DRP_SOURCE_DSN" -c "{APPOINTMENTS.format(kept=kept)}" > {tmp_path}/applied\n'
    run = subprocess.run(["bash", "-c", script(probe)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-4000:]

    assert f"public.appointments: {len(deleted)} deleted since, 1 added since, 0 changed since" in out  # step 2
    assert f"restored: {len(deleted)} rows inserted, 0 updated; undo export " in out  # step 4
    assert "still deleted since the restore point: nothing" in out  # step 5
    assert "succeeded" in out and "SUP-4242" in out and "dpo@clinic-2.example" in out  # the audit rows
    # After the apply (probe): clinic 2's appointments exactly as before the damage, the new booking aside.
    applied_count, applied_md5 = (tmp_path / "applied").read_text().strip().split("|")
    assert (int(applied_count), applied_md5) == original_appointments
    assert "public.appointments: undo rows loaded into" in out  # step 6
    assert f"We restored {len(deleted)} appointments of clinic 2 as they were at" in out and "SUP-4242" in out  # step 7

    after = site.checksums()
    assert after == damaged  # undone: clinic 2 as before the apply (its new booking kept); 1 and 3 never touched
    assert site.sql(f"SELECT count(*) FROM appointments WHERE id = {int(kept)}")[0][0] == 1  # type: ignore[call-overload]
    assert site.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'restore_clinic_%' OR nspname LIKE 'undo_%'")[0][0] == 0
    assert not report_dir.exists()
    clusters = site.rig.root / "work" / "clusters"
    assert not clusters.exists() or list(clusters.iterdir()) == []

