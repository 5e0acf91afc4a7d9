"""Verification restores, checks, drills and status through the core API, on real clusters.

A backup is proven restorable only by restoring it: into a throwaway cluster, then checked
against what its manifest recorded (tables, row counts, content checksums) and against what a
healthy database keeps (amcheck, foreign keys, sequences, application probes). Broken backups
are made for real: a changed row dumped and stored like a backup, an object deleted or
flipped in storage; checks are broken on a real restored database.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pyrage import x25519

from dr_pipelines.core import context
from dr_pipelines.core.backup.attempts import record_attempt
from dr_pipelines.core.backup.catalog import backup_prefix, list_backups, newest_restorable, restorable
from dr_pipelines.core.backup.logical import DATABASE_OBJECT, run_logical_backup
from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.core.restore.logical import restore_backup
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.status import current_status
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.verify.checks import CheckResult, Probe, load_probes, run_checks
from dr_pipelines.core.verify.drill import drill_reports, run_drill
from dr_pipelines.core.verify.report import DrillReport, VerificationReport
from dr_pipelines.core.verify.restore import verify_backup
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.verification import (
    CHANGE_ONE_PATIENT,
    CORE_CHECKS,
    DELETE_ONE_PRESCRIPTION,
    DEMO_PROBE_NAMES,
    DEMO_PROBES,
    Good,
    clone_storage,
    entry_for,
    good_backup,
    leftover_clusters,
    reap_clusters,
    tamper_backup,
    work_dir_under,
)

# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(pg_cluster: LocalCluster, demo_template: str, work_base: Path) -> Iterator[Good]:
    with good_backup(pg_cluster, demo_template, work_base, "vsrc") as backup:
        yield backup


@pytest.fixture
def work(good: Good) -> Iterator[Path]:
    """The verification's work dir; whatever the test's outcome, no cluster may be left in it."""
    path = work_dir_under(good.base)
    yield path
    assert reap_clusters(path) == []


@pytest.fixture(scope="module")
def restored_template(good: Good, pg_cluster: LocalCluster) -> Iterator[str]:
    """The good backup restored once into a database of the session cluster; its name."""
    with restored_into(pg_cluster, good, "vrestored") as (name, _):
        yield name


@contextlib.contextmanager
def restored_into(pg_cluster: LocalCluster, backup: Good, prefix: str) -> Iterator[tuple[str, str]]:
    """`backup` restored into a new database of the session cluster: (name, DSN); dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template="template0")
    try:
        storage = LocalStorage(backup.storage_dir)
        restore_backup(storage, entry_for(storage, backup.manifest.id), backup.key.identities, dsn,
                       work_dir=backup.base / "scratch")
        yield name, dsn
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def restored(restored_template: str, pg_cluster: LocalCluster) -> Iterator[str]:
    """A copy of the restored backup, for the test to break; its DSN."""
    name = f"restored_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=restored_template)
    try:
        yield dsn
    finally:
        pg_cluster.drop_database(name)


@dataclass(frozen=True)
class Drilled:
    storage_dir: Path
    report: DrillReport


@pytest.fixture(scope="module")
def drilled(good: Good) -> Drilled:
    """One DR drill on a copy of the good backup's storage (shared by the drill and status tests)."""
    storage = good.clone(good.base / "drilled-storage")
    work = work_dir_under(good.base)
    report = run_drill(storage, good.key.identities, work, rto_target_minutes=240, rpo_target_minutes=60,
                       probes=load_probes(DEMO_PROBES))
    assert reap_clusters(work) == []
    return Drilled(storage.root, report)


def by_name(checks: list[CheckResult]) -> dict[str, CheckResult]:
    return {c.name: c for c in checks}


def failed_names(checks: list[CheckResult]) -> set[str]:
    return {c.name for c in checks if not c.passed}


