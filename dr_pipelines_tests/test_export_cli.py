"""`drp export` as a person runs it: the installed entry point in a subprocess, checked in storage."""

from __future__ import annotations

import json
from pathlib import Path

from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp


def test_export_cli_json_and_clean_refusal(demo_db: str, tmp_path: Path) -> None:
    env = drp_env(source=demo_db, storage=tmp_path / "default", export_max_per_hour=5)
    target = tmp_path / "elsewhere"
    result = drp("export", "--clinic", "1", "--clinic", "3", "--format", "csv,jsonl", "--to", str(target),
                 "--requester", "dpo@example.org", "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tenant_ids"] == ["1", "3"] and summary["formats"] == ["csv", "jsonl"]
    storage = LocalStorage(target)
    manifest = read_manifest(storage, f"exports/{summary['export_id']}")
    assert manifest.extra["requester"] == "dpo@example.org"
    assert manifest.total_rows == summary["rows"] > 0
    assert {(t.method, t.checksum) for t in manifest.tables} == {("none", "")}  # content checksums are opt-in
    assert not (tmp_path / "default").exists()

    refused = drp("export", "--clinic", "424242", env=env)
    assert refused.returncode == 4
    assert "Traceback" not in refused.stderr and "error:" in refused.stderr and "424242" in refused.stderr

    bad = drp("export", "--clinic", "1", "--format", "xlsx", env=env)
    assert bad.returncode == 2 and "xlsx" in bad.stderr and "Traceback" not in bad.stderr


def test_export_cli_selected_tables_as_a_verified_zip(demo_db: str, tmp_path: Path) -> None:
    import hashlib
    import zipfile

    env = drp_env(source=demo_db, storage=tmp_path / "store")
    result = drp("export", "--clinic", "2", "--format", "csv,parquet", "--table", "public.patients",
                 "--table", "appointments", "--zip", "--checksums", "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [t["table"] for t in summary["tables"]] == ["public.patients", "public.appointments"]
    storage = LocalStorage(tmp_path / "store")
    prefix = f"exports/{summary['export_id']}"
    manifest = read_manifest(storage, prefix)
    bundle = next(o for o in manifest.objects if o.role == "bundle")
    with zipfile.ZipFile(storage.open(f"{prefix}/{bundle.key}")) as zf:
        inner = json.loads(zf.read("manifest.json"))
        files = [o for o in manifest.objects if o.role == "table"]
        assert sorted(zf.namelist()) == sorted([o.key for o in files] + ["manifest.json"])
        for o in files:  # byte-identical to the stored files the manifest describes
            assert hashlib.sha256(zf.read(o.key)).hexdigest() == o.sha256
    assert inner["id"] == manifest.id and len(inner["objects"]) == len(files) == 4
    assert all(t.method in ("record", "text") and len(t.checksum) == 16 for t in manifest.tables)

    unknown = drp("export", "--clinic", "2", "--table", "public.no_such", env=env)
    assert unknown.returncode == 2 and "public.no_such" in unknown.stderr and "Traceback" not in unknown.stderr
