"""The demo clinic schema (migrations) and the deterministic data generator, against a real PostgreSQL 15."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.migrate.files import discover
from dr_pipelines.core.migrate.runner import migrate
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.demo import generate as gen
from dr_pipelines.demo.schema import MIGRATIONS_DIR

EXPECTED_TABLES = {
    "clinics", "staff_users", "patients", "appointments", "visits", "clinical_notes", "prescriptions",
    "invoices", "invoice_lines", "payments", "attachments", "audit_log",
}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(pg_cluster: LocalCluster) -> LocalCluster:
    """The session's cluster (conftest); databases made here are named per module."""
    return pg_cluster


@pytest.fixture
def new_db(fresh_db: str) -> str:
    return fresh_db


def _seeded(cluster: LocalCluster, name: str, **kwargs: object) -> str:
    dsn = cluster.create_database(name)
    gen.seed_demo(dsn, **kwargs)  # type: ignore[arg-type]
    return dsn


@pytest.fixture(scope="module")
def demo_db(cluster: LocalCluster) -> str:
    """scale 1.0, 3 clinics: big enough that every awkward value appears."""
    return _seeded(cluster, "demo", clinics=3, scale=1.0, seed=42)


@pytest.fixture(scope="module")
def small_a(cluster: LocalCluster) -> str:
    return _seeded(cluster, "small_a", clinics=3, scale=0.2, seed=42)


def _one(dsn: str, query: str, params: tuple | None = None) -> object:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchone()[0]


