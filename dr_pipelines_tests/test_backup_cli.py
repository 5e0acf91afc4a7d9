"""`drp key|backup|restore` as the on-call engineer runs them: real subprocesses, real clusters.

Every command is the installed entry point in a subprocess; results are checked in storage
and in the databases, not only in the printed output. Errors must be one clean message
(`error: ... fix: ...`), no traceback, non-zero exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core.backup.catalog import VERIFICATION_NAME, backup_prefix, list_backups
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.crypto import load_identities
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines.core.verify.report import VerificationReport
from dr_pipelines_tests.support.backup import (
    Keys,
    add_padding,
    assert_restored_equals_manifest,
    database_key,
    flip_middle_byte,
    leave_partial_upload,
    manifest_tables,
    own_checksums,
    partial_uploads,
    relation_count,
    require_password_for,
    rewrite_object,
)
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.faultproxy import fault_proxy
from dr_pipelines_tests.support.procs import BIN
from dr_pipelines_tests.support.s3 import MotoServer
from dr_pipelines_tests.support.verification import CHANGE_ONE_PATIENT, entry_for, tamper_backup


def run(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`drp ARGS` with exactly the DRP_* settings given (none inherited from the caller's shell)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRP_")}
    return subprocess.run([str(BIN / "drp"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "COLUMNS": "250", **env})


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "error:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in: {result.stderr}"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys.make(tmp_path)


@pytest.fixture
def env(demo_db: str, keys: Keys, tmp_path: Path) -> dict[str, str]:
    return drp_env(source=demo_db, storage=tmp_path / "storage", keys=keys, work=tmp_path / "work")


@pytest.fixture
def new_cluster_dir(work_base: Path) -> Iterator[Path]:
    """Where `drp restore --new-cluster` may create a cluster; stopped and removed whatever happens."""
    path = work_base / f"cli-restore-{uuid.uuid4().hex[:8]}"
    yield path
    if (path / "PG_VERSION").exists():
        LocalCluster.attach(path).remove()
    shutil.rmtree(path, ignore_errors=True)


def listing(root: Path) -> dict[str, int]:
    """Every stored object and its size (what a dry run must leave exactly as it was)."""
    return {o.key: o.size for o in LocalStorage(root).list("")}


# -- keys ---------------------------------------------------------------------------------------


def test_key_generate_writes_a_private_identity_and_never_overwrites(tmp_path: Path) -> None:
    key_file = tmp_path / "backup-key.txt"
    result = ok(run("key", "generate", "--out", str(key_file), env={}))
    public = result.stdout.strip()
    assert re.fullmatch(r"age1[02-9ac-hj-np-z]{58}", public), result.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    content = key_file.read_text()
    assert "AGE-SECRET-KEY-1" in content and public in content
    assert [str(i.to_public()) for i in load_identities(key_file)] == [public]
    assert "AGE-SECRET-KEY" not in result.stdout + result.stderr  # the private key is never printed

    again = run("key", "generate", "--out", str(key_file), env={})
    assert_clean_error(again, "already exists")
    assert key_file.read_text() == content


# -- backup run, list, show, pin, prune ---------------------------------------------------------


def test_backup_run_list_show_pin_and_prune(env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "storage"
    ids = []
    for _ in range(3):
        summary = json.loads(ok(run("backup", "run", "--json", "--no-prune", env=env)).stdout)
        assert summary["tables"] > 30 and summary["rows"] > 1000 and summary["stored_bytes"] > 0
        assert summary["uri"] == f"{LocalStorage(root).url}/backups/{summary['id']}"
        ids.append(summary["id"])
    assert ids == sorted(ids)
    first, middle, last = ids

    rows = json.loads(ok(run("backup", "list", "--json", env=env)).stdout)
    assert [r["id"] for r in rows] == ids
    for r in rows:
        assert {"id", "status", "bytes", "restore_point", "pinned", "newest_restorable"} <= set(r)
        assert r["status"] == "complete" and r["bytes"] > 0 and r["pinned"] is False and r["restore_point"]
    assert [r["newest_restorable"] for r in rows] == [False, False, True]
    assert [r["bytes"] for r in rows] == [e.stored_bytes for e in list_backups(LocalStorage(root))]

    table = ok(run("backup", "list", env=env)).stdout
    assert all(i in table for i in ids) and "newest restorable" in table

    shown = json.loads(ok(run("backup", "show", "latest", "--json", env=env)).stdout)
    stored = json.loads((root / backup_prefix(last) / "manifest.json").read_text())
    assert shown == stored and shown["id"] == last
    manifest = Manifest.from_json(json.dumps(shown), where="cli")
    text = ok(run("backup", "show", first, env=env)).stdout
    assert "database.dump.zst.age" in text and "public.patients" in text
    first_manifest = Manifest.from_json((root / backup_prefix(first) / "manifest.json").read_text(), where="t")
    assert first_manifest.object("database").sha256 in text
    assert manifest_tables(manifest) == manifest_tables(first_manifest)  # nothing changed between backups

    # Pin the oldest: retention keeps it whatever the policy says.
    ok(run("backup", "pin", first, "--reason", "legal hold, case 42", env=env))
    rows = json.loads(ok(run("backup", "list", "--json", env=env)).stdout)
    assert [r["pinned"] for r in rows] == [True, False, False]
    pin = json.loads((root / backup_prefix(first) / "pin.json").read_text())
    assert pin["reason"] == "legal hold, case 42"

    before = listing(root)
    dry = ok(run("backup", "prune", "--policy", "last=1", "--dry-run", env=env)).stdout
    lines = {line.split()[1]: line for line in dry.splitlines() if line.split()[:1] in (["keep"], ["forget"])}
    assert lines[first].startswith("keep") and "pinned" in lines[first]
    assert lines[middle].startswith("forget")
    assert lines[last].startswith("keep") and "last" in lines[last] and "newest restorable" in lines[last]
    assert "would delete 1, kept 2" in dry
    dry_json = json.loads(ok(run("backup", "prune", "--policy", "last=1", "--dry-run", "--json", env=env)).stdout)
    assert dry_json["dry_run"] is True and dry_json["deleted"] == []
    decisions = {d["id"]: (d["keep"], d["reasons"]) for d in dry_json["decisions"]}
    assert decisions[first] == (True, ["pinned"]) and decisions[middle] == (False, [])
    assert listing(root) == before  # a dry run deletes nothing

    pruned = json.loads(ok(run("backup", "prune", "--policy", "last=1", "--json", env=env)).stdout)
    assert pruned["deleted"] == [middle]
    assert listing(root) == {k: v for k, v in before.items() if not k.startswith(backup_prefix(middle) + "/")}
    assert not (root / backup_prefix(middle)).exists()

    # Unpinned, the oldest goes at the next prune; the newest always stays.
    ok(run("backup", "unpin", first, env=env))
    assert json.loads(ok(run("backup", "list", "--json", env=env)).stdout)[0]["pinned"] is False
    assert_clean_error(run("backup", "unpin", first, env=env), "not pinned")
    pruned = json.loads(ok(run("backup", "prune", "--policy", "last=1", "--json", env=env)).stdout)
    assert pruned["deleted"] == [first]
    assert [r["id"] for r in json.loads(ok(run("backup", "list", "--json", env=env)).stdout)] == [last]


# -- restore ------------------------------------------------------------------------------------


def test_restore_into_a_new_cluster_and_an_existing_database(
    env: dict[str, str], keys: Keys, demo_db: str, fresh_db: str, new_cluster_dir: Path
) -> None:
    backup_id = json.loads(ok(run("backup", "run", "--json", env=env)).stdout)["id"]
    manifest = Manifest.from_json(ok(run("backup", "show", backup_id, "--json", env=env)).stdout, where="cli")
    source = {name: (rows, checksum) for name, (rows, checksum, _) in own_checksums(demo_db).items()}
    assert manifest_tables(manifest) == source

    toc = ok(run("restore", "--list", "--identity", str(keys.identity_file), env=env)).stdout
    assert " TABLE DATA public patients " in toc and " TABLE public clinics " in toc

    report = json.loads(ok(run("restore", "latest", "--new-cluster", str(new_cluster_dir), "--identity",
                               str(keys.identity_file), "--json", env=env)).stdout)
    assert report["backup_id"] == backup_id and report["new_cluster_dsn"]
    assert_restored_equals_manifest(report["new_cluster_dsn"], manifest)

    report = json.loads(ok(run("restore", backup_id, "--target", fresh_db, "--identity", str(keys.identity_file),
                               "--json", env=env)).stdout)
    assert report["new_cluster_dsn"] is None
    assert_restored_equals_manifest(fresh_db, manifest)


def test_restore_errors_are_clean(
    env: dict[str, str], keys: Keys, demo_db: str, fresh_db: str, tmp_path: Path, new_cluster_dir: Path
) -> None:
    identity = ["--identity", str(keys.identity_file)]
    # Nothing stored yet.
    assert_clean_error(run("restore", "latest", "--target", fresh_db, *identity, env=env), "no restorable backup")
    assert_clean_error(run("backup", "show", "latest", env=env), "no restorable backup")

    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])

    assert_clean_error(run("restore", "latest", "--target", fresh_db, env=env),
                       "no age identity given", "--identity")
    assert_clean_error(run("restore", "latest", "--target", fresh_db, "--identity", str(tmp_path / "nope.txt"),
                           env=env), "does not exist")
    assert_clean_error(run("restore", "latest", *identity, env=env), "exactly one of --target")
    assert_clean_error(run("restore", "latest", "--target", fresh_db, "--new-cluster", str(new_cluster_dir),
                           *identity, env=env), "exactly one of --target")
    assert not new_cluster_dir.exists()
    assert_clean_error(run("restore", "20990101T000000Z-dead", "--target", fresh_db, *identity, env=env),
                       "no backup '20990101T000000Z-dead'")
    other = Keys.make(tmp_path, "someone-elses-key.txt")
    assert_clean_error(run("restore", "latest", "--target", fresh_db, "--identity", str(other.identity_file),
                           env=env), "cannot decrypt", "identity")

    rewrite_object(storage, database_key(manifest), flip_middle_byte)
    damaged = run("restore", "latest", "--target", fresh_db, *identity, env=env)
    assert_clean_error(damaged, database_key(manifest), "corrupted")
    assert relation_count(fresh_db) == 0  # none of the failures wrote anything


# -- S3 faults ----------------------------------------------------------------------------------


def test_backup_run_to_s3_through_a_dropping_link_fails_cleanly(
    env: dict[str, str], demo_db: str, s3_server: MotoServer
) -> None:
    """Each connection is reset after 64 KiB: small requests pass, every part upload dies midway.

    Before the fix the message was right but the process then died of SIGABRT (exit 134):
    the compress-encrypt worker thread was left running inside pyrage at interpreter exit.
    """
    add_padding(demo_db, 12)  # > one 8 MiB part after zstd: a multipart upload
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    with fault_proxy(s3_server.endpoint_url, drop_after=64 * 1024, lifetime=240) as proxy:
        env = {**env, **_s3_env(s3_server, bucket, proxy.url), "PYTHONFAULTHANDLER": "1"}
        result = run("backup", "run", "--no-prune", env=env, timeout=240)
    assert proxy.drops > 0
    assert result.returncode not in (0, 134, -6), f"exit {result.returncode}\n{result.stderr}"
    assert_clean_error(result, "connection to the S3 endpoint", "broke off while trying to upload", "database.dump.zst.age")
    assert "Fatal Python error" not in result.stderr
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    stored = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in stored if k.startswith("prod/backups/") and not k.endswith("SOURCE.json")], stored
    assert [k for k in stored if k.startswith("prod/attempts/")], stored  # the failure itself is recorded


# -- writers side by side -----------------------------------------------------------------------


def _s3_env(server: MotoServer, bucket: str, endpoint_url: str | None = None) -> dict[str, str]:
    return drp_env(storage=f"s3://{bucket}/prod", s3=server, s3_endpoint_url=endpoint_url or server.endpoint_url)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_starting_backup_spares_other_writers_and_cleans_its_dead_uploads(
    backend: str, env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An export mid-upload survives a backup starting beside it; a killed backup's upload is cleaned.

    Before the fix the backup's start-up cleanup swept the whole storage root: it deleted the
    export's temp file (local) or aborted its multipart upload (S3), and the export failed.
    """
    if backend == "local":
        storage: Storage = LocalStorage(tmp_path / "storage")
    else:
        server: MotoServer = request.getfixturevalue("s3_server")
        bucket = server.create_bucket()
        env = {**env, **_s3_env(server, bucket)}
        storage = S3Storage(bucket, "prod", part_size=5 << 20, **server.storage_kwargs())
    # What a backup killed mid-upload leaves (its process and lock are gone): provably dead.
    dead = "backups/20261130T000000.000Z-dead/database.dump.zst.age"
    leave_partial_upload(storage, dead)

    block = os.urandom(1 << 20)
    paused, resume = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def export_rows() -> Iterator[bytes]:
        for _ in range(6):  # 6 MiB: a temp file locally, an open multipart upload with one part on S3
            yield block
        paused.set()
        resume.wait(180)
        yield block

    def export() -> None:
        try:
            outcome["put"] = storage.put_stream("exports/20261130-x/public.patients.csv", export_rows())
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome["error"] = exc

    writer = threading.Thread(target=export)
    writer.start()
    try:
        assert paused.wait(60)
        assert partial_uploads(storage) == sorted([dead, "exports/20261130-x/public.patients.csv"])
        summary = json.loads(ok(run("backup", "run", "--json", "--no-prune", env=env)).stdout)
    finally:
        resume.set()
        writer.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["put"].sha256 == hashlib.sha256(block * 7).hexdigest()
    assert hashlib.sha256(storage.get_bytes("exports/20261130-x/public.patients.csv")).hexdigest() == outcome["put"].sha256
    assert partial_uploads(storage) == []  # the dead backup's upload went, the export's completed
    assert [e.id for e in list_backups(storage) if e.complete] == [summary["id"]]