def stored_verification(storage: LocalStorage, backup_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads(storage.get_bytes(f"{backup_prefix(backup_id)}/verification.json"))


def status_of(storage: LocalStorage):  # type: ignore[no-untyped-def]
    return current_status(load_settings(env=drp_env(storage=storage.root)))


# -- a good backup ------------------------------------------------------------------------------


def test_good_backup_verifies_every_check_and_leaves_no_cluster(good: Good, work: Path, tmp_path: Path) -> None:
    storage = good.clone(tmp_path / "storage")
    entry = entry_for(storage, good.manifest.id)
    # A work dir as deep as deployments have: the throwaway cluster's data directory is then too deep for
    # a Unix socket path (107 bytes), and the cluster must still start (it is reached over TCP).
    deep = work / "srv-dr-pipelines-production-scratch"
    deep.mkdir(mode=0o755)
    assert len(f"{deep}/verify-{good.manifest.id}-abcdef/.s.PGSQL.65535") > 107
    during: list[list[str]] = []

    def progress(phase: str, done: int, total: int | None) -> None:
        during.append(sorted(p.name for p in (deep / "clusters").iterdir()))

    report = verify_backup(storage, entry, good.key.identities, deep, probes=load_probes(DEMO_PROBES), progress=progress)

    assert report.passed, report.summary()
    assert report.error is None
    expected = [*CORE_CHECKS, *(f"probe:{n}" for n in DEMO_PROBE_NAMES)]
    assert [c.name for c in report.checks] == expected
    checks = by_name(report.checks)
    assert all(c.passed and c.failures == [] for c in report.checks)
    # The demo has no large objects or materialized views (the hostile schema's test has both).
    assert all(c.checked > 0 for c in report.checks if c.name not in ("large_objects", "materialized_views"))
    assert checks["tables_present"].checked == len(good.manifest.tables) > 20
    assert checks["amcheck"].checked > 50 and checks["foreign_keys"].checked > 10 and checks["sequences"].checked > 5
    assert report.restore_seconds > 0 and report.finished_at > report.started_at
    assert report.summary() == f"backup {good.manifest.id} verified: {len(expected)} checks passed"

    as_json = json.loads(report.to_json())
    assert as_json["passed"] is True and as_json["backup_id"] == good.manifest.id and as_json["error"] is None
    assert [c["name"] for c in as_json["checks"]] == expected and all(c["passed"] for c in as_json["checks"])
    markdown = report.to_markdown()
    assert markdown.startswith(f"# Verification of backup {good.manifest.id}: PASSED")
    for name in expected:
        assert f"| {name} | pass |" in markdown

    recorded = stored_verification(storage, good.manifest.id)
    assert recorded["passed"] is True and [c["name"] for c in recorded["checks"]] == expected
    assert entry_for(storage, good.manifest.id).verification == recorded
    assert newest_restorable(list_backups(storage)).id == good.manifest.id  # type: ignore[union-attr]

    # The throwaway cluster lived in the work dir while restoring, and is gone now (checked again by `work`).
    assert any(any(n.startswith(f"verify-{good.manifest.id}-") for n in names) for names in during), during
    assert leftover_clusters(deep) == []
    assert [p for p in deep.rglob("*") if not p.is_dir()] == []


# -- broken backups -----------------------------------------------------------------------------


def test_tampered_content_fails_checksums_naming_only_that_table(
    good: Good, work: Path, tmp_path: Path, pg_cluster: LocalCluster, restored_template: str
) -> None:
    storage = good.clone(tmp_path / "storage")
    run_logical_backup(good.source_dsn, storage, [good.key.recipient])  # a second, newer good backup
    older, newest = list_backups(storage)
    tampered = tamper_backup(storage, newest, good.key, pg_cluster, tmp_path, CHANGE_ONE_PATIENT,
                             same_content_as=restored_template)
    entry = entry_for(storage, newest.id)
    assert entry.manifest == tampered and newest_restorable(list_backups(storage)).id == newest.id  # type: ignore[union-attr]

    report = verify_backup(storage, entry, good.key.identities, work, probes=load_probes(DEMO_PROBES))

    assert not report.passed and report.error is None  # it restored: the content is what is wrong
    assert [c.name for c in report.failed_checks] == ["checksums"]
    checksums = by_name(report.checks)["checksums"]
    assert checksums.detail == "content differs from the backup in: public.patients"
    original = {t.name: t.checksum for t in tampered.tables}
    (failure,) = checksums.failures
    assert failure["table"] == "public.patients" and failure["expected"] == original["public.patients"]
    assert failure["restored"] not in (None, failure["expected"])
    assert by_name(report.checks)["row_counts"].passed  # an UPDATE keeps the count
    assert "public.patients" in report.summary() and "FAILED verification" in report.summary()
    assert "| checksums | **FAIL** |" in report.to_markdown()

    recorded = stored_verification(storage, newest.id)
    assert recorded["passed"] is False
    assert [c["name"] for c in recorded["checks"] if not c["passed"]] == ["checksums"]
    entries = list_backups(storage)
    assert newest.id not in [e.id for e in restorable(entries)]
    assert newest_restorable(entries).id == older.id  # type: ignore[union-attr]
    assert f"last verification failed (backup {newest.id})" in status_of(storage).problems


def test_deleted_row_fails_row_counts_with_expected_and_restored(
    good: Good, work: Path, tmp_path: Path, pg_cluster: LocalCluster
) -> None:
    storage = good.clone(tmp_path / "storage")
    # This one restores the backup itself to build the tampered dump (the other test copies a restore).
    tampered = tamper_backup(storage, entry_for(storage, good.manifest.id), good.key, pg_cluster, tmp_path,
                             DELETE_ONE_PRESCRIPTION)
    expected = next(t.rows for t in tampered.tables if t.name == "public.prescriptions")

    report = verify_backup(storage, entry_for(storage, good.manifest.id), good.key.identities, work)

    assert not report.passed and report.error is None
    assert failed_names(report.checks) == {"row_counts", "checksums"}
    row_counts = by_name(report.checks)["row_counts"]
    assert row_counts.failures == [{"table": "public.prescriptions", "expected": expected, "restored": expected - 1}]
    assert row_counts.detail == f"public.prescriptions: {expected - 1} rows restored, manifest says {expected}"
    assert [f["table"] for f in by_name(report.checks)["checksums"].failures] == ["public.prescriptions"]
    assert stored_verification(storage, good.manifest.id)["passed"] is False
    assert newest_restorable(list_backups(storage)) is None


def _flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_damaged_object_is_named_and_recorded_failed(good: Good, work: Path, tmp_path: Path, damage: str) -> None:
    storage = good.clone(tmp_path / "storage")
    path = storage.root / "backups" / good.manifest.id / DATABASE_OBJECT
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(_flip_middle_byte(path.read_bytes()))

    report = verify_backup(storage, entry_for(storage, good.manifest.id), good.key.identities, work,
                           probes=load_probes(DEMO_PROBES))

    assert not report.passed and report.checks == []
    assert report.error is not None and f"backups/{good.manifest.id}/{DATABASE_OBJECT}" in report.error
    if damage == "missing":
        assert "not found" in report.error
    else:
        assert "corrupted" in report.error and "sha256" in report.error
    assert report.summary().startswith(f"backup {good.manifest.id} FAILED to restore: ")
    assert "**Restore failed:**" in report.to_markdown()
    recorded = stored_verification(storage, good.manifest.id)
    assert recorded["passed"] is False and recorded["error"] == report.error
    assert newest_restorable(list_backups(storage)) is None
    assert leftover_clusters(work) == []


def test_wrong_identity_raises_and_records_nothing(good: Good, work: Path, tmp_path: Path) -> None:
    storage = good.clone(tmp_path / "storage")
    with pytest.raises(DecryptionError) as caught:
        verify_backup(storage, entry_for(storage, good.manifest.id), [x25519.Identity.generate()], work)
    assert f"backups/{good.manifest.id}/{DATABASE_OBJECT}" in caught.value.problem
    assert "identity" in (caught.value.fix or "")
    # A key problem is not the backup's fault: nothing recorded, the backup is still restorable.
    assert not storage.exists(f"{backup_prefix(good.manifest.id)}/verification.json")
    assert entry_for(storage, good.manifest.id).verification is None
    assert newest_restorable(list_backups(storage)).id == good.manifest.id  # type: ignore[union-attr]
    assert leftover_clusters(work) == []


# -- checks that fail on their own, on a restored database broken afterwards ----------------------


def test_sequence_behind_its_column_fails_naming_it(good: Good, restored: str) -> None:
    with psycopg.connect(restored, autocommit=True) as conn:
        sequence = conn.execute("SELECT pg_get_serial_sequence('public.patients', 'id')").fetchone()[0]
        conn.execute("SELECT setval(%s, 1)", (sequence,))
        top = conn.execute("SELECT max(id) FROM public.patients").fetchone()[0]

    checks = run_checks(restored, good.manifest)

    assert failed_names(checks) == {"sequences", "sequence_values"}  # behind its column, and not as backed up
    result = by_name(checks)["sequences"]
    assert sequence == "public.patients_id_seq"
    assert result.failures == [{"sequence": sequence, "column": "public.patients.id", "last_value": 1,
                                "is_called": True, "max": top}]
    assert result.detail == f"{sequence} is at 1, public.patients.id reaches {top}"


@pytest.fixture(scope="module")
def hostile(pg_cluster: LocalCluster, demo_template: str, work_base: Path) -> Iterator[Good]:
    """A good backup of the demo plus the hostile schema (is_called-false sequences, large objects, views...)."""
    with good_backup(pg_cluster, demo_template, work_base, "vhostile", hostile=True) as backup:
        yield backup


@pytest.fixture
def hostile_restored(hostile: Good, pg_cluster: LocalCluster) -> Iterator[str]:
    """The hostile backup restored into a database of the session cluster, for the test to break; its DSN."""
    with restored_into(pg_cluster, hostile, "hrestored") as (_, dsn):
        yield dsn


def test_sequences_at_is_called_false_large_objects_and_views_verify_as_passed(
    hostile: Good, tmp_path: Path
) -> None:
    """setval(seq, n, false) leaves pg_sequences.last_value NULL: a correct backup must still pass, and stay `latest`."""
    storage = hostile.clone(tmp_path / "storage")
    work = work_dir_under(hostile.base)
    report = verify_backup(storage, entry_for(storage, hostile.manifest.id), hostile.key.identities, work)
    assert reap_clusters(work) == []

    assert report.passed, report.summary()
    checks = by_name(report.checks)
    assert [c.name for c in report.checks] == list(CORE_CHECKS)
    assert checks["sequence_values"].checked == len(hostile.manifest.sequences or []) > 5
    assert checks["large_objects"].checked == 3 and checks["materialized_views"].checked == 2
    assert checks["database_properties"].detail == "database comment and 3 settings restored"
    assert newest_restorable(list_backups(storage)).id == hostile.manifest.id  # type: ignore[union-attr]


def test_a_view_whose_query_is_not_immutable_is_checked_for_being_populated_only(
    pg_cluster: LocalCluster, work_base: Path, tmp_path: Path
) -> None:
    """A restore refreshes materialized views: one that reads now() can never hold the backup's rows."""
    name = f"vnow_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE visits (id int PRIMARY KEY, at timestamptz NOT NULL)")
            conn.execute("INSERT INTO visits SELECT g, '2026-01-01'::timestamptz + g * interval '1 day'"
                         " FROM generate_series(1, 50) g")
            conn.execute("CREATE MATERIALIZED VIEW refreshed AS SELECT now() AS at, count(*) AS n FROM visits")
            conn.execute("CREATE MATERIALIZED VIEW upcoming AS SELECT id FROM visits WHERE at > current_date")
            conn.execute("CREATE MATERIALIZED VIEW per_month AS SELECT date_trunc('month', at AT TIME ZONE 'UTC') AS m,"
                         " count(*) FROM visits GROUP BY 1")
        key = Keys.make(tmp_path / "keys")
        storage = LocalStorage(tmp_path / "storage")
        manifest = run_logical_backup(dsn, storage, [key.recipient])
    finally:
        pg_cluster.drop_database(name)
    views = {m.name: (m.populated, m.rows) for m in manifest.materialized_views or []}
    assert views == {"public.per_month": (True, 2), "public.refreshed": (True, None), "public.upcoming": (True, None)}

    work = work_dir_under(work_base)
    report = verify_backup(storage, entry_for(storage, manifest.id), key.identities, work)
    assert reap_clusters(work) == []
    assert report.passed, report.summary()
    assert by_name(report.checks)["materialized_views"].checked == 3


