"""Tenant restore --apply on real PostgreSQL: one clinic's rows back, nobody else's touched (issue 14).

The past database is a ``CREATE DATABASE ... TEMPLATE`` copy of the demo taken before the
damage; content is compared with PostgreSQL's own row hashes (core/pg/checksums.py) over
each clinic's rows (core/tenancy.py's tenant filter).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core.checkpoints import observe, unobserve
from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.layout import export_prefix
from dr_pipelines.core.pg.checksums import RENDER_SETTINGS, default_method, relation_checksum
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.retention.apply import ApplyOptions, apply_policies
from dr_pipelines.core.retention.holds import place_hold
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, discover_scope, tenant_filter, tenant_select
from dr_pipelines.core.tenant_restore import audit
from dr_pipelines.core.tenant_restore.apply import (
    BEFORE_COMMIT,
    SNAPSHOT_TAKEN,
    ApplyError,
    UndoExportError,
    UndoTarget,
    apply_restore,
)
from dr_pipelines.core.tenant_restore.conflicts import ConflictError
from dr_pipelines.core.tenant_restore.guard import IsolationError, rows_not_the_clinics
from dr_pipelines_tests.support.procs import PAUSED, REPO, wait_for, wait_for_line
from dr_pipelines_tests.support.retention import AS_OF, KEYS, policies

CLINIC = "1"
OTHER = "2"
REASON = "TICKET-14 appointments deleted by mistake"


# -- helpers -------------------------------------------------------------------------------------------


def _dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


def _scope(dsn: str) -> Scope:
    with psycopg.connect(dsn) as conn:
        return discover_scope(conn)


def _checksums(dsn: str, scope: Scope, clinic: str, *, mine: bool,
               leave_out: dict[str, list[int]] | None = None) -> dict[str, tuple[int, str]]:
    """(rows, checksum) per scope table of the clinic's rows (mine) or of everyone else's, in one snapshot.

    ``leave_out``: ids per table not counted (rows the test added after the damage)."""
    out = {}
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            for name, value in RENDER_SETTINGS.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            conn.execute("SELECT set_config(%s, %s, true)", (TENANTS_SETTING, "{" + clinic + "}"))
            for t in scope.tables:
                if mine:
                    source = sql.SQL("({})").format(tenant_select(t, scope))
                else:
                    source = sql.SQL("(SELECT t.* FROM {} AS t WHERE ({}) IS NOT TRUE)").format(
                        sql.Identifier(t.schema, t.table), tenant_filter(t, scope, "t"))
                ids = (leave_out or {}).get(t.name)
                if ids:
                    source = sql.SQL("(SELECT s.* FROM {} AS s WHERE s.id <> ALL ({}))").format(source, sql.Literal(ids))
                r = relation_checksum(conn, t.name, source, default_method(conn, t.schema, t.table))
                out[t.name] = (r.rows, r.checksum)
    return out


@pytest.fixture
def past_of(pg_cluster: LocalCluster) -> Iterator:  # type: ignore[type-arg]
    """past_of(live_dsn): a TEMPLATE copy of the live database as it is now (the restore point); its DSN."""
    made: list[str] = []

    def copy(live: str) -> str:
        name = f"past_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return pg_cluster.create_database(name, template=_dbname(live))

    yield copy
    for name in made:
        pg_cluster.drop_database(name)


def _undo_s3(s3_server, s3_bucket: str) -> UndoTarget:  # type: ignore[no-untyped-def]
    return UndoTarget(S3Storage(s3_bucket, "undo", sse="AES256", **s3_server.storage_kwargs()))


def _undo_local(tmp_path: Path) -> UndoTarget:
    return UndoTarget(LocalStorage(tmp_path / "undo"), allow_plaintext=True)


def _delete_visits(conn: psycopg.Connection, visit_ids: list[int]) -> None:
    """Delete visits with everything hanging off them (notes, prescriptions, their invoices, lines, payments)."""
    inv = "SELECT id FROM invoices WHERE visit_id = ANY(%(v)s)"
    for stmt in (f"DELETE FROM payments WHERE invoice_id IN ({inv})", f"DELETE FROM invoice_lines WHERE invoice_id IN ({inv})",
                 "DELETE FROM invoices WHERE visit_id = ANY(%(v)s)", "DELETE FROM clinical_notes WHERE visit_id = ANY(%(v)s)",
                 "DELETE FROM prescriptions WHERE visit_id = ANY(%(v)s)", "DELETE FROM visits WHERE id = ANY(%(v)s)"):
        conn.execute(stmt, {"v": visit_ids})


def _delete_appointments(conn: psycopg.Connection, appointment_ids: list[int]) -> None:
    visits = [r[0] for r in conn.execute("SELECT id FROM visits WHERE appointment_id = ANY(%s)",
                                         (appointment_ids,)).fetchall()]
    _delete_visits(conn, visits)
    conn.execute("DELETE FROM appointments WHERE id = ANY(%s)", (appointment_ids,))


def _delete_patient(conn: psycopg.Connection, patient_id: int) -> None:
    appts = [r[0] for r in conn.execute("SELECT id FROM appointments WHERE patient_id = %s", (patient_id,)).fetchall()]
    _delete_appointments(conn, appts)
    inv = "SELECT id FROM invoices WHERE patient_id = %(p)s"
    for stmt in (f"DELETE FROM payments WHERE invoice_id IN ({inv})", f"DELETE FROM invoice_lines WHERE invoice_id IN ({inv})",
                 "DELETE FROM invoices WHERE patient_id = %(p)s", "DELETE FROM attachments WHERE patient_id = %(p)s",
                 "DELETE FROM patients WHERE id = %(p)s"):
        conn.execute(stmt, {"p": patient_id})


def _damage(live: str) -> dict[str, list[int]]:
    """10% of the clinic's appointments and their visits deleted, some invoices changed, new rows added.

    Returns the ids of the rows added after the damage (kept by the apply), per table."""
    with psycopg.connect(live, autocommit=True) as conn, conn.transaction():
        appts = [r[0] for r in conn.execute(
            "SELECT id FROM appointments WHERE clinic_id = %s AND id %% 10 = 3 ORDER BY id", (int(CLINIC),)).fetchall()]
        assert appts
        _delete_appointments(conn, appts)
        # A partitioned table (audit_log, by month): some of the clinic's rows across partitions.
        assert conn.execute("DELETE FROM audit_log WHERE clinic_id = %s AND id %% 10 = 3", (int(CLINIC),)).rowcount
        changed = conn.execute("UPDATE invoices SET total = total + 1, status = 'void' WHERE clinic_id = %s"
                               " AND id %% 7 = 0", (int(CLINIC),)).rowcount
        assert changed
        patient = conn.execute(
            "INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
            " VALUES (%s, 'NEW-1', 'Ada', 'New', '1990-01-01', 'female') RETURNING id", (int(CLINIC),)).fetchone()[0]
        staff = conn.execute("SELECT min(id) FROM staff_users WHERE clinic_id = %s", (int(CLINIC),)).fetchone()[0]
        appt = conn.execute("INSERT INTO appointments (clinic_id, patient_id, staff_user_id, starts_at)"
                            " VALUES (%s, %s, %s, '2025-11-20 10:00+00') RETURNING id",
                            (int(CLINIC), patient, staff)).fetchone()[0]
    return {"public.patients": [patient], "public.appointments": [appt]}


OTHER_WRITES = [
    ("UPDATE appointments SET reason = %(tag)s WHERE id = (SELECT min(id) + %(i)s FROM appointments WHERE clinic_id = 2)",),
    ("INSERT INTO patients (id, clinic_id, external_id, given_name, family_name, date_of_birth, sex, created_at)"
     " VALUES (900000 + %(i)s, 2, %(tag)s, 'Writer', 'Other', '1980-02-02', 'male', '2025-11-01 00:00+00')",),
    ("UPDATE invoices SET total = total + 1 WHERE id = (SELECT min(id) + %(i)s FROM invoices WHERE clinic_id = 2)",),
]


def _other_write(conn: psycopg.Connection, i: int) -> None:
    """The i-th write of the other clinic: deterministic, so a control database can replay it."""
    for (stmt,) in OTHER_WRITES:
        conn.execute(stmt, {"i": i, "tag": f"w{i}"})


# -- tests ---------------------------------------------------------------------------------------------


def test_apply_restores_exactly_the_clinic_while_another_clinic_writes(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, pg_cluster: LocalCluster, s3_server, s3_bucket: str) -> None:
    scope = _scope(demo_db)
    past = past_of(demo_db)
    want = _checksums(past, scope, CLINIC, mine=True)
    added = _damage(demo_db)
    control = past_of(demo_db)  # the damaged database without the apply: the other clinic's writes replayed here
    damaged = _checksums(demo_db, scope, CLINIC, mine=True, leave_out=added)
    assert damaged != want
    differing = {name for name, sums in _checksums(demo_db, scope, CLINIC, mine=True).items() if sums != want[name]}

    done, writes, errors = threading.Event(), [0], []

    def writer() -> None:
        try:
            with psycopg.connect(demo_db, autocommit=True) as conn:
                while not done.is_set() or writes[0] < 6:
                    _other_write(conn, writes[0])
                    writes[0] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: writes[0] >= 3, timeout=30, what="the other clinic's writer", interval=0.05)
        during = writes[0]
        result = apply_restore(past, demo_db, scope, CLINIC, requester="alice", reason=REASON,
                               undo=_undo_s3(s3_server, s3_bucket), restore_point="test past copy")
        during = writes[0] - during
    finally:
        done.set()
        thread.join()
    assert not errors and during > 0  # the other clinic wrote while the apply ran

    assert _checksums(demo_db, scope, CLINIC, mine=True, leave_out=added) == want
    with psycopg.connect(demo_db) as conn:  # the rows the clinic added after the damage are kept
        assert conn.execute("SELECT external_id FROM patients WHERE id = %s", added["public.patients"]).fetchone() == ("NEW-1",)
        assert conn.execute("SELECT count(*) FROM appointments WHERE id = %s", added["public.appointments"]).fetchone() == (1,)
    with psycopg.connect(control, autocommit=True) as conn:
        for i in range(writes[0]):
            _other_write(conn, i)
    assert _checksums(demo_db, scope, CLINIC, mine=False) == _checksums(control, scope, CLINIC, mine=False)

    by_table = result.tables
    assert by_table["public.appointments"].inserted > 0 and by_table["public.visits"].inserted > 0
    assert by_table["public.audit_log"].inserted > 0 and by_table["public.invoice_lines"].inserted > 0
    assert by_table["public.invoices"].updated > 0
    assert by_table["public.patients"].inserted == 0  # nothing of them was deleted
    # a table whose clinic rows have the same checksum in both is not copied; every damaged one is
    assert differing and {name for name, t in by_table.items() if not t.identical} == differing
    assert by_table["public.staff_users"].identical and not by_table["public.patients"].identical
    # The undo export holds the clinic's rows as they were before the apply, stored with SSE.
    keys = [o.key for o in S3Storage(s3_bucket, "undo", **s3_server.storage_kwargs()).list(
        export_prefix(result.undo_export_id) + "/")]
    assert any(k.endswith("manifest.json") for k in keys) and any(k.endswith("public.appointments.csv") for k in keys)
    # every table the apply could write (those that differ), not the identical ones: it writes nothing there
    assert {k.rsplit("/", 1)[1].removesuffix(".csv") for k in keys if k.endswith(".csv")} == differing
    csv_key = next(k for k in keys if k.endswith(".csv"))
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"undo/{csv_key}")
    assert head["ServerSideEncryption"] == "AES256"
    with psycopg.connect(demo_db) as conn:
        rows = audit.history(conn, CLINIC)
    assert [r["status"] for r in rows] == ["started", "succeeded"]
    assert rows[1]["id"] == result.audit_id and rows[1]["requester"] == "alice" and rows[1]["reason"] == REASON
    assert rows[1]["undo_export_id"] == result.undo_export_id
    assert rows[1]["counts"]["public.appointments"]["inserted"] == by_table["public.appointments"].inserted


def test_nothing_differs_nothing_is_written_and_no_undo_is_needed(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    scope = _scope(demo_db)
    past = past_of(demo_db)
    result = apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path))
    assert result.inserted == result.updated == 0 and result.undo_export_id is None
    assert all(t.identical for t in result.tables.values())
    assert not (tmp_path / "undo").exists() or not any((tmp_path / "undo").rglob("*.csv"))
    with psycopg.connect(demo_db) as conn:
        assert [r["status"] for r in audit.history(conn, CLINIC)] == ["started", "succeeded"]


def test_kill_9_before_commit_applies_nothing_and_a_rerun_works(demo_db: str, past_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scope = _scope(demo_db)
    past = past_of(demo_db)
    want = _checksums(past, scope, CLINIC, mine=True)
    added = _damage(demo_db)
    damaged = _checksums(demo_db, scope, CLINIC, mine=True)
    script = (
        "import sys\n"
        "import psycopg\n"
        "from dr_pipelines.core import checkpoints\n"
        "from dr_pipelines.core.storage.local import LocalStorage\n"
        "from dr_pipelines.core.tenancy import discover_scope\n"
        "from dr_pipelines.core.tenant_restore.apply import BEFORE_COMMIT, UndoTarget, apply_restore\n"
        "from dr_pipelines_tests.support.paused_drp import pause_at\n"
        "past, live, undo = sys.argv[1:4]\n"
        "with psycopg.connect(live) as c:\n"
        "    scope = discover_scope(c)\n"
        "checkpoints.observe(pause_at(BEFORE_COMMIT))\n"
        f"apply_restore(past, live, scope, {CLINIC!r}, reason='kill test', undo=UndoTarget(LocalStorage(undo),"
        " allow_plaintext=True))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, past, demo_db, str(tmp_path / "undo")],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, f"{PAUSED} {BEFORE_COMMIT}", 120)
        with psycopg.connect(demo_db) as conn:  # everything written, uncommitted: invisible here
            assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
                                " AND datname = current_database()").fetchone()[0] >= 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: _checksums(demo_db, scope, CLINIC, mine=True) == damaged, timeout=30,
             what="the killed apply's transaction rolled back", interval=0.2)
    with psycopg.connect(demo_db) as conn:
        assert [r["status"] for r in audit.history(conn, CLINIC)] == ["started"]
    apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path))
    assert _checksums(demo_db, scope, CLINIC, mine=True, leave_out=added) == want


def test_conflicts_are_listed_and_refused_and_skip_leaves_them_out(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    scope = _scope(demo_db)
    with psycopg.connect(demo_db) as conn:
        gone, moved_to = conn.execute(
            "SELECT p.id, (SELECT min(q.id) FROM patients q WHERE q.clinic_id = p.clinic_id AND q.id <> p.id)"
            " FROM patients p WHERE p.clinic_id = %s AND EXISTS (SELECT FROM appointments a WHERE a.patient_id = p.id)"
            " ORDER BY p.id LIMIT 1", (int(CLINIC),)).fetchone()
        external = conn.execute("SELECT external_id FROM patients WHERE id = %s", (gone,)).fetchone()[0]
        kept_appt = conn.execute("SELECT min(id) FROM appointments WHERE patient_id = %s", (gone,)).fetchone()[0]
        other_patient = conn.execute("SELECT min(id) FROM patients WHERE clinic_id = %s", (int(CLINIC),)).fetchone()[0]
    past = past_of(demo_db)
    with psycopg.connect(demo_db, autocommit=True) as conn, conn.transaction():
        # The appointment is moved to another patient (a change), then the patient is deleted and a new
        # patient takes its clinic-unique external id: a unique collision, and a revert to a missing parent.
        conn.execute("UPDATE appointments SET patient_id = %s WHERE id = %s", (moved_to, kept_appt))
        conn.execute("UPDATE invoices SET patient_id = %s WHERE patient_id = %s", (moved_to, gone))
        _delete_patient(conn, gone)
        conn.execute("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
                     " VALUES (%s, %s, 'Taken', 'Over', '1999-09-09', 'other')", (int(CLINIC), external))
        # A change to another patient of the clinic, and an appointment deleted: no conflict for those.
        conn.execute("UPDATE patients SET given_name = 'Changed' WHERE id = %s", (other_patient,))
    before = _checksums(demo_db, scope, CLINIC, mine=True)

    with pytest.raises(ConflictError) as refused:
        apply_restore(past, demo_db, scope, CLINIC, policies={"restore-deleted"}, reason=REASON,
                      undo=_undo_local(tmp_path))
    assert "public.patients: 1 row(s) unique (patients_clinic_id_external_id_key)" in refused.value.problem
    with pytest.raises(ConflictError) as refused:
        apply_restore(past, demo_db, scope, CLINIC, policies={"revert-changed"}, reason=REASON,
                      undo=_undo_local(tmp_path))
    assert "public.appointments: 1 row(s) missing-parent (appointments_clinic_id_patient_id_fkey)" in refused.value.problem
    assert _checksums(demo_db, scope, CLINIC, mine=True) == before  # nothing applied
    # Each refused attempt deleted its undo export (rows still live) and recorded it discarded.
    assert list(LocalStorage(tmp_path / "undo").list("exports/")) == []
    with psycopg.connect(demo_db) as conn:
        rows = audit.history(conn, CLINIC)
        discarded = conn.execute("SELECT error FROM drp.export_audit WHERE status = 'discarded' AND tenant_ids = %s"
                                 " ORDER BY id", ([CLINIC],)).fetchall()
    assert [r["status"] for r in rows] == ["started", "refused", "started", "refused"]
    assert len(discarded) == 2 and all("ConflictError" in e and "rolled back" in e for (e,) in discarded)
    assert {"table": "public.patients", "kind": "unique", "constraint": "patients_clinic_id_external_id_key",
            "key": {"id": gone}, "policy": "restore-deleted"} in rows[1]["conflicts"]
    assert {"table": "public.appointments", "kind": "missing-parent",
            "constraint": "appointments_clinic_id_patient_id_fkey", "key": {"id": kept_appt},
            "policy": "revert-changed"} in rows[3]["conflicts"]

    result = apply_restore(past, demo_db, scope, CLINIC, on_conflict="skip", reason=REASON, undo=_undo_local(tmp_path))
    kept = {i.key.split("/")[1] for i in LocalStorage(tmp_path / "undo").list("exports/")}
    assert kept == {result.undo_export_id}  # the applied attempt's undo stays
    assert result.tables["public.patients"].skipped == 1
    assert result.tables["public.appointments"].skipped >= 1  # the moved one's revert, and the patient's deleted ones
    assert result.tables["public.patients"].updated == 1  # the unrelated change was reverted
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM patients WHERE id = %s", (gone,)).fetchone() == (0,)
        assert conn.execute("SELECT patient_id FROM appointments WHERE id = %s", (kept_appt,)).fetchone() == (moved_to,)
        assert conn.execute("SELECT given_name <> 'Changed' FROM patients WHERE id = %s",
                            (other_patient,)).fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM appointments WHERE patient_id = %s", (gone,)).fetchone() == (0,)


def test_sequences_and_identity_never_move_backwards(demo_db: str, past_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE lab_results (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " clinic_id bigint NOT NULL REFERENCES clinics (id), value numeric NOT NULL,"
                     " doubled numeric GENERATED ALWAYS AS (value * 2) STORED)")
        conn.execute("INSERT INTO lab_results (clinic_id, value) SELECT 1 + g % 3, g FROM generate_series(1, 30) g")
    scope = _scope(demo_db)
    past = past_of(demo_db)
    want = _checksums(past, scope, CLINIC, mine=True)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        top = conn.execute("SELECT max(id) FROM lab_results WHERE clinic_id = 1").fetchone()[0]
        conn.execute("DELETE FROM lab_results WHERE clinic_id = 1 AND id > %s", (top - 6,))
        # Someone reset the identity below the deleted ids: restoring must move it forward.
        conn.execute("ALTER TABLE lab_results ALTER COLUMN id RESTART WITH 5")
        appts = [r[0] for r in conn.execute("SELECT id FROM appointments WHERE clinic_id = 1 ORDER BY id LIMIT 3")]
        _delete_appointments(conn, appts)
        appt_seq = conn.execute("SELECT last_value FROM appointments_id_seq").fetchone()[0]
        assert conn.execute("SELECT max(id) FROM appointments").fetchone()[0] <= appt_seq
    result = apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path))
    assert _checksums(demo_db, scope, CLINIC, mine=True) == want  # ids and generated values as they were
    moves = {m.sequence: m for t in result.tables.values() for m in t.sequences}
    assert moves["public.lab_results_id_seq"].moved and moves["public.lab_results_id_seq"].restored_max == top
    assert not moves["public.appointments_id_seq"].moved
    with psycopg.connect(demo_db, autocommit=True) as conn:
        assert conn.execute("SELECT last_value FROM appointments_id_seq").fetchone()[0] == appt_seq  # not set back
        new = conn.execute("INSERT INTO lab_results (clinic_id, value) VALUES (1, 7) RETURNING id, doubled").fetchone()
        assert new == (top + 1, 14)


def test_legal_hold_keeps_held_rows_as_they_are(demo_db: str, past_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scope = _scope(demo_db)
    past = past_of(demo_db)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        changed = [r[0] for r in conn.execute(
            "UPDATE invoices SET total = total + 5 WHERE clinic_id = 1 AND id % 5 = 0 RETURNING id").fetchall()]
        conn.execute("UPDATE patients SET family_name = 'Changed' WHERE clinic_id = 1 AND id % 9 = 0")
        hold = place_hold(conn, CLINIC, "case 2026-17", table="public.invoices", predicate="total > 100")
        held = [r[0] for r in conn.execute("SELECT id FROM invoices WHERE id = ANY(%s) AND total > 100 ORDER BY id",
                                           (changed,)).fetchall()]
        totals = dict(conn.execute("SELECT id, total FROM invoices WHERE id = ANY(%s)", (changed,)).fetchall())
    assert held and len(held) < len(changed)
    with pytest.raises(ConflictError, match=f"legal-hold \\(hold {hold.id}\\)"):
        apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path))
    result = apply_restore(past, demo_db, scope, CLINIC, on_conflict="skip", reason=REASON, undo=_undo_local(tmp_path))
    assert result.tables["public.invoices"].skipped == len(held)
    assert result.tables["public.invoices"].updated == len(changed) - len(held)
    with psycopg.connect(demo_db) as conn, psycopg.connect(past) as old:
        now = dict(conn.execute("SELECT id, total FROM invoices WHERE id = ANY(%s)", (changed,)).fetchall())
        then = dict(old.execute("SELECT id, total FROM invoices WHERE id = ANY(%s)", (changed,)).fetchall())
        assert conn.execute("SELECT count(*) FROM patients WHERE family_name = 'Changed'").fetchone() == (0,)
    assert {i: now[i] for i in held} == {i: totals[i] for i in held}  # held evidence untouched
    assert {i: now[i] for i in changed if i not in held} == {i: then[i] for i in changed if i not in held}


def test_rows_archived_by_retention_since_are_not_restored(demo_db: str, past_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scope = _scope(demo_db)
    table = "public.clinical_notes"
    past = past_of(demo_db)
    retention = apply_policies(demo_db, LocalStorage(tmp_path / "archives"), policies(),
                               ApplyOptions(keys=KEYS, as_of=AS_OF, tables=(table,)))
    with psycopg.connect(demo_db, autocommit=True) as conn:
        archived = conn.execute("SELECT coalesce(sum(deleted_rows), 0) FROM drp.archive_segments"
                                " WHERE table_name = %s AND tenant_id = %s", (table, CLINIC)).fetchone()[0]
        mistakes = conn.execute("DELETE FROM clinical_notes WHERE clinic_id = 1 AND id % 4 = 1"
                                " RETURNING id").fetchall()
    assert retention.tables[0].deleted_rows and archived > 0 and mistakes
    result = apply_restore(past, demo_db, scope, CLINIC, policies={"restore-deleted"}, reason=REASON,
                           undo=_undo_local(tmp_path))
    assert result.tables[table].archived == archived
    assert result.tables[table].inserted == len(mistakes)
    with psycopg.connect(demo_db) as conn, psycopg.connect(past) as old:
        ids = [r[0] for r in mistakes]
        assert conn.execute("SELECT count(*) FROM clinical_notes WHERE id = ANY(%s)", (ids,)).fetchone() == (len(ids),)
        left = old.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 1").fetchone()[0] - archived
        assert conn.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 1").fetchone() == (left,)


def test_bad_policies_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    scope = Scope("public.clinics", "id", "bigint", ())
    for chosen, on_conflict, match in ((["restore-everything"], None, "restore-everything"), ([], None, "no restore"),
                                       (["revert-changed"], "overwrite", "conflict policy 'overwrite'")):
        with pytest.raises(ConfigError, match=match):
            apply_restore("dbname=nowhere", "dbname=nowhere", scope, CLINIC, policies=chosen, on_conflict=on_conflict,
                          reason=REASON, undo=_undo_local(tmp_path))
    with pytest.raises(ConfigError, match="needs a reason"):
        apply_restore("dbname=nowhere", "dbname=nowhere", scope, CLINIC, reason=" ", undo=_undo_local(tmp_path))


def test_no_undo_export_means_nothing_applied_and_the_audit_is_append_only(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    scope = _scope(demo_db)
    past = past_of(demo_db)
    _damage(demo_db)
    damaged = _checksums(demo_db, scope, CLINIC, mine=True)
    with pytest.raises(UndoExportError, match="plaintext"):
        apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=UndoTarget(LocalStorage(tmp_path / "u")))
    assert _checksums(demo_db, scope, CLINIC, mine=True) == damaged
    assert not (tmp_path / "u").exists()
    with psycopg.connect(demo_db, autocommit=True) as conn:
        rows = audit.history(conn, CLINIC)
        assert [r["status"] for r in rows] == ["started", "refused"] and "plaintext" in rows[1]["error"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("UPDATE drp.tenant_restores SET status = 'succeeded'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("DELETE FROM drp.tenant_restores")


def test_a_write_to_another_clinic_inside_the_apply_rolls_it_all_back(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    scope = _scope(demo_db)
    past = past_of(demo_db)
    _damage(demo_db)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        # A trigger that writes across clinics: every visit inserted touches one of clinic 2's appointments.
        conn.execute("CREATE FUNCTION leak() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " UPDATE appointments SET reason = 'leak' WHERE id = (SELECT min(id) FROM appointments"
                     " WHERE clinic_id = 2); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER leak AFTER INSERT ON visits FOR EACH ROW EXECUTE FUNCTION leak()")
    damaged = _checksums(demo_db, scope, CLINIC, mine=True)
    others = _checksums(demo_db, scope, CLINIC, mine=False)
    with pytest.raises(IsolationError, match=r"other clinics in public\.appointments"):
        apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path))
    assert _checksums(demo_db, scope, CLINIC, mine=True) == damaged
    assert _checksums(demo_db, scope, CLINIC, mine=False) == others
    with psycopg.connect(demo_db) as conn:
        rows = audit.history(conn, CLINIC)
    assert [r["status"] for r in rows] == ["started", "failed"] and "other clinics" in rows[1]["error"]


def test_lock_timeouts_are_retried_then_given_up(demo_db: str, past_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    whole = _scope(demo_db)  # two tables are enough here: each attempt copies less
    scope = Scope(whole.root, whole.key_column, whole.key_type,
                  tuple(t for t in whole.tables if t.name in ("public.clinics", "public.invoices")))
    past = past_of(demo_db)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        invoice = conn.execute("UPDATE invoices SET total = total + 1 WHERE id = (SELECT min(id) FROM invoices"
                               " WHERE clinic_id = 1) RETURNING id").fetchone()[0]
    with psycopg.connect(demo_db) as locker:
        locker.execute("SELECT 1 FROM invoices WHERE id = %s FOR UPDATE", (invoice,))  # held until rollback
        with pytest.raises(ApplyError, match="rolled back 2 times"):
            apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path),
                          lock_timeout="200ms", retries=1, backoff_s=0.05)
        outcome: list[object] = []
        thread = threading.Thread(target=lambda: outcome.append(apply_restore(
            past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path), lock_timeout="300ms",
            retries=5, backoff_s=0.3)))
        thread.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
        wait_for(lambda: locker.execute(waiting).fetchone()[0], timeout=30, what="the apply waiting for the row lock",
                 interval=0.02)
        wait_for(lambda: locker.execute(waiting).fetchone()[0] == 0, timeout=30, what="its lock timeout",
                 interval=0.02)  # the first attempt gave up; release before the retry's backoff is over
        locker.rollback()
        thread.join()
    (result,) = outcome
    assert result.attempts >= 2 and result.tables["public.invoices"].updated == 1  # type: ignore[attr-defined]
    with psycopg.connect(demo_db) as conn:
        assert [r["status"] for r in audit.history(conn, CLINIC)] == ["started", "failed", "started", "succeeded"]


def test_a_trigger_writing_the_clinics_own_rows_is_checked_exactly_and_applies(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    """An audit trigger writes rows the apply did not: the counts do not explain them, so that table's
    other clinics' rows are checksummed before (the apply's exported snapshot) and after; equal, it applies."""
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE restore_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " clinic_id bigint NOT NULL REFERENCES clinics (id), appointment_id bigint NOT NULL)")
        conn.execute("INSERT INTO restore_log (clinic_id, appointment_id) SELECT 1 + g % 3, g FROM generate_series(1, 9) g")
        conn.execute("CREATE FUNCTION log_appointment() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " INSERT INTO restore_log (clinic_id, appointment_id) VALUES (NEW.clinic_id, NEW.id);"
                     " RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER log_appointment AFTER INSERT ON appointments FOR EACH ROW"
                     " EXECUTE FUNCTION log_appointment()")
        # A BEFORE trigger rewriting NEW (here to the same value) writes no other row: the counts still explain all.
        conn.execute("CREATE FUNCTION same_reason() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " NEW.reason := NEW.reason; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER same_reason BEFORE INSERT OR UPDATE ON appointments FOR EACH ROW"
                     " EXECUTE FUNCTION same_reason()")
    scope = _scope(demo_db)
    assert "public.restore_log" in scope.names
    past = past_of(demo_db)
    want = _checksums(past, scope, CLINIC, mine=True)
    added = _damage(demo_db)
    with psycopg.connect(demo_db) as conn, psycopg.connect(past) as old:
        gone = sorted(set(r[0] for r in old.execute("SELECT id FROM appointments WHERE clinic_id = 1"))
                      - set(r[0] for r in conn.execute("SELECT id FROM appointments WHERE clinic_id = 1")))
        logged = conn.execute("SELECT max(id) FROM restore_log").fetchone()[0]
    others = _checksums(demo_db, scope, CLINIC, mine=False)
    assert gone

    result = apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=_undo_local(tmp_path))
    got = _checksums(demo_db, scope, CLINIC, mine=True, leave_out=added)
    assert {n: v for n, v in got.items() if n != "public.restore_log"} == \
        {n: v for n, v in want.items() if n != "public.restore_log"}
    assert _checksums(demo_db, scope, CLINIC, mine=False) == others
    with psycopg.connect(demo_db) as conn:  # the trigger's rows: one per restored appointment, all clinic 1's
        assert conn.execute("SELECT clinic_id, appointment_id FROM restore_log WHERE id > %s ORDER BY appointment_id",
                            (logged,)).fetchall() == [(1, a) for a in gone]
    assert result.tables["public.appointments"].inserted == len(gone)
    assert result.isolation["public.restore_log"].startswith("writes not all the apply's (public.restore_log "
                                                             f"({len(gone)} inserted, 0 updated, 0 deleted")
    assert result.isolation["public.appointments"].startswith("counts")
    assert result.isolation["public.invoices"].startswith("counts")


def test_a_cascade_into_another_clinics_rows_rolls_it_all_back(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    """Reverting a patient's external id cascades (ON UPDATE CASCADE) into clinic 2's row referencing it:
    a table the apply never writes itself. The counts show the write; the checksums show whose row it was."""
    with psycopg.connect(demo_db, autocommit=True) as conn:
        patient, external = conn.execute("SELECT id, external_id FROM patients WHERE clinic_id = 1 ORDER BY id"
                                         " LIMIT 1").fetchone()
        conn.execute("CREATE TABLE referrals (id bigint PRIMARY KEY, clinic_id bigint NOT NULL REFERENCES clinics (id),"
                     " from_clinic bigint NOT NULL, from_patient text NOT NULL, FOREIGN KEY (from_clinic, from_patient)"
                     " REFERENCES patients (clinic_id, external_id) ON UPDATE CASCADE)")
        conn.execute("INSERT INTO referrals VALUES (1, 2, 1, %s)", (external,))
    scope = _scope(demo_db)
    assert "public.referrals" in scope.names
    past = past_of(demo_db)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("UPDATE patients SET external_id = 'renamed' WHERE id = %s", (patient,))
    mine, others = _checksums(demo_db, scope, CLINIC, mine=True), _checksums(demo_db, scope, CLINIC, mine=False)
    with pytest.raises(IsolationError, match=r"other clinics in public\.referrals \(1 rows"):
        apply_restore(past, demo_db, scope, CLINIC, policies={"revert-changed"}, reason=REASON,
                      undo=_undo_local(tmp_path))
    assert _checksums(demo_db, scope, CLINIC, mine=True) == mine
    assert _checksums(demo_db, scope, CLINIC, mine=False) == others
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT from_patient FROM referrals").fetchone() == ("renamed",)
        assert [r["status"] for r in audit.history(conn, CLINIC)] == ["started", "failed"]


def test_the_undo_holds_exactly_what_the_apply_overwrote(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, tmp_path: Path) -> None:
    """The undo export is taken in the apply's own snapshot: a clinic row another session changes after that
    snapshot cannot be overwritten without a serialization failure, and the retry's new undo holds the change."""
    scope = _scope(demo_db)
    past = past_of(demo_db)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        changed = [r[0] for r in conn.execute(
            "UPDATE invoices SET total = total + 5 WHERE clinic_id = 1 AND id % 5 = 0 RETURNING id").fetchall()]
    target = changed[0]
    writes: list[str] = []

    def meanwhile(point: str) -> None:
        if point == SNAPSHOT_TAKEN and not writes:  # the first attempt's snapshot is taken: another session writes
            with psycopg.connect(demo_db, autocommit=True) as conn:
                conn.execute("UPDATE invoices SET total = 4321.09 WHERE id = %s", (target,))
            writes.append(point)

    observe(meanwhile)
    try:
        result = apply_restore(past, demo_db, scope, CLINIC, policies={"revert-changed"}, reason=REASON,
                               undo=_undo_local(tmp_path), backoff_s=0.05)
    finally:
        unobserve(meanwhile)
    assert writes and result.attempts == 2  # the first attempt hit the concurrent update and started over
    assert result.tables["public.invoices"].updated == len(changed)
    storage = LocalStorage(tmp_path / "undo")
    undo_csv = storage.get_bytes(f"{export_prefix(result.undo_export_id)}/public.invoices.csv").decode()
    rows = list(csv.DictReader(io.StringIO(undo_csv)))
    with psycopg.connect(demo_db) as conn, psycopg.connect(past) as old:
        then = dict(old.execute("SELECT id::text, total::text FROM invoices WHERE clinic_id = 1").fetchall())
        assert dict(conn.execute("SELECT id::text, total::text FROM invoices WHERE clinic_id = 1").fetchall()) == then
    undone = {r["id"]: r["total"] for r in rows}
    assert undone[str(target)] == "4321.09"  # what the apply overwrote: the other session's value
    # Every reverted row's value before the apply is in the undo, and nothing else differs from the past.
    assert {i for i, v in undone.items() if v != then[i]} == {str(i) for i in changed}
    assert len(undone) == len(then)