def test_one_source_database_per_backup_prefix(env: dict[str, str], demo_db: str, fresh_db: str, tmp_path: Path) -> None:
    root = tmp_path / "storage"
    first = json.loads(ok(run("backup", "run", "--json", "--no-prune", env=env)).stdout)["id"]
    with psycopg.connect(demo_db) as conn:
        sysid, database = conn.execute("SELECT system_identifier::text, current_database() FROM pg_control_system()"
                                       ).fetchone()
    source = json.loads((root / "backups/SOURCE.json").read_text())
    assert (source["system_identifier"], source["database"]) == (sysid, database)
    assert "password" not in json.dumps(source) and source["server"].endswith(f"/{database}")
    other_db = psycopg.conninfo.conninfo_to_dict(fresh_db)["dbname"]

    def refused(dsn: str) -> None:
        result = run("backup", "run", "--no-prune", env={**env, "DRP_SOURCE_DSN": dsn})
        assert_clean_error(result, f"database '{database}'", f"database '{other_db}'",
                           "one backup prefix holds one source database", "its own prefix or bucket")
        assert [e.id for e in list_backups(LocalStorage(root)) if e.complete] == [first]

    refused(fresh_db)
    # A prefix from before SOURCE.json existed: its manifests name the source.
    (root / "backups/SOURCE.json").unlink()
    refused(fresh_db)
    assert not (root / "backups/SOURCE.json").exists()
    ok(run("backup", "run", "--no-prune", env=env))  # the rightful source claims it again
    assert {k: v for k, v in json.loads((root / "backups/SOURCE.json").read_text()).items() if k != "claimed_at"} == {
        k: v for k, v in source.items() if k != "claimed_at"}

    # Another database is refused even when the operator says the source was replaced.
    assert_clean_error(run("backup", "run", "--no-prune", "--source-replaced", env={**env, "DRP_SOURCE_DSN": fresh_db}),
                       "one backup prefix holds one source database")

    # Same database name on another cluster (the prefix recorded a different system identifier):
    # refused, unless the operator says this cluster replaced that one (a DR restore).
    (root / "backups/SOURCE.json").write_text(json.dumps({**source, "system_identifier": "7000000000000000001"}))
    result = run("backup", "run", "--no-prune", env=env)
    assert_clean_error(result, "system identifier 7000000000000000001", f"system identifier {sysid}",
                       "--source-replaced")
    assert len([e for e in list_backups(LocalStorage(root)) if e.complete]) == 2
    ok(run("backup", "run", "--no-prune", "--source-replaced", env=env))
    assert json.loads((root / "backups/SOURCE.json").read_text())["system_identifier"] == sysid
    assert len([e for e in list_backups(LocalStorage(root)) if e.complete]) == 3