@pytest.mark.parametrize(
    ("change", "check", "named"),
    [
        ("SELECT setval('\"Schéma ünï\".\"séq \"\"odd\"\"\"', 500, true)", "sequence_values", 'Schéma ünï.séq "odd"'),
        ("SELECT lo_put((SELECT max(oid) FROM pg_largeobject_metadata), 5, 'x')", "large_objects", None),
        ("SELECT lo_unlink((SELECT min(oid) FROM pg_largeobject_metadata))", "large_objects", None),
        ('REFRESH MATERIALIZED VIEW "mv ""vide"""', "materialized_views", 'public.mv "vide"'),
        ('DELETE FROM "Tricky ""Name""" WHERE id = 3', "materialized_views", "Schéma ünï.mv peuplée"),
        ("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET work_mem', current_database()); END $$",
         "database_properties", "work_mem=7MB"),
        ("DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS NULL', current_database()); END $$",
         "database_properties", "Clinic data"),
    ],
)
def test_restored_state_besides_rows_that_differs_fails_naming_it(
    hostile: Good, hostile_restored: str, change: str, check: str, named: str | None
) -> None:
    assert {c.name for c in run_checks(hostile_restored, hostile.manifest) if not c.passed} == set()
    with psycopg.connect(hostile_restored, autocommit=True) as conn:
        conn.execute(change)
        if check == "materialized_views" and "DELETE" in change:
            conn.execute('REFRESH MATERIALIZED VIEW "Schéma ünï"."mv peuplée"')
    checks = run_checks(hostile_restored, hostile.manifest)

    assert check in failed_names(checks)
    assert failed_names(checks) <= {check, "row_counts", "checksums"}
    result = by_name(checks)[check]
    if check == "large_objects":
        assert len(result.failures) == 1 and str(result.failures[0]["oid"]) in result.detail
    else:
        assert named is not None and named in result.detail


