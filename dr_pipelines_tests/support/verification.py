"""Helpers for the verification and drill tests: keys, storage clones, tampered backups, leftovers.

Nothing here mocks. A tampered backup is built for real: the good backup is restored into a
scratch database, one row is changed, the database is dumped again with pg_dump and stored
compressed and encrypted like a real backup, and the manifest is rewritten so the object's
size and SHA-256 match. Only the manifest's per-table checksums (taken from the original) then
disagree with the content: exactly what a verification restore exists to catch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pyrage import x25519

from dr_pipelines.core.backup.catalog import BackupEntry, backup_prefix, list_backups
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.manifest import Manifest, write_manifest
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.restore.logical import restore_backup
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.stream import compress_encrypt
from dr_pipelines_tests.support.backup import Keys, create_hostile_schema

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_PROBES = REPO_ROOT / "dr_pipelines" / "demo" / "probes.yaml"
DEMO_PROBE_NAMES = ("appointments_without_patient", "cross_clinic_appointments", "invoice_total_mismatch",
                    "clinics_without_staff")
CORE_CHECKS = ("tables_present", "row_counts", "checksums", "amcheck", "foreign_keys", "sequences", "sequence_values",
               "large_objects", "materialized_views", "database_properties")

# One row of patients changed (not a key, not a column any probe or constraint looks at).
CHANGE_ONE_PATIENT = "UPDATE public.patients SET given_name = given_name || 'x' WHERE id = (SELECT min(id) FROM public.patients)"
# One prescription deleted (a leaf table: no foreign key points at it, no probe reads it).
DELETE_ONE_PRESCRIPTION = "DELETE FROM public.prescriptions WHERE id = (SELECT min(id) FROM public.prescriptions)"


AgeKey = Keys  # one key-pair helper for every test module


def clone_storage(source: Path, target: Path) -> LocalStorage:
    """A copy of a local storage directory: tests that change storage never share it."""
    shutil.copytree(source, target)
    return LocalStorage(target)


def entry_for(storage: Storage, backup_id: str) -> BackupEntry:
    return next(e for e in list_backups(storage) if e.id == backup_id)


def work_dir_under(base: Path) -> Path:
    """A fresh scratch folder for throwaway clusters, reachable by the postgres OS user."""
    path = base / f"work-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return path


def _scratch_dirs(root: Path) -> list[Path]:
    """Leased folders (clusters/* throwaway clusters, staging/* fetched plaintext) anywhere under root."""
    found: list[Path] = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            found += sorted(path.iterdir()) if path.name in ("clusters", "staging") else _scratch_dirs(path)
    return found


def leftover_clusters(work_dir: Path) -> list[str]:
    """Leased folders still under work_dir, and any process whose command line names work_dir."""
    dirs = [str(p.relative_to(work_dir)) for p in _scratch_dirs(work_dir)]
    procs = subprocess.run(["pgrep", "-a", "-f", str(work_dir)], capture_output=True, text=True).stdout.splitlines()
    return dirs + procs


def reap_clusters(work_dir: Path) -> list[str]:
    """Report leftovers (see leftover_clusters) and remove them, so a failing test leaves no server running."""
    left = leftover_clusters(work_dir)
    for path in _scratch_dirs(work_dir):
        if (path / "data" / "PG_VERSION").exists():
            LocalCluster(data_dir=path / "data", port=0).remove()
        shutil.rmtree(path, ignore_errors=True)
    return left


def tamper_backup(storage: Storage, entry: BackupEntry, key: AgeKey, cluster: LocalCluster, scratch: Path,
                  change_sql: str, *, same_content_as: str | None = None) -> Manifest:
    """Replace the backup's database object with a dump whose content differs by `change_sql`.

    The content comes from restoring the backup into a scratch database of `cluster`, or, to
    save that restore, from a copy of `same_content_as` (a database of `cluster` holding exactly
    the backup's content: the template the backed-up database was copied from, or an earlier
    restore). The new object is a real pg_dump, compressed and encrypted to the same recipient,
    and the manifest's size and SHA-256 for it are rewritten: only the recorded table checksums
    (and row counts) still describe the original content. Returns the rewritten manifest.
    """
    assert entry.manifest is not None
    manifest = entry.manifest
    name = f"tamper_{uuid.uuid4().hex[:10]}"
    dsn = cluster.create_database(name, template=same_content_as or "template0")
    try:
        if same_content_as is None:
            restore_backup(storage, entry, key.identities, dsn, work_dir=scratch)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(change_sql).rowcount == 1, change_sql
        dump = scratch / f"{name}.dump"
        subprocess.run([client_tool("pg_dump", cluster.binaries.major), "-Fc", "-Z0", "--no-password", f"--dbname={dsn}", "-f", str(dump)],
                       check=True, capture_output=True)
    finally:
        cluster.drop_database(name)
    database = manifest.object("database")
    with open(dump, "rb") as plain:
        chunks = compress_encrypt(plain, [x25519.Recipient.from_str(key.recipient)])
        stored = storage.put_stream(f"{backup_prefix(manifest.id)}/{database.key}", chunks)
    plain_bytes = dump.stat().st_size
    dump.unlink()
    objects = [
        dataclasses.replace(o, bytes=stored.size, sha256=stored.sha256, plain_bytes=plain_bytes) if o is database else o
        for o in manifest.objects
    ]
    tampered = dataclasses.replace(manifest, objects=objects)
    write_manifest(storage, backup_prefix(manifest.id), tampered)
    return tampered


@dataclass(frozen=True)
class Good:
    """One good backup of a demo database, in a storage directory tests clone before changing."""

    base: Path
    key: Keys
    storage_dir: Path
    manifest: Manifest
    source_dsn: str

    def clone(self, target: Path) -> LocalStorage:
        return clone_storage(self.storage_dir, target)


def drp_env(backup: Good, storage: LocalStorage, work: Path) -> dict[str, str]:
    """The DRP_* variables a deployment would set for `backup`'s source, storage and work dir (nothing else)."""
    return {
        "DRP_SOURCE_DSN": backup.source_dsn,
        "DRP_STORAGE_URL": str(storage.root),
        "DRP_ENCRYPTION_RECIPIENTS": backup.key.recipient,
        "DRP_AGE_IDENTITY_FILE": str(backup.key.identity_file),
        "DRP_VERIFICATION_PROBES_FILE": str(DEMO_PROBES),
        "DRP_WORK_DIR": str(work),
    }


@contextlib.contextmanager
def good_backup(pg_cluster: LocalCluster, demo_template: str, work_base: Path, prefix: str, *,
                hostile: bool = False) -> Iterator[Good]:
    """A copy of the demo database (plus, if `hostile`, support/backup.py's hostile schema) and one good backup of it.

    Both are removed afterwards.
    """
    base = work_base / f"{prefix}-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    key = Keys.make(base / "keys")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=demo_template)
    try:
        if hostile:
            create_hostile_schema(dsn)
        manifest = run_logical_backup(dsn, LocalStorage(base / "storage"), [key.recipient])
        yield Good(base, key, base / "storage", manifest, dsn)
    finally:
        pg_cluster.drop_database(name)
        shutil.rmtree(base, ignore_errors=True)
