"""Logical backup and restore through the core API, on real clusters, proven by content.

A restore counts only if the restored database has the source's exact schema and, table by
table, the row counts and content checksums the manifest recorded in the dump's snapshot.
Storage is a real directory or moto's S3 server over HTTP; damage, crashes and full disks
are done for real (bytes flipped in storage, kill -9, a 1 MiB tmpfs), not mocked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.backup.catalog import backup_prefix, find_backup, list_backups
from dr_pipelines.core.backup.logical import BACKUP_LOCK_KEY, DATABASE_OBJECT, BackupError, run_logical_backup
from dr_pipelines.core.backup.service import backup_now
from dr_pipelines.core.crypto import DecryptionError, load_identities
from dr_pipelines.core.errors import (
    ConfigError,
    DatabaseError,
    ObjectNotFoundError,
    PostgresNotFoundError,
    StorageError,
)
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.restore.fetch import CorruptObjectError
from dr_pipelines.core.restore.logical import (
    RestoreError,
    RestoreOptions,
    list_contents,
    restore_backup,
)
from dr_pipelines.core.restore.throwaway import restore_to_new_cluster
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.storage import PutResult, Storage
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines.core.verify.checks import sequence_values
from dr_pipelines_tests.support.backup import (
    HOSTILE_COMMENT,
    HOSTILE_SEQUENCE,
    HOSTILE_SETTINGS,
    HOSTILE_TABLE,
    HOSTILE_UNICODE_TABLE,
    Keys,
    add_padding,
    advisory_locks,
    assert_restored_equals_manifest,
    assert_same_schema,
    attempt_records,
    backup_keys,
    create_hostile_schema,
    database_key,
    database_state,
    flip_middle_byte,
    foreign_identity,
    load_pagila,
    local_files,
    manifest_tables,
    own_checksums,
    partial_files,
    pg_dump_stalled_after_table_data,
    relation_count,
    remount_read_only,
    require_pagila,
    require_password_for,
    rewrite_object,
    stored_keys,
    template_database,
    tmpfs,
    truncate_half,
    user_tables,
)
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import BIN, drp, wait_for
from dr_pipelines_tests.support.s3 import free_port

S3_PREFIX = "tenants/prod"


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys.make(tmp_path)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh, empty storage target: a local directory, or a new S3 bucket under a prefix."""
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    server = request.getfixturevalue("s3_server")
    return S3Storage(server.create_bucket(), S3_PREFIX, **server.storage_kwargs())


@pytest.fixture(scope="module")
def pagila_template(pg_cluster: LocalCluster) -> Iterator[str]:
    require_pagila()
    name = template_database(pg_cluster, f"pagila_{uuid.uuid4().hex[:8]}", load_pagila)
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture(params=["demo", "pagila", "hostile"])
def source_db(request: pytest.FixtureRequest, pg_cluster: LocalCluster) -> Iterator[str]:
    """Our clinic schema, pagila (a schema we did not write), or hostile names and objects: a fresh copy per test."""
    if request.param == "demo":
        yield request.getfixturevalue("demo_db")
        return
    if request.param == "hostile":
        yield request.getfixturevalue("hostile_db")
        return
    template = request.getfixturevalue("pagila_template")
    name = f"pagila_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name, template=template)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture
def hostile_db(pg_cluster: LocalCluster) -> Iterator[str]:
    """A database of hostile names and everything besides table rows a dump carries (support/backup.py)."""
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name)
    create_hostile_schema(dsn)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def big_template(pg_cluster: LocalCluster) -> Iterator[str]:
    """A larger clinic database (~40 MB) plus 48 MiB of incompressible padding and a large object.

    The compressed dump is ~55 MB. While pg_dump is stalled on its large object, zstd holds
    back up to ~20 MB of the stream's tail (its worker jobs wait for more input), so the size
    ensures that well over S3's 8 MiB part size has reached storage by then. It also overflows
    a 1 MiB disk. Only ever used as a template.
    """
    from dr_pipelines.demo.generate import seed_demo

    name = f"big_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name)
    seed_demo(dsn, clinics=4, scale=6, seed=11)
    add_padding(dsn, mib=48)
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def big_db(pg_cluster: LocalCluster, big_template: str) -> Iterator[str]:
    """A copy of the big database that tests only read (back up); shared by the module."""
    name = f"bigcopy_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name, template=big_template)
    yield dsn
    pg_cluster.drop_database(name)


