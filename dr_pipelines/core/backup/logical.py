"""Logical backup: pg_dump (custom format, uncompressed) -> zstd -> age -> storage, manifest last.

Row counts and content checksums are taken in the very snapshot pg_dump dumps (exported
with pg_export_snapshot), so a restore can be proven equal to the source at that instant.
A session advisory lock on the source keeps two backups from running at once, and lets
the next run know that manifest-less leftovers are garbage (their writer is gone).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from dr_pipelines.core.backup.catalog import record_source
from dr_pipelines.core.backup.pipeline import (  # noqa: F401 - BackupError, BACKUP_LOCK_KEY: re-exported for callers
    BACKUP_LOCK_KEY,
    BackupError,
    LockedSource,
    backup_lock,
    manifest_fields,
    stream_command,
    with_attempt,
)
from dr_pipelines.core.crypto import parse_recipients
from dr_pipelines.core.layout import DATABASE_OBJECT, GLOBALS_OBJECT, backup_prefix
from dr_pipelines.core.manifest import (
    LargeObjectEntry,
    Manifest,
    MatviewEntry,
    ObjectEntry,
    SequenceEntry,
    TableEntry,
    write_manifest,
)
from dr_pipelines.core.pg.checksums import TableChecksum, database_checksums, snapshot_connection
from dr_pipelines.core.pg.connect import connect, libpq_env
from dr_pipelines.core.pg.content import database_properties, large_objects, materialized_views, sequence_states
from dr_pipelines.core.pg.snapshots import export_snapshot
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.storage import Storage


@dataclass(frozen=True)
class BackupOptions:
    compression_level: int = 3
    zstd_threads: int = 2
    include_globals: bool = True
    role_passwords: bool = False  # pg_dumpall without password hashes unless asked
    checksums: bool = True
    source_replaced: bool = False  # this cluster replaced the prefix's recorded one (a DR restore): rebind the prefix


def run_logical_backup(
    dsn: str,
    storage: Storage,
    recipients: list[str],
    *,
    options: BackupOptions = BackupOptions(),
    progress: Progress | None = None,
) -> Manifest:
    """Take one backup; return its manifest (already stored). Raises and leaves no manifest on failure.

    Every attempt is recorded under attempts/ (running, then succeeded or failed), so the
    success rate can be computed from storage alone; a killed run stays 'running'.
    """
    age_recipients = parse_recipients(recipients)
    return with_attempt(storage, lambda backup_id, started: _run(
        dsn, storage, recipients, age_recipients, backup_id, started, options, progress))


def _run(dsn: str, storage: Storage, recipients: list[str], age_recipients: list, backup_id: str, started: datetime,
         options: BackupOptions, progress: Progress | None) -> Manifest:
    prefix = backup_prefix(backup_id)
    with connect(dsn, autocommit=True) as conn, \
            backup_lock(conn, dsn, storage, replaced=options.source_replaced) as locked:
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        pg_dump = client_tool("pg_dump", locked.ident.major)
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot, snapshot_at = export_snapshot(conn)
        written: list[ObjectEntry] = []
        try:
            dumped = _dump(conn, dsn, storage, prefix, snapshot, locked.ident.major, pg_dump, age_recipients, options,
                           progress, db_size, written)
        except BaseException:
            for entry in written:
                with contextlib.suppress(Exception):
                    storage.delete(f"{prefix}/{entry.key}")
            raise
    manifest = _manifest(dsn, backup_id, started, recipients, options, locked, db_size, pg_dump, snapshot_at,
                         written, dumped)
    write_manifest(storage, prefix, manifest)  # the commit point
    record_source(storage, manifest.source, replaced=options.source_replaced)
    return manifest


@dataclass
class _Dumped:
    """What was read in the backup's snapshot besides the stored objects."""

    sequences: list[SequenceEntry]
    db_properties: Any
    tables: list[Any]
    content: Any


