"""Data retention against real PostgreSQL and storage: archive, verify, delete; holds, overrides, dry run."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.retention.apply import ApplyIncompleteError, ApplyOptions, RetentionBusyError, apply_policies
from dr_pipelines.core.retention.holds import place_hold, release_hold
from dr_pipelines.core.retention.journal import segments
from dr_pipelines.core.retention.plan import plan
from dr_pipelines.core.retention.rehydrate import list_archives, parse_period, restore_archives
from dr_pipelines.core.retention.segment import ArchiveError, fetched
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines_tests.support.retention import AS_OF, ID, KEYS, POLICY, archived, assert_union, content, policies


def test_archive_verify_delete_keeps_every_row_somewhere(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    before = {t: content(demo_db, t) for t in ("public.audit_log", "public.clinical_notes")}
    everyone = policies(**{"public.audit_log": {**POLICY["tables"]["public.audit_log"], "overrides": [
        {"jurisdiction": "IE", "period": "20 months"}]}})
    result = apply_policies(demo_db, storage, everyone, ApplyOptions(keys=KEYS, as_of=AS_OF, batch_size=50))
    by_table = {t.table: t for t in result.tables}
    audit = by_table["public.audit_log"]
    assert audit.archived_rows > 0 and audit.archived_rows == audit.deleted_rows
    assert audit.partitions_dropped  # whole expired months went by detach + drop
    for table, original in before.items():
        assert assert_union(demo_db, storage, table, original) == by_table[table].archived_rows
    assert by_table["public.payments"].deleted_unarchived > 0
    with psycopg.connect(demo_db) as conn:
        assert {s.state for s in segments(conn)} == {"deleted"}
    again = apply_policies(demo_db, storage, everyone, ApplyOptions(keys=KEYS, as_of=AS_OF))
    assert all(t.archived_rows == 0 and t.deleted_rows == 0 for t in again.tables)


def test_rehydrate_round_trip_into_table_and_side_table(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    table = "public.clinical_notes"
    original = content(demo_db, table)
    result = apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=(table,)))
    assert result.tables[0].archived_rows > 0
    assert content(demo_db, table) != original
    archives = list_archives(storage, identities=ID, table=table)
    tenants = sorted({a.tenant_id for a in archives})
    months = sorted(a.month for a in archives)
    period = parse_period(f"{months[0]}..{months[-1]}")
    side = "public.notes_rehydrated"
    for tenant in tenants:
        restore_archives(demo_db, storage, table, tenant, period, into=side, identities=ID)
    assert content(demo_db, side) == (result.tables[0].archived_rows, archived(demo_db, storage, table)[1])
    for tenant in tenants:
        restore_archives(demo_db, storage, table, tenant, period, identities=ID)
    assert content(demo_db, table) == original
    with pytest.raises(ArchiveError, match="already in"):
        restore_archives(demo_db, storage, table, tenants[0], period, identities=ID)


def test_archive_of_a_tenant_holds_only_that_tenants_rows(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.audit_log",)))
    archives = list_archives(storage, identities=ID, table="public.audit_log")
    assert {a.tenant_id for a in archives} == {"1", "2"}  # tenant 3 keeps its audit log
    for a in archives:
        with fetched(storage, a.prefix, identities=ID) as (_m, path):
            assert set(pq.read_table(path, columns=["clinic_id"]).column("clinic_id").to_pylist()) == {int(a.tenant_id)}
        assert f"tenant={a.tenant_id}/" in a.prefix


def test_per_tenant_and_jurisdiction_overrides(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    with psycopg.connect(demo_db) as conn:
        jur = dict(conn.execute("SELECT id::text, jurisdiction FROM clinics").fetchall())
        kept_before = conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 3").fetchone()[0]
    assert jur["2"] == "IE"
    apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.audit_log",)))
    with psycopg.connect(demo_db) as conn:
        oldest = dict(conn.execute("SELECT clinic_id::text, min(occurred_at) FROM audit_log GROUP BY 1").fetchall())
        assert conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 3").fetchone()[0] == kept_before
        rows_18_20 = conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 2 AND occurred_at"
                                  " >= %s::timestamptz - interval '20 months' AND occurred_at"
                                  " < %s::timestamptz - interval '18 months'", (AS_OF, AS_OF)).fetchone()[0]
    assert oldest["1"] >= AS_OF.replace(year=2024, month=5)  # 18 months
    assert oldest["2"] >= AS_OF.replace(year=2024, month=3)  # IE: 20 months
    assert rows_18_20 > 0  # ... so its rows 18-20 months old are still there


def test_legal_hold_is_respected_and_reported(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    with psycopg.connect(demo_db, autocommit=True) as conn:
        whole = place_hold(conn, "1", "litigation 2025-17", table="public.clinical_notes")
        part = place_hold(conn, "2", "patient request #88", table="public.audit_log",
                          # '%' as LIKE wildcard and modulo: the predicate goes into parameterized queries
                          predicate="entity = 'patient' AND (action LIKE 're%' OR action = 'update') AND id % 1 = 0")
        held_audit = conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 2 AND entity = 'patient'"
                                  " AND action IN ('read', 'update')").fetchone()[0]
        assert held_audit == conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 2 AND entity = 'patient'"
                                          " AND (action LIKE 're%' OR action = 'update')").fetchone()[0]
        notes_1 = conn.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 1").fetchone()[0]
    assert held_audit > 0
    result = apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS,
        as_of=AS_OF, tables=("public.audit_log", "public.clinical_notes")))
    skips = {(h.table, h.tenant_id): h for t in result.tables for h in t.held}
    assert skips[("public.clinical_notes", "1")].holds == [whole.id]
    assert skips[("public.audit_log", "2")].holds == [part.id] and skips[("public.audit_log", "2")].rows > 0
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 2 AND entity = 'patient'"
                            " AND action IN ('read', 'update')").fetchone()[0] == held_audit
        assert conn.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 1").fetchone()[0] == notes_1
    _rows, _sum, keys = archived(demo_db, storage, "public.clinical_notes")
    assert keys and not any("tenant=1/" in prefix for prefix in keys)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        release_hold(conn, whole.id)
    after = apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.clinical_notes",)))
    assert after.tables[0].archived_rows > 0 and not after.tables[0].held


def test_dry_run_changes_nothing_and_says_why(demo_db: str) -> None:
    before = database_checksums(demo_db), _schema(demo_db)
    lines = plan(demo_db, policies(), as_of=AS_OF)
    assert (database_checksums(demo_db), _schema(demo_db)) == before
    by = {(p.table, p.tenant_id): p for p in lines}
    assert by[("public.audit_log", "3")].action == "keep" and "tenant 3" in by[("public.audit_log", "3")].why
    assert "jurisdiction IE" in by[("public.audit_log", "2")].why
    assert by[("public.audit_log", "1")].to_archive > 0
    assert by[("public.payments", "1")].action == "delete" and by[("public.payments", "1")].to_archive == 0


def _schema(dsn: str) -> list[tuple[str, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n"
                            " ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema',"
                            " 'pg_toast') ORDER BY 1, 2").fetchall()


def test_s3_archive_round_trip(demo_db: str, s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    storage = S3Storage(s3_bucket, "retention", **s3_server.storage_kwargs())
    table = "public.audit_log"
    original = content(demo_db, table)
    result = apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=(table,),
                                                                       segment_rows=40, batch_size=25))
    assert result.tables[0].segments > 1
    assert assert_union(demo_db, storage, table, original) == result.tables[0].archived_rows


def test_one_run_per_table_at_a_time(demo_db: str, tmp_path: Path) -> None:
    with psycopg.connect(demo_db, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext(%s))", ("drp.retention:public.audit_log",))
        with pytest.raises(ApplyIncompleteError, match="another retention run") as info:
            apply_policies(demo_db, LocalStorage(tmp_path / "store"), policies(), ApplyOptions(keys=KEYS, as_of=AS_OF))
    assert isinstance(info.value.failures[0], RetentionBusyError)
    assert [t.table for t in info.value.result.tables] == ["public.clinical_notes", "public.payments"]  # still ran


def test_a_partition_with_kept_rows_is_not_dropped(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    original = content(demo_db, "public.audit_log")
    result = apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.audit_log",)))
    (audit,) = result.tables
    assert audit.partitions_dropped == [] and audit.archived_rows == audit.deleted_rows > 0  # tenant 3 keeps
    assert assert_union(demo_db, storage, "public.audit_log", original) == audit.archived_rows


def test_a_table_two_hops_from_the_tenant_is_archived_per_tenant(demo_db: str, tmp_path: Path) -> None:
    """note_tags has no clinic_id: its tenant comes through clinical_notes (the export's FK-graph scope)."""
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.note_tags (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " note_id bigint NOT NULL REFERENCES clinical_notes (id), tag text NOT NULL,"
                     " tagged_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO note_tags (note_id, tag, tagged_at) SELECT id, 'tag-' || (id % 5), created_at"
                     " FROM clinical_notes")
    storage = LocalStorage(tmp_path / "store")
    original = content(demo_db, "public.note_tags")
    tags = policies(**{"public.note_tags": {"timestamp_column": "tagged_at", "period": "16 months",
                                            "action": "archive-then-delete"}})
    result = apply_policies(demo_db, storage, tags, ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.note_tags",)))
    assert result.tables[0].archived_rows > 0
    assert assert_union(demo_db, storage, "public.note_tags", original) == result.tables[0].archived_rows
    with psycopg.connect(demo_db) as conn:
        owner = dict(conn.execute("SELECT id, clinic_id FROM clinical_notes").fetchall())
    for a in list_archives(storage, identities=ID, table="public.note_tags"):
        with fetched(storage, a.prefix, identities=ID) as (_m, path):
            notes = pq.read_table(path, columns=["note_id"]).column("note_id").to_pylist()
        assert {owner[n] for n in notes} == {int(a.tenant_id)}


def test_a_row_that_cannot_be_archived_stops_the_table_with_a_clear_error(demo_db: str, tmp_path: Path) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (clinic_id, action, entity, occurred_at) VALUES (1, 'read', 'x', '-infinity')")
    storage = LocalStorage(tmp_path / "store")
    original = content(demo_db, "public.audit_log")
    with pytest.raises(ArchiveError, match="retention of public.audit_log stopped") as info:
        apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.audit_log",)))
    assert "re-run" in str(info.value) or "run again" in str(info.value)
    assert_union(demo_db, storage, "public.audit_log", original)  # nothing lost on the way
