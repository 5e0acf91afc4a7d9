"""Tenant restore, shared engine: streaming one clinic's rows between databases, and the past/live diff.

Every test works on real databases of the session cluster. The "past" database is a
``CREATE DATABASE ... TEMPLATE`` copy taken before the damage, as a PITR would give it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core.pg.checksums import pin_render_settings, relation_checksum
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.tenancy import discover_scope, tenant_select
from dr_pipelines.core.tenant_restore.compare import TableDiff, compared_columns
from dr_pipelines.core.tenant_restore.preview import preview
from dr_pipelines.core.tenant_restore.transfer import bind_clinic, copy_tenant_rows, wire_format

ROOT = 'public.Klinik "Ä"'
TERMIN, BEFUND, LOG, EREIGNIS = "public.Termin é", "public.Befund", "public.log ohne pk", "public.ereignis"
NOTIZ = 'Notiz "q"'

# Quoted and unicode names, a composite primary key holding the tenant key, a table reached only
# through its parent (a join filter) with an identity key, a table without a primary key, a
# partitioned table, a generated column, and values of every awkward kind (json without "=",
# jsonb, arrays with NULLs, an enum array, bytea, point).
HOSTILE_SCHEMA = '''
CREATE TYPE "Stimmung" AS ENUM ('gut', 'schlecht');
CREATE TABLE "Klinik ""Ä""" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
CREATE TABLE "Termin é" (
    "Klinik"     bigint NOT NULL REFERENCES "Klinik ""Ä""" (id),
    "Nr."        int NOT NULL,
    "Notiz ""q""" text,
    daten        jsonb,
    roh          json,
    tags         text[],
    blob         bytea,
    stimmungen   "Stimmung"[],
    punkt        point,
    ziel         regclass,
    kiste        box,
    doppelt      int GENERATED ALWAYS AS ("Nr." * 2) STORED,
    PRIMARY KEY ("Klinik", "Nr.")
);
CREATE TABLE "Befund" (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    klinik bigint NOT NULL,
    nr     int NOT NULL,
    wert   numeric(8,2),
    FOREIGN KEY (klinik, nr) REFERENCES "Termin é" ("Klinik", "Nr.")
);
CREATE TABLE "log ohne pk" (klinik bigint REFERENCES "Klinik ""Ä""" (id), msg text, payload json);
CREATE TABLE ereignis (
    klinik bigint NOT NULL REFERENCES "Klinik ""Ä""" (id),
    id     int NOT NULL,
    am     date NOT NULL,
    was    text,
    PRIMARY KEY (klinik, id, am)
) PARTITION BY RANGE (am);
CREATE TABLE ereignis_2024 PARTITION OF ereignis FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE ereignis_2025 PARTITION OF ereignis FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');

INSERT INTO "Klinik ""Ä""" (name) VALUES ('eins'), ('zwei');
INSERT INTO "Termin é" ("Klinik", "Nr.", "Notiz ""q""", daten, roh, tags, blob, stimmungen, punkt)
SELECT k, n, CASE WHEN n % 3 = 0 THEN NULL ELSE 'n' || n END, jsonb_build_object('a', n), '{"b":  1}',
       ARRAY['x', NULL], '\\x00ff', ARRAY['gut']::"Stimmung"[], point(n, 0)
