"""Base backup: a tar of the cluster (the low-level API, or pg_basebackup) -> zstd -> age -> storage, manifest last.

Two methods give the same stored object (``BaseBackupOptions.method``, setting ``base_backup_method``):
``lowlevel`` (core/backup/lowlevel.py: pg_backup_start, the data directory read here, pg_backup_stop;
faster, needs the data directory of this very cluster on this host) and ``pg_basebackup`` (any host).
``auto`` takes the first when ``local_data_dir`` accepts the source, else the second, and records why.

With pg_basebackup: one tar stream of the whole cluster, PostgreSQL's own ``backup_manifest`` inside it (PostgreSQL
13+ injects the manifest into the tar it writes to stdout), through the same pipeline and under
the same lock and attempt record as logical backups (core/backup/pipeline.py). ``-X none``: the
WAL from the backup's start to its stop comes from the WAL archive (core/wal), so a base backup
is restorable only once that WAL is archived (the catalog checks it); pg_basebackup itself waits
until PostgreSQL has archived the stop segment.

The LSNs and timeline are read from the stream itself as it passes: ``backup_label`` (the first
member: start LSN, start timeline) and ``backup_manifest`` (the last member: the WAL range with
the stop LSN). pg_basebackup prints no LSNs with ``-X none``, and what we record then cannot
disagree with the bytes we stored.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.core import checkpoints
from dr_pipelines.core.backup.catalog import BASE_KIND, record_source
from dr_pipelines.core.backup.index_map import KEY as INDEX_MAP_KEY
from dr_pipelines.core.backup.index_map import record_index_map
from dr_pipelines.core.backup.lowlevel import LowLevelUnavailableError, local_data_dir, take_lowlevel
from dr_pipelines.core.backup.pipeline import (
    BackupError,
    LockedSource,
    backup_lock,
    manifest_fields,
    stream_command,
    with_attempt,
)
from dr_pipelines.core.crypto import parse_recipients
from dr_pipelines.core.frames import KEY as FRAMES_KEY
from dr_pipelines.core.layout import BASE_OBJECT, backup_prefix
from dr_pipelines.core.manifest import Manifest, ObjectEntry, write_manifest
from dr_pipelines.core.pg.connect import connect, libpq_env
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.tarformat import TarWalk
from dr_pipelines.core.wal.names import Segment, parse_lsn

WANTED = ("backup_label", "backup_manifest")
MID_STREAM = 16 << 20
METHODS = ("auto", "lowlevel", "pg_basebackup")
log = logging.getLogger(__name__)


class BaseBackupRefusedError(BackupError):
    """The source cannot give a restorable base backup; refused before anything ran."""


@dataclass(frozen=True)
class BaseBackupOptions:
    compression_level: int = 3
    zstd_threads: int = 2
    source_replaced: bool = False  # as BackupOptions: this cluster replaced the prefix's recorded one
    slot: str | None = None  # an existing physical replication slot, checked and recorded (see preflight)
    # auto: the low-level API when the data directory is this cluster's and readable here, else pg_basebackup
    method: str = "auto"


def run_base_backup(
    dsn: str,
    storage: Storage,
    recipients: list[str],
    *,
    options: BaseBackupOptions = BaseBackupOptions(),
    progress: Progress | None = None,
) -> Manifest:
    """Take one base backup; return its manifest (already stored). Raises and leaves no manifest on failure."""
    age_recipients = parse_recipients(recipients)
    return with_attempt(storage, lambda backup_id, started: _run(
        dsn, storage, recipients, age_recipients, backup_id, started, options, progress))


def _run(dsn: str, storage: Storage, recipients: list[str], age_recipients: list, backup_id: str, started: datetime,
         options: BaseBackupOptions, progress: Progress | None) -> Manifest:
    prefix = backup_prefix(backup_id)
    with connect(dsn, autocommit=True) as conn, backup_lock(
            conn, dsn, storage, replaced=options.source_replaced,
            preflight=lambda c: preflight(c, slot=options.slot)) as locked:
        cluster = _cluster_facts(conn)
        method, data_dir, note = choose_method(conn, options.method)
        key = f"{prefix}/{BASE_OBJECT}"
        index_map = record_index_map(conn)  # before the start: see core/backup/index_map.py
        frames: list = []  # filled once the stream is complete: see core/frames.py
        start_time = datetime.now(UTC)
        if data_dir is not None:
            taken = take_lowlevel(conn, data_dir, storage, key, age_recipients, label=f"drp {backup_id}",
                                  level=options.compression_level, threads=options.zstd_threads, progress=progress,
                                  expected=cluster["size"], segment_bytes=cluster["segment_bytes"],
                                  tap=_with_checkpoint(lambda data: None), frame_table=frames)
            entry, files, tool = taken.entry, taken.files, None
        else:
            tool = client_tool("pg_basebackup", locked.ident.major)
            entry, files = _pg_basebackup(tool, dsn, backup_id, storage, key, age_recipients, options, progress,
                                          cluster["size"], frames)
        try:
            # Any xid at or past this one was assigned after the backup stopped: its commit is
            # after stop_lsn, so recovery from this base can reach it (see docs/backups.md).
            next_xid = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()[0]
            stop_time = datetime.now(UTC)
            wal = wal_range(files, cluster["segment_bytes"])
        except BaseException:
            storage.delete(key)
            raise
    extra = {**wal, "system_identifier": locked.ident.system_identifier, "start_time": start_time.isoformat(),
             "stop_time": stop_time.isoformat(), "next_xid": next_xid, "pg_version_num": locked.ident.version_num,
             "segment_bytes": cluster["segment_bytes"], "data_checksums": cluster["data_checksums"],
             "slot": options.slot, "cleaned_up": locked.removed, "method": method, "method_note": note,
             INDEX_MAP_KEY: index_map.as_extra() if index_map else None, FRAMES_KEY: frames}
    manifest = _manifest(dsn, backup_id, started, recipients, options, locked, cluster["size"], tool, entry, extra)
    write_manifest(storage, prefix, manifest)  # the commit point
    record_source(storage, manifest.source, replaced=options.source_replaced)
    return manifest


def choose_method(conn: psycopg.Connection, wanted: str) -> tuple[str, Path | None, str | None]:
    """(method, data directory for lowlevel, why auto did not use lowlevel): see docs/backups.md, "Method"."""
    if wanted not in METHODS:
        raise BaseBackupRefusedError(f"unknown base backup method {wanted!r}", fix=f"use one of {', '.join(METHODS)}")
    if wanted == "pg_basebackup":
        return wanted, None, None
    try:
        return "lowlevel", local_data_dir(conn), None
    except LowLevelUnavailableError as exc:
        if wanted == "lowlevel":
            raise
        note = f"auto chose pg_basebackup: {exc.problem}"
        log.warning(note)
        return "pg_basebackup", None, note


def _pg_basebackup(tool: str, dsn: str, backup_id: str, storage: Storage, key: str, age_recipients: list,
                   options: BaseBackupOptions, progress: Progress | None, size: int,
                   frames: list) -> tuple[ObjectEntry, dict[str, bytes]]:
    """pg_basebackup -D - -Ft -X none streamed to key; backup_label and backup_manifest read from the stream."""
    conninfo, env = libpq_env(dsn)
    cmd = [tool, f"--dbname={conninfo}", "--pgdata=-", "--format=tar", "--wal-method=none",
           "--checkpoint=fast", "--no-password", f"--label=drp {backup_id}"]
    tap = TarTap(WANTED)
    entry = stream_command(cmd, env, storage, key, "base", "tar", age_recipients, level=options.compression_level,
                           threads=options.zstd_threads, progress=progress, expected=size, tap=_with_checkpoint(tap.walk),
                           frame_table=frames)
    return entry, tap.files


def _with_checkpoint(tap: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The tap, passing checkpoint 'base-backup-mid-stream' once after the first 16 MiB (crash tests stop there)."""
    seen = [0]

    def feed(data: bytes) -> None:
        tap(data)
        before, seen[0] = seen[0], seen[0] + len(data)
        if before < MID_STREAM <= seen[0]:
            checkpoints.reached("base-backup-mid-stream")

    return feed


