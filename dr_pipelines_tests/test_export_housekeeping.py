"""The exports' housekeeping: a killed export's files are swept and its audit closed; old exports expire."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.export.run import ExportOptions, export_tenants
from dr_pipelines.core.manifest import MANIFEST_NAME, read_manifest
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.export import audit_rows
from dr_pipelines_tests.support.procs import drp, start_paused


def test_a_killed_export_is_swept_and_closed_as_abandoned(demo_db: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = drp_env(source=demo_db, storage=store, export_max_per_hour=0)
    storage = LocalStorage(store)
    proc = start_paused(["export", "--clinic", "1", "--format", "csv,jsonl"], env, "export-after-first-file")
    try:
        (started,) = audit_rows(demo_db)
        export_id = started["export_id"]
        partial = [o.key for o in storage.list(f"exports/{export_id}/")]
        assert partial and not storage.exists(f"exports/{export_id}/{MANIFEST_NAME}")
        alive = drp("export-sweep", "--older-than", "0", "--json", env=env)  # it is running: left alone
        assert alive.returncode == 0, alive.stderr
        assert json.loads(alive.stdout)["abandoned"] == []
        assert [o.key for o in storage.list(f"exports/{export_id}/")] == partial
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [r["status"] for r in audit_rows(demo_db)] == ["started"]  # kill -9: nothing closed it

    not_yet = drp("export-sweep", "--json", env=env)  # younger than export_sweep_after_minutes (15)
    assert json.loads(not_yet.stdout)["abandoned"] == [] and list(storage.list(f"exports/{export_id}/"))

    # The next export sweeps it first (here with a threshold of 0 minutes) and says so.
    nxt = drp("export", "--clinic", "2", "--format", "csv", "--json", env={**env, **drp_env(export_sweep_after_minutes=0)})
    assert nxt.returncode == 0, nxt.stderr
    swept = json.loads(nxt.stdout)["housekeeping"]
    assert swept["abandoned"] == [export_id] and swept["objects_removed"] == len(partial)
    assert list(storage.list(f"exports/{export_id}/")) == []
    rows = [r for r in audit_rows(demo_db) if r["export_id"] == export_id]
    assert [r["status"] for r in rows] == ["started", "abandoned"]
    assert rows[1]["attempt_id"] == rows[0]["attempt_id"] and rows[1]["tenant_ids"] == ["1"]
    assert f"removed {len(partial)} partial object(s)" in rows[1]["error"]
    again = drp("export-sweep", "--older-than", "0", "--json", env=env)  # closed once, not twice
    assert json.loads(again.stdout)["abandoned"] == []


def test_exports_older_than_the_time_to_live_are_deleted_and_audited(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    options = ExportOptions(formats=("csv",), max_per_hour=None, zip_bundle=True)
    old = export_tenants(demo_db, storage, [1], options)
    recent = export_tenants(demo_db, storage, [2], options)
    # Eight days pass for the first export (its manifest's finished_at is what ages it).
    aged = replace(old.manifest, finished_at=datetime.now(UTC) - timedelta(days=8))
    storage.put_bytes(old.manifest_key, aged.to_json().encode())
    old_keys = [o.key for o in storage.list(f"{old.prefix}/")]
    assert len(old_keys) == len(old.manifest.objects) + 1

    third = export_tenants(demo_db, storage, [3], options)  # ttl_days=7 by default
    assert third.swept.expired == [old.export_id] and third.swept.objects_removed == len(old_keys)
    assert list(storage.list(f"{old.prefix}/")) == []
    assert read_manifest(storage, recent.prefix).id == recent.export_id  # younger: kept
    (expired,) = [r for r in audit_rows(demo_db) if r["status"] == "expired"]
    assert expired["export_id"] == old.export_id and expired["tenant_ids"] == ["1"]
    assert expired["rows"] == old.manifest.total_rows and "time-to-live of 7 day(s)" in expired["error"]

    kept = export_tenants(demo_db, storage, [1], replace(options, ttl_days=None))  # TTL off: nothing expires
    assert kept.swept.expired == [] and read_manifest(storage, recent.prefix)


def test_an_audit_table_of_an_earlier_release_accepts_the_new_statuses(fresh_db: str) -> None:
    from dr_pipelines.core.export import audit

    old_ddl = audit.AUDIT_DDL.split("-- Named, and replaced")[0].replace(
        "status           text        NOT NULL,",
        "status           text        NOT NULL CHECK (status IN ('started', 'succeeded', 'failed', 'refused')),")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(old_ddl)
        record = audit.AuditRecord("dpo", ["1"], "public.clinics", datetime.now(UTC), export_id="x",
                                   status="abandoned")
        # The old table lacks the portal's columns (and the new statuses): nothing is written until it is upgraded.
        with pytest.raises(audit.AuditError, match="credential_id|export_audit_status_check"):
            audit.append(conn, record)
        audit.ensure_audit_table(conn)
        audit.append(conn, replace(record, status="granted", credential_id="pt_0123456789ab",
                                   client_address="127.0.0.1"))
        audit.append(conn, record)
        assert conn.execute("SELECT status, credential_id, client_address FROM drp.export_audit ORDER BY id"
                            ).fetchall() == [("granted", "pt_0123456789ab", "127.0.0.1"), ("abandoned", None, None)]
        # The release before 'discarded' (a tenant restore's rolled-back undo): upgraded the same way.
        conn.execute("ALTER TABLE drp.export_audit DROP CONSTRAINT export_audit_status_check")
        conn.execute("ALTER TABLE drp.export_audit ADD CONSTRAINT export_audit_status_check CHECK (status IN"
                     " ('started', 'succeeded', 'failed', 'refused', 'abandoned', 'expired', 'granted'))")
        audit.ensure_audit_table(conn)
        audit.append(conn, replace(record, status="discarded"))
        assert conn.execute("SELECT count(*) FROM drp.export_audit WHERE status = 'discarded'").fetchone()[0] == 1
