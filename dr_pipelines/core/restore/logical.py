"""Restore a logical backup into a named database or a fresh local cluster.

Every object is fetched to a local work file and its SHA-256 checked against the manifest
before pg_restore touches the target: a corrupted object or a wrong key writes nothing.
Those files are plaintext health data: they live in a leased 0700 staging folder, mode 0600,
deleted when the restore ends and swept at the next start if the process was killed. A
one-job restore stages the dump's ciphertext only and decrypts it into pg_restore's stdin
(a parallel restore needs a file it can seek in, so that one is staged in clear).
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.core.backup.catalog import BackupEntry, backup_prefix
from dr_pipelines.core.layout import SEALED
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.connect import connect, describe, libpq_env
from dr_pipelines.core.pg.content import apply_database_properties
from dr_pipelines.core.pg.leases import staging_dir, sweep_leftovers
from dr_pipelines.core.pg.profile import server_identity
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.dump_offsets import add_data_offsets
from dr_pipelines.core.restore.fetch import decrypt_file, fetch_object
from dr_pipelines.core.restore.guards import (  # noqa: F401 - RestoreCheckError: callers catch it from here
    RestoreCheckError,
    RestoreError,
    check_restored,
    refuse_non_empty,
    refuse_source,
    refuse_unmatched_selection,
)
from dr_pipelines.core.storage import Storage

RESTORE_PHASE = "restore (TOC entries)"


@dataclass(frozen=True)
class RestoreOptions:
    jobs: int = 2
    schemas: Sequence[str] = ()
    tables: Sequence[str] = ()
    force: bool = False  # restore into a non-empty database (objects are dropped and recreated)
    no_owner: bool = False
    with_globals: bool = False  # apply roles from the backup first (sensible on a fresh cluster)
    check: bool = True  # compare row counts and checksums with the manifest afterwards
    overwrite_source: bool = False  # allow --force over the very database the backup was taken from


@dataclass
class RestoreResult:
    backup_id: str
    target: str
    fetch_seconds: float
    restore_seconds: float
    plain_bytes: int
    toc_entries: int
    warnings: list[str] = field(default_factory=list)
    checked_tables: int | None = None  # None: not checked (--no-check)


def fetch_backup(
    storage: Storage, entry: BackupEntry, identities: Sequence[object], work_dir: Path, *, progress: Progress | None = None,
    encrypted: Collection[str] = (),
) -> dict[str, Path]:
    """Every object of the backup, verified and decrypted (but the `encrypted` roles: as stored), as local files by role."""
    manifest = _manifest(entry)
    work_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    try:
        for obj in manifest.objects:
            keep = obj.role in encrypted
            dest = work_dir / (obj.key if keep else obj.key.removesuffix(SEALED))

            def report(done: int, _role: str = obj.role, _total: int = obj.bytes) -> None:
                if progress:
                    progress(f"fetch {_role}", done, _total)

            fetch_object(storage, f"{backup_prefix(entry.id)}/{obj.key}", obj, identities, dest, progress=report,
                         decrypt=not keep)
            files[obj.role] = dest
    except BaseException:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise
    return files


def list_contents(storage: Storage, entry: BackupEntry, identities: Sequence[object], work_dir: Path) -> str:
    """pg_restore --list of the backup's database object (its table of contents); no plaintext is staged."""
    with staging_dir(_ensure(work_dir), f"list-{entry.id}") as tmp:
        files = fetch_backup(storage, entry, identities, tmp, encrypted={"database"})
        pg_restore = client_tool("pg_restore", _manifest(entry).source.get("server_version_num", 150000) // 10000)
        return _listing(pg_restore, _Archive(files["database"], identities))


def restore_backup(
    storage: Storage,
    entry: BackupEntry,
    identities: Sequence[object],
    target_dsn: str,
    *,
    work_dir: Path,
    options: RestoreOptions = RestoreOptions(),
    progress: Progress | None = None,
) -> RestoreResult:
    """Fetch and verify every object, then pg_restore into target_dsn (which must exist)."""
    manifest = _manifest(entry)
    with connect(target_dsn) as conn:
        ident = server_identity(conn)
        if not options.force:
            refuse_non_empty(conn, target_dsn)  # the source never is empty: refused here already
        elif not options.overwrite_source:
            refuse_source(conn, ident.system_identifier, target_dsn, manifest)
    if ident.version_num // 10000 < manifest.source.get("server_version_num", 0) // 10000:
        raise RestoreError(
            f"target server {describe(target_dsn)} is PostgreSQL {ident.version}, older than the backup's source "
            f"({manifest.source.get('server_version')})",
            fix="restore into a server of the same major version or newer",
        )
    pg_restore = client_tool("pg_restore", ident.major)
    sweep_leftovers(_ensure(work_dir))
    with staging_dir(work_dir, f"restore-{entry.id}") as tmp:
        started = time.monotonic()
        stream = options.jobs == 1  # one job reads the archive in order from stdin: no plaintext dump on disk
        files = fetch_backup(storage, entry, identities, tmp, progress=progress, encrypted={"database"} if stream else ())
        fetched = time.monotonic()
        warnings: list[str] = []
        if options.with_globals and "globals" in files:
            warnings += _apply_globals(files["globals"], target_dsn, ident.major)
        if options.jobs > 1 and add_data_offsets(files["database"]) is None:
            warnings.append("the archive's data offsets could not be added: restoring with one job")
            options = replace(options, jobs=1)
        archive = _Archive(files["database"], identities if stream else None)
        toc = _listing(pg_restore, archive)
        refuse_unmatched_selection(toc, options, entry.id)
        entries = sum(1 for line in toc.splitlines() if line and not line.startswith(";"))
        _pg_restore(pg_restore, archive, target_dsn, options, entries, progress)
        if not (options.schemas or options.tables):
            warnings += _restore_database_properties(target_dsn, manifest)
        done = time.monotonic()
        plain = sum(p.stat().st_size for role, p in files.items() if not (stream and role == "database"))
        plain += archive.streamed_bytes
    checked = check_restored(target_dsn, manifest, options) if options.check else None
    return RestoreResult(entry.id, describe(target_dsn), fetched - started, done - fetched, plain, entries, warnings,
                         checked)


def _manifest(entry: BackupEntry) -> Manifest:
    if entry.manifest is None:
        raise RestoreError(f"backup {entry.id} has no readable manifest", fix="choose another backup")
    return entry.manifest


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _restore_database_properties(target_dsn: str, manifest: Manifest) -> list[str]:
    """COMMENT ON DATABASE and ALTER DATABASE ... SET: pg_restore emits them only when it creates the database."""
    if manifest.database_properties is None:
        return ["the database's comment and settings are not recorded in this (older) backup's manifest: "
                "not restored"]
    with connect(target_dsn, autocommit=True) as conn:
        try:
            apply_database_properties(conn, manifest.database_properties)
        except psycopg.Error as exc:
            raise RestoreError(
                f"cannot restore the database's comment and settings on {describe(target_dsn)}: "
                f"{str(exc).strip().splitlines()[0]}",
                fix="restore as the target database's owner (a superuser for superuser-only settings)",
            ) from None
    return []


@dataclass
class _Archive:
    """The database dump for pg_restore: a staged plaintext file (parallel restore needs one to seek in), or,
    with `identities`, the staged ciphertext, decrypted into pg_restore's stdin by a thread."""

    path: Path
    identities: Sequence[object] | None = None
    streamed_bytes: int = 0

    @contextlib.contextmanager
    def pg_restore(self, cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
        """pg_restore reading this archive; a decryption failure wins over pg_restore's own complaint."""
        if self.identities is None:
            with subprocess.Popen([*cmd, str(self.path)], text=True, **popen) as proc:
                yield proc
            return
        fed: dict[str, Any] = {}
        with subprocess.Popen(cmd, stdin=subprocess.PIPE, text=True, **popen) as proc:
            assert proc.stdin is not None
            pipe, identities = proc.stdin.buffer, self.identities

            def feed() -> None:
                try:
                    fed["bytes"] = decrypt_file(self.path, pipe, identities, what=self.path.name)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                    fed["error"] = exc

            feeder = threading.Thread(target=feed, name="decrypt-into-pg_restore", daemon=True)
            feeder.start()
            try:
                yield proc
            finally:
                proc.wait()
                feeder.join()
                if "error" in fed:
                    raise fed["error"]
        self.streamed_bytes = fed.get("bytes", 0)


def _listing(pg_restore: str, archive: _Archive) -> str:
    """pg_restore --list: the archive's table of contents."""
    with archive.pg_restore([pg_restore, "--list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        listing, problem = proc.stdout.read(), proc.stderr.read()
        if proc.wait() != 0:
            raise RestoreError(f"pg_restore cannot read the dump: {problem.strip()}", fix="the dump may be damaged")
    return listing


_HARMLESS_CLEAN_ERROR = "cannot drop inherited constraint"


def _pg_restore(pg_restore: str, archive: _Archive, target_dsn: str, options: RestoreOptions, toc: int,
                progress: Progress | None) -> None:
    conninfo, env = libpq_env(target_dsn)
    cmd = [pg_restore, "--verbose", "--no-password", f"--jobs={max(1, options.jobs)}", f"--dbname={conninfo}"]
    if options.force:
        # --clean drops each partition's copy of an inherited constraint, which PostgreSQL refuses
        # (dropping the parent's removes it anyway): those errors must not stop the restore, so
        # pg_restore runs on and every other error still fails it (below).
        cmd += ["--clean", "--if-exists"]
    else:
        cmd.append("--exit-on-error")
    if options.no_owner:
        cmd += ["--no-owner", "--no-privileges"]
    for schema in options.schemas:
        cmd.append(f"--schema={schema}")
    for table in options.tables:
        cmd.append(f"--table={table}")
    tail: collections.deque[str] = collections.deque(maxlen=20)
    failures: list[str] = []  # errors that count (with --force, pg_restore goes on after an error)
    done = 0
    with archive.pg_restore(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            if line.startswith("pg_restore: error:") and not (options.force and _HARMLESS_CLEAN_ERROR in line):
                failures.append(line.rstrip())
            if line.startswith("pg_restore: creating") or line.startswith("pg_restore: processing"):
                done += 1
                if progress:
                    progress(RESTORE_PHASE, min(done, toc), toc)
        code = proc.wait()
    if code != 0 and (failures or not options.force):
        # The first errors are the cause (later ones often follow from it); else the log's tail.
        errors = failures[:3] + [f"({len(failures) - 3} more errors)"] if len(failures) > 3 else failures
        errors = errors or ([line for line in tail if "error" in line.lower()] or list(tail))[-5:]
        raise RestoreError(
            f"pg_restore into {describe(target_dsn)} failed (exit {code}): " + " | ".join(errors),
            fix="read the error; roles missing on the target? use --with-globals on a fresh cluster or --no-owner",
        )


def _apply_globals(sql_file: Path, target_dsn: str, major: int) -> list[str]:
    """Roles and tablespaces from pg_dumpall; 'already exists' is expected for the bootstrap role."""
    psql = client_tool("psql", major)
    conninfo, env = libpq_env(target_dsn)
    out = subprocess.run([psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", f"--dbname={conninfo}",
                          "-f", str(sql_file)], capture_output=True, text=True, env=env)
    problems = [line for line in out.stderr.splitlines() if "ERROR" in line and "already exists" not in line]
    if problems:
        raise RestoreError("applying the backup's roles failed: " + " | ".join(problems[:5]), fix="check the target cluster")
    return [line for line in out.stderr.splitlines() if "already exists" in line]