# -- catalog honesty ----------------------------------------------------------------------------


def test_backup_list_shows_verification_state_and_damaged_manifests(
    env: dict[str, str], demo_db: str, keys: Keys, tmp_path: Path
) -> None:
    """Restorable in principle is not verified; a manifest that is not JSON is listed as damaged, never dropped."""
    storage = LocalStorage(tmp_path / "storage")
    unverified, verified, failed, broken = (run_logical_backup(demo_db, storage, [keys.recipient]).id for _ in range(4))
    finished = datetime(2026, 11, 30, 21, 15, tzinfo=UTC)
    for backup_id, error in ((verified, None), (failed, "pg_restore failed (exit 1): invalid page in block 7")):
        report = VerificationReport(backup_id, finished - timedelta(minutes=3), finished, 1.0, 2.0, 0.5, [], error)
        storage.put_bytes(f"{backup_prefix(backup_id)}/{VERIFICATION_NAME}", report.to_json().encode())
    manifest_path = tmp_path / "storage" / backup_prefix(broken) / "manifest.json"
    manifest_path.write_bytes(manifest_path.read_bytes()[:200])  # cut short: no longer JSON

    listed = ok(run("backup", "list", "--json", env=env))
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert list(rows) == [unverified, verified, failed, broken]
    assert {i: (r["status"], r["verification"], r["verified_at"]) for i, r in rows.items()} == {
        unverified: ("complete", "unverified", None),
        verified: ("complete", "verified", finished.isoformat()),
        failed: ("complete", "failed", finished.isoformat()),
        broken: ("damaged", "unverified", None),
    }
    assert "is malformed" in rows[broken]["error"] and rows[broken]["restore_point"] is None
    # Neither the damaged nor the failed backup is ever the one a restore would take.
    assert [i for i, r in rows.items() if r["newest_restorable"]] == [verified]
    assert f"warning: backup {broken} is damaged and not restorable" in listed.stderr

    text = ok(run("backup", "list", env=env))
    lines = {i: next(line for line in text.stdout.splitlines() if i in line) for i in rows}
    assert "unverified" in lines[unverified]
    assert "verified 2026-11-30 21:15" in lines[verified] and "newest restorable" in lines[verified]
    assert "FAILED 2026-11-30 21:15" in lines[failed]
    assert "damaged" in lines[broken] and "restorable" not in lines[broken]
    assert f"warning: backup {broken} is damaged" in text.stderr

    status = run("status", "--json", env=env)
    assert status.returncode == 1
    st = json.loads(status.stdout)
    assert st["damaged"] == [broken] and st["backups"] == 3 and st["newest_restorable"] == verified
    assert f"1 damaged backup(s), manifest unreadable: {broken}" in st["problems"]
    human = run("status", env=env)
    assert human.returncode == 1 and "3 complete, 1 DAMAGED" in human.stdout
    assert_clean_error(run("backup", "show", broken, env=env), f"backup {broken} is damaged")
