"""The unforgivable bug: an export of one tenant holding another tenant's rows.

For every table and every format, each output is loaded back (CSV by COPY FROM into a
scratch table, JSON Lines with json, Parquet with pyarrow) and compared with an
*independent*, hand-written SQL query of what the tenant owns: the set of primary keys
must be equal (no foreign row, none missing), every row's tenant column must be the
exported tenant, and the manifest's row count must match.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.export.run import ExportOptions, export_tenants
from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.demo.generate import TRICKY_CLINIC_SLUG
from dr_pipelines_tests.support.export import ALL_FORMATS, object_key, pagila_database, rows_in
from dr_pipelines_tests.test_export_scope import DEMO_TABLES

NO_LIMIT = ExportOptions(max_per_hour=None)


def _ids(conn: psycopg.Connection, query: str, *params: object) -> set[str]:
    return {str(r[0]) for r in conn.execute(query, params).fetchall()}


def test_each_demo_clinic_export_holds_its_rows_only(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    with psycopg.connect(demo_db, autocommit=True) as conn:
        clinics = dict(conn.execute("SELECT id, slug FROM clinics ORDER BY id").fetchall())
        assert TRICKY_CLINIC_SLUG in clinics.values() and len(clinics) == 3
        # The data overlaps across tenants on purpose: same external ids and names elsewhere.
        shared = conn.execute(
            "SELECT count(*) FROM (SELECT external_id FROM patients GROUP BY 1 HAVING count(DISTINCT clinic_id) > 1) s"
        ).fetchone()[0]
        assert shared > 0
        for clinic_id in clinics:
            result = export_tenants(demo_db, storage, [clinic_id], NO_LIMIT)
            manifest = read_manifest(storage, result.prefix)
            assert manifest.kind == "export" and manifest.extra["tenant_ids"] == [str(clinic_id)]
            assert [t.name for t in manifest.tables] == DEMO_TABLES
            assert {o.key for o in manifest.objects} == {
                f"{t}.{ext}" for t in DEMO_TABLES for ext in ("csv", "jsonl", "parquet")}
            rows_by_table = {t.name: t.rows for t in manifest.tables}
            for table in DEMO_TABLES:
                column = "id" if table == "public.clinics" else "clinic_id"
                want = _ids(conn, f"SELECT id FROM {table} WHERE {column} = %s", clinic_id)
                assert rows_by_table[table] == len(want), table
                for fmt in ALL_FORMATS:
                    rows = rows_in(fmt, conn, storage, object_key(result, table, fmt))
                    assert len(rows) == len(want), (table, fmt)
                    assert {str(r["id"]) for r in rows} == want, (table, fmt)
                    assert {str(r[column]) for r in rows} <= {str(clinic_id)}, (table, fmt)
            if clinics[clinic_id] == TRICKY_CLINIC_SLUG:
                exported = rows_in("jsonl", conn, storage, object_key(result, "public.clinics", "jsonl"))
                assert [r["slug"] for r in exported] == [TRICKY_CLINIC_SLUG]
                exported = rows_in("csv", conn, storage, object_key(result, "public.clinics", "csv"))
                assert [r["slug"] for r in exported] == [TRICKY_CLINIC_SLUG]
                exported = rows_in("parquet", conn, storage, object_key(result, "public.clinics", "parquet"))
                assert [r["slug"] for r in exported] == [TRICKY_CLINIC_SLUG]


def test_two_clinics_in_one_export(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    result = export_tenants(demo_db, storage, ["3", "1", "1"], ExportOptions(formats=("jsonl",), max_per_hour=None))
    assert result.manifest.extra["tenant_ids"] == ["1", "3"]
    with psycopg.connect(demo_db) as conn:
        want = _ids(conn, "SELECT id FROM patients WHERE clinic_id IN (1, 3)")
        rows = rows_in("jsonl", conn, storage, object_key(result, "public.patients", "jsonl"))
    assert {str(r["id"]) for r in rows} == want
    assert {r["clinic_id"] for r in rows} == {1, 3}


# pagila with store as the tenant root: the expected rows of each table, written by hand
# along the paths test_export_scope asserts (rental and payments through customer).
PAGILA_EXPECTED = {
    "public.store": ("store_id", "SELECT store_id FROM store WHERE store_id = %s"),
    "public.customer": ("customer_id", "SELECT customer_id FROM customer WHERE store_id = %s"),
    "public.inventory": ("inventory_id", "SELECT inventory_id FROM inventory WHERE store_id = %s"),
    "public.staff": ("staff_id", "SELECT staff_id FROM staff WHERE store_id = %s"),
    "public.rental": ("rental_id", "SELECT r.rental_id FROM rental r JOIN customer c ON c.customer_id = r.customer_id"
                                   " WHERE c.store_id = %s"),
    "public.payment": ("payment_id", "SELECT p.payment_id FROM ONLY payment p JOIN customer c"
                                     " ON c.customer_id = p.customer_id WHERE c.store_id = %s"),
    **{f"public.payment_p2007_0{m}": ("payment_id", f"SELECT p.payment_id FROM payment_p2007_0{m} p JOIN customer c"
                                                    " ON c.customer_id = p.customer_id WHERE c.store_id = %s")
       for m in range(1, 7)},
}


@pytest.fixture
def pagila_db(pg_cluster: LocalCluster) -> Iterator[str]:
    name, dsn = pagila_database(pg_cluster)
    yield dsn
    pg_cluster.drop_database(name)


def test_pagila_store_export_holds_its_rows_only(pagila_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    options = ExportOptions(root="public.store", key_column="store_id", max_per_hour=None)
    with psycopg.connect(pagila_db, autocommit=True) as conn:
        for store_id in (1, 2):
            result = export_tenants(pagila_db, storage, [store_id], options)
            assert sorted(t.name for t in result.manifest.tables) == sorted(PAGILA_EXPECTED)
            rows_by_table = {t.name: t.rows for t in result.manifest.tables}
            for table, (pk, query) in PAGILA_EXPECTED.items():
                want = _ids(conn, query, store_id)
                assert rows_by_table[table] == len(want), table
                for fmt in ALL_FORMATS:
                    rows = rows_in(fmt, conn, storage, object_key(result, table, fmt))
                    assert len(rows) == len(want), (table, fmt)
                    assert {str(r[pk]) for r in rows} == want, (table, fmt)
                    if "store_id" in (rows[0] if rows else {}):
                        assert {str(r["store_id"]) for r in rows} == {str(store_id)}, (table, fmt)
            # The whole of the payments is split between the two stores (customers belong to one).
            assert rows_by_table["public.payment_p2007_02"] > 0


def test_every_table_and_format_comes_from_one_snapshot(demo_db: str, tmp_path: Path) -> None:
    """Rows committed while the export runs appear in no file: all tables are read from one snapshot."""
    storage = LocalStorage(tmp_path / "store")
    writer = psycopg.connect(demo_db, autocommit=True)
    inserted: list[int] = []

    def progress(name: str, done: int, total: int | None) -> None:
        if done == 1:  # after the first file, commit a new patient of the exported clinic
            inserted.append(writer.execute(
                "INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
                " VALUES (1, 'LATE-1', 'Late', 'Comer', '1990-01-01', 'female') RETURNING id").fetchone()[0])

    try:
        before = writer.execute("SELECT count(*) FROM patients WHERE clinic_id = 1").fetchone()[0]
        result = export_tenants(demo_db, storage, [1], NO_LIMIT, progress=progress)
        assert inserted, "the progress callback did not run"
        rows = {t.name: t.rows for t in result.manifest.tables}
        assert rows["public.patients"] == before
        with psycopg.connect(demo_db) as conn:
            for fmt in ALL_FORMATS:
                exported = rows_in(fmt, conn, storage, object_key(result, "public.patients", fmt))
                assert len(exported) == before and str(inserted[0]) not in {str(r["id"]) for r in exported}
    finally:
        writer.close()
