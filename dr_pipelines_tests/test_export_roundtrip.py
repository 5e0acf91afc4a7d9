"""Parquet round trip into a fresh database, and the type conventions of every format."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from dr_pipelines.core.export.run import ExportOptions, export_tenants
from dr_pipelines.core.migrate.runner import migrate
from dr_pipelines.core.parquet import table_columns
from dr_pipelines.core.pg.checksums import pin_render_settings, table_checksum
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.demo.generate import TABLES, TRICKY_CLINIC_SLUG
from dr_pipelines.demo.schema import MIGRATIONS_DIR
from dr_pipelines_tests.support.export import object_key, read_csv_via_copy, read_jsonl, read_parquet


def test_parquet_export_loads_into_a_fresh_database_unchanged(demo_db: str, fresh_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    with psycopg.connect(demo_db) as conn:
        clinic_id = conn.execute("SELECT id FROM clinics WHERE slug = %s", (TRICKY_CLINIC_SLUG,)).fetchone()[0]
    # Small row groups, so that the streaming path (many row groups per file) is what is tested.
    result = export_tenants(demo_db, storage, [clinic_id],
                            ExportOptions(formats=("parquet",), max_per_hour=None, batch_rows=97,
                                          content_checksums=True))
    manifest = {t.name: t for t in result.manifest.tables}
    audit_log = pq.ParquetFile(io.BytesIO(storage.get_bytes(object_key(result, "public.audit_log", "parquet"))))
    assert audit_log.metadata.num_row_groups == -(-manifest["public.audit_log"].rows // 97) > 1
    migrate(fresh_db, MIGRATIONS_DIR)
    with psycopg.connect(fresh_db) as target:
        for table in TABLES:  # parents first, so the foreign keys hold
            data = read_parquet(storage, object_key(result, f"public.{table}", "parquet"))
            insertable = [c.name for c in table_columns(target, "public", table) if not c.generated]
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, insertable)))
            with target.cursor().copy(stmt) as copy:
                for row in data.select(insertable).to_pylist():
                    copy.write_row([row[c] for c in insertable])
        target.commit()
        pin_render_settings(target)  # as the export did, for the text checksum method
        with psycopg.connect(demo_db) as source:
            for table in TABLES:
                column = "id" if table == "clinics" else "clinic_id"
                want = source.execute(sql.SQL("SELECT * FROM {} WHERE {} = %s ORDER BY id").format(
                    sql.Identifier(table), sql.Identifier(column)), (clinic_id,)).fetchall()
                got = target.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))).fetchall()
                assert got == want, table
                assert len(want) == manifest[f"public.{table}"].rows
                # The manifest's checksum of the tenant's rows equals the restored table's checksum.
                entry = manifest[f"public.{table}"]
                restored = table_checksum(target, "public", table, entry.method)
                assert (restored.rows, restored.checksum) == (entry.rows, entry.checksum), table


TS = "2024-03-05 06:07:08.123456+02"
TS_UTC = datetime(2024, 3, 5, 4, 7, 8, 123456, tzinfo=UTC)
CONTACT = {"phone": "+1 555", "nested": {"list": [1, 2.5, "x"], "null": None}, "quote": "a\"b\\c"}
CODES = ["A10BA02", "with,comma", 'quo"te', None]


def _seed_types(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in clinic 1 with known awkward values; ids by name."""
    sha = bytes([0, 255, 10, 13, 44, 34, 92]) + bytes(range(100, 125))
    assert len(sha) == 32
    staff = conn.execute("SELECT id FROM staff_users WHERE clinic_id = 1 ORDER BY id LIMIT 1").fetchone()[0]
    ids = {}
    for ext, middle in (("TYPES-EMPTY", ""), ("TYPES-NULL", None)):
        ids[ext] = conn.execute(
            "INSERT INTO patients (clinic_id, external_id, given_name, middle_name, family_name, date_of_birth, sex,"
            " contact, created_at) VALUES (1, %s, 'Given', %s, 'Family', '1980-02-29', 'other', %s, %s) RETURNING id",
            (ext, middle, json.dumps(CONTACT), TS)).fetchone()[0]
    patient = ids["TYPES-EMPTY"]
    appt = conn.execute(
        "INSERT INTO appointments (clinic_id, patient_id, staff_user_id, starts_at, status)"
        " VALUES (1, %s, %s, %s, 'no_show') RETURNING id", (patient, staff, TS)).fetchone()[0]
    visit = conn.execute("INSERT INTO visits (clinic_id, appointment_id, started_at) VALUES (1, %s, %s) RETURNING id",
                         (appt, TS)).fetchone()[0]
    ids["prescription"] = conn.execute(
        "INSERT INTO prescriptions (clinic_id, visit_id, prescriber_id, drug, dose, dose_unit, frequency, codes)"
        " VALUES (1, %s, %s, 'x', 0.001, 'mg', 'daily', %s) RETURNING id", (visit, staff, CODES)).fetchone()[0]
    ids["attachment"] = conn.execute(
        "INSERT INTO attachments (clinic_id, patient_id, filename, content_type, size_bytes, sha256, storage_key)"
        " VALUES (1, %s, 'f.pdf', 'application/pdf', 1, %s, 'types-key') RETURNING id", (patient, sha)).fetchone()[0]
    ids["appointment"] = appt
    conn.commit()
    return ids | {"sha": sha}  # type: ignore[dict-item]