def test_restore_checks_every_table_against_the_manifest_and_names_the_one_that_differs(
    env: dict[str, str], keys: Keys, demo_db: str, fresh_db: str, pg_cluster: LocalCluster, demo_template: str,
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    identity = ["--identity", str(keys.identity_file)]

    # A good restore says what it checked.
    report = json.loads(ok(run("restore", manifest.id, "--target", fresh_db, *identity, "--json", env=env)).stdout)
    assert report["checked_tables"] == len(manifest.tables) > 20
    text = ok(run("restore", manifest.id, "--target", fresh_db, "--force", *identity, env=env)).stdout
    assert f"row counts and checksums of {len(manifest.tables)} tables equal the manifest" in text

    # A dump whose patients differ from what the manifest recorded (a real pg_dump, stored like a backup).
    tamper_backup(storage, entry_for(storage, manifest.id), keys, pg_cluster, tmp_path, CHANGE_ONE_PATIENT,
                  same_content_as=demo_template)
    failed = run("restore", manifest.id, "--target", fresh_db, "--force", *identity, env=env)
    assert_clean_error(failed, "public.patients", "does not match", "--no-check")
    assert "public.clinics" not in failed.stderr  # only the table that differs is named

    report = json.loads(ok(run("restore", manifest.id, "--target", fresh_db, "--force", "--no-check", *identity,
                               "--json", env=env)).stdout)
    assert report["checked_tables"] is None
    assert "not checked against the manifest" in ok(run("restore", manifest.id, "--target", fresh_db, "--force",
                                                         "--no-check", *identity, env=env)).stdout


def test_restore_of_a_table_the_backup_does_not_have_is_an_error(
    env: dict[str, str], keys: Keys, demo_db: str, fresh_db: str, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    identity = ["--identity", str(keys.identity_file)]
    for args, message in [
        (["--table", "no_such_table"], "has no table 'no_such_table'"),
        (["--table", "public.patients"], "has no table 'public.patients'"),  # pg_restore -t takes no schema
        (["--table", "Patients"], "has no table 'Patients'"),  # names are case-sensitive
        (["--schema", "nope", "--table", "patients"], "has no schema 'nope'"),
    ]:
        assert_clean_error(run("restore", manifest.id, "--target", fresh_db, *args, *identity, env=env), message)
        assert relation_count(fresh_db) == 0

    report = json.loads(ok(run("restore", manifest.id, "--target", fresh_db, "--table", "patients", *identity,
                               "--json", env=env)).stdout)
    assert report["checked_tables"] == 1
    assert_restored_equals_manifest(fresh_db, replace(manifest, tables=[t for t in manifest.tables
                                                                        if t.name == "public.patients"]))


def test_restore_over_the_source_database_is_refused_unless_explicitly_meant(
    env: dict[str, str], keys: Keys, demo_db: str, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    with psycopg.connect(demo_db) as conn:  # written after the backup: a restore over the source loses it
        conn.execute("UPDATE clinics SET name = 'Renamed after the backup' WHERE id = (SELECT min(id) FROM clinics)")
    identity = ["--identity", str(keys.identity_file)]

    refused = run("restore", manifest.id, "--target", demo_db, "--force", *identity, env=env)
    assert_clean_error(refused, "is the database this backup was taken from", manifest.source["system_identifier"],
                       "losing every change made since", manifest.extra["snapshot_at"], "--overwrite-source")
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM clinics WHERE name = 'Renamed after the backup'").fetchone()[0] == 1

    ok(run("restore", manifest.id, "--target", demo_db, "--force", "--overwrite-source", *identity, env=env))
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM clinics WHERE name = 'Renamed after the backup'").fetchone()[0] == 0
    assert_restored_equals_manifest(demo_db, manifest)


def _argv_watch(proc: subprocess.Popen[str]) -> dict[int, tuple[list[str], dict[str, str]]]:
    """argv and environment of every process on the machine while proc runs (pid -> (argv, env))."""
    seen: dict[int, tuple[list[str], dict[str, str]]] = {}
    while proc.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            seen[int(pid)] = (argv, dict(e.partition("=")[::2] for e in environ if "=" in e))
    return seen


def test_restore_target_password_never_reaches_any_argv(
    env: dict[str, str], keys: Keys, demo_db: str, pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    password = f"Pw-{uuid.uuid4().hex[:12]}-in-env-only"
    role, database = f"restorer_{uuid.uuid4().hex[:6]}", f"pwtarget_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    try:
        require_password_for(pg_cluster, role)
        target = pg_cluster.dsn(database, user=role)
        storage = LocalStorage(tmp_path / "storage")
        manifest = run_logical_backup(demo_db, storage, [keys.recipient])
        args = ["restore", manifest.id, "--no-owner", "--identity", str(keys.identity_file), "--json"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("DRP_")}

        # Without the password the restore fails (the target really needs it)...
        assert_clean_error(run(*args, env={**env, "DRP_RESTORE_TARGET": target}), "password")

        # ...and from DRP_RESTORE_TARGET it works, with the password in no process's argv.
        proc = subprocess.Popen([str(BIN / "drp"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**base, **env, "DRP_RESTORE_TARGET": f"{target} password={password}"})
        seen = _argv_watch(proc)
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["checked_tables"] == len(manifest.tables)
        assert password not in stdout + stderr
        restores = [(argv, environ) for argv, environ in seen.values() if argv[0].endswith("pg_restore")
                    and any(database in a for a in argv)]
        assert restores, "pg_restore was never seen running"
        assert all(environ.get("PGPASSWORD") == password for _, environ in restores)  # it travels by env
        assert [argv for argv, _ in seen.values() if any(password in a for a in argv)] == []
        assert_restored_equals_manifest(target + f" password={password}", manifest)
    finally:
        pg_cluster.drop_database(database)
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
