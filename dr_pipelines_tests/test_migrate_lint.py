"""Migration lint: every rule on a corpus (a statement it must flag, a safe variant it must not), suppressions,
parse errors, the demo's own migrations, and the lock modes checked against what PostgreSQL really takes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate import locks
from dr_pipelines.core.migrate.files import discover
from dr_pipelines.core.migrate.lint import RULES, LintConfig, lint_migration, lint_sql
from dr_pipelines.demo.schema import MIGRATIONS_DIR

OURS = LintConfig(use_squawk=False)
NEW_T = "CREATE TABLE scratch (a int, b int);\n"

# rule -> (SQL it must flag, safe variant it must not flag); a first line "-- drp:no-transaction" runs it outside one
NO_TX = "-- drp:no-transaction\n"
CORPUS: dict[str, tuple[str, str]] = {
    "create-index-not-concurrently": (
        "CREATE INDEX appointments_status_idx ON appointments (status);",
        NEW_T + "CREATE INDEX scratch_a_idx ON scratch (a);"),
    "concurrently-in-transaction": (
        "CREATE INDEX CONCURRENTLY appointments_status_idx ON appointments (status);",
        NO_TX + "CREATE INDEX CONCURRENTLY appointments_status_idx ON appointments (status);"),
    "add-column-volatile-default": (
        "ALTER TABLE appointments ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        "ALTER TABLE appointments ADD COLUMN noted_at timestamptz NOT NULL DEFAULT now();"),
    "alter-column-type-rewrite": (
        "ALTER TABLE appointments ALTER COLUMN patient_id TYPE integer;",
        "ALTER TABLE appointments ALTER COLUMN reason TYPE varchar(500);"),
    "alter-column-type-unverified": (
        "ALTER TABLE prescriptions ALTER COLUMN dose TYPE numeric(14,3);",
        NEW_T + "ALTER TABLE scratch ALTER COLUMN a TYPE numeric(14,3);"),
    "set-not-null-without-check": (
        "ALTER TABLE appointments ALTER COLUMN reason SET NOT NULL;",
        "ALTER TABLE appointments ADD CONSTRAINT reason_nn CHECK (reason IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE appointments VALIDATE CONSTRAINT reason_nn;\n"
        "ALTER TABLE appointments ALTER COLUMN reason SET NOT NULL;"),
    "add-constraint-without-not-valid": (
        "ALTER TABLE visits ADD CONSTRAINT visits_fk FOREIGN KEY (clinic_id) REFERENCES clinics (id);",
        "ALTER TABLE visits ADD CONSTRAINT visits_fk FOREIGN KEY (clinic_id) REFERENCES clinics (id) NOT VALID;\n"
        "ALTER TABLE visits VALIDATE CONSTRAINT visits_fk;"),
    "add-unique-without-index": (
        "ALTER TABLE patients ADD CONSTRAINT patients_name_uq UNIQUE (clinic_id, family_name, given_name);",
        "ALTER TABLE patients ADD CONSTRAINT patients_name_uq UNIQUE USING INDEX patients_name_uq_idx;"),
    "drop-column": (
        "ALTER TABLE appointments DROP COLUMN reason;",
        NEW_T + "ALTER TABLE scratch DROP COLUMN b;"),
    "rename-column": (
        "ALTER TABLE appointments RENAME COLUMN reason TO note;",
        NEW_T + "ALTER TABLE scratch RENAME COLUMN b TO c;"),
    "drop-table": (
        "DROP TABLE public.visits;",
        NEW_T + "DROP TABLE scratch;"),
    "rename-table": (
        "ALTER TABLE visits RENAME TO encounters;",
        NEW_T + "ALTER TABLE scratch RENAME TO scratch2;"),
    "truncate": (
        "TRUNCATE audit_log;",
        NEW_T + "TRUNCATE scratch;"),
    "vacuum-full": (
        "VACUUM (FULL) appointments;",
        NO_TX + "VACUUM (ANALYZE) appointments;"),
    "cluster": (
        "CLUSTER appointments USING appointments_starts_at_idx;",
        NEW_T + "CREATE INDEX scratch_a_idx ON scratch (a);\nCLUSTER scratch USING scratch_a_idx;"),
    "reindex-not-concurrently": (
        "REINDEX TABLE appointments;",
        NO_TX + "REINDEX TABLE CONCURRENTLY appointments;"),
    "no-lock-timeout": (
        "ALTER TABLE appointments ADD COLUMN note text;",
        "SET lock_timeout = '2s';\nALTER TABLE appointments ADD COLUMN note text;"),
    "do-block-not-analysed": (
        "DO $$ BEGIN PERFORM 1; END $$;",
        "SELECT 1;"),
    "suppression-without-reason": (
        "-- drp:allow truncate\nTRUNCATE audit_log;",
        "-- drp:allow truncate reason: staging data, reloaded nightly\nTRUNCATE audit_log;"),
    "suppression-unused": (
        "-- drp:allow truncate reason: copied from the statement above\nALTER TABLE visits DROP COLUMN ended_at;",
        "-- drp:allow drop-column, no-lock-timeout reason: unused since v12\nALTER TABLE visits DROP COLUMN ended_at;"),
}


def _rules(sql: str, config: LintConfig = OURS) -> set[str]:
    transactional = not sql.startswith(NO_TX)
    return {f.rule for f in lint_sql(sql, transactional=transactional, config=config).findings if not f.suppressed}


def test_the_corpus_covers_every_rule() -> None:
    assert set(CORPUS) == set(RULES)


@pytest.mark.parametrize("rule", sorted(CORPUS))
def test_rule_flags_the_bad_statement(rule: str) -> None:
    bad, _ = CORPUS[rule]
    assert rule in _rules(bad)


@pytest.mark.parametrize("rule", sorted(CORPUS))
def test_rule_passes_the_safe_variant(rule: str) -> None:
    _, safe = CORPUS[rule]
    assert rule not in _rules(safe)


def test_check_constraint_without_not_valid_is_flagged_too() -> None:
    assert "add-constraint-without-not-valid" in _rules(
        "ALTER TABLE appointments ADD CONSTRAINT reason_len CHECK (length(reason) < 500);")
    assert "add-constraint-without-not-valid" not in _rules(
        "ALTER TABLE appointments ADD CONSTRAINT reason_len CHECK (length(reason) < 500) NOT VALID;")


@pytest.mark.parametrize("column", ["n bigserial", "n bigint GENERATED ALWAYS AS IDENTITY",
                                    "n numeric GENERATED ALWAYS AS (dose * 2) STORED"])
def test_columns_computed_per_row_rewrite(column: str) -> None:
    report = lint_sql(f"ALTER TABLE prescriptions ADD COLUMN {column};", config=OURS)
    assert "add-column-volatile-default" in {f.rule for f in report.blocking} and report.statements[0].rewrites


@pytest.mark.parametrize("expr", ["random()", "clock_timestamp()", "nextval('s')"])
def test_volatile_defaults(expr: str) -> None:
    report = lint_sql(f"ALTER TABLE visits ADD COLUMN x text DEFAULT {expr}::text;", config=OURS)
    (finding,) = [f for f in report.findings if f.rule == "add-column-volatile-default"]
    assert finding.severity == "error" and report.statements[0].rewrites


def test_unknown_function_default_is_a_warning_not_an_error() -> None:
    report = lint_sql("ALTER TABLE visits ADD COLUMN x text DEFAULT my_func();", config=OURS)
    (finding,) = [f for f in report.findings if f.rule == "add-column-volatile-default"]
    assert finding.severity == "warning" and "my_func" in finding.message


def test_statement_info_classifies() -> None:
    report = lint_sql(
        "-- header\nSET lock_timeout = '2s';\n\nALTER TABLE public.appointments\n  ALTER COLUMN patient_id TYPE int;\n"
        "ALTER TABLE visits ADD CONSTRAINT v_fk FOREIGN KEY (clinic_id) REFERENCES clinics (id) NOT VALID;\n"
        "UPDATE visits SET ended_at = started_at WHERE ended_at IS NULL;\n", config=OURS)
    set_, alter, fk, update = report.statements
    assert (set_.kind, set_.lock, set_.line) == ("SET", None, 2)
    assert alter.index == 1 and alter.line == 4 and alter.kind == "ALTER TABLE"
    assert alter.lock == "ACCESS EXCLUSIVE" and alter.tables == ("public.appointments",) and alter.rewrites
    assert alter.sql.startswith("ALTER TABLE public.appointments") and alter.sql.endswith("TYPE int")
    assert fk.lock == "SHARE ROW EXCLUSIVE" and fk.tables == ("visits", "clinics") and not fk.scans
    assert update.kind == "UPDATE" and update.lock == "ROW EXCLUSIVE" and not update.destructive
    (attach,) = lint_sql("ALTER TABLE audit_log ATTACH PARTITION old_audit DEFAULT;", config=OURS).statements
    assert attach.lock == "ACCESS EXCLUSIVE" and attach.lock_on("audit_log") == "SHARE UPDATE EXCLUSIVE"
    assert attach.lock_on("old_audit") == "ACCESS EXCLUSIVE" and attach.work == ("scan",)
    assert attach.tables == ("old_audit", "audit_log")  # the scanned one first: the impact estimate times it
    assert report.findings == [f for f in report.findings if f.rule != "no-lock-timeout"]


def test_suppression_with_reason_suppresses_and_without_reason_is_an_error() -> None:
    report = lint_sql("-- drp:allow drop-column, no-lock-timeout reason: unused since release 12\n"
                      "ALTER TABLE appointments DROP COLUMN reason;\n", config=OURS)
    assert {f.rule: f.suppressed for f in report.findings} == {
        "drop-column": "unused since release 12", "no-lock-timeout": "unused since release 12"}
    assert report.blocking == []
    report = lint_sql("SELECT 1;\n-- drp:allow drop-column\nALTER TABLE appointments DROP COLUMN reason;\n",
                      config=OURS)
    blocking = {f.rule: f.line for f in report.blocking}
    assert blocking == {"suppression-without-reason": 2, "drop-column": 3, "no-lock-timeout": 3}


def test_suppression_must_be_directly_above() -> None:
    report = lint_sql("-- drp:allow truncate reason: scratch\n\nTRUNCATE audit_log;\n", config=OURS)
    assert [f.rule for f in report.blocking if f.rule == "truncate"] == ["truncate"]


def test_runner_lock_timeout_makes_the_rule_info_and_disabled_rules_vanish() -> None:
    sql = "ALTER TABLE appointments DROP COLUMN reason;"
    report = lint_sql(sql, config=LintConfig(runner_sets_lock_timeout=True, use_squawk=False))
    assert {f.rule: f.severity for f in report.findings} == {"drop-column": "error", "no-lock-timeout": "info"}
    assert _rules(sql, config=LintConfig(disabled_rules=("drop-column",), use_squawk=False)) == {"no-lock-timeout"}


def test_lock_timeout_rule_is_a_warning_for_brief_write_locks() -> None:
    (finding,) = lint_sql("CREATE TABLE t (c bigint REFERENCES clinics (id));", config=OURS).findings
    assert (finding.rule, finding.severity) == ("no-lock-timeout", "warning")
    assert "SHARE ROW EXCLUSIVE on clinics" in finding.message


def test_lock_timeout_rule_escalates_once_when_a_later_lock_is_worse() -> None:
    report = lint_sql("CREATE TABLE t (c bigint REFERENCES clinics (id));\nALTER TABLE visits ADD COLUMN n text;\n"
                      "ALTER TABLE patients ADD COLUMN n text;\n", config=OURS)
    assert [(f.rule, f.severity, f.line) for f in report.findings] == [
        ("no-lock-timeout", "warning", 1), ("no-lock-timeout", "error", 2)]
    assert _rules("SET lock_timeout = 0;\nALTER TABLE visits ADD COLUMN n text;") == {"no-lock-timeout"}


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(MigrationError) as info:
        lint_sql("SELECT 1;\n\nALTER TABLE appointments ADD COLUMN;\n", path="0007_bad.sql")
    assert "0007_bad.sql, line 3" in str(info.value) and "syntax error" in str(info.value)
    assert info.value.fix


def test_the_demo_migrations_have_no_blocking_findings() -> None:
    for migration in discover(MIGRATIONS_DIR):
        report = lint_migration(migration)
        assert report.blocking == [], (migration.path.name, report.blocking)
        assert report.statements and report.path == str(migration.path)
        assert report.as_dict()["blocking"] == 0


def test_lint_migration_reads_the_no_transaction_mark(tmp_path: Path) -> None:
    (tmp_path / "0007_status_index.sql").write_text(
        NO_TX + "SET lock_timeout = '2s';\n"
        "CREATE INDEX CONCURRENTLY appointments_status_idx ON appointments (status);\n")
    (migration,) = discover(tmp_path)
    report = lint_migration(migration, OURS)
    assert not report.transactional and report.findings == []
    assert report.statements[1].lock == "SHARE UPDATE EXCLUSIVE" and report.statements[1].work == ("index-build",)


def _squawk() -> str | None:
    return shutil.which("squawk") or shutil.which("squawk", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_squawk() is None, reason="squawk-cli not installed")
def test_squawk_findings_are_merged_without_duplicates() -> None:
    report = lint_sql("CREATE INDEX appointments_status_idx ON appointments (status);\n"
                      "ALTER TABLE visits ADD COLUMN n int;\n", config=LintConfig())
    ours = [f.rule for f in report.findings if f.source == "drp"]
    theirs = [f for f in report.findings if f.source == "squawk"]
    assert "create-index-not-concurrently" in ours
    assert "prefer-bigint-over-int" in [f.rule for f in theirs]
    assert not {f.rule for f in theirs} & {"require-concurrent-index-creation", "require-lock-timeout"}
    assert all(f.severity != "error" and f.statement_index == 1 for f in theirs)


@pytest.mark.skipif(_squawk() is None, reason="squawk-cli not installed")
def test_suppressions_work_for_squawk_rules_and_typos_are_reported() -> None:
    sql = "SET lock_timeout = '2s';\n-- drp:allow prefer-bigint-over-int, prefer-bigint-over-in reason: a small counter\n" \
          "ALTER TABLE visits ADD COLUMN n int;\n"
    report = lint_sql(sql, config=LintConfig())
    assert {(f.rule, f.suppressed) for f in report.findings} == {
        ("prefer-bigint-over-int", "a small counter"), ("suppression-unused", None)}
    (unused,) = [f for f in report.findings if f.rule == "suppression-unused"]
    assert "prefer-bigint-over-in " in unused.message and unused.line == 3


# What PostgreSQL really takes, read from pg_locks inside a rolled-back transaction.
LOCK_CASES = [
    ("appointments", "ALTER TABLE appointments ADD COLUMN note text"),
    ("appointments", "ALTER TABLE appointments ALTER COLUMN created_at TYPE timestamptz(0)"),
    ("appointments", "ALTER TABLE appointments ALTER COLUMN reason SET STATISTICS 500"),
    ("appointments", "ALTER TABLE appointments ADD CONSTRAINT r CHECK (reason <> '') NOT VALID"),
    ("appointments", "ALTER TABLE appointments VALIDATE CONSTRAINT appointments_duration_check"),
    ("visits", "ALTER TABLE visits ADD CONSTRAINT v FOREIGN KEY (clinic_id) REFERENCES clinics (id) NOT VALID"),
    ("clinics", "ALTER TABLE visits ADD CONSTRAINT v FOREIGN KEY (clinic_id) REFERENCES clinics (id) NOT VALID"),
    ("appointments", "ALTER TABLE appointments DISABLE TRIGGER ALL"),
    ("appointments", "CREATE INDEX appointments_status_idx ON appointments (status)"),
    ("appointments", "ALTER TABLE appointments RENAME COLUMN reason TO note"),
    ("appointments", "ALTER TABLE appointments CLUSTER ON appointments_starts_at_idx"),
    ("payments", "TRUNCATE payments"),
    ("payments", "DROP TABLE payments CASCADE"),
    ("appointments", "UPDATE appointments SET reason = reason WHERE id = 1"),
    ("appointments", "LOCK TABLE appointments IN SHARE MODE"),
    ("appointments", "CLUSTER appointments USING appointments_starts_at_idx"),
    ("clinics", "ALTER TABLE visits ADD COLUMN clinic2 bigint REFERENCES clinics (id)"),
    ("audit_log", "ALTER TABLE audit_log DETACH PARTITION audit_log_y2024m01"),
    ("audit_log_y2024m01", "ALTER TABLE audit_log DETACH PARTITION audit_log_y2024m01"),
    ("audit_log", "CREATE TABLE audit_log_y2026m01 PARTITION OF audit_log "
                  "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')"),
    ("appointments", "REINDEX TABLE appointments"),
]


def test_lock_modes_match_what_postgres_takes(demo_db: str) -> None:
    with psycopg.connect(demo_db) as conn:
        for table, sql in LOCK_CASES:
            expected = lint_sql(sql, config=OURS).statements[0]
            oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
            conn.execute(sql)
            held = [locks.from_pg_locks(m) for (m,) in conn.execute(
                "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = %s", (oid,)).fetchall()]
            conn.rollback()
            assert table in expected.tables, (sql, expected.tables)
            assert locks.strongest(held) == expected.lock_on(table), (sql, held, expected.table_locks)