def test_an_older_manifest_without_the_new_fields_verifies_and_says_not_recorded(hostile: Good, tmp_path: Path) -> None:
    storage = hostile.clone(tmp_path / "storage")
    key = f"{backup_prefix(hostile.manifest.id)}/manifest.json"
    data = json.loads(storage.get_bytes(key))
    for field in ("sequences", "large_objects", "materialized_views", "database_properties"):
        del data[field]
    storage.put_bytes(key, json.dumps(data).encode())
    work = work_dir_under(hostile.base)
    report = verify_backup(storage, entry_for(storage, hostile.manifest.id), hostile.key.identities, work)
    assert reap_clusters(work) == []

    assert report.passed, report.summary()
    checks = by_name(report.checks)
    for name in ("sequence_values", "large_objects", "materialized_views", "database_properties"):
        assert checks[name].passed and "not recorded" in checks[name].detail, checks[name]
    assert checks["sequences"].passed  # the is_called-false sequences are not "behind" either


def test_orphan_rows_fail_foreign_keys_naming_the_constraint_and_count(good: Good, restored: str) -> None:
    with psycopg.connect(restored, autocommit=True) as conn:
        constraint = conn.execute(
            "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = 'public.appointments'::regclass"
            " AND confrelid = 'public.patients'::regclass"
        ).fetchone()[0]
        conn.execute("SET session_replication_role = replica")  # as superuser: FK triggers do not fire
        orphaned = conn.execute(
            "UPDATE public.appointments SET patient_id = -id WHERE id IN (SELECT id FROM public.appointments ORDER BY id LIMIT 2)"
        ).rowcount
    assert orphaned == 2

    checks = run_checks(restored, good.manifest, load_probes(DEMO_PROBES))

    # The changed rows also differ from the manifest, and the application probe sees them too.
    assert failed_names(checks) == {"checksums", "foreign_keys", "probe:appointments_without_patient"}
    fks = by_name(checks)["foreign_keys"]
    assert fks.failures == [{"constraint": constraint, "table": "public.appointments", "orphans": 2}]
    assert fks.detail == f"public.appointments.{constraint}: 2 rows without a parent"
    assert by_name(checks)["probe:appointments_without_patient"].detail == "2 rows returned (expected none)"
    assert [f["table"] for f in by_name(checks)["checksums"].failures] == ["public.appointments"]


