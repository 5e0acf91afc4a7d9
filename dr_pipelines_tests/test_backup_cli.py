"""`drp key|backup|restore` as the on-call engineer runs them: real subprocesses, real clusters.

Every command is the installed entry point in a subprocess; results are checked in storage
and in the databases, not only in the printed output. Errors must be one clean message
(`error: ... fix: ...`), no traceback, non-zero exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core.backup.catalog import backup_prefix, list_backups
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.crypto import load_identities
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.backup import (
    Keys,
    assert_restored_equals_manifest,
    database_key,
    flip_middle_byte,
    manifest_tables,
    own_checksums,
    relation_count,
    require_password_for,
    rewrite_object,
)
from dr_pipelines_tests.support.procs import BIN
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
    return {
        "DRP_SOURCE_DSN": demo_db,
        "DRP_STORAGE_URL": str(tmp_path / "storage"),
        "DRP_ENCRYPTION_RECIPIENTS": keys.recipient,
        "DRP_WORK_DIR": str(tmp_path / "work"),
    }


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
