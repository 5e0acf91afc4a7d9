"""Impact estimates against a real seeded demo database: lock, live row estimate, size, seconds, severity."""

from __future__ import annotations

import psycopg
import pytest

from dr_pipelines.core.migrate.impact import Calibration, ImpactThresholds, estimate
from dr_pipelines.core.migrate.lint import LintConfig, lint_sql

OURS = LintConfig(use_squawk=False)
REWRITE = "ALTER TABLE public.appointments ALTER COLUMN created_at TYPE timestamptz(0);"


def _estimate(dsn: str, sql: str, **kwargs):  # type: ignore[no-untyped-def]
    with psycopg.connect(dsn) as conn:
        return estimate(conn, lint_sql(sql, config=OURS), **kwargs)


def test_rewrite_reports_the_lock_the_live_rows_and_the_size(demo_db: str) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ANALYZE public.appointments")
        count = conn.execute("SELECT count(*) FROM public.appointments").fetchone()[0]
        total = conn.execute("SELECT pg_total_relation_size('public.appointments')").fetchone()[0]
        (impact,) = estimate(conn, lint_sql(REWRITE, config=OURS))
    assert count > 100
    assert (impact.statement_index, impact.table, impact.lock) == (0, "public.appointments", "ACCESS EXCLUSIVE")
    assert impact.rows == count  # ANALYZE on a small table reads every row
    assert impact.bytes == total > 0
    assert impact.seconds > 0 and impact.blocks == "reads and writes"
    assert impact.text.startswith(f"ACCESS EXCLUSIVE on public.appointments ({count} rows, ")
    assert "full rewrite: reads and writes blocked for " in impact.text
    assert impact.as_dict()["seconds"] == impact.seconds


@pytest.mark.parametrize(("warn", "error", "severity"),
                         [(1e6, 2e6, "info"), (0.0, 1e6, "warning"), (0.0, 0.0, "error")])
def test_severity_follows_the_thresholds(demo_db: str, warn: float, error: float, severity: str) -> None:
    (impact,) = _estimate(demo_db, REWRITE, thresholds=ImpactThresholds(warn_seconds=warn, error_seconds=error))
    assert impact.severity == severity


def test_seconds_scale_with_the_calibration(demo_db: str) -> None:
    (slow,) = _estimate(demo_db, REWRITE, calibration=Calibration(rewrite_mb_s=1.0))
    (fast,) = _estimate(demo_db, REWRITE, calibration=Calibration(rewrite_mb_s=10.0))
    assert slow.seconds == pytest.approx(10 * fast.seconds, rel=0.01)


def test_brief_locks_estimate_about_zero_but_say_they_wait(demo_db: str) -> None:
    impacts = _estimate(demo_db, "ALTER TABLE appointments ADD COLUMN note text;\n"
                                 "ALTER TABLE visits ADD CONSTRAINT v_fk FOREIGN KEY (clinic_id) "
                                 "REFERENCES clinics (id) NOT VALID;\nALTER TABLE visits DROP COLUMN ended_at;")
    assert [(i.table, i.lock, i.seconds) for i in impacts] == [
        ("appointments", "ACCESS EXCLUSIVE", 0.0), ("visits", "SHARE ROW EXCLUSIVE", 0.0),
        ("clinics", "SHARE ROW EXCLUSIVE", 0.0), ("visits", "ACCESS EXCLUSIVE", 0.0)]
    assert all("waits behind running queries" in i.text and i.severity == "info" for i in impacts)
    assert impacts[1].blocks == "writes"


def test_work_under_a_lock_in_a_transaction_is_held_until_commit(demo_db: str) -> None:
    add, index = _estimate(demo_db, "ALTER TABLE appointments ADD COLUMN note text;\n"
                                    "CREATE INDEX appointments_reason_idx ON appointments (reason);")
    assert index.lock == "SHARE" and index.blocks == "writes" and index.seconds > 0
    assert add.seconds == pytest.approx(index.seconds) and "held until the migration commits" in add.text


def test_a_widening_is_checked_against_the_live_type(demo_db: str) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE prescriptions ALTER COLUMN frequency TYPE varchar(40)")
    (widen,) = _estimate(demo_db, "ALTER TABLE prescriptions ALTER COLUMN frequency TYPE varchar(80);")
    (narrow,) = _estimate(demo_db, "ALTER TABLE prescriptions ALTER COLUMN frequency TYPE varchar(20);")
    (numeric,) = _estimate(demo_db, "ALTER TABLE prescriptions ALTER COLUMN dose TYPE numeric(12,3);")
    (rescale,) = _estimate(demo_db, "ALTER TABLE prescriptions ALTER COLUMN dose TYPE numeric(12,4);")
    assert widen.seconds == 0 and "widens without a rewrite" in widen.text
    assert numeric.seconds == 0
    assert narrow.seconds > 0 and "full rewrite" in narrow.text and "not a widening" in narrow.text
    assert rescale.seconds > 0


def test_a_partitioned_table_counts_its_partitions_and_a_missing_table_is_named(demo_db: str) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ANALYZE audit_log")
        count = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    (audit,) = _estimate(demo_db, "ALTER TABLE audit_log ALTER COLUMN entity_id TYPE numeric;")
    assert audit.rows == count > 0 and audit.bytes > 0 and audit.seconds > 0
    (missing,) = _estimate(demo_db, "CREATE INDEX ON not_there_yet (a);")
    assert missing.rows == 0 and missing.seconds == 0 and "not in the database yet" in missing.text


def test_set_not_null_scan_is_spared_by_a_validated_check(demo_db: str) -> None:
    sql = "ALTER TABLE appointments ALTER COLUMN status SET NOT NULL;"
    (scan,) = _estimate(demo_db, sql)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE appointments ADD CONSTRAINT status_nn CHECK (status IS NOT NULL)")
    (spared,) = _estimate(demo_db, sql)
    assert scan.seconds > 0 and "full scan" in scan.text
    assert spared.seconds == 0 and "spares the scan" in spared.text