def preflight(conn: psycopg.Connection, *, slot: str | None) -> None:
    """Refuse a source whose base backup could not be restored (or taken), naming the setting to change."""
    wal_level, archive_mode = conn.execute("SELECT current_setting('wal_level'), current_setting('archive_mode')").fetchone()
    if wal_level not in ("replica", "logical"):
        raise BaseBackupRefusedError(
            f"wal_level is {wal_level!r} on the source: a base backup needs 'replica' (or 'logical')",
            fix="set wal_level = replica in postgresql.conf and restart PostgreSQL (docs/wal.md, Settings)")
    if archive_mode == "off":
        raise BaseBackupRefusedError(
            "archive_mode is off on the source: the WAL from a base backup's start to its stop would never be "
            "archived, so the backup could not be restored",
            fix="set archive_mode = on and archive_command to the line `drp wal archive-command` prints, restart "
                "PostgreSQL and run `drp wal archiver` (docs/wal.md)")
    commands = conn.execute("SELECT setting FROM pg_settings WHERE name IN ('archive_command', 'archive_library') "
                            "AND setting IS NOT NULL").fetchall()
    if commands and all(not value for (value,) in commands):
        raise BaseBackupRefusedError(
            "archive_mode is on but archive_command and archive_library are empty: no WAL is archived, and "
            "pg_basebackup would wait for it forever",
            fix="set archive_command to the line `drp wal archive-command` prints and reload PostgreSQL (docs/wal.md)")
    spaces = [name for (name,) in conn.execute(
        "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1")]
    if spaces:
        raise BaseBackupRefusedError(
            f"the source has user tablespaces ({', '.join(spaces)}): base backups of such clusters are not supported yet",
            fix="take logical backups (`drp backup run`), or move those objects to pg_default "
                "(ALTER TABLE ... SET TABLESPACE pg_default) and drop the tablespaces")
    if slot is not None:
        row = conn.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            raise BaseBackupRefusedError(
                f"replication slot {slot!r} does not exist on the source",
                fix=f"create it (SELECT pg_create_physical_replication_slot('{slot}')) or leave out --slot")
        if row[0] != "physical":
            raise BaseBackupRefusedError(f"replication slot {slot!r} is a {row[0]} slot, not a physical one",
                                         fix="name a physical replication slot, or leave out --slot")


