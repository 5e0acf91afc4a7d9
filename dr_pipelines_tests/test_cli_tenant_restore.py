"""`drp tenant restore` end to end with a REAL point-in-time restore (issue 14).

One module-scoped archiving cluster holds the seeded clinic database: a base backup, a time T,
then clinic 2 is damaged (appointments deleted, invoices voided, a patient added) and clinic 1
changed too, all archived. `drp tenant restore --clinic 2 --at T` recovers a throwaway cluster to
T and its preview names exactly clinic 2's damage; --apply brings the rows back (later ones kept,
clinic 1 untouched, audited). Bad input is refused with a message, an exit code and nothing left
(no lease folder, no server); a killed run's cluster is swept by the next run; a migration since T
refuses the preview, naming it, while --into-schema (from the base backup, --backup ID) still works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.demo.generate import seed_demo
from dr_pipelines_tests.support.procs import start_paused, wait_for
from dr_pipelines_tests.support.wal import WalRig, wait_archived

CLINIC = "2"


@dataclass
class Damaged:
    """The archiving source, what a restore needs to reach it, and what changed after T."""

    rig: WalRig
    cluster: LocalCluster
    live: str
    before_base: str  # a time before the only base backup: nothing restorable is that old
    t: str  # the restore point asked for: after the base backup, before the damage
    archived_at: datetime  # when the last segment (holding the damage) was archived
    base_id: str  # the only base backup, taken before T
    deleted_appointments: list[str] = field(default_factory=list)
    voided_invoices: list[str] = field(default_factory=list)
    added_patients: list[str] = field(default_factory=list)
    invoice_status_at_t: dict[str, str] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.rig.root / "work"

    def env(self) -> dict[str, str]:
        return {"DRP_CONFIG": str(self.rig.config), "DRP_SOURCE_DSN": self.live, "DRP_WORK_DIR": str(self.work)}

    def drp(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.rig.drp(*args, timeout=timeout, DRP_SOURCE_DSN=self.live, DRP_WORK_DIR=str(self.work))

    def rows(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.live, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[str]:
        return [str(r[0]) for r in self.rows(query, params)]


def switch_and_archive(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        wait_archived(cluster, conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])


@pytest.fixture(scope="module")
def damaged(work_base: Path) -> Iterator[Damaged]:
    rig = WalRig.make(work_base / f"tenant-{uuid.uuid4().hex[:8]}")
    cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
    try:
        with rig.archiver():
            live = cluster.create_database("clinics")
            seed_demo(live, clinics=3, scale=0.5, seed=7)
            storage, recipients = context.storage(rig.settings()), rig.settings().encryption_recipients
            with psycopg.connect(live, autocommit=True) as conn:
                before_base = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            base_id = run_base_backup(live, storage, recipients).id
            d = Damaged(rig, cluster, live, before_base.isoformat(), "", datetime.now(UTC), base_id)
            d.t = d.sql("SELECT clock_timestamp()")[0]
            d.deleted_appointments = d.sql(
                "WITH gone AS (SELECT a.id FROM appointments a WHERE a.clinic_id = 2 AND NOT EXISTS (SELECT 1 FROM visits v"
                " WHERE v.clinic_id = a.clinic_id AND v.appointment_id = a.id) ORDER BY a.id LIMIT 5)"
                " DELETE FROM appointments WHERE id IN (SELECT id FROM gone) RETURNING id")
            d.invoice_status_at_t = dict(d.rows("SELECT id::text, status::text FROM invoices WHERE clinic_id = 2 "
                                                "AND status <> 'void' ORDER BY invoices.id LIMIT 4"))
            d.voided_invoices = d.sql("UPDATE invoices SET status = 'void' WHERE id IN (SELECT id FROM invoices WHERE "
                                      "clinic_id = 2 AND status <> 'void' ORDER BY id LIMIT 4) RETURNING id")
            d.added_patients = d.sql("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex) "
                                     "VALUES (2, 'after-t', 'Added', 'After', '1990-01-01', 'other') RETURNING id")
            d.sql("UPDATE invoices SET status = 'void' WHERE clinic_id = 1 RETURNING id")  # another clinic's writes
            switch_and_archive(cluster)
            d.archived_at = datetime.now(UTC)
            yield d
    finally:
        cluster.remove()


def nothing_left(d: Damaged) -> None:
    """No lease folder (and so no data directory) under the work dir, no server started from it."""
    clusters = d.work / "clusters"
    assert not clusters.exists() or sorted(p.name for p in clusters.iterdir()) == []
    ps = subprocess.run(["pgrep", "-af", f"postgres.*{d.work}"], capture_output=True, text=True).stdout.strip()
    assert ps == ""


def keys(table: dict, kind: str) -> list[str]:  # type: ignore[type-arg]
    return sorted((k[0] for k in table["samples"][kind]), key=int)


def test_preview_at_t_shows_exactly_the_clinics_damage_and_writes_the_reports(damaged: Damaged,
                                                                              tmp_path: Path) -> None:
    d = damaged
    assert len(d.deleted_appointments) == 5 and len(d.voided_invoices) == 4 and len(d.added_patients) == 1
    result = d.drp("tenant", "restore", "--clinic", CLINIC, "--at", d.t, "--report-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    point = report["restore_point"]
    assert point["how"] == "pitr" and point["lsn"] and datetime.fromisoformat(point["time"]) <= datetime.fromisoformat(d.t)
    assert report["schema_drift"] == {"tables": [], "migrations_since": []}
    tables = {t["table"]: t for t in report["preview"]["tables"]}
    differs = {name: (t["deleted"], t["added"], t["changed"]) for name, t in tables.items()
               if t["deleted"] or t["added"] or t["changed"]}
    assert differs == {"public.appointments": (5, 0, 0), "public.invoices": (0, 0, 4), "public.patients": (0, 1, 0)}
    assert keys(tables["public.appointments"], "deleted") == sorted(d.deleted_appointments, key=int)
    assert keys(tables["public.invoices"], "changed") == sorted(d.voided_invoices, key=int)
    assert tables["public.invoices"]["changed_columns"] == {"status": 4}
    assert keys(tables["public.patients"], "added") == d.added_patients
    paths = [Path(p) for p in report["reports"]]
    assert [p.suffix for p in paths] == [".json", ".md"] and all(p.parent == tmp_path for p in paths)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    assert json.loads(paths[0].read_text())["preview"] == report["preview"]
    assert "public.appointments" in paths[1].read_text()
    assert "restoring" in result.stderr and "comparing" in result.stderr  # progress lines on stderr
    nothing_left(d)


@pytest.mark.parametrize("args, code, message, fix", [
    (["--clinic", "999"], 2, "clinic '999' is not in live's public.clinics", "that exists in live; nothing was restored"),
    (["--clinic", "abc"], 2, "clinic 'abc' is not in live's public.clinics", "that exists in live"),
    (["--backup", "nope"], 1, "no backup 'nope'", "drp backup list"),
    (["--at", "future"], 1, "is in the future", "pass a time in the past"),
    (["--at", "before-base"], 1, "is before the oldest restorable point", "nothing older can be restored"),
    (["--at", "after-archive"], 1, "is after the newest archived WAL", "wait for archiving to catch up"),
    (["--at", "2026-12-01 10:00"], 2, "has no UTC offset", "add the offset"),
    (["--apply"], 2, "--apply needs --policy", "--policy restore-deleted | revert-changed | both"),
])
def test_bad_input_is_refused_naming_the_fix_with_nothing_left(damaged: Damaged, args: list[str], code: int,
                                                               message: str, fix: str) -> None:
    d = damaged
    times = {"future": (datetime.now(UTC) + timedelta(hours=1)).isoformat(), "before-base": d.before_base,
             "after-archive": None}
    if "after-archive" in args:  # a moment after the last archived segment was pushed, already past
        at = d.archived_at + timedelta(seconds=1)
        time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.1)
        times["after-archive"] = at.isoformat()
    args = [times.get(a) or a for a in args]
    if "--clinic" not in args:
        args = ["--clinic", CLINIC, *args]
    if "--at" not in args and "--backup" not in args:
        args = [*args, "--at", d.t]
    result = d.drp("tenant", "restore", *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr and "fix: " in result.stderr and fix in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    nothing_left(d)


def test_a_killed_run_during_the_pitr_is_swept_by_the_next(damaged: Damaged) -> None:
    d = damaged
    proc = start_paused(["tenant", "restore", "--clinic", CLINIC, "--at", d.t], d.env(), "pitr-recovering")
    leases = sorted((d.work / "clusters").iterdir())
    [ours] = [p for p in leases if p.name.startswith("tenant-restore-")]
    conf = (ours / "data" / "postgresql.auto.conf").read_text()  # a throwaway: never crash-recovered, not durable
    assert all(re.search(rf"^{k} = '?off'?$", conf, re.M) for k in ("fsync", "synchronous_commit", "full_page_writes"))
    assert re.search(r"^archive_mode = '?off'?$", conf, re.M)
    server = wait_for(lambda: subprocess.run(["pgrep", "-f", f"postgres.*{d.work}"], capture_output=True,
                                             text=True).stdout.split(), timeout=30, what="the PITR's server")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(Path(f"/proc/{pid}").exists() for pid in server)  # the server outlived its owner
    result = d.drp("tenant", "restore", "--clinic", CLINIC, "--at", d.before_base)  # the next run, even a refused one
    assert result.returncode == 1 and "before the oldest restorable point" in result.stderr, result.stderr
    for lease in leases:
        assert f"removed leftover clusters/{lease.name}" in result.stderr
        assert not lease.exists()
    nothing_left(d)


def audit_rows(d: Damaged, reason: str) -> list[tuple[object, ...]]:
    return d.rows("SELECT requester, status, undo_export_id, error FROM drp.tenant_restores WHERE reason = %s "
                  "ORDER BY id", (reason,))


def test_an_apply_refused_before_it_began_is_audited(damaged: Damaged) -> None:
    d = damaged
    result = d.drp("tenant", "restore", "--clinic", CLINIC, "--at", d.before_base, "--apply", "--policy", "both",
                   "--reason", "TICKET-13 too early", "--requester", "oncall")
    assert result.returncode == 1 and "before the oldest restorable point" in result.stderr, result.stderr
    started, refused = audit_rows(d, "TICKET-13 too early")
    assert started == ("oncall", "started", None, None)
    assert refused[:3] == ("oncall", "refused", None) and "before the oldest restorable point" in str(refused[3])
    nothing_left(d)


def test_apply_brings_the_clinics_rows_back_keeps_later_ones_and_audits(damaged: Damaged, tmp_path: Path) -> None:
    d = damaged
    clinic1 = d.rows("SELECT id, status::text FROM invoices WHERE clinic_id = 1 ORDER BY id")
    result = d.drp("tenant", "restore", "--clinic", CLINIC, "--at", d.t, "--apply", "--policy", "both",
                   "--reason", "TICKET-14 appointments deleted by mistake", "--requester", "oncall",
                   "--undo-allow-plaintext", "--report-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    applied = json.loads(result.stdout)["apply"]
    assert (applied["inserted"], applied["updated"], applied["conflicts"]) == (5, 4, [])
    assert d.sql("SELECT id FROM appointments WHERE id = ANY(%s::bigint[]) ORDER BY id",
                 (d.deleted_appointments,)) == sorted(d.deleted_appointments, key=int)
    assert dict(d.rows("SELECT id::text, status::text FROM invoices WHERE id = ANY(%s::bigint[])",
                       (d.voided_invoices,))) == d.invoice_status_at_t
    assert d.sql("SELECT id FROM patients WHERE id = ANY(%s::bigint[])", (d.added_patients,)) == d.added_patients
    assert d.rows("SELECT id, status::text FROM invoices WHERE clinic_id = 1 ORDER BY id") == clinic1
    assert audit_rows(d, "TICKET-14 appointments deleted by mistake") == [
        ("oncall", "started", None, None), ("oncall", "succeeded", applied["undo_export_id"], None)]
    assert "undo export" in Path(json.loads(result.stdout)["reports"][1]).read_text()
    nothing_left(d)


def test_a_migration_since_t_refuses_the_preview_naming_it_but_not_into_schema(damaged: Damaged,
                                                                              tmp_path: Path) -> None:
    """Last in the file: it changes live's schema for good. --into-schema still copies the rows as they were
    (here from --backup: the base backup recovered to its own stop point, before T)."""
    from dr_pipelines.core.migrate.runner import migrate
    from dr_pipelines.demo.schema import MIGRATIONS_DIR
    from dr_pipelines_tests.support.migrations import write_migrations

    d = damaged
    migrations = tmp_path / "migrations"
    subprocess.run(["cp", "-r", str(MIGRATIONS_DIR), str(migrations)], check=True)
    migrate(d.live, write_migrations(migrations, {"0007_patient_pronouns.sql": "ALTER TABLE patients ADD COLUMN pronouns text;\n"}))
    switch_and_archive(d.cluster)
    reports = tmp_path / "reports"
    result = d.drp("tenant", "restore", "--clinic", CLINIC, "--at", d.t, "--report-dir", str(reports))
    assert result.returncode == 1, result.stderr
    assert "public.patients: column pronouns added: text" in result.stderr
    assert "0007 patient_pronouns" in result.stderr and "fix: choose a restore point after that migration" in result.stderr
    assert not reports.exists()  # refused: no report
    nothing_left(d)

    result = d.drp("tenant", "restore", "--clinic", CLINIC, "--backup", d.base_id, "--into-schema", "clinic2_at_t",
                   "--report-dir", str(reports), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema_drift"]["migrations_since"][0].startswith("0007 patient_pronouns")
    assert report["into-schema"]["schema"] == "clinic2_at_t"
    assert (report["restore_point"]["how"], report["restore_point"]["backup_id"]) == ("base backup", d.base_id)
    def side_ids(query: str, ids: list[str]) -> list[str]:
        with psycopg.connect(d.live) as conn:
            return sorted(str(r[0]) for r in conn.execute(query, (ids,)).fetchall())

    found = {"appointments": side_ids("SELECT id FROM clinic2_at_t.appointments WHERE id = ANY(%s::bigint[])",
                                      d.deleted_appointments),
             "invoices": side_ids("SELECT id FROM clinic2_at_t.invoices WHERE id = ANY(%s::bigint[]) AND status <> "
                                  "'void'", d.voided_invoices),
             "patients": side_ids("SELECT id FROM clinic2_at_t.patients WHERE id = ANY(%s::bigint[])", d.added_patients)}
    columns = side_ids("SELECT column_name FROM information_schema.columns WHERE table_schema = 'clinic2_at_t' "
                       "AND table_name = 'patients' AND %s::text[] IS NOT NULL", [])
    assert found == {"appointments": sorted(d.deleted_appointments), "invoices": sorted(d.voided_invoices),
                     "patients": []}  # the rows as they were at T: deleted ones there, invoices not yet void
    assert "pronouns" not in columns and "family_name" in columns
    nothing_left(d)