def test_probe_rows_fail_with_a_count_and_never_their_values(good: Good, restored: str) -> None:
    with psycopg.connect(restored) as conn:
        people = conn.execute("SELECT given_name || ' ' || family_name, date_of_birth::text FROM public.patients").fetchall()
        patients = conn.execute("SELECT count(*) FROM public.patients").fetchone()[0]
    probes = [
        Probe("every_patient", "SELECT 'PHI-MARKER-' || id, given_name, family_name, date_of_birth FROM public.patients"),
        Probe("two_clinics", "SELECT id, 'PHI-MARKER-clinic' FROM public.clinics ORDER BY id LIMIT 2"),
        Probe("tries_to_write", "DELETE FROM public.patients"),
        Probe("healthy", "SELECT 1 WHERE false"),
    ]

    checks = run_checks(restored, good.manifest, probes)

    assert failed_names(checks) == {"probe:every_patient", "probe:two_clinics", "probe:tries_to_write"}
    results = by_name(checks)
    assert results["probe:every_patient"].detail == "50+ rows returned (expected none)"
    assert results["probe:every_patient"].failures == [{"rows": "50+"}]
    assert results["probe:two_clinics"].detail == "2 rows returned (expected none)"
    assert "read-only transaction" in results["probe:tries_to_write"].detail  # probes run read-only
    assert results["probe:healthy"].passed and results["probe:healthy"].detail == "no rows (as expected)"
    with psycopg.connect(restored) as conn:
        assert conn.execute("SELECT count(*) FROM public.patients").fetchone()[0] == patients

    now = datetime.now(UTC)
    report = VerificationReport(good.manifest.id, now, now, 0.0, 0.0, 0.0, checks)
    for text in (report.to_json(), report.to_markdown(), report.summary()):
        assert "PHI-MARKER" not in text
        for name, born in people:
            assert name not in text and born not in text