def _cluster_facts(conn: psycopg.Connection) -> dict[str, Any]:
    checksums, segment_bytes, size = conn.execute(
        "SELECT current_setting('data_checksums') = 'on',"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " (SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database"
        "   WHERE datallowconn AND has_database_privilege(oid, 'CONNECT'))").fetchone()
    return {"data_checksums": checksums, "segment_bytes": segment_bytes, "size": size}


def wal_range(files: dict[str, bytes], segment_bytes: int) -> dict[str, Any]:
    """Start/stop LSN, timeline and the WAL segment range, from the backup_label and backup_manifest in the tar."""
    missing = [name for name in WANTED if name not in files]
    if missing:
        raise BackupError(f"pg_basebackup's tar stream has no {' or '.join(missing)}",
                          fix="use pg_basebackup 13 or newer, without --no-manifest")
    label = files["backup_label"].decode()
    start = re.search(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", label, re.M)
    start_tl = re.search(r"^START TIMELINE: (\d+)", label, re.M)
    ranges = json.loads(files["backup_manifest"]).get("WAL-Ranges") or []
    if not (start and start_tl and ranges):
        raise BackupError("cannot read the start or stop LSN from the backup's backup_label and backup_manifest",
                          fix="report this with the pg_basebackup version")
    timeline, stop_lsn = int(ranges[-1]["Timeline"]), ranges[-1]["End-LSN"]
    start_lsn = start.group(1)
    return {
        "timeline": timeline, "start_lsn": start_lsn, "stop_lsn": stop_lsn,
        "wal_start": Segment.of_lsn(int(start_tl.group(1)), parse_lsn(start_lsn), segment_bytes).name,
        # the record ending at stop_lsn lies in the segment holding its last byte (XLByteToPrevSeg)
        "wal_stop": Segment.of_lsn(timeline, parse_lsn(stop_lsn) - 1, segment_bytes).name,
    }


def _manifest(dsn: str, backup_id: str, started: datetime, recipients: list[str], options: BaseBackupOptions,
              locked: LockedSource, size: int, tool: str | None, entry: ObjectEntry, extra: dict[str, Any]) -> Manifest:
    return Manifest(
        kind=BASE_KIND,
        id=backup_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        objects=[entry],
        **manifest_fields(dsn, locked, size, tool, recipients, options.compression_level),
        extra=extra,
    )


class TarTap(TarWalk):
    """Captures the named members of a tar stream as its bytes pass (``walk``).

    Only the wanted members' contents are kept; everything else passes by size, so a 1 GB stream
    costs a few thousand header parses.
    """

    def __init__(self, wanted: tuple[str, ...]) -> None:
        super().__init__()
        self.wanted = set(wanted)
        self.files: dict[str, bytes] = {}
        self._name: str | None = None
        self._content = bytearray()

    def member(self, name: str, size: int, kind: bytes) -> None:
        self._name = name if name in self.wanted else None
        self._content.clear()

    def body(self, piece: memoryview) -> None:
        if self._name is not None:
            self._content += piece

    def member_end(self) -> None:
        if self._name is not None:
            self.files[self._name] = bytes(self._content)
        self._name = None
