"""Every export attempt is audited (success, failure, refusal) in an append-only table the database guards."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.errors import StorageError
from dr_pipelines.core.export.audit import ensure_audit_table
from dr_pipelines.core.export.run import (
    ExportError,
    ExportOptions,
    RateLimitedError,
    UnknownTenantError,
    export_tenants,
)
from dr_pipelines.core.manifest import MANIFEST_NAME
from dr_pipelines.core.storage import PutResult
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.export import audit_rows

CSV_ONLY = ExportOptions(formats=("csv",), max_per_hour=None, requester="dr. auditor")


def test_success_is_audited_with_the_manifest_sha256(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    result = export_tenants(demo_db, storage, [1], CSV_ONLY)
    started, done = audit_rows(demo_db)
    assert started["attempt_id"] == done["attempt_id"]
    assert (started["status"], done["status"]) == ("started", "succeeded")
    stored = storage.get_bytes(f"{result.prefix}/{MANIFEST_NAME}")
    assert done["manifest_sha256"] == hashlib.sha256(stored).hexdigest() == result.manifest_sha256
    assert done["export_id"] == result.export_id
    assert done["requester"] == "dr. auditor" and done["tenant_ids"] == ["1"] and done["formats"] == ["csv"]
    assert done["rows"] == result.manifest.total_rows > 0
    assert done["bytes"] == result.manifest.stored_bytes > 0
    assert "public.patients" in done["tables"] and done["error"] is None
    assert done["finished_at"] >= done["started_at"]
    assert result.manifest.extra["schema_version"] == 6
    assert {e["table"] for e in result.manifest.extra["excluded_tables"]} == {
        "drp.schema_migrations", "drp.export_audit"}


class FailingStorage(LocalStorage):
    """Accepts the first object, then fails like a full disk."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        self.puts += 1
        if self.puts > 1:
            raise StorageError("no space left on the export volume", fix="free space")
        return super().put_stream(key, chunks)


def test_failure_is_audited_and_leaves_no_bundle(demo_db: str, tmp_path: Path) -> None:
    storage = FailingStorage(tmp_path / "store")
    with pytest.raises(StorageError, match="no space"):
        export_tenants(demo_db, storage, [2], CSV_ONLY)
    started, failed = audit_rows(demo_db)
    assert (started["status"], failed["status"]) == ("started", "failed")
    assert failed["attempt_id"] == started["attempt_id"]
    assert "no space left" in failed["error"] and failed["manifest_sha256"] is None
    assert list(storage.list("")) == []  # the one object written was removed again


@pytest.mark.timeout(60)  # a failure while batches are prefetched must not hang on the reader thread
def test_parquet_failure_mid_table_is_audited_and_leaves_nothing(demo_db: str, tmp_path: Path) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:  # NaN fits numeric(12,2) but no Parquet decimal
        conn.execute("UPDATE invoices SET total = 'NaN' WHERE id = (SELECT max(id) FROM invoices WHERE clinic_id = 2)")
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(ExportError, match="public.invoices cannot be written as Parquet") as raised:
        export_tenants(demo_db, storage, [2], ExportOptions(formats=("parquet",), max_per_hour=None))
    assert "CSV or JSON Lines" in raised.value.fix
    started, failed = audit_rows(demo_db)
    assert (started["status"], failed["status"]) == ("started", "failed") and "Parquet" in failed["error"]
    assert list(storage.list("")) == []


def test_unknown_or_invalid_tenant_is_refused_and_audited(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(UnknownTenantError, match="999"):
        export_tenants(demo_db, storage, [1, 999], CSV_ONLY)
    with pytest.raises(UnknownTenantError, match="not bigint values as written"):
        export_tenants(demo_db, storage, ["1; DROP TABLE patients"], CSV_ONLY)
    rows = audit_rows(demo_db)
    assert [r["status"] for r in rows] == ["refused", "refused"]
    assert rows[0]["tenant_ids"] == ["1", "999"] and "unknown tenant" in rows[0]["error"]
    assert rows[1]["tenant_ids"] == ["1; DROP TABLE patients"]
    assert list(storage.list("")) == []
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0


def test_rate_limit_per_tenant_refuses_and_audits(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    limited = ExportOptions(formats=("csv",), max_per_hour=2, requester="script")
    export_tenants(demo_db, storage, [1], limited)
    export_tenants(demo_db, storage, [1], limited)
    with pytest.raises(RateLimitedError, match="limit 2"):
        export_tenants(demo_db, storage, [1], limited)
    with pytest.raises(RateLimitedError):  # a multi-tenant export including the limited tenant too
        export_tenants(demo_db, storage, [3, 1], limited)
    export_tenants(demo_db, storage, [3], limited)  # other tenants are not affected
    statuses = [(r["status"], r["tenant_ids"]) for r in audit_rows(demo_db)]
    assert statuses == [
        ("started", ["1"]), ("succeeded", ["1"]), ("started", ["1"]), ("succeeded", ["1"]),
        ("refused", ["1"]), ("refused", ["1", "3"]), ("started", ["3"]), ("succeeded", ["3"]),
    ]
    assert "limit 2" in audit_rows(demo_db)[4]["error"]


def test_audit_rows_are_immutable_for_owner_and_application_role(demo_db: str, tmp_path: Path) -> None:
    export_tenants(demo_db, LocalStorage(tmp_path / "store"), [1], CSV_ONLY)
    role = f"drp_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(demo_db, autocommit=True) as conn:
        ensure_audit_table(conn)  # idempotent
        # The owner (here a superuser) is stopped by the trigger, whatever its privileges.
        for statement in ("UPDATE drp.export_audit SET status = 'succeeded'", "DELETE FROM drp.export_audit",
                          "TRUNCATE drp.export_audit"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            conn.execute(f"GRANT USAGE ON SCHEMA drp TO {role}")
            conn.execute(f"GRANT INSERT, SELECT ON drp.export_audit TO {role}")
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                conn.execute(
                    "INSERT INTO drp.export_audit (attempt_id, status, requester, tenant_ids, root_table, started_at)"
                    " VALUES (gen_random_uuid(), 'refused', 'app', '{1}', 'public.clinics', now())")
            for statement in ("UPDATE drp.export_audit SET error = 'x'", "DELETE FROM drp.export_audit",
                              "TRUNCATE drp.export_audit"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    with conn.transaction():
                        conn.execute(f"SET LOCAL ROLE {role}")
                        conn.execute(statement)
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
        assert conn.execute("SELECT count(*) FROM drp.export_audit").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM drp.export_audit WHERE error = 'x'").fetchone()[0] == 0


class MidStreamFailingStorage(LocalStorage):
    """Reads the first chunk of one object, then fails (a dropped connection while the COPY is open)."""

    def __init__(self, root: Path, suffix: str) -> None:
        super().__init__(root)
        self.suffix = suffix

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        if key.endswith(self.suffix):
            next(iter(chunks))
            raise StorageError("connection reset midway", fix="retry")
        return super().put_stream(key, chunks)


@pytest.mark.timeout(60)  # the bug this guards against was a hang (ROLLBACK behind an open COPY)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_storage_failing_mid_stream_fails_cleanly(demo_db: str, tmp_path: Path, fmt: str) -> None:
    storage = MidStreamFailingStorage(tmp_path / "store", f"public.patients.{fmt}")
    with pytest.raises(StorageError, match="midway"):
        export_tenants(demo_db, storage, [1], ExportOptions(formats=(fmt,), max_per_hour=None))
    assert list(storage.list("")) == []
    assert [r["status"] for r in audit_rows(demo_db)] == ["started", "failed"]