def new_cluster_dir(work_base: Path) -> Path:
    return work_base / f"restored-{uuid.uuid4().hex[:8]}"


# -- 1. round trips -----------------------------------------------------------------------------


def test_round_trip_restores_the_exact_schema_and_content(
    source_db: str, storage: Storage, keys: Keys, work_base: Path, tmp_path: Path, fresh_db: str
) -> None:
    manifest = run_logical_backup(source_db, storage, [keys.recipient])

    # The manifest's checksums are the source's own (same methods, chosen by the source).
    source = own_checksums(source_db)
    assert {t.name: (t.rows, t.checksum, t.method) for t in manifest.tables} == source
    assert sum(rows for rows, _, _ in source.values()) > 400
    # Sequence states, large objects, materialized views, the database's comment and settings.
    besides_rows = database_state(source_db)

    entry = find_backup(storage, "latest")
    assert entry.id == manifest.id
    data_dir = new_cluster_dir(work_base)
    cluster = None
    try:
        cluster, result = restore_to_new_cluster(storage, entry, keys.identities, data_dir, work_dir=tmp_path / "work")
        restored = cluster.dsn(manifest.source["database"])
        assert result.backup_id == manifest.id and result.toc_entries > 0
        assert database_state(restored) == besides_rows
        assert_same_schema(source_db, restored)
        assert_restored_equals_manifest(restored, manifest)
    finally:
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert not data_dir.exists()

    # And into an existing, empty database of a running server.
    result = restore_backup(storage, entry, keys.identities, fresh_db, work_dir=tmp_path / "work")
    assert result.warnings == [] and result.checked_tables == len(manifest.tables)
    assert database_state(fresh_db) == besides_rows
    assert_same_schema(source_db, fresh_db)
    assert_restored_equals_manifest(fresh_db, manifest)
    assert local_files(tmp_path / "work") == []  # no decrypted dump left behind


def test_manifest_records_sequence_states_large_objects_views_and_database_properties(
    hostile_db: str, keys: Keys, tmp_path: Path
) -> None:
    manifest = run_logical_backup(hostile_db, LocalStorage(tmp_path / "storage"), [keys.recipient])
    source = database_state(hostile_db)
    assert source["sequences"][HOSTILE_SEQUENCE] == (500, False)

    assert {HOSTILE_TABLE, HOSTILE_UNICODE_TABLE} <= set(manifest_tables(manifest))
    sequences = {s.name: (s.last_value, s.is_called, s.moved_to) for s in manifest.sequences or []}
    assert sequences[HOSTILE_SEQUENCE] == (500, False, None)
    assert sequences['public.Tricky "Name"_id_seq'] == (301, False, None)
    assert {name: (value, called) for name, (value, called, _) in sequences.items()} == source["sequences"]
    assert sorted(lo.bytes for lo in manifest.large_objects or []) == [0, 256 * 40, (4 << 20) + 123]
    views = {m.name: (m.populated, m.rows) for m in manifest.materialized_views or []}
    assert views == {"Schéma ünï.mv peuplée": (True, 100), 'public.mv "vide"': (False, None)}
    assert manifest.database_properties is not None
    assert manifest.database_properties.comment == HOSTILE_COMMENT == source["comment"]
    assert manifest.database_properties.settings == sorted(HOSTILE_SETTINGS) == source["settings"]


# -- 2. the manifest ----------------------------------------------------------------------------


