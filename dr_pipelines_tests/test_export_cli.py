"""`drp export` as a person runs it: the installed entry point in a subprocess, checked in storage."""

from __future__ import annotations

import json
from pathlib import Path

from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.procs import drp


def test_export_cli_json_and_clean_refusal(demo_db: str, tmp_path: Path) -> None:
    env = {"DRP_SOURCE_DSN": demo_db, "DRP_STORAGE_URL": str(tmp_path / "default"), "DRP_EXPORT_MAX_PER_HOUR": "5"}
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
    assert not (tmp_path / "default").exists()

    refused = drp("export", "--clinic", "424242", env=env)
    assert refused.returncode == 4
    assert "Traceback" not in refused.stderr and "error:" in refused.stderr and "424242" in refused.stderr

    bad = drp("export", "--clinic", "1", "--format", "xlsx", env=env)
    assert bad.returncode == 2 and "xlsx" in bad.stderr and "Traceback" not in bad.stderr