FROM generate_series(1, 2) k, generate_series(1, 20) n;
UPDATE "Termin é" SET ziel = '"Befund"', kiste = box(point(0, 0), point(1, 1));
INSERT INTO "Befund" (klinik, nr, wert) SELECT k, n, n * 1.5 FROM generate_series(1, 2) k, generate_series(1, 10) n;
INSERT INTO "log ohne pk" SELECT k, m, p::json
FROM generate_series(1, 2) k, (VALUES ('a', '{}'), ('a', '{}'), ('b', NULL), (NULL, NULL)) v(m, p);
INSERT INTO ereignis SELECT k, i, CASE WHEN i % 2 = 1 THEN date '2024-06-01' ELSE date '2025-06-01' END, 'alt'
FROM generate_series(1, 2) k, generate_series(1, 6) i;
'''

# The damage, after the past copy was taken. Clinic 1 is the one restored; clinic 2's changes
# must never show.
DAMAGE = '''
DELETE FROM "Befund" WHERE klinik = 1 AND nr = 2;
DELETE FROM "Termin é" WHERE "Klinik" = 1 AND "Nr." = 2;
UPDATE "Termin é" SET daten = '{"a": 99}' WHERE "Klinik" = 1 AND "Nr." = 3;
UPDATE "Termin é" SET "Notiz ""q""" = NULL WHERE "Klinik" = 1 AND "Nr." = 5;
UPDATE "Termin é" SET "Notiz ""q""" = NULL, roh = '{"b":  1}' WHERE "Klinik" = 1 AND "Nr." = 6;  -- NULL -> NULL, same json
UPDATE "Termin é" SET roh = '{"b": 2}' WHERE "Klinik" = 1 AND "Nr." = 7;
UPDATE "Termin é" SET stimmungen = ARRAY['schlecht']::"Stimmung"[] WHERE "Klinik" = 1 AND "Nr." = 8;
UPDATE "Termin é" SET punkt = point(0, 0) WHERE "Klinik" = 1 AND "Nr." = 9;
UPDATE "Termin é" SET blob = '\\x01', tags = ARRAY['x', NULL] WHERE "Klinik" = 1 AND "Nr." = 10;  -- same tags
UPDATE "Termin é" SET kiste = box(point(5, 5), point(6, 6)) WHERE "Klinik" = 1 AND "Nr." = 11;  -- box "=": same area
INSERT INTO "Termin é" ("Klinik", "Nr.") VALUES (1, 100);
UPDATE "Befund" SET wert = 6.0 WHERE klinik = 1 AND nr = 4;  -- 6.00 already: numeric equality, no change
INSERT INTO "Befund" (klinik, nr, wert) VALUES (1, 100, 1);
DELETE FROM "log ohne pk" WHERE ctid = (SELECT min(ctid) FROM "log ohne pk" WHERE klinik = 1 AND msg = 'a');
INSERT INTO "log ohne pk" VALUES (1, 'c', '{"x": 1}');
UPDATE ereignis SET was = 'neu' WHERE klinik = 1 AND id = 1;
DELETE FROM ereignis WHERE klinik = 1 AND id = 2;
UPDATE ereignis SET am = '2025-07-01' WHERE klinik = 1 AND id = 3;  -- moves partition: a new key