def test_manifest_describes_exactly_what_is_stored_and_holds_no_secret(
    demo_db: str, storage: Storage, keys: Keys
) -> None:
    password = "Pw-never-in-a-manifest-7c41"
    dsn = f"{demo_db} password={password}"  # trust auth ignores it; it must still not leak
    manifest = run_logical_backup(dsn, storage, [keys.recipient])
    prefix = backup_prefix(manifest.id)
    raw = storage.get_bytes(f"{prefix}/manifest.json").decode()
    assert Manifest.from_json(raw, where="test").to_json() == manifest.to_json()

    # Exactly the listed objects plus the manifest, each with the recorded size and SHA-256.
    keys_stored = stored_keys(storage)
    assert attempt_records(storage) == {manifest.id: "succeeded"}
    expected = [f"{prefix}/{o.key}" for o in manifest.objects] + [f"{prefix}/manifest.json"]
    assert sorted(backup_keys(storage)) == sorted(expected)
    assert {o.role for o in manifest.objects} == {"database", "globals"}
    for obj in manifest.objects:
        key = f"{prefix}/{obj.key}"
        digest = hashlib.sha256()
        for chunk in storage.iter_chunks(key):
            digest.update(chunk)
        assert (storage.stat(key).size, digest.hexdigest()) == (obj.bytes, obj.sha256), key
    dump = manifest.object("database")
    assert dump.key == DATABASE_OBJECT and dump.format == "pg_dump-custom"
    assert dump.plain_bytes is not None and dump.plain_bytes > dump.bytes > 0

    # Public recipients only: no private key, no password, anywhere.
    assert manifest.encryption == {"algorithm": "age-x25519", "recipients": [keys.recipient]}
    secret_line = next(line for line in keys.identity_file.read_text().splitlines() if line.startswith("AGE-SECRET"))
    assert "AGE-SECRET-KEY" not in raw.upper() and secret_line not in raw
    assert password not in raw
    assert not any(password in k for k in keys_stored) and password not in storage.url
    assert password not in storage.get_bytes(f"attempts/{manifest.id}.json").decode()

    # Where it came from, and the instant it captured.
    with psycopg.connect(demo_db) as conn:
        sysid, version, database = conn.execute(
            "SELECT system_identifier::text, current_setting('server_version'), current_database()"
            " FROM pg_control_system()"
        ).fetchone()
    assert manifest.kind == "logical-backup"
    assert manifest.source["system_identifier"] == sysid
    assert manifest.source["server_version"] == version
    assert manifest.source["database"] == database
    assert manifest.source["server"].endswith(f"/{database}")
    assert manifest.tools["pg_dump"].startswith("pg_dump (PostgreSQL) ")
    snapshot_at = datetime.fromisoformat(manifest.extra["snapshot_at"])
    assert manifest.started_at <= snapshot_at <= manifest.finished_at
    assert manifest.extra["cleaned_up"] == []
    assert set(manifest_tables(manifest)) == set(user_tables(demo_db))


# -- 3. snapshot consistency --------------------------------------------------------------------


def test_writes_during_a_backup_do_not_leak_into_it(
    pg_cluster: LocalCluster, big_template: str, keys: Keys, tmp_path: Path, fresh_db: str
) -> None:
    name = f"snap_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name, template=big_template)
    try:
        with psycopg.connect(dsn) as conn:  # ~30 MB of dump is plenty here: progress comes every 8 MiB
            conn.execute("DELETE FROM zz_padding WHERE id >= 8")
        before = own_checksums(dsn)
        storage = LocalStorage(tmp_path / "storage")
        started, resume = threading.Event(), threading.Event()
        progress_calls: list[int] = []
        outcome: dict[str, object] = {}

        def progress(phase: str, done: int, _expected: int | None) -> None:
            if phase == "database":
                progress_calls.append(done)
            if not started.is_set():
                started.set()  # bytes are flowing; the rest of the dump waits for the writes below
                resume.wait(120)

        def run() -> None:
            try:
                outcome["manifest"] = run_logical_backup(dsn, storage, [keys.recipient], progress=progress)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="backup-under-test")
        thread.start()
        try:
            assert started.wait(120), f"the backup never reported progress: {outcome.get('error')!r}"
            with psycopg.connect(dsn) as conn:
                conn.execute(
                    "INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex)"
                    " SELECT id, 'during-backup-' || id, 'Late', 'Arrival', '1990-01-01', 'other' FROM clinics"
                )
                conn.execute("UPDATE patients SET family_name = family_name || ' (edited)' WHERE id <= 50")
                conn.execute("DELETE FROM zz_padding WHERE id < 4")  # dumped last: still ahead of pg_dump
                conn.execute("INSERT INTO zz_padding VALUES (1000, 'written during the backup')")
                conn.execute("CREATE TABLE leak_probe AS SELECT 1 AS x")
            # One backup per source at a time: a second one is refused while this one runs.
            with pytest.raises(BackupError, match=r"another backup of .* is running"):
                run_logical_backup(dsn, LocalStorage(tmp_path / "other"), [keys.recipient])
        finally:
            resume.set()
            thread.join(300)
        assert "error" not in outcome, outcome.get("error")
        manifest = outcome["manifest"]
        assert isinstance(manifest, Manifest)
        assert progress_calls[0] < manifest.object("database").plain_bytes  # the writes happened mid-dump

        # The backup is the database as it was when the backup began...
        assert {t.name: (t.rows, t.checksum, t.method) for t in manifest.tables} == before
        live = own_checksums(dsn)
        clinics = before["public.clinics"][0]
        assert live["public.patients"][0] == before["public.patients"][0] + clinics
        assert live["public.zz_padding"][0] == before["public.zz_padding"][0] - 3
        assert "public.leak_probe" in live and "public.leak_probe" not in manifest_tables(manifest)

        # ...and so is what a restore brings back.
        restore_backup(storage, find_backup(storage, manifest.id), keys.identities, fresh_db,
                       work_dir=tmp_path / "work")
        assert_restored_equals_manifest(fresh_db, manifest)
        restored_rows = {t: rows for t, (rows, _) in manifest_tables(manifest).items()}
        assert restored_rows["public.patients"] != live["public.patients"][0]
        assert "public.leak_probe" not in user_tables(fresh_db)

        # Sequences are not transactional: the patients' one moved while pg_dump ran, and the manifest
        # says between which states; the restore is within them, so verification passes.
        moved = {s.name: s for s in manifest.sequences or [] if s.moved_to}
        assert set(moved) == {"public.patients_id_seq"}, moved
        assert moved["public.patients_id_seq"].moved_to[0] == moved["public.patients_id_seq"].last_value + clinics
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            result = sequence_values(conn, manifest)
        assert result.passed and result.checked == len(manifest.sequences or []) > 5, result.detail
    finally:
        pg_cluster.drop_database(name)