def _dump(conn: psycopg.Connection, dsn: str, storage: Storage, prefix: str, snapshot: str, major: int, pg_dump: str,
          age_recipients: list, options: BackupOptions, progress: Progress | None, db_size: int,
          written: list[ObjectEntry]) -> _Dumped:
    """Stream pg_dump (and pg_dumpall --globals-only) of the snapshot to storage, checksumming beside it."""
    checksums = _ChecksumThread(dsn, snapshot) if options.checksums else None
    sequences_before, db_properties = sequence_states(conn), database_properties(conn)
    conninfo, env = libpq_env(dsn)
    dump_cmd = [pg_dump, "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password",
                f"--dbname={conninfo}"]
    written.append(stream_command(dump_cmd, env, storage, f"{prefix}/{DATABASE_OBJECT}", "database", "pg_dump-custom",
                                  age_recipients, level=options.compression_level, threads=options.zstd_threads,
                                  progress=progress, expected=db_size))
    if options.include_globals:
        pg_dumpall = client_tool("pg_dumpall", major)
        globals_cmd = [pg_dumpall, "--globals-only", "--no-password", f"--dbname={conninfo}"]
        if not options.role_passwords:
            globals_cmd.append("--no-role-passwords")
        written.append(stream_command(globals_cmd, env, storage, f"{prefix}/{GLOBALS_OBJECT}", "globals", "sql",
                                      age_recipients, level=options.compression_level, threads=options.zstd_threads,
                                      progress=None, expected=None))
    sequences = _sequence_entries(sequences_before, sequence_states(conn))
    tables, content = checksums.result() if checksums else ([], None)
    return _Dumped(sequences, db_properties, tables, content)


def _manifest(dsn: str, backup_id: str, started: datetime, recipients: list[str], options: BackupOptions,
              locked: LockedSource, db_size: int, pg_dump: str, snapshot_at: datetime,
              written: list[ObjectEntry], dumped: _Dumped) -> Manifest:
    """The backup's manifest: objects, tables, sequences, source, tools; written last (the commit)."""
    return Manifest(
        kind="logical-backup",
        id=backup_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        objects=written,
        tables=[TableEntry(t.name, t.rows, t.checksum, t.method) for t in dumped.tables],
        sequences=dumped.sequences,
        large_objects=dumped.content.large_objects if dumped.content else None,
        materialized_views=dumped.content.materialized_views if dumped.content else None,
        database_properties=dumped.db_properties,
        **manifest_fields(dsn, locked, db_size, pg_dump, recipients, options.compression_level),
        extra={
            "snapshot_at": snapshot_at.astimezone(UTC).isoformat(),
            "checksums": options.checksums,
            "role_passwords": options.role_passwords,
            "cleaned_up": locked.removed,
        },
    )


def _sequence_entries(before: dict[str, tuple[int, bool]], after: dict[str, tuple[int, bool]]) -> list[SequenceEntry]:
    """Sequences as read before and after pg_dump read them (nextval is not transactional)."""
    entries = []
    for name, (value, called) in before.items():
        later = after.get(name, (value, called))
        entries.append(SequenceEntry(name, value, called, None if later == (value, called) else list(later)))
    return entries


@dataclass(frozen=True)
class _SnapshotContent:
    large_objects: list[LargeObjectEntry]
    materialized_views: list[MatviewEntry]


class _ChecksumThread:
    """Per-table checksums, large objects and materialized views in the dump's snapshot, while the dump streams."""

    def __init__(self, dsn: str, snapshot: str) -> None:
        self._result: tuple[list[TableChecksum], _SnapshotContent | None] = ([], None)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(dsn, snapshot), name="table-checksums", daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self, dsn: str, snapshot: str) -> None:
        try:
            tables = database_checksums(dsn, snapshot=snapshot)
            with snapshot_connection(dsn, snapshot) as conn:
                content = _SnapshotContent(large_objects(conn), materialized_views(conn, evaluate=True))
            self._result = (tables, content)
        except BaseException as exc:  # noqa: BLE001 - re-raised in result()
            self._error = exc

    def result(self) -> tuple[list[TableChecksum], _SnapshotContent | None]:
        self._thread.join()
        if self._error:
            raise self._error
        return self._result