DELETE FROM "Befund" WHERE klinik = 2 AND nr = 2;
DELETE FROM "Termin é" WHERE "Klinik" = 2 AND "Nr." = 2;
UPDATE "Termin é" SET daten = '{"a": -1}', blob = NULL WHERE "Klinik" = 2;
INSERT INTO "log ohne pk" VALUES (2, 'd', NULL);
UPDATE ereignis SET was = 'anders' WHERE klinik = 2;
'''


def _database(cluster: LocalCluster, prefix: str, template: str = "template1") -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    return name, cluster.create_database(name, template=template)


@pytest.fixture(scope="module")
def hostile(pg_cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    """(past DSN, live DSN): the hostile schema, copied as the past, then damaged live."""
    live_name, live = _database(pg_cluster, "tr_live")
    with psycopg.connect(live, autocommit=True) as conn:
        conn.execute(HOSTILE_SCHEMA)
    past_name, past = _database(pg_cluster, "tr_past", template=live_name)
    with psycopg.connect(live, autocommit=True) as conn:
        conn.execute(DAMAGE)
    yield past, live
    for name in (past_name, live_name):
        pg_cluster.drop_database(name)


def _side_diff(past: str, live: str, table: str, clinic: str = "1") -> TableDiff:
    """One table's diff from a preview of the clinic (live rows streamed into the past database, compared there)."""
    with psycopg.connect(past) as conn:
        scope = discover_scope(conn, root=ROOT)
    return preview(past, live, scope, clinic).table(table)


def test_diff_by_primary_key_reports_exactly_the_damaged_keys_and_columns(hostile: tuple[str, str]) -> None:
    past, live = hostile
    d = _side_diff(past, live, TERMIN)
    assert d.key == ("Klinik", "Nr.")
    assert (d.past_rows, d.live_rows, d.deleted, d.added, d.changed, d.unchanged) == (20, 20, 1, 1, 7, 12)
    assert d.samples == {"deleted": [("1", "2")], "added": [("1", "100")], "changed": [
        ("1", "3"), ("1", "5"), ("1", "7"), ("1", "8"), ("1", "9"), ("1", "10"), ("1", "11")]}
    # NULL -> NULL (Nr. 6), the same json text (6), the same array with a NULL (10): no change.
    # Another box of the same area (11) is a change, though box "=" compares areas.
    assert d.changed_columns == {"daten": 1, NOTIZ: 1, "roh": 1, "stimmungen": 1, "punkt": 1, "blob": 1, "kiste": 1}


def test_diff_of_a_table_reached_through_its_parent_with_an_identity_key(hostile: tuple[str, str]) -> None:
    past, live = hostile
    with psycopg.connect(past) as conn:
        gone = conn.execute('SELECT id::text FROM "Befund" WHERE klinik = 1 AND nr = 2').fetchone()[0]
    with psycopg.connect(live) as conn:
        new = conn.execute('SELECT id::text FROM "Befund" WHERE klinik = 1 AND nr = 100').fetchone()[0]
    d = _side_diff(past, live, BEFUND)
    assert (d.deleted, d.added, d.changed, d.unchanged) == (1, 1, 0, 9)  # 6.0 -> 6.00: equal numerics
    assert d.samples["deleted"] == [(gone,)] and d.samples["added"] == [(new,)]


def test_diff_without_primary_key_is_a_multiset_comparison(hostile: tuple[str, str]) -> None:
    past, live = hostile
    d = _side_diff(past, live, LOG)
    # One of two equal ('a', {}) rows deleted, one row added; (NULL, NULL) rows match each other.
    assert d.key == () and (d.past_rows, d.live_rows, d.deleted, d.added, d.changed, d.unchanged) == (4, 4, 1, 1, 0, 3)


def test_diff_of_a_partitioned_table_a_row_moved_to_another_partition_is_a_new_key(hostile: tuple[str, str]) -> None:
    past, live = hostile
    d = _side_diff(past, live, EREIGNIS)
    assert d.key == ("klinik", "id", "am")
    assert d.samples == {"deleted": [("1", "2", "2025-06-01"), ("1", "3", "2024-06-01")],
                         "added": [("1", "3", "2025-07-01")], "changed": [("1", "1", "2024-06-01")]}
    assert d.changed_columns == {"was": 1} and d.unchanged == 3


def test_the_other_clinic_sees_only_its_own_changes(hostile: tuple[str, str]) -> None:
    past, live = hostile
    d = _side_diff(past, live, TERMIN, clinic="2")
    assert (d.deleted, d.added, d.changed) == (1, 0, 19)
    assert d.changed_columns == {"daten": 19, "blob": 19}


def test_types_without_a_btree_or_hash_equality_are_compared_by_text(hostile: tuple[str, str]) -> None:
    past, _ = hostile
    with psycopg.connect(past) as conn:
        compared = {c.name: c.as_text for c in compared_columns(conn, sql.Identifier("public", "Termin é"),
                                                                ["daten", "roh", "tags", "stimmungen", "punkt",
                                                                 "kiste", "Nr."])}
    assert compared == {"daten": False, "roh": True, "tags": False, "stimmungen": False, "punkt": True,
                        "kiste": True, "Nr.": False}


def test_generated_columns_arrive_as_plain_values_with_equal_checksums(hostile: tuple[str, str]) -> None:
    past, _ = hostile
    with psycopg.connect(past) as src, psycopg.connect(past) as dst:
        scope = discover_scope(src, root=ROOT)
        t = scope.table(TERMIN)
        bind_clinic(src, "1")
        dst.execute("CREATE SCHEMA side")
        copy_tenant_rows(src, scope, t, dst, sql.Identifier("side", "termin"))
        source = sql.SQL("({})").format(tenant_select(t, scope))
        want = relation_checksum(src, "x", source, "text")
        got = relation_checksum(dst, "x", sql.Identifier("side", "termin"), "text")
        generated = dst.execute("SELECT attgenerated FROM pg_attribute WHERE attrelid = 'side.termin'::regclass"
                                " AND attname = 'doppelt'").fetchone()[0]
        dst.rollback()
    assert (got.rows, got.checksum) == (want.rows, want.checksum) == (20, want.checksum)
    assert generated == ""


def test_oid_bound_values_cross_databases_whose_oids_differ(pg_cluster: LocalCluster, hostile: tuple[str, str]) -> None:
    """A regclass is an OID in binary: in another database it would name another table (or none).

    Tables with reg*/oid columns, composites or arrays of user-defined types go as text COPY
    (names, labels), which reads back the same values wherever the OIDs differ.
    """
    past, _ = hostile
    name, other = _database(pg_cluster, "tr_oids")
    try:
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute('CREATE TYPE filler AS ENUM (\'x\'); CREATE TABLE filler_t (x int);'
                         ' CREATE TYPE "Stimmung" AS ENUM (\'gut\', \'schlecht\'); CREATE TABLE "Befund" (x int)')
        with psycopg.connect(past) as src, psycopg.connect(other) as dst:
            for oid_of in ("""SELECT '"Stimmung"'::regtype::oid""", """SELECT '"Befund"'::regclass::oid"""):
                assert src.execute(oid_of).fetchone() != dst.execute(oid_of).fetchone()
            scope = discover_scope(src, root=ROOT)
            assert wire_format(src, "public", "Termin é") == "text"
            assert wire_format(src, "public", "Befund") == "binary"
            bind_clinic(src, "1")
            assert copy_tenant_rows(src, scope, scope.table(TERMIN), dst, sql.Identifier("public", "t")) == 20
            assert dst.execute("SELECT count(*) FROM t WHERE stimmungen = ARRAY['gut']::\"Stimmung\"[]"
                               " AND punkt[0] > 0 AND blob = '\\x00ff' AND ziel = '\"Befund\"'::regclass"
                               " AND tags = ARRAY['x', NULL]").fetchone()[0] == 20
    finally:
        pg_cluster.drop_database(name)


def test_two_hundred_thousand_rows_stream_in_chunks(pg_cluster: LocalCluster, hostile: tuple[str, str]) -> None:
    """The rows flow chunk by chunk from one COPY into the other (never a whole table in memory)."""
    _, live = hostile
    name, big = _database(pg_cluster, "tr_big")
    try:
        with psycopg.connect(big, autocommit=True) as conn:
            conn.execute("CREATE TABLE clinics (id int PRIMARY KEY);"
                         " CREATE TABLE notes (id int PRIMARY KEY, clinic_id int REFERENCES clinics, body text);"
                         " INSERT INTO clinics VALUES (1), (2);"
                         " INSERT INTO notes SELECT i, 1 + i % 5 / 4, repeat('x', 16) FROM generate_series(1, 250000) i")
        chunks: list[int] = []
        with psycopg.connect(big) as src, psycopg.connect(big) as dst:
            scope = discover_scope(src, root="public.clinics")
            bind_clinic(src, "1")
            rows = copy_tenant_rows(src, scope, scope.table("public.notes"), dst,
                                    sql.Identifier("public", "copy"), on_chunk=chunks.append)
            want = dst.execute("SELECT count(*) FROM notes WHERE clinic_id = 1").fetchone()[0]
            assert rows == want == 200_000
            assert dst.execute("SELECT count(*) FROM copy").fetchone()[0] == want
        assert sum(chunks) > 5_000_000 and len(chunks) > 15 and max(chunks) < 1 << 20
    finally:
        pg_cluster.drop_database(name)


# -- preview and side schema on the demo schema --------------------------------------------------------

DEMO_KEYS = {"public.clinics": ("id",), "public.audit_log": ("id", "occurred_at")}  # the rest: ("id",)


@pytest.fixture(scope="module")
def demo_pair(pg_cluster: LocalCluster, demo_template: str) -> Iterator[dict]:
    """The demo database as the past (a template copy) and live after damage to clinic 1 and to clinic 2."""
    live_name, live = _database(pg_cluster, "tr_demo_live", template=demo_template)
    past_name, past = _database(pg_cluster, "tr_demo_past", template=live_name)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:  # keys with a timestamptz must render in UTC
        conn.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Kolkata'").format(sql.Identifier(past_name)))
    with psycopg.connect(live, autocommit=True) as conn:
        damage = _damage_demo(conn)
    yield {"past": past, "live": live, **damage}
    for name in (past_name, live_name):
        pg_cluster.drop_database(name)


def _damage_demo(conn: psycopg.Connection) -> dict:
    """10% of clinic 1's appointments deleted with their visits (and what hangs off those), invoices updated,
    a patient added; clinic 2 keeps writing too."""
    q = conn.execute
    total = q("SELECT count(*) FROM appointments WHERE clinic_id = 1").fetchone()[0]
    chosen = [r[0] for r in q("SELECT id FROM appointments WHERE clinic_id = 1 ORDER BY id LIMIT %s", (total // 10,))]
    gone_visits = "SELECT id FROM visits WHERE appointment_id = ANY (%s)"
    gone_invoices = f"SELECT id FROM invoices WHERE visit_id IN ({gone_visits})"
    deleted = {}
    for table, where in (("clinical_notes", f"visit_id IN ({gone_visits})"),
                         ("prescriptions", f"visit_id IN ({gone_visits})"),
                         ("payments", f"invoice_id IN ({gone_invoices})"),
                         ("invoice_lines", f"invoice_id IN ({gone_invoices})"),
                         ("invoices", f"id IN ({gone_invoices})"),
                         ("visits", "appointment_id = ANY (%s)"), ("appointments", "id = ANY (%s)"),
                         ("audit_log", "id IN (SELECT id FROM audit_log WHERE clinic_id = 1 AND id <> ALL (%s)"
                                       " ORDER BY id LIMIT 2)")):
        deleted[table] = sorted(r[0] for r in q(f"DELETE FROM {table} WHERE {where} RETURNING id", (chosen,)))
    invoices = [r[0] for r in q("SELECT id FROM invoices WHERE clinic_id = 1 ORDER BY id LIMIT 6")]
    q("UPDATE invoices SET total = total + 1 WHERE id = ANY (%s)", (invoices,))
    voided = [r[0] for r in q("UPDATE invoices SET status = 'void' WHERE id = ANY (%s) AND status <> 'void' RETURNING id",
                              (invoices[:3],))]
    patient = q("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
                " VALUES (1, 'new-1', 'Neu', 'Patient', '1990-01-01', 'other') RETURNING id").fetchone()[0]
    # Clinic 2 keeps writing: deletes, updates and inserts that clinic 1's preview must not show.
    q("DELETE FROM appointments a WHERE clinic_id = 2 AND NOT EXISTS (SELECT 1 FROM visits v WHERE v.appointment_id = a.id)"
      " AND a.id IN (SELECT id FROM appointments WHERE clinic_id = 2 ORDER BY id LIMIT 5)")
    q("UPDATE invoices SET total = total + 7, status = 'void' WHERE clinic_id = 2")
    q("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
      " VALUES (2, 'new-2', 'Andere', 'Klinik', '1980-01-01', 'female')")
    return {"deleted": deleted, "invoices": invoices, "voided": voided, "patient": patient, "chosen": total // 10}


def _rows_by_key(dsn: str, table: str, clinic: int) -> dict[tuple, dict]:
    """The clinic's rows of a demo table, by primary key, as jsonb (an independent reading, not the engine's)."""
    schema, name = table.split(".")
    key = DEMO_KEYS.get(table, ("id",))
    column = "id" if table == "public.clinics" else "clinic_id"
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        rows = conn.execute(sql.SQL("SELECT ARRAY[{}], to_jsonb(t) FROM {} AS t WHERE {} = %s").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", k)) for k in key),
            sql.Identifier(schema, name), sql.Identifier(column)), (clinic,)).fetchall()
    return {tuple(r[0]): r[1] for r in rows}


def _expected(past: str, live: str, table: str, clinic: int) -> tuple[set, set, set, dict[str, int]]:
    before, after = _rows_by_key(past, table, clinic), _rows_by_key(live, table, clinic)
    changed = {k for k in before.keys() & after.keys() if before[k] != after[k]}
    columns: dict[str, int] = {}
    for k in changed:
        for c in before[k]:
            if before[k][c] != after[k][c]:
                columns[c] = columns.get(c, 0) + 1
    return before.keys() - after.keys(), after.keys() - before.keys(), changed, columns


def test_preview_reports_exactly_the_clinics_damage(demo_pair: dict) -> None:
    past, live = demo_pair["past"], demo_pair["live"]
    with psycopg.connect(live) as conn:
        scope = discover_scope(conn)
    report = preview(past, live, scope, "1", past_label="template copy", samples=100_000)
    assert demo_pair["chosen"] >= 5 and len(demo_pair["deleted"]["appointments"]) == demo_pair["chosen"]
    assert len(demo_pair["deleted"]["visits"]) >= 3
    for table, ids in demo_pair["deleted"].items():
        t = report.table(f"public.{table}")
        assert [int(k[0]) for k in t.samples["deleted"]] == ids, table
        assert table == "invoices" or (t.added, t.changed) == (0, 0), table
    invoices = report.table("public.invoices")
    assert [int(k[0]) for k in invoices.samples["changed"]] == demo_pair["invoices"]
    assert [int(k[0]) for k in invoices.samples["deleted"]] == demo_pair["deleted"]["invoices"]
    assert invoices.changed_columns == {"total": 6, "status": len(demo_pair["voided"])}
    assert report.table("public.patients").samples["added"] == [(str(demo_pair["patient"]),)]
    # Every table against an independent reading of both databases (clinic 2's changes nowhere).
    for t in report.tables:
        deleted, added, changed, columns = _expected(past, live, t.table, 1)
        assert (t.deleted, t.added, t.changed) == (len(deleted), len(added), len(changed)), t.table
        assert {tuple(k) for k in t.samples["deleted"]} == deleted, t.table
        assert {tuple(k) for k in t.samples["added"]} == added and {tuple(k) for k in t.samples["changed"]} == changed
        assert t.changed_columns == columns, t.table
        assert t.unchanged == t.past_rows - len(deleted) - len(changed) and t.live_rows == t.unchanged + len(
            changed) + len(added)
    assert {t.table for t in report.differing} == {"public.patients", "public.invoices"} | {
        f"public.{table}" for table, ids in demo_pair["deleted"].items() if ids}
    other = preview(past, live, scope, "2")
    assert other.table("public.invoices").changed == other.table("public.invoices").past_rows > 0
    assert other.table("public.patients").added == 1 and other.table("public.visits").differs is False


def test_preview_writes_nothing_to_live_and_leaves_nothing_in_the_past(demo_pair: dict) -> None:
    from dr_pipelines.core.pg.checksums import database_checksums
    past, live = demo_pair["past"], demo_pair["live"]
    schemas = "SELECT array_agg(nspname::text ORDER BY nspname) FROM pg_namespace"
    with psycopg.connect(live) as lconn, psycopg.connect(past) as pconn:
        scope = discover_scope(lconn)
        before = (lconn.execute(schemas).fetchone(), pconn.execute(schemas).fetchone())
    live_sums = database_checksums(live)
    preview(past, live, scope, "1")
    assert database_checksums(live) == live_sums
    with psycopg.connect(live) as lconn, psycopg.connect(past) as pconn:
        assert (lconn.execute(schemas).fetchone(), pconn.execute(schemas).fetchone()) == before


def test_report_json_and_markdown(demo_pair: dict) -> None:
    import json

    past, live = demo_pair["past"], demo_pair["live"]
    with psycopg.connect(live) as conn:
        scope = discover_scope(conn)
    report = preview(past, live, scope, "1", past_label="PITR to 2026-11-30T14:05:00Z", samples=3)
    data = json.loads(report.to_json())
    assert data["clinic"] == "1" and "PITR to 2026-11-30T14:05:00Z" in data["past"]
    assert data["totals"]["deleted"] == sum(len(ids) for ids in demo_pair["deleted"].values())
    assert data["totals"]["added"] == 1 and data["totals"]["changed"] == 6
    invoices = next(t for t in data["tables"] if t["table"] == "public.invoices")
    assert invoices["changed_columns"]["total"] == 6 and len(invoices["samples"]["changed"]) == 3
    md = report.to_markdown()
    gone = demo_pair["deleted"]["appointments"]
    first = gone[:3]
    assert f"- Deleted since (only in the past): {len(gone)}; sample keys: " \
           f"{first[0]}, {first[1]}, {first[2]} …" in md
    assert "## public.invoices" in md and "- changed columns (rows): total (6)" in md
    assert "| public.staff_users | id |" in md and "## public.staff_users" not in md


def test_into_schema_holds_exactly_the_clinics_past_rows(demo_pair: dict) -> None:
    from dr_pipelines.core.tenant_restore.side_schema import into_schema

    past, live = demo_pair["past"], demo_pair["live"]
    with psycopg.connect(past) as conn:
        scope = discover_scope(conn)
    rows = into_schema(past, live, scope, "1", "restore_clinic_1", past_label="template copy")
    assert list(rows) == scope.names
    with psycopg.connect(past) as pconn, psycopg.connect(live) as lconn:
        bind_clinic(pconn, "1")
        pin_render_settings(pconn)  # the past database renders in Asia/Kolkata otherwise
        pin_render_settings(lconn)
        for t in scope.tables:
            want = relation_checksum(pconn, t.name, sql.SQL("({})").format(tenant_select(t, scope)), "text")
            got = relation_checksum(lconn, t.name, sql.Identifier("restore_clinic_1", t.table), "text")
            assert (got.rows, got.checksum) == (want.rows, want.checksum) == (rows[t.name], want.checksum), t.name
        comment = lconn.execute("SELECT obj_description('restore_clinic_1.appointments'::regclass, 'pg_class')"
                                ).fetchone()[0]
        assert "public.appointments" in comment and "template copy" in comment and "clinic 1" in comment
        assert "clinic 1" in lconn.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace"
                                           " WHERE nspname = 'restore_clinic_1'").fetchone()[0]
    assert rows["public.appointments"] > len(demo_pair["deleted"]["appointments"]) > 0


def test_into_schema_refuses_an_existing_schema_and_writes_nothing(demo_pair: dict) -> None:
    from dr_pipelines.core.tenant_restore.side_schema import SideSchemaError, into_schema

    past, live = demo_pair["past"], demo_pair["live"]
    with psycopg.connect(live, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "cherry picks"; CREATE TABLE "cherry picks".mine (x int); '
                     'INSERT INTO "cherry picks".mine VALUES (1)')
        scope = discover_scope(conn)
    for name in ("cherry picks", "public"):
        with pytest.raises(SideSchemaError) as err:
            into_schema(past, live, scope, "1", name)
        assert f"schema {name!r} already exists" in str(err.value) and "--into-schema" in err.value.fix
    with psycopg.connect(live) as conn:
        assert conn.execute('SELECT count(*) FROM pg_class WHERE relnamespace = \'"cherry picks"\'::regnamespace'
                            ).fetchone()[0] == 1
        assert conn.execute('SELECT * FROM "cherry picks".mine').fetchall() == [(1,)]


def test_into_schema_failing_half_way_leaves_no_half_schema(pg_cluster: LocalCluster, demo_pair: dict) -> None:
    """A target without the clinic tables' enum types: the first tables copy, a later one fails, all is undone."""
    from dr_pipelines.core.tenant_restore.side_schema import SideSchemaError, into_schema

    past = demo_pair["past"]
    name, target = _database(pg_cluster, "tr_target")
    try:
        with psycopg.connect(past) as conn:
            scope = discover_scope(conn)
        assert scope.names[0] == "public.clinics"  # no enum: copied before staff_users (staff_role) fails
        with pytest.raises(SideSchemaError) as err:
            into_schema(past, target, scope, "1", "side")
        assert "nothing was written" in str(err.value) and "types" in err.value.fix
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'side'").fetchone()[0] == 0
    finally:
        pg_cluster.drop_database(name)