def _by(rows: list[dict], key: str, value: object) -> dict:
    found = [r for r in rows if str(r[key]) == str(value)]
    assert len(found) == 1, (key, value, len(found))
    return found[0]


def test_type_conventions_in_every_format(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    with psycopg.connect(demo_db) as conn:
        ids = _seed_types(conn)
        sha: bytes = ids["sha"]  # type: ignore[assignment]
        result = export_tenants(demo_db, storage, [1], ExportOptions(max_per_hour=None))

        def key(table: str, fmt: str) -> str:
            return object_key(result, f"public.{table}", fmt)

        # -- CSV: NULL is an unquoted empty field, '' is "" (checked in the raw text and via COPY FROM)
        raw = storage.get_bytes(key("patients", "csv")).decode()
        assert ',TYPES-EMPTY,Given,"",Family,' in raw
        assert ",TYPES-NULL,Given,,Family," in raw
        patients = read_csv_via_copy(conn, storage, key("patients", "csv"))
        assert _by(patients, "external_id", "TYPES-EMPTY")["middle_name"] == ""
        assert _by(patients, "external_id", "TYPES-NULL")["middle_name"] is None
        row = _by(patients, "external_id", "TYPES-EMPTY")
        assert row["created_at"] == "2024-03-05 04:07:08.123456+00"  # DateStyle ISO, UTC
        assert datetime.fromisoformat(row["created_at"]) == TS_UTC
        assert json.loads(row["contact"]) == CONTACT
        assert row["date_of_birth"] == "1980-02-29"
        prescriptions = read_csv_via_copy(conn, storage, key("prescriptions", "csv"))
        p = _by(prescriptions, "id", ids["prescription"])
        assert p["dose"] == "0.001"
        assert conn.execute("SELECT %s::text[]", (p["codes"],)).fetchone()[0] == CODES  # a PostgreSQL literal
        attachments = read_csv_via_copy(conn, storage, key("attachments", "csv"))
        assert base64.b64decode(_by(attachments, "id", ids["attachment"])["sha256"], validate=True) == sha
        appointments = list(csv.DictReader(io.StringIO(storage.get_bytes(key("appointments", "csv")).decode())))
        assert _by(appointments, "id", ids["appointment"])["status"] == "no_show"

        # -- JSON Lines
        patients_j = read_jsonl(storage, key("patients", "jsonl"))
        assert _by(patients_j, "external_id", "TYPES-EMPTY")["middle_name"] == ""
        assert _by(patients_j, "external_id", "TYPES-NULL")["middle_name"] is None
        row = _by(patients_j, "external_id", "TYPES-EMPTY")
        assert row["contact"] == CONTACT  # nested JSON, not a string
        assert datetime.fromisoformat(row["created_at"]) == TS_UTC and row["created_at"].endswith("+00:00")
        p = _by(read_jsonl(storage, key("prescriptions", "jsonl")), "id", ids["prescription"])
        assert p["dose"] == "0.001" and Decimal(p["dose"]) == Decimal("0.001")
        assert p["codes"] == CODES
        a = _by(read_jsonl(storage, key("attachments", "jsonl")), "id", ids["attachment"])
        assert base64.b64decode(a["sha256"], validate=True) == sha
        assert _by(read_jsonl(storage, key("appointments", "jsonl")), "id", ids["appointment"])["status"] == "no_show"

        # -- Parquet
        table = read_parquet(storage, key("patients", "parquet"))
        assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
        assert table.schema.field("contact").type == pa.string()
        rows = table.to_pylist()
        assert _by(rows, "external_id", "TYPES-EMPTY")["middle_name"] == ""
        assert _by(rows, "external_id", "TYPES-NULL")["middle_name"] is None
        row = _by(rows, "external_id", "TYPES-EMPTY")
        assert row["created_at"] == TS_UTC and json.loads(row["contact"]) == CONTACT
        table = read_parquet(storage, key("prescriptions", "parquet"))
        assert table.schema.field("dose").type == pa.decimal128(10, 3)
        assert table.schema.field("codes").type == pa.list_(pa.string())
        p = _by(table.to_pylist(), "id", ids["prescription"])
        assert p["dose"] == Decimal("0.001") and p["codes"] == CODES
        assert read_parquet(storage, key("invoices", "parquet")).schema.field("total").type == pa.decimal128(12, 2)
        table = read_parquet(storage, key("attachments", "parquet"))
        assert table.schema.field("sha256").type == pa.binary()
        assert _by(table.to_pylist(), "id", ids["attachment"])["sha256"] == sha
        table = read_parquet(storage, key("appointments", "parquet"))
        assert table.schema.field("status").type == pa.string()
        assert _by(table.to_pylist(), "id", ids["appointment"])["status"] == "no_show"


NASTY = 'quote " backslash \\ tab\t newline\n CR\r x01\x01 x02\x02 comma, semicolon; \u00e9\u4e2d \U0001f600'


def test_control_characters_and_quotes_survive_every_text_format(demo_db: str, tmp_path: Path) -> None:
    """JSON Lines is COPY CSV with quote and delimiter bytes JSON never holds raw: prove it with those bytes."""
    storage = LocalStorage(tmp_path / "store")
    with psycopg.connect(demo_db, autocommit=True) as conn:
        pid = conn.execute("UPDATE patients SET family_name = %s WHERE id = (SELECT min(id) FROM patients"
                           " WHERE clinic_id = 1) RETURNING id", (NASTY,)).fetchone()[0]
        result = export_tenants(demo_db, storage, [1], ExportOptions(formats=("csv", "jsonl"), max_per_hour=None,
                                                                     tables=("public.patients",)))
        rows = read_jsonl(storage, object_key(result, "public.patients", "jsonl"))
        assert _by(rows, "id", pid)["family_name"] == NASTY
        assert len(rows) == conn.execute("SELECT count(*) FROM patients WHERE clinic_id = 1").fetchone()[0]
        via_copy = read_csv_via_copy(conn, storage, object_key(result, "public.patients", "csv"))
        assert _by(via_copy, "id", pid)["family_name"] == NASTY


def test_s3_export_with_presigned_urls(demo_db: str, s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    import requests

    from dr_pipelines.core.storage.s3 import S3Storage

    storage = S3Storage(s3_bucket, "tenant-exports", **s3_server.storage_kwargs())
    result = export_tenants(demo_db, storage, [3], ExportOptions(formats=("jsonl",), max_per_hour=None,
                                                                presign_expiry_s=600))
    keys = [f"{result.prefix}/{o.key}" for o in result.manifest.objects] + [result.manifest_key]
    assert sorted(result.urls) == sorted(keys)
    entry = next(o for o in result.manifest.objects if o.key == "public.patients.jsonl")
    response = requests.get(result.urls[f"{result.prefix}/public.patients.jsonl"], timeout=10)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == entry.sha256
    assert response.content == storage.get_bytes(f"{result.prefix}/public.patients.jsonl")
