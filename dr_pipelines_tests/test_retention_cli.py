"""`drp retention` and `drp archive` as an operator runs them: real processes, JSON out, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp
from dr_pipelines_tests.support.retention import AS_OF, POLICY, key_env


def test_plan_hold_apply_list_restore(demo_db: str, tmp_path: Path) -> None:
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    env = {**drp_env(source=demo_db, storage=tmp_path / "store", retention_policies_file=policy), **key_env(tmp_path)}
    when = ["--as-of", AS_OF.isoformat()]

    planned = drp("retention", "plan", "--json", "--table", "public.clinical_notes", *when, env=env)
    assert planned.returncode == 0, planned.stderr
    lines = json.loads(planned.stdout)
    assert {line["tenant_id"] for line in lines} == {"1", "2", "3"} and all(line["why"] for line in lines)

    hold = drp("retention", "hold", "place", "--tenant", "2", "--table", "public.clinical_notes",
               "--reason", "case 7", "--json", env=env)
    assert hold.returncode == 0, hold.stderr
    applied = drp("retention", "apply", "--json", "--table", "public.clinical_notes", *when, env=env)
    assert applied.returncode == 0, applied.stderr
    (table,) = json.loads(applied.stdout)["tables"]
    assert table["archived_rows"] > 0 and table["archived_rows"] == table["deleted_rows"]
    assert table["held"][0]["tenant_id"] == "2" and table["held"][0]["holds"] == [json.loads(hold.stdout)["id"]]

    text = drp("retention", "apply", "--table", "public.audit_log", *when, env=env)  # as a person reads it
    assert text.returncode == 0, text.stderr
    assert "public.audit_log:" in text.stdout and ": balanced" in text.stdout and "Traceback" not in text.stderr

    listed = json.loads(drp("archive", "list", "--json", "--table", "public.clinical_notes", env=env).stdout)
    assert listed and {a["tenant_id"] for a in listed} == {"1", "3"}
    months = sorted(a["month"] for a in listed if a["tenant_id"] == "1")
    restored = drp("archive", "restore", "--table", "public.clinical_notes", "--tenant", "1",
                   "--period", f"{months[0]}..{months[-1]}", "--into", "notes_back", "--json", env=env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["rows"] == sum(a["rows"] for a in listed if a["tenant_id"] == "1")


def test_errors_are_one_message_with_a_fix(demo_db: str, tmp_path: Path) -> None:
    env = drp_env(source=demo_db, storage=tmp_path / "store")
    missing = drp("retention", "plan", env=env)
    assert missing.returncode == 2 and "fix:" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"version": 1, "tables": {"public.audit_log": {
        "timestamp_column": "occurred_at", "period": "0 days", "action": "delete"}}}))
    refused = drp("retention", "apply", "--policies", str(bad), env=env)
    assert refused.returncode == 2 and "not positive" in refused.stderr and "Traceback" not in refused.stderr
    unsafe = drp("retention", "hold", "place", "--tenant", "1", "--table", "audit_log", "--reason", "x",
                 "--where", "id IN (SELECT 1)", env=env)
    assert unsafe.returncode == 2 and "subqueries are not allowed" in unsafe.stderr