def test_amcheck_passes_on_healthy_indexes_and_names_an_index_that_lies(good: Good, restored: str) -> None:
    healthy = run_checks(restored, good.manifest)
    assert failed_names(healthy) == set(), [c.detail for c in healthy if not c.passed]
    assert by_name(healthy)["amcheck"].checked > 50

    # An index built by a function declared IMMUTABLE that then changes (as a collation change
    # does to text indexes): its entries no longer match the heap.
    with psycopg.connect(restored, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.lying(integer) RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT $1'")
        conn.execute("CREATE TABLE public.amcheck_victim AS SELECT g AS i FROM generate_series(1, 500) g")
        conn.execute("CREATE INDEX amcheck_victim_idx ON public.amcheck_victim (public.lying(i))")
        conn.execute("CREATE OR REPLACE FUNCTION public.lying(integer) RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT -$1'")

    checks = run_checks(restored, good.manifest)
    assert failed_names(checks) == {"amcheck"}
    result = by_name(checks)["amcheck"]
    assert [f["index"] for f in result.failures] == ["public.amcheck_victim_idx"]
    assert result.detail.startswith("public.amcheck_victim_idx: ") and "lacks matching index tuple" in result.detail
    # The B-tree itself is well-formed: only the heap-vs-index pass (heapallindexed) sees the lie.
    assert by_name(run_checks(restored, good.manifest, heapallindexed=False))["amcheck"].passed
    # Corrupting an index page on disk (cluster stopped) is not done here: with data checksums on,
    # that is caught by the page checksum before amcheck's own logic.


# -- probes file --------------------------------------------------------------------------------


def test_load_probes_reads_the_demo_file_and_a_custom_one(tmp_path: Path) -> None:
    assert [p.name for p in load_probes(DEMO_PROBES)] == list(DEMO_PROBE_NAMES)
    custom = tmp_path / "probes.yaml"
    custom.write_text("- name: no_orphans\n  sql: SELECT 1 WHERE false\n")
    assert load_probes(custom) == [Probe("no_orphans", "SELECT 1 WHERE false")]
    settings = load_settings(env=drp_env(verification_probes_file=custom))
    assert context.probes(settings) == [Probe("no_orphans", "SELECT 1 WHERE false")]
    assert context.probes(load_settings(env={})) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: x\n  sql: [SELECT 1\n", "is not valid YAML"),
        ("name: x\nsql: SELECT 1\n", "must be a list of {name, sql}"),
        ("", "must be a list of {name, sql}"),
        ("- name: ok\n  sql: SELECT 1\n- name: no_sql\n", "probe #2 in "),
        ("- name: ok\n  sql: SELECT 1\n- name: extra\n  sql: SELECT 1\n  params: 3\n", "probe #2 in "),
        ("- name: blank\n  sql: '   '\n", "probe #1 in "),
        ("- SELECT 1\n", "probe #1 in "),
    ],
)
def test_load_probes_rejects_a_bad_file_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_probes(path)
    assert message in caught.value.problem and str(path) in caught.value.problem
    assert caught.value.fix


def test_load_probes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_probes(tmp_path / "absent.yaml")


# -- drills -------------------------------------------------------------------------------------