# -- 4. damaged objects -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "deleted"])
def test_damaged_object_is_refused_before_the_target_is_touched(
    demo_db: str, storage: Storage, keys: Keys, fresh_db: str, tmp_path: Path, damage: str
) -> None:
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    key = database_key(manifest)
    change = {"flipped-byte": flip_middle_byte, "truncated": truncate_half, "deleted": lambda _: None}[damage]
    rewrite_object(storage, key, change)
    entry = find_backup(storage, manifest.id)  # the manifest is intact: the set looks complete
    work = tmp_path / "work"

    expected = ObjectNotFoundError if damage == "deleted" else CorruptObjectError
    with pytest.raises(expected) as caught:
        restore_backup(storage, entry, keys.identities, fresh_db, work_dir=work)
    assert key in str(caught.value)
    if damage != "deleted":
        assert "corrupted" in str(caught.value)
    assert relation_count(fresh_db) == 0
    assert local_files(work) == []  # no half-decrypted plaintext left behind


# -- 5. keys ------------------------------------------------------------------------------------


def test_wrong_identity_is_refused_and_writes_nothing(
    demo_db: str, keys: Keys, tmp_path: Path, fresh_db: str, work_base: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    entry = find_backup(storage, manifest.id)
    with pytest.raises(DecryptionError, match="identity") as caught:
        restore_backup(storage, entry, [foreign_identity()], fresh_db, work_dir=tmp_path / "work")
    assert not isinstance(caught.value, CorruptObjectError)  # the object is fine; the key is not
    assert relation_count(fresh_db) == 0

    # A fresh cluster made for a restore that cannot decrypt is removed again.
    data_dir = new_cluster_dir(work_base)
    try:
        with pytest.raises(DecryptionError):
            restore_to_new_cluster(storage, entry, [foreign_identity()], data_dir, work_dir=tmp_path / "work")
        assert not data_dir.exists()
    finally:
        if (data_dir / "PG_VERSION").exists():
            LocalCluster.attach(data_dir).remove()

    with pytest.raises(ConfigError, match="does not exist"):
        load_identities(tmp_path / "no-such-key.txt")


# -- 6. non-empty targets -----------------------------------------------------------------------


def test_non_empty_target_is_refused_unless_forced(demo_db: str, keys: Keys, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    entry = find_backup(storage, manifest.id)
    with psycopg.connect(demo_db) as conn:  # the database moves on after its backup
        conn.execute("UPDATE patients SET family_name = 'Overwritten' WHERE id % 3 = 0")
        conn.execute("DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log ORDER BY id LIMIT 25)")
    changed = own_checksums(demo_db)
    assert changed != {t.name: (t.rows, t.checksum, t.method) for t in manifest.tables}

    with pytest.raises(RestoreError, match="not empty"):
        restore_backup(storage, entry, keys.identities, demo_db, work_dir=tmp_path / "work")
    assert own_checksums(demo_db) == changed  # refused: nothing was touched

    # Forced, a real problem still fails the restore (here: an object of the target's own depends
    # on a table the backup replaces)...
    with psycopg.connect(demo_db) as conn:
        conn.execute("CREATE VIEW local_report AS SELECT count(*) AS n FROM patients")
    # (demo_db is the backup's own source: forcing alone is refused, see test_backup_cli.py)
    with pytest.raises(RestoreError, match="depend"):
        restore_backup(storage, entry, keys.identities, demo_db, work_dir=tmp_path / "work",
                       options=RestoreOptions(force=True, overwrite_source=True))
    with psycopg.connect(demo_db) as conn:
        conn.execute("DROP VIEW local_report")

    # ...and once it is gone, the forced restore overwrites the data with the backup's.
    restore_backup(storage, entry, keys.identities, demo_db, work_dir=tmp_path / "work",
                   options=RestoreOptions(force=True, overwrite_source=True))
    assert_restored_equals_manifest(demo_db, manifest)


# -- 7. selective restore -----------------------------------------------------------------------


def test_single_table_restore_and_table_of_contents(demo_db: str, keys: Keys, tmp_path: Path, fresh_db: str) -> None:
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    entry = find_backup(storage, manifest.id)

    toc = list_contents(storage, entry, keys.identities, tmp_path / "work")
    for table in manifest.tables:
        schema, name = table.name.split(".", 1)
        assert f" TABLE DATA {schema} {name} " in toc, f"{table.name} missing from the table of contents"
    assert " TABLE public patients " in toc

    restore_backup(storage, entry, keys.identities, fresh_db, work_dir=tmp_path / "work",
                   options=RestoreOptions(tables=("patients",), schemas=("public",)))
    assert user_tables(fresh_db) == ["public.patients"]
    want = manifest_tables(manifest)["public.patients"]
    methods = {t.name: t.method for t in manifest.tables}
    got = {c.name: (c.rows, c.checksum) for c in database_checksums(fresh_db, methods=methods)}
    assert got == {"public.patients": want}


# -- 8. interrupted backups ---------------------------------------------------------------------


class FailingDisk(LocalStorage):
    """Fault injection: the disk fails (EIO) once `fail_after` bytes of one object were written."""

    def __init__(self, root: Path, *, fail_on: str, fail_after: int) -> None:
        super().__init__(root)
        self.fail_on = fail_on
        self.fail_after = fail_after
        self.partial_bytes_at_failure: int | None = None

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        if not key.endswith("/" + self.fail_on):
            return super().put_stream(key, chunks)

        def failing() -> Iterator[bytes]:
            written = 0
            for chunk in chunks:
                if written + len(chunk) > self.fail_after:
                    self.partial_bytes_at_failure = sum(p.stat().st_size for p in partial_files(self.root))
                    raise OSError(errno.EIO, "injected disk failure")
                written += len(chunk)
                yield chunk

        return super().put_stream(key, failing())


@pytest.mark.parametrize(("fail_on", "fail_after"), [("database.dump.zst.age", 100 << 10), ("globals.sql.zst.age", 0)])
def test_storage_failure_mid_upload_leaves_nothing(
    demo_db: str, keys: Keys, tmp_path: Path, fail_on: str, fail_after: int
) -> None:
    root = tmp_path / "storage"
    disk = FailingDisk(root, fail_on=fail_on, fail_after=fail_after)
    with pytest.raises(StorageError, match="injected disk failure") as caught:
        run_logical_backup(demo_db, disk, [keys.recipient])
    assert fail_on in str(caught.value)
    if fail_on.startswith("database"):
        assert disk.partial_bytes_at_failure, "the failure should strike while a partial upload is on disk"
    # No manifest, no object (the database dump already stored is deleted again), no partial file:
    # only the record that this attempt failed.
    assert list_backups(disk) == []
    (attempt_id, status), = attempt_records(disk).items()
    assert status == "failed"
    assert local_files(root) == [f"attempts/{attempt_id}.json"]
    assert not (root / "backups").exists()
    # The lock was released and there is nothing to clean up for the next run.
    manifest = run_logical_backup(demo_db, LocalStorage(root), [keys.recipient])
    assert manifest.extra["cleaned_up"] == []


def _backup_env(dsn: str, keys: Keys, tmp_path: Path) -> dict[str, str]:
    return drp_env(source=dsn, keys=keys, work=tmp_path / "work")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kill_9_mid_upload_leaves_no_backup_and_the_next_run_cleans_up(
    backend: str, big_db: str, keys: Keys, tmp_path: Path, fresh_db: str, request: pytest.FixtureRequest
) -> None:
    env = _backup_env(big_db, keys, tmp_path)
    root = tmp_path / "storage"
    if backend == "local":
        env["DRP_STORAGE_URL"] = str(root)
        storage: Storage = LocalStorage(root)

        def in_flight() -> list:
            return partial_files(root)

        def in_flight_bytes() -> int:
            return sum(p.stat().st_size for p in partial_files(root))
    else:
        server = request.getfixturevalue("s3_server")
        bucket = server.create_bucket()
        client = server.client()
        env.update(drp_env(storage=f"s3://{bucket}/{S3_PREFIX}", s3=server))
        storage = S3Storage(bucket, S3_PREFIX, **server.storage_kwargs())

        def in_flight() -> list:
            return client.list_multipart_uploads(Bucket=bucket, Prefix=S3_PREFIX + "/").get("Uploads", [])

    # pg_dump streams every table, then waits on the large object: the upload is open, mid-stream.
    with pg_dump_stalled_after_table_data(big_db), psycopg.connect(big_db, autocommit=True) as probe:
        proc = subprocess.Popen([str(BIN / "drp"), "backup", "run", "--json"], env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"drp backup run ended early ({proc.returncode}): {proc.communicate()}"
                waiting = probe.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                        " AND relation = 'pg_catalog.pg_largeobject'::regclass").fetchone()[0]
                # Locally, wait for the pipeline to catch up with pg_dump (S3 shows nothing before 8 MiB).
                if waiting and in_flight() and (backend != "local" or in_flight_bytes() > 8 << 20):
                    break
                assert time.monotonic() < deadline, "the backup never stalled mid-upload"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # The crash left debris, but nothing that looks like a backup.
    assert in_flight(), "the killed run's partial upload should still be there"
    assert [e for e in list_backups(storage) if e.complete] == []
    listed = drp("backup", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    # Its session (and advisory lock) goes away with the process; then the next run succeeds.
    wait_for(lambda: advisory_locks(big_db) == 0, timeout=30, what="the killed run's lock to go", interval=0.1)
    result = drp("backup", "run", "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    new_id = json.loads(result.stdout)["id"]

    entries = list_backups(storage)
    assert [(e.id, e.complete) for e in entries] == [(new_id, True)]
    assert in_flight() == []
    assert {k.split("/")[1] for k in backup_keys(storage)} == {new_id}
    if backend == "local":
        assert {p.name for p in (root / "backups").iterdir()} == {"SOURCE.json", new_id}
    # The killed attempt stays on record as never finished; the new one succeeded.
    attempts = attempt_records(storage)
    assert attempts.pop(new_id) == "succeeded"
    assert list(attempts.values()) == ["running"]

    # And the new backup restores to exactly what it recorded.
    manifest = entries[0].manifest
    assert manifest is not None
    restore_backup(storage, entries[0], keys.identities, fresh_db, work_dir=tmp_path / "work")
    assert_restored_equals_manifest(fresh_db, manifest)


# -- 9. one backup at a time --------------------------------------------------------------------


def test_second_backup_is_refused_while_one_holds_the_lock(demo_db: str, keys: Keys, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    with psycopg.connect(demo_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (BACKUP_LOCK_KEY,))
        with pytest.raises(BackupError, match=r"another backup of 127\.0\.0\.1:\d+/\w+ is running"):
            run_logical_backup(demo_db, storage, [keys.recipient])
        assert backup_keys(storage) == []
        assert list(attempt_records(storage).values()) == ["failed"]
        holder.execute("SELECT pg_advisory_unlock(%s)", (BACKUP_LOCK_KEY,))
    assert run_logical_backup(demo_db, storage, [keys.recipient]).tables


# -- 10. bad input ------------------------------------------------------------------------------


def test_unreachable_source_is_named_and_writes_nothing(keys: Keys, tmp_path: Path) -> None:
    port = free_port()
    storage = LocalStorage(tmp_path / "storage")
    with pytest.raises(DatabaseError, match=f"127.0.0.1:{port}"):
        run_logical_backup(f"host=127.0.0.1 port={port} dbname=clinic user=postgres", storage, [keys.recipient])
    assert backup_keys(storage) == []  # nothing but the record of the failed attempt
    assert list(attempt_records(storage).values()) == ["failed"]


def test_wrong_password_is_a_clear_error_without_the_password(work_base: Path, keys: Keys, tmp_path: Path) -> None:
    right, wrong = "Right-horse-battery-91", "Wrong-staple-correct-17"
    cluster = LocalCluster.create(work_base / f"pwauth-{uuid.uuid4().hex[:8]}", settings=TEST_CLUSTER_SETTINGS)
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE pwuser LOGIN PASSWORD '{right}'")
            conn.execute("CREATE DATABASE pwdb OWNER pwuser")
        with psycopg.connect(cluster.dsn("pwdb", user="pwuser"), password=right) as conn:
            conn.execute("CREATE TABLE secrets_kept (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO secrets_kept SELECT g, 'note ' || g FROM generate_series(1, 100) g")
        require_password_for(cluster, "pwuser")
        base = cluster.dsn("pwdb", user="pwuser")
        storage = LocalStorage(tmp_path / "storage")

        with pytest.raises(DatabaseError, match="password authentication failed") as caught:
            run_logical_backup(f"{base} password={wrong}", storage, [keys.recipient])
        assert wrong not in str(caught.value) and right not in str(caught.value)
        assert backup_keys(storage) == []
        assert list(attempt_records(storage).values()) == ["failed"]
        assert not any(wrong in (tmp_path / "storage" / f).read_text() for f in local_files(tmp_path / "storage"))

        # With the right password the backup works (pg_dump gets it from the environment, not argv).
        manifest = run_logical_backup(f"{base} password={right}", storage, [keys.recipient])
        assert manifest_tables(manifest)["public.secrets_kept"][0] == 100
        for key in stored_keys(storage):
            if key.endswith(".json"):
                text = storage.get_bytes(key).decode()
                assert right not in text and wrong not in text, key
    finally:
        cluster.remove()


def test_full_disk_fails_cleanly(big_db: str, keys: Keys, work_base: Path) -> None:
    with tmpfs(work_base / f"full-{uuid.uuid4().hex[:8]}", size="1M") as mount:
        storage = LocalStorage(mount)
        with pytest.raises(StorageError, match="No space left on device") as caught:
            run_logical_backup(big_db, storage, [keys.recipient])
        assert "fix:" in str(caught.value)
        assert list_backups(storage) == []
        assert backup_keys(storage) == [] and partial_files(mount) == []  # no manifest, no object, no partial
        assert not (mount / "backups").exists()
        assert list(attempt_records(storage).values()) == ["failed"]  # written once the space was freed


def test_read_only_storage_is_a_clear_storage_error(demo_db: str, keys: Keys, work_base: Path) -> None:
    with tmpfs(work_base / f"ro-{uuid.uuid4().hex[:8]}", size="1M") as mount:
        remount_read_only(mount)
        settings = load_settings(env=drp_env(source=demo_db, storage=mount, keys=keys))
        with pytest.raises(StorageError, match="Read-only file system"):
            backup_now(settings)
        # Also without the up-front check: the first write fails the same way.
        with pytest.raises(StorageError, match="Read-only file system"):
            run_logical_backup(demo_db, LocalStorage(mount), [keys.recipient])
        assert list(mount.rglob("*")) == []


def test_no_recipients_is_a_config_error(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    with pytest.raises(ConfigError, match="no encryption recipients") as caught:
        run_logical_backup(demo_db, storage, [])
    assert "drp key generate" in str(caught.value)
    with pytest.raises(ConfigError, match="not a valid age public key"):
        run_logical_backup(demo_db, storage, ["age1notakey"])
    assert local_files(tmp_path / "storage") == []  # refused before anything, even an attempt record


def test_pg_dump_older_than_the_server_is_refused() -> None:
    with pytest.raises(PostgresNotFoundError) as caught:
        client_tool("pg_dump", 99)
    assert "client tools" in (caught.value.fix or "")
    assert "99" in caught.value.problem
