"""Legal holds as stored and applied: a predicate is kept in the parser's own (deparsed) form, and one
table's failure does not stop the other tables' retention."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import yaml

from dr_pipelines.core.retention.holds import place_hold
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp
from dr_pipelines_tests.support.retention import AS_OF, POLICY, key_env


def _env(demo_db: str, tmp_path: Path) -> dict[str, str]:
    """`drp retention` settings: the demo policy, local storage, archive keys."""
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    return {**drp_env(source=demo_db, storage=tmp_path / "store", retention_policies_file=policy), **key_env(tmp_path)}


def test_a_trailing_comment_is_not_stored_and_cannot_break_plan_or_apply(demo_db: str, tmp_path: Path) -> None:
    env = _env(demo_db, tmp_path)
    when = ["--as-of", AS_OF.isoformat()]
    with psycopg.connect(demo_db, autocommit=True) as conn:
        hold = place_hold(conn, "1", "case 12", table="public.audit_log",
                          predicate="entity = 'patient'   -- per the court order of May")
        assert hold.predicate == "entity = 'patient'"
        assert conn.execute("SELECT predicate FROM drp.legal_holds WHERE id = %s", (hold.id,)).fetchone()[0] == \
            "entity = 'patient'"
        # A hold stored by an earlier release, comment and all: applied by its deparsed form too.
        legacy = conn.execute(
            "INSERT INTO drp.legal_holds (tenant_id, table_name, predicate, reason, placed_by)"
            " VALUES ('2', 'public.clinical_notes', 'id % 2 = 0 -- even ones', 'case 13', 'old') RETURNING id"
        ).fetchone()[0]
        held_notes = conn.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 2 AND id %% 2 = 0"
                                  " AND created_at < %s::timestamptz - interval '16 months'", (AS_OF,)).fetchone()[0]
        held_audit = conn.execute("SELECT count(*) FROM audit_log WHERE clinic_id = 1 AND entity = 'patient'"
                                  " AND occurred_at < %s::timestamptz - interval '18 months'", (AS_OF,)).fetchone()[0]
    assert held_notes > 0 and held_audit > 0

    planned = drp("retention", "plan", "--json", *when, env=env)
    assert planned.returncode == 0 and "Traceback" not in planned.stderr, planned.stderr
    lines = {(p["table"], p["tenant_id"]): p for p in json.loads(planned.stdout)}
    assert lines["public.clinical_notes", "2"]["held"] == held_notes
    assert lines["public.clinical_notes", "2"]["holds"] == [legacy]
    assert lines["public.audit_log", "1"]["held"] == held_audit

    applied = drp("retention", "apply", "--json", *when, env=env)
    assert applied.returncode == 0 and "Traceback" not in applied.stderr, applied.stderr
    tables = {t["table"]: t for t in json.loads(applied.stdout)["tables"]}
    assert {(h["tenant_id"], h["rows"]) for h in tables["public.clinical_notes"]["held"]} == {("2", held_notes)}
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 2 AND id %% 2 = 0"
                            " AND created_at < %s::timestamptz - interval '16 months'", (AS_OF,)).fetchone()[0] \
            == held_notes
        assert conn.execute("SELECT count(*) FROM clinical_notes WHERE clinic_id = 2 AND id %% 2 = 1"
                            " AND created_at < %s::timestamptz - interval '16 months'", (AS_OF,)).fetchone()[0] == 0


def test_one_table_failing_does_not_stop_the_others(demo_db: str, tmp_path: Path) -> None:
    env = _env(demo_db, tmp_path)
    with psycopg.connect(demo_db, autocommit=True) as conn:  # a timestamp Parquet cannot hold: audit_log fails
        conn.execute("INSERT INTO audit_log (clinic_id, action, entity, occurred_at) VALUES (1, 'read', 'x', '-infinity')")
        expired_notes = conn.execute("SELECT count(*) FROM clinical_notes WHERE created_at < %s::timestamptz"
                                     " - interval '16 months'", (AS_OF,)).fetchone()[0]
    assert expired_notes > 0
    applied = drp("retention", "apply", "--json", "--as-of", AS_OF.isoformat(), env=env)
    assert applied.returncode != 0 and "Traceback" not in applied.stderr
    assert "retention of public.audit_log stopped" in applied.stderr and "fix:" in applied.stderr
    tables = {t["table"]: t for t in json.loads(applied.stdout)["tables"]}
    assert set(tables) == {"public.clinical_notes", "public.payments"}  # audit_log (first in the file) failed
    assert tables["public.clinical_notes"]["deleted_rows"] == expired_notes
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM clinical_notes WHERE created_at < %s::timestamptz"
                            " - interval '16 months'", (AS_OF,)).fetchone()[0] == 0


def test_a_hold_failing_at_run_time_stops_only_its_table_in_plan_and_apply(demo_db: str, tmp_path: Path) -> None:
    env = _env(demo_db, tmp_path)
    when = ["--as-of", AS_OF.isoformat()]
    with psycopg.connect(demo_db, autocommit=True) as conn:  # valid SQL, but it divides by zero on every row
        place_hold(conn, "1", "case 14", table="public.audit_log", predicate="entity_id / 0 = 1")
    planned = drp("retention", "plan", "--json", *when, env=env)
    assert planned.returncode == 1 and "Traceback" not in planned.stderr, planned.stderr
    assert "plan of public.audit_log failed: division by zero" in planned.stderr
    assert {p["table"] for p in json.loads(planned.stdout)} == {"public.clinical_notes", "public.payments"}
    applied = drp("retention", "apply", "--json", *when, env=env)
    assert applied.returncode == 1 and "retention of public.audit_log stopped: division by zero" in applied.stderr
    assert {t["table"] for t in json.loads(applied.stdout)["tables"]} == {"public.clinical_notes", "public.payments"}