def test_an_undo_export_that_fails_during_the_apply_commits_nothing(  # type: ignore[no-untyped-def]
        demo_db: str, past_of, s3_server, s3_bucket: str) -> None:
    scope = _scope(demo_db)
    past = past_of(demo_db)
    _damage(demo_db)
    damaged = _checksums(demo_db, scope, CLINIC, mine=True)
    missing = S3Storage(f"{s3_bucket}-missing", "undo", sse="AES256", **s3_server.storage_kwargs())
    with pytest.raises(UndoExportError, match="failed, nothing was applied"):
        apply_restore(past, demo_db, scope, CLINIC, reason=REASON, undo=UndoTarget(missing))
    assert _checksums(demo_db, scope, CLINIC, mine=True) == damaged
    with psycopg.connect(demo_db) as conn:
        assert [r["status"] for r in audit.history(conn, CLINIC)] == ["started", "refused"]


def test_rows_not_the_clinics_counts_written_rows_outside_the_clinic(demo_db: str) -> None:
    """The guard's check that every written row is the clinic's after the writes, on keys of both kinds."""
    scope = _scope(demo_db)
    patients = scope.table("public.patients")
    with psycopg.connect(demo_db) as conn, conn.transaction():
        conn.execute("SELECT set_config(%s, %s, true)", (TENANTS_SETTING, "{" + CLINIC + "}"))
        conn.execute("CREATE TEMP TABLE written AS SELECT * FROM patients WHERE clinic_id = 1 ORDER BY id LIMIT 3")
        conn.execute("CREATE TEMP TABLE strays AS SELECT * FROM patients WHERE clinic_id = 2 ORDER BY id LIMIT 2")
        mine, theirs = sql.Identifier("written"), sql.Identifier("strays")
        assert rows_not_the_clinics(conn, scope, patients, ("id",), [mine]) == 0
        assert rows_not_the_clinics(conn, scope, patients, ("id",), [mine, theirs]) == 2
        assert rows_not_the_clinics(conn, scope, patients, (), [mine, theirs]) == 2  # no key: the rows themselves
        assert rows_not_the_clinics(conn, scope, patients, ("id",), []) == 0