def test_drill_measures_rto_and_rpo_and_stores_its_report(good: Good, drilled: Drilled) -> None:
    report = drilled.report
    storage = LocalStorage(drilled.storage_dir)
    assert report.passed, report.to_markdown()
    assert report.error is None and report.notes == []
    assert report.backup_id == good.manifest.id
    assert report.verification is not None and report.verification.passed
    assert report.month == report.started_at.strftime("%Y-%m")
    assert report.restore_point == datetime.fromisoformat(good.manifest.extra["snapshot_at"])
    assert report.rto_seconds > 0
    assert abs(report.rto_seconds - (report.finished_at - report.started_at).total_seconds()) < 1e-6
    assert report.rto_seconds >= report.verification.restore_seconds
    assert report.rpo_seconds is not None
    assert abs(report.rpo_seconds - (report.started_at - report.restore_point).total_seconds()) < 1
    assert report.rto_met and report.rpo_met

    # Read back from storage: what an auditor (and `drp status`) sees.
    stored = json.loads(storage.get_bytes(f"drills/{report.month}/report.json"))
    assert stored["passed"] is True and stored["backup_id"] == good.manifest.id and stored["month"] == report.month
    rpo = (datetime.fromisoformat(stored["started_at"]) - datetime.fromisoformat(stored["restore_point"])).total_seconds()
    assert stored["rpo_seconds"] is not None and abs(stored["rpo_seconds"] - rpo) < 1
    rto = (datetime.fromisoformat(stored["finished_at"]) - datetime.fromisoformat(stored["started_at"])).total_seconds()
    assert stored["rto_seconds"] > 0 and abs(stored["rto_seconds"] - rto) < 1
    assert stored["rto_target_seconds"] == 240 * 60 and stored["rpo_target_seconds"] == 60 * 60
    assert stored["rto_met"] is True and stored["rpo_met"] is True
    assert stored["verification"]["passed"] is True
    assert [c["name"] for c in stored["verification"]["checks"]] == [*CORE_CHECKS,
                                                                     *(f"probe:{n}" for n in DEMO_PROBE_NAMES)]
    markdown = storage.get_bytes(f"drills/{report.month}/report.md").decode()
    assert markdown.startswith(f"# DR drill {report.month}: PASSED")
    assert "| RTO (start to restored and checked) |" in markdown and "| RPO (age of the restore point" in markdown
    assert drill_reports(storage) == [stored]
    # The drill's restore is a verification too: recorded for the backup.
    assert stored_verification(storage, good.manifest.id)["passed"] is True


def _passing_verification(backup_id: str) -> VerificationReport:
    now = datetime.now(UTC)
    return VerificationReport(backup_id, now, now, 0.1, 1.0, 0.2, [CheckResult("row_counts", True, "ok", checked=3)])


def test_drill_report_with_missed_targets_fails() -> None:
    now = datetime.now(UTC)
    common = dict(month="2026-11", started_at=now, finished_at=now + timedelta(minutes=5), backup_id="b",
                  restore_point=now - timedelta(hours=2), verification=_passing_verification("b"))
    missed_rpo = DrillReport(**common, rto_seconds=300, rpo_seconds=7200, rto_target_seconds=3600,  # type: ignore[arg-type]
                             rpo_target_seconds=3600)
    assert missed_rpo.rto_met and not missed_rpo.rpo_met and not missed_rpo.passed
    body = json.loads(missed_rpo.to_json())
    assert body["rpo_met"] is False and body["rto_met"] is True and body["passed"] is False
    markdown = missed_rpo.to_markdown()
    assert markdown.startswith("# DR drill 2026-11: FAILED")
    assert "| 120.0 min | 60 min | **MISSED** |" in markdown and "| 5.0 min | 60 min | met |" in markdown

    missed_rto = DrillReport(**common, rto_seconds=7200, rpo_seconds=60, rto_target_seconds=3600,  # type: ignore[arg-type]
                             rpo_target_seconds=3600)
    assert not missed_rto.rto_met and missed_rto.rpo_met and not missed_rto.passed
    met = DrillReport(**common, rto_seconds=300, rpo_seconds=60, rto_target_seconds=3600,  # type: ignore[arg-type]
                      rpo_target_seconds=3600)
    assert met.passed


