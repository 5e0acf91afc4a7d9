"""What every backup kind shares: the attempt record, the source's backup lock, and one streamed object.

Logical (core/backup/logical.py) and base backups (core/backup/physical.py) both run a
client tool whose stdout goes zstd -> age -> storage.put_stream (hashing plain and stored
bytes on the way, no temp file), under the same session advisory lock on the source and
the same attempts/ record. Keeping that here means the two kinds cannot drift apart on
locking, cleanup of interrupted runs, or how a failed tool is reported.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as pkg_version
from typing import Any, TypeVar

import psycopg

from dr_pipelines.core.backup.attempts import record_attempt
from dr_pipelines.core.backup.catalog import check_source, remove_incomplete
from dr_pipelines.core.errors import DrpError, StorageError
from dr_pipelines.core.layout import new_backup_id
from dr_pipelines.core.manifest import ObjectEntry
from dr_pipelines.core.pg.connect import describe
from dr_pipelines.core.pg.drp_schema import BACKUP_LOCK as BACKUP_LOCK_KEY
from dr_pipelines.core.pg.profile import ServerIdentity, server_identity
from dr_pipelines.core.pg.tools import tool_version
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import CountingReader, compress_encrypt

PROGRESS_EVERY = 8 << 20
T = TypeVar("T")


class BackupError(DrpError):
    """A backup could not be taken; nothing restorable was recorded."""


def with_attempt(storage: Storage, run: Callable[[str, datetime], T]) -> T:
    """Run ``run(backup_id, started)`` recorded under attempts/ (running, then succeeded or failed).

    The success rate is computed from storage alone; a killed run stays 'running'.
    """
    started = datetime.now(UTC)
    backup_id = new_backup_id(started)
    record_attempt(storage, backup_id, started, "running")
    try:
        result = run(backup_id, started)
    except BaseException as exc:
        problem = exc.problem if isinstance(exc, DrpError) else type(exc).__name__
        with contextlib.suppress(Exception):
            record_attempt(storage, backup_id, started, "failed", error=problem)
        raise
    record_attempt(storage, backup_id, started, "succeeded")
    return result


@dataclass(frozen=True)
class LockedSource:
    """The source as seen under the backup lock, after the prefix check and the sweep of interrupted runs."""

    ident: ServerIdentity
    database: str
    removed: list[str]


@contextlib.contextmanager
def backup_lock(conn: psycopg.Connection, dsn: str, storage: Storage, *, replaced: bool,
                preflight: Callable[[psycopg.Connection], None] | None = None) -> Iterator[LockedSource]:
    """Hold the source's backup advisory lock; check the prefix belongs to it, then sweep leftovers.

    ``preflight`` runs after the lock and the source check but before anything is removed,
    so a refused backup changes nothing in storage. ``conn`` must be in autocommit.
    """
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (BACKUP_LOCK_KEY,)).fetchone()[0]:
        raise BackupError(
            f"another backup of {describe(dsn)} is running",
            fix="wait for it to finish (backups of one database never overlap)",
        )
    try:
        ident = server_identity(conn)
        database = conn.execute("SELECT current_database()").fetchone()[0]
        check_source(storage, {"system_identifier": ident.system_identifier, "database": database,
                               "server": describe(dsn)}, replaced=replaced)
        if preflight:
            preflight(conn)
        yield LockedSource(ident, database, remove_incomplete(storage))
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
            conn.autocommit = True
            conn.execute("SELECT pg_advisory_unlock(%s)", (BACKUP_LOCK_KEY,))


def manifest_fields(dsn: str, locked: LockedSource, size_bytes: int, tool: str | None, recipients: list[str],
                    level: int) -> dict[str, Any]:
    """The Manifest fields every backup kind fills alike: source (what SOURCE.json binds a prefix to), tools,
    compression and encryption (the *public* recipients only). ``tool``: the client tool run, if any."""
    return {
        "source": {
            "server": describe(dsn),
            "database": locked.database,
            "server_version": locked.ident.version,
            "server_version_num": locked.ident.version_num,
            "system_identifier": locked.ident.system_identifier,
            "database_size_bytes": size_bytes,
        },
        "tools": {
            **({os.path.basename(tool): tool_version(tool)[1]} if tool else {}),
            "dr_pipelines": pkg_version("dr_pipelines"),
            "zstandard": pkg_version("zstandard"),
            "pyrage": pkg_version("pyrage"),
        },
        "compression": {"algorithm": "zstd", "level": level},
        "encryption": {"algorithm": "age-x25519", "recipients": list(recipients)},
    }


def stream_command(
    cmd: list[str],
    env: dict[str, str],
    storage: Storage,
    key: str,
    role: str,
    fmt: str,
    recipients: list,
    *,
    level: int,
    threads: int,
    progress: Progress | None,
    expected: int | None,
    tap: Callable[[bytes], None] | None = None,
    frame_table: list | None = None,
) -> ObjectEntry:
    """Run a client tool and stream its stdout, compressed and encrypted, into storage under key.

    ``tap`` sees every plain byte as it passes (a base backup reads backup_label and
    backup_manifest out of its tar stream that way). On failure the object is deleted.
    """
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, bufsize=0)
        assert proc.stdout is not None

        def kill() -> None:
            proc.kill()
            proc.wait()

        try:
            entry = stream_reader(CountingReader(proc.stdout, tap=tap), storage, key, role, fmt, recipients,
                                  level=level, threads=threads, progress=progress, expected=expected, abort=kill,
                                  frame_table=frame_table)
        finally:
            proc.stdout.close()
        code = proc.wait()
        if code != 0:
            stderr.seek(0)
            message = stderr.read().decode(errors="replace").strip()
            with contextlib.suppress(StorageError):
                storage.delete(key)
            raise BackupError(f"{os.path.basename(cmd[0])} failed (exit {code}): {message}", fix=_fix_for(message))
    return entry


def stream_reader(reader: CountingReader, storage: Storage, key: str, role: str, fmt: str, recipients: list, *,
                  level: int, threads: int, progress: Progress | None, expected: int | None,
                  abort: Callable[[], None] | None = None, frame_table: list | None = None) -> ObjectEntry:
    """Stream ``reader``, compressed and encrypted, into storage under key: a tool's stdout, or a tar
    drp builds itself (core/backup/lowlevel.py). Progress every PROGRESS_EVERY plain bytes.

    ``abort`` runs first on failure (a tool is killed so the worker's read ends at once).
    ``frame_table``: see ``compress_encrypt`` (a base backup's tar).
    """
    chunks = compress_encrypt(reader, recipients, level=level, threads=threads, frame_table=frame_table)
    try:
        result = storage.put_stream(key, _reporting(chunks, reader, role, progress, expected))
    except BaseException:
        if abort:
            abort()
        raise
    finally:
        # Stop and join the compress-encrypt worker now: left blocked inside pyrage, it is
        # killed at interpreter exit through Rust frames, which aborts the process (SIGABRT).
        chunks.close()
    return ObjectEntry(key=key.rsplit("/", 1)[1], role=role, bytes=result.size, sha256=result.sha256,
                       plain_bytes=reader.bytes, format=fmt)


def _reporting(chunks: Iterator[bytes], reader: CountingReader, phase: str, progress: Progress | None,
               expected: int | None) -> Iterator[bytes]:
    last = 0
    for chunk in chunks:
        if progress and reader.bytes - last >= PROGRESS_EVERY:
            last = reader.bytes
            progress(phase, reader.bytes, expected)
        yield chunk
    if progress:
        progress(phase, reader.bytes, expected)


def _fix_for(message: str) -> str:
    lowered = message.lower()
    if "permission denied" in lowered:
        return "run the backup as a role that can read every table (e.g. a member of pg_read_all_data)"
    if "server version mismatch" in lowered or "aborting because of server version" in lowered:
        return "install pg_dump of the server's major version or newer, or set DRP_PG_BIN_DIR"
    if "password authentication failed" in lowered:
        return "check the password in DRP_SOURCE_DSN (or PGPASSWORD / ~/.pgpass)"
    if "replication connection" in lowered or "must be superuser or replication role" in lowered:
        return ("a base backup needs a role with the REPLICATION attribute and a pg_hba.conf `host replication` "
                "line for the backup host")
    return "read the tool's message above"