def _all(dsn: str, query: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def _digests(dsn: str) -> dict[str, str]:
    """md5 of every table's rows in a stable order (partitioned audit_log: all partitions)."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for table in gen.TABLES:
            q = sql.SQL("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t").format(
                sql.Identifier(table))
            out[table] = conn.execute(q).fetchone()[0]
    return out


def _catalog(conn: psycopg.Connection) -> set[tuple]:
    """Everything the migrations can create in public, with definitions."""
    rows = conn.execute("""
        SELECT 'class', relname, relkind::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'type', typname, typtype::text FROM pg_type WHERE typnamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'function', proname, pg_get_function_identity_arguments(oid)
          FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = 'public'
    """).fetchall()
    return set(rows)


# -- migrations --------------------------------------------------------------------------------


def test_every_migration_has_a_down_script() -> None:
    migrations = discover(MIGRATIONS_DIR)
    assert len(migrations) >= 5
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.down_path is not None for m in migrations)


def test_migrations_apply_record_sha256_and_rerun_is_a_noop(new_db: str) -> None:
    files = sorted(p for p in MIGRATIONS_DIR.glob("*.sql") if not p.name.endswith(".down.sql"))
    applied = migrate(new_db, MIGRATIONS_DIR)
    assert [m.path.name for m in applied] == [p.name for p in files]

    recorded = _all(new_db, "SELECT version, sha256, applied_at FROM drp.schema_migrations ORDER BY version")
    assert [(v, sha) for v, sha, _ in recorded] == [
        (int(p.name[:4]), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files
    ]
    with psycopg.connect(new_db) as conn:
        before = _catalog(conn)

    assert migrate(new_db, MIGRATIONS_DIR) == []
    assert _all(new_db, "SELECT version, sha256, applied_at FROM drp.schema_migrations ORDER BY version") == recorded
    with psycopg.connect(new_db) as conn:
        assert _catalog(conn) == before


def test_each_down_script_undoes_its_migration_exactly(new_db: str) -> None:
    migrations = discover(MIGRATIONS_DIR)
    with psycopg.connect(new_db, autocommit=True) as conn:
        snapshots = [_catalog(conn)]
        for m in migrations:
            with conn.transaction():
                conn.execute(m.sql)
            snapshots.append(_catalog(conn))
        assert len(snapshots[-1]) > 100
        for i, m in reversed(list(enumerate(migrations))):
            with conn.transaction():
                conn.execute(m.down_path.read_text())  # type: ignore[union-attr]
            assert _catalog(conn) == snapshots[i], f"the down script of {m.path.name} does not undo it exactly"
        assert snapshots[0] == set()  # nothing of ours in public after all downs

    # ...and the schema goes up again through the runner.
    assert len(migrate(new_db, MIGRATIONS_DIR)) == len(migrations)


def test_every_table_reaches_clinics_through_foreign_keys(new_db: str) -> None:
    migrate(new_db, MIGRATIONS_DIR)
    tables = {r[0] for r in _all(new_db, """
        SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')""")}
    assert EXPECTED_TABLES <= tables
    assert sum(t.startswith("audit_log_") for t in tables) == 25  # 24 months + default

    unreachable = _all(new_db, """
        WITH RECURSIVE reach(rel) AS (
            SELECT 'public.clinics'::regclass::oid
            UNION
            SELECT k.conrelid FROM pg_constraint k JOIN reach r ON k.confrelid = r.rel WHERE k.contype = 'f'
        )
        SELECT relname FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') AND oid NOT IN (SELECT rel FROM reach)
        ORDER BY 1""")
    assert unreachable == []

    # Stronger: every tenant table (partitions included) has clinic_id NOT NULL with a direct FK to clinics.
    direct = {r[0] for r in _all(new_db, """
        SELECT k.conrelid::regclass::text
        FROM pg_constraint k
        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
        WHERE k.contype = 'f' AND k.confrelid = 'public.clinics'::regclass
          AND cardinality(k.conkey) = 1 AND a.attname = 'clinic_id' AND a.attnotnull""")}
    assert direct == tables - {"clinics"}


def test_schema_has_the_features_dr_code_must_handle(new_db: str) -> None:
    migrate(new_db, MIGRATIONS_DIR)
    enums = {r[0] for r in _all(
        new_db, "SELECT typname FROM pg_type WHERE typtype = 'e' AND typnamespace = 'public'::regnamespace")}
    assert {"appointment_status", "staff_role"} <= enums
    types = {(r[0], r[1]): r[2] for r in _all(new_db, """
        SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public'""")}
    assert types["patients", "contact"] == "jsonb"
    assert types["prescriptions", "codes"] == "ARRAY"
    assert types["attachments", "sha256"] == "bytea"
    assert types["prescriptions", "dose"] == "numeric"
    identities = _all(new_db, """
        SELECT table_name FROM information_schema.columns
        WHERE table_schema = 'public' AND is_identity = 'YES' AND data_type = 'bigint'""")
    assert len(identities) >= 10
    sequences = {r[0] for r in _all(new_db, """
        SELECT c.relname FROM pg_class c WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')""")}
    assert {"invoice_number_seq", "audit_log_id_seq"} <= sequences  # classic, not identity sequences
    views = {r[0] for r in _all(new_db, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert {"upcoming_appointments", "patient_balances"} <= views
    pk = _one(new_db, """SELECT pg_get_constraintdef(oid) FROM pg_constraint
                         WHERE conrelid = 'public.audit_log'::regclass AND contype = 'p'""")
    assert "occurred_at" in pk
    checks = _one(new_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'c'"
                          " AND connamespace = 'public'::regnamespace")
    assert checks > 20
    # Every FK column is the leading part of some index (no sequential scans on parent deletes).
    unindexed = _all(new_db, """
        SELECT k.conrelid::regclass::text, k.conname FROM pg_constraint k
        WHERE k.contype = 'f' AND k.connamespace = 'public'::regnamespace AND NOT EXISTS (
            SELECT 1 FROM pg_index i WHERE i.indrelid = k.conrelid
              AND (i.indkey::int2[])[0:cardinality(k.conkey) - 1] @> k.conkey
              AND (i.indkey::int2[])[0:cardinality(k.conkey) - 1] <@ k.conkey)""")
    assert unindexed == []


# -- generator ---------------------------------------------------------------------------------


def test_generator_is_deterministic_and_seed_sensitive(cluster: LocalCluster, small_a: str) -> None:
    small_b = _seeded(cluster, "small_b", clinics=3, scale=0.2, seed=42)
    other = _seeded(cluster, "small_seed43", clinics=3, scale=0.2, seed=43)
    try:
        a, b, c = _digests(small_a), _digests(small_b), _digests(other)
        assert a == b
        different = [t for t in gen.TABLES if a[t] != c[t]]
        assert set(different) >= {"patients", "appointments", "clinical_notes", "audit_log"}
    finally:
        cluster.drop_database("small_b")
        cluster.drop_database("small_seed43")


def test_counts_are_real_and_scale_roughly_linearly(cluster: LocalCluster, new_db: str) -> None:
    small = gen.seed_demo(new_db, clinics=3, scale=1.0, seed=7)
    with psycopg.connect(new_db) as conn:
        for table, n in small.items():
            assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0] == n
    big_dsn = cluster.create_database("scale3")
    try:
        big = gen.generate(_migrated(big_dsn), clinics=3, scale=3.0, seed=7)
    finally:
        cluster.drop_database("scale3")
    for table in ("patients", "appointments", "visits", "clinical_notes", "invoices", "invoice_lines", "audit_log"):
        assert 2.4 < big[table] / small[table] < 3.6, (table, small[table], big[table])
    assert big["clinics"] == small["clinics"] == 3
    assert max(small, key=lambda t: small[t]) == "audit_log"


def _migrated(dsn: str) -> str:
    migrate(dsn, MIGRATIONS_DIR)
    return dsn


def test_refuses_a_database_that_already_has_clinics(demo_db: str) -> None:
    before = _digests(demo_db)
    with pytest.raises(gen.DemoDataError) as exc:
        gen.generate(demo_db, clinics=1, scale=0.1)
    assert isinstance(exc.value, DrpError) and exc.value.fix
    with pytest.raises(gen.DemoDataError):
        gen.seed_demo(demo_db, clinics=1, scale=0.1)
    assert _digests(demo_db) == before


def test_refuses_a_database_without_the_schema(new_db: str) -> None:
    with pytest.raises(gen.DemoDataError, match="schema is missing") as exc:
        gen.generate(new_db)
    assert "seed_demo" in (exc.value.fix or "")


def test_metacharacter_clinic_round_trips_exactly(demo_db: str) -> None:
    assert "'" in gen.TRICKY_CLINIC_SLUG and "\\" in gen.TRICKY_CLINIC_SLUG and ";" in gen.TRICKY_CLINIC_SLUG
    row = _all(demo_db, "SELECT id, slug, name FROM clinics WHERE slug = %s", (gen.TRICKY_CLINIC_SLUG,))
    assert row == [(2, gen.TRICKY_CLINIC_SLUG, gen.TRICKY_CLINIC_NAME)]
    assert _one(demo_db, "SELECT count(*) FROM patients WHERE clinic_id = 2") > 0
    assert _one(demo_db, "SELECT to_regclass('public.x') IS NULL AND to_regclass('public.patients') IS NOT NULL")


def test_data_has_the_awkward_values_restores_must_preserve(demo_db: str) -> None:
    q = lambda query: _one(demo_db, query)  # noqa: E731
    # NULL and '' are both present, and distinct, in nullable text columns.
    assert q("SELECT count(*) FROM patients WHERE middle_name IS NULL") > 0
    assert q("SELECT count(*) FROM patients WHERE middle_name = ''") > 0
    assert q("SELECT count(*) FROM appointments WHERE reason IS NULL") > 0
    assert q("SELECT count(*) FROM appointments WHERE reason = ''") > 0
    assert q("SELECT count(*) FROM payments WHERE reference = ''") > 0
    # Tenants overlap: the same external ids and names appear in several clinics.
    assert q("""SELECT count(*) FROM (SELECT external_id FROM patients
                GROUP BY 1 HAVING count(DISTINCT clinic_id) = 3) s""") > 10
    assert q("""SELECT count(*) FROM (SELECT given_name, family_name FROM patients
                GROUP BY 1, 2 HAVING count(DISTINCT clinic_id) > 1) s""") > 0
    # Unicode, and COPY's special characters inside values.
    assert q("SELECT count(*) FROM patients WHERE family_name ~ '[^[:ascii:]]'") > 0
    assert q("SELECT count(*) FROM clinical_notes WHERE body LIKE '%' || chr(10) || '%'") > 0
    assert q("SELECT count(*) FROM clinical_notes WHERE body LIKE '%' || chr(9) || '%'") > 0
    assert q(r"SELECT count(*) FROM clinical_notes WHERE strpos(body, '\\fileserver\scans\') > 0") > 0
    assert q("SELECT count(*) FROM clinical_notes WHERE structured IS NULL") > 0
    assert q("SELECT count(*) FROM prescriptions WHERE codes = '{}'") > 0
    assert q("SELECT min(length(sha256)) = 32 AND max(length(sha256)) = 32 FROM attachments")
    assert q("SELECT count(*) FROM invoices WHERE visit_id IS NULL") > 0
    assert q("SELECT count(*) FROM visits WHERE ended_at IS NULL") > 0
    # Audit events fill the monthly partitions, and legacy imports land in the default one.
    assert q("SELECT count(*) FROM audit_log_default") > 0
    assert q("SELECT count(*) FROM audit_log_y2025m06") > 0
    assert q("SELECT count(*) FROM audit_log WHERE actor_id IS NULL") > 0
    # Invoice totals match their lines (amount is a generated column).
    assert q("""SELECT count(*) FROM invoices i
                WHERE i.total <> (SELECT sum(amount) FROM invoice_lines l WHERE l.invoice_id = i.id)""") == 0
    assert q("SELECT count(*) FROM patient_balances WHERE balance < 0") == 0
    # Time is anchored to the fixed epoch, not the wall clock, and runs forward.
    assert q("SELECT max(occurred_at) < '2026-01-01' AND min(occurred_at) > '2023-12-01' FROM audit_log")
    assert q("SELECT bool_and(created_at BETWEEN '2022-11-01' AND '2024-01-01') FROM clinics")
    assert q("""SELECT bool_and(s.created_at BETWEEN c.created_at AND '2024-01-01')
                FROM staff_users s JOIN clinics c ON c.id = s.clinic_id""")
    assert q("""SELECT bool_and(a.starts_at > p.created_at AND a.created_at >= p.created_at)
                FROM appointments a JOIN patients p ON p.id = a.patient_id""")
    assert q("""SELECT bool_and(v.started_at >= a.starts_at)
                FROM visits v JOIN appointments a ON a.id = v.appointment_id""")


def test_sequences_are_past_the_generated_ids(demo_db: str) -> None:
    with psycopg.connect(demo_db) as conn:
        max_patient = conn.execute("SELECT max(id) FROM patients").fetchone()[0]
        new_id = conn.execute(
            "INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
            " VALUES (1, 'NEW-1', 'Test', 'Patient', '1990-01-01', 'unknown') RETURNING id").fetchone()[0]
        assert new_id == max_patient + 1
        numbers = conn.execute("SELECT max(number) FROM invoices").fetchone()[0]
        number = conn.execute(
            "INSERT INTO invoices (clinic_id, patient_id, currency) VALUES (1, %s, 'EUR') RETURNING number",
            (new_id,)).fetchone()[0]
        assert number == f"INV-{int(numbers[4:]) + 1:08d}"
        max_event = conn.execute("SELECT max(id) FROM audit_log").fetchone()[0]
        event = conn.execute(
            "INSERT INTO audit_log (clinic_id, action, entity) VALUES (1, 'export', 'report') RETURNING id"
        ).fetchone()[0]
        assert event == max_event + 1
        conn.rollback()


def test_bad_arguments_are_config_errors(new_db: str) -> None:
    with pytest.raises(DrpError, match="clinics"):
        gen.generate(new_db, clinics=0)
    with pytest.raises(DrpError, match="scale"):
        gen.generate(new_db, scale=0)