def test_drill_on_empty_storage_fails_and_is_still_written(good: Good, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "empty")
    work = work_dir_under(good.base)
    report = run_drill(storage, good.key.identities, work, rto_target_minutes=240, rpo_target_minutes=60,
                       month="2026-01")
    assert not report.passed
    assert report.error == "no restorable backup in storage"
    assert report.backup_id is None and report.restore_point is None and report.rpo_seconds is None
    assert report.verification is None and not report.rpo_met
    stored = json.loads(storage.get_bytes("drills/2026-01/report.json"))
    assert stored["passed"] is False and stored["error"] == "no restorable backup in storage"
    assert stored["rpo_seconds"] is None and stored["backup_id"] is None
    assert "n/a (no backup)" in storage.get_bytes("drills/2026-01/report.md").decode()
    assert drill_reports(storage) == [stored]
    assert list(work.iterdir()) == [] and leftover_clusters(work) == []


# -- status -------------------------------------------------------------------------------------


def test_status_on_empty_storage_lists_every_problem(tmp_path: Path) -> None:
    st = status_of(LocalStorage(tmp_path / "empty"))
    assert not st.ok
    assert "no restorable backup" in st.problems
    assert "no backup has been verified" in st.problems
    assert "no DR drill has run" in st.problems
    assert st.success_rate_30d is None and st.newest_restorable is None and st.backups == 0
    assert st.last_verification is None and st.last_drill is None and not st.rpo_met
    assert json.loads(json.dumps(st.as_dict()))["ok"] is False


def test_status_after_backup_verification_and_drill_is_ok(good: Good, drilled: Drilled, tmp_path: Path) -> None:
    storage = clone_storage(drilled.storage_dir, tmp_path / "storage")
    st = status_of(storage)
    assert st.ok, st.problems
    assert st.success_rate_30d == 1.0 and st.attempts_30d == {"succeeded": 1, "failed": 0, "running": 0}
    assert st.newest_restorable == good.manifest.id and st.backups == 1 and st.rpo_met
    assert st.newest_age_minutes is not None and 0 <= st.newest_age_minutes < 60
    assert st.last_verification == {"backup_id": good.manifest.id, "passed": True,
                                    "finished_at": stored_verification(storage, good.manifest.id)["finished_at"]}
    assert st.last_drill is not None
    assert st.last_drill["month"] == drilled.report.month and st.last_drill["passed"] is True
    assert st.last_drill["rto_seconds"] == round(drilled.report.rto_seconds, 2)

    # A month and a bit later with nothing new: the drill is overdue and the RPO is missed.
    later = current_status(load_settings(env=drp_env(storage=storage.root)),
                           now=datetime.now(UTC) + timedelta(days=33))
    assert not later.ok and not later.rpo_met
    assert any("monthly DR drill is overdue" in p for p in later.problems)
    assert any(p.startswith("recovery point (backup ") for p in later.problems)

    # A backup of an unreachable source: its attempt is recorded failed, the success rate drops.
    with pytest.raises(DrpError):
        run_logical_backup(f"host=127.0.0.1 port={free_port()} dbname=x user=u connect_timeout=3", storage,
                           [good.key.recipient])
    st = status_of(storage)
    assert st.success_rate_30d == 0.5 and st.attempts_30d == {"succeeded": 1, "failed": 1, "running": 0}
    assert not st.ok
    assert any(p.startswith("backup success rate 50.0% over 30 days (last failure ") for p in st.problems)
    assert st.newest_restorable == good.manifest.id  # the failed attempt left no backup


def test_stale_running_attempt_counts_as_failed(good: Good, drilled: Drilled, tmp_path: Path) -> None:
    storage = clone_storage(drilled.storage_dir, tmp_path / "storage")
    now = datetime.now(UTC)
    record_attempt(storage, "20260101T000000Z-0001", now - timedelta(hours=1), "running")  # still running: not counted
    st = status_of(storage)
    assert st.ok and st.success_rate_30d == 1.0 and st.attempts_30d["running"] == 1

    record_attempt(storage, "20260101T000000Z-dead", now - timedelta(hours=13), "running")  # killed long ago
    st = status_of(storage)
    assert st.attempts_30d == {"succeeded": 1, "failed": 1, "running": 1}
    assert st.success_rate_30d == 0.5 and not st.ok
    assert "backup success rate 50.0% over 30 days (last failure 20260101T000000Z-dead)" in st.problems
