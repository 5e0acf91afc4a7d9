"""Base backup through the low-level API: pg_backup_start, the data directory read from disk, pg_backup_stop.

The same stored object as pg_basebackup's (core/backup/physical.py): one tar of the data directory,
``backup_label`` and PostgreSQL's own ``backup_manifest`` format inside it, through the same
zstd -> age -> SHA-256 -> storage pipeline. Measured faster on the database host (docs/benchmarks.md,
"Base backups"): the files come straight from the page cache, without the replication protocol.

What pg_basebackup gets from the server is rebuilt here, from PostgreSQL 15's basebackup.c:

- the exclusions (``EXCLUDE_DIR_CONTENTS``, ``EXCLUDE_FILES``, temporary files and relations, the
  non-init forks of unlogged relations, pg_wal's contents), pg_control sent last;
- a file that vanishes while read is skipped, one that shrinks is padded with zeros to the size in
  its header (WAL replay rewrites it), one that grows is read up to that size only;
- a ``backup_manifest`` (version 1: a CRC-32C per file, the WAL range, the SHA-256 of the manifest),
  the last member, so ``pg_verifybackup`` checks these backups as it checks pg_basebackup's.

It must run where the data directory is, and only on that very cluster: ``local_data_dir`` refuses a
directory that is missing or unreadable here, whose pg_control names another system identifier, or
whose postmaster is not the parent of our own backend (a standby or copy of the cluster at the same
path on this host). Data page checksums are not checked on the way (pg_basebackup checks them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import psycopg

from dr_pipelines.core import checkpoints
from dr_pipelines.core.backup.pipeline import BackupError, stream_reader
from dr_pipelines.core.errors import StorageError
from dr_pipelines.core.manifest import ObjectEntry
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import READ_SIZE, CountingReader
from dr_pipelines.core.wal.names import Segment, parse_lsn

# basebackup.c (PostgreSQL 15): directories kept empty, at any depth
EXCLUDE_DIR_CONTENTS = frozenset({"pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial",
                                  "pg_snapshots", "pg_subtrans"})
# (name, match as prefix), at any depth
EXCLUDE_FILES = (("postgresql.auto.conf.tmp", False), ("current_logfiles.tmp", False), ("pg_internal.init", True),
                 ("backup_label", False), ("tablespace_map", False), ("backup_manifest", False),
                 ("postmaster.pid", False), ("postmaster.opts", False))
TEMP_PREFIX = "pgsql_tmp"
# parse_filename_for_nontemp_relation() and looks_like_temp_rel_name(); forkname_chars() never spells "main"
_RELATION = re.compile(r"([0-9]{1,10})(?:_(fsm|vm|init))?(?:\.[0-9]+)?")
_TEMP_RELATION = re.compile(r"t[0-9]+_[0-9]+(?:_(?:fsm|vm|init))?(?:\.[0-9]+)?")
_DB_DIR = re.compile(r"base/[0-9]+/")
CONTROL_FILE = "global/pg_control"
FILE_MODE = 0o600  # pg_file_create_mode, for the files we write (backup_label)
DIR_MODE = 0o700
ARCHIVE_POLL_S = 0.02
ARCHIVE_NOTICE_S = 60.0  # as the server's NOTICE in pg_backup_stop
log = logging.getLogger(__name__)
GRANT_FIX = ("back up as a superuser or a role granted EXECUTE on pg_backup_start and pg_backup_stop; "
             "read the PostgreSQL log for the cause")


class LowLevelUnavailableError(BackupError):
    """The low-level API cannot back up this source from here; `auto` falls back to pg_basebackup."""


@dataclass
class ManifestFile:
    path: str
    size: int
    mtime: int
    checksum: int  # CRC-32C


@dataclass
class BackupManifestWriter:
    """PostgreSQL's backup_manifest, version 1 (backup_manifest.c), built as the files pass."""

    files: list[ManifestFile] = field(default_factory=list)

    def add(self, path: str, size: int, mtime: float, checksum: int) -> None:
        self.files.append(ManifestFile(path, size, int(mtime), checksum))

    def render(self, timeline: int, start_lsn: str, stop_lsn: str) -> bytes:
        lines = [_manifest_line(f) for f in self.files]
        body = ('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n' + ",\n".join(lines) + "\n],\n"
                f'"WAL-Ranges": [\n{{ "Timeline": {timeline}, "Start-LSN": "{start_lsn}", "End-LSN": "{stop_lsn}" }}'
                "\n],\n").encode()
        return body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode()


def _manifest_line(f: ManifestFile) -> str:
    raw = os.fsencode(f.path)
    try:
        raw.decode("utf-8")
        path = '"Path": ' + json.dumps(f.path, ensure_ascii=False)
    except UnicodeDecodeError:  # PostgreSQL hex-encodes a path that is not valid UTF-8
        path = f'"Encoded-Path": "{raw.hex()}"'
    modified = time.strftime("%Y-%m-%d %H:%M:%S GMT", time.gmtime(f.mtime))
    # pg_checksum_final copies the CRC in the machine's byte order: little-endian on every platform we run on
    checksum = f.checksum.to_bytes(4, "little").hex()
    return (f'{{ {path}, "Size": {f.size}, "Last-Modified": "{modified}", '
            f'"Checksum-Algorithm": "CRC32C", "Checksum": "{checksum}" }}')


def local_data_dir(conn: psycopg.Connection) -> Path:
    """The source's data directory if it is this very cluster's, readable here; else LowLevelUnavailableError.

    Three checks, so we never copy another cluster's files that sit at the same path: the
    directory and its pg_control are readable, pg_control's system identifier is the server's,
    and the postmaster that the directory's postmaster.pid names is the parent of our backend
    (a standby or a copy of this cluster has the same system identifier).
    """
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        raise LowLevelUnavailableError("the source is a standby: the low-level method backs up primaries only",
                                       fix="use base_backup_method pg_basebackup (or auto) for a standby")
    try:
        path = Path(conn.execute("SELECT current_setting('data_directory')").fetchone()[0])
    except psycopg.errors.InsufficientPrivilege:
        raise LowLevelUnavailableError(
            "the backup role cannot read the data_directory setting",
            fix="grant pg_read_all_settings to the backup role, or use base_backup_method pg_basebackup") from None
    sysid, backend = conn.execute("SELECT system_identifier::text, pg_backend_pid() FROM pg_control_system()").fetchone()
    try:
        with open(path / CONTROL_FILE, "rb") as f:
            found = str(int.from_bytes(f.read(8), "little"))  # ControlFileData starts with system_identifier
    except OSError as exc:
        raise LowLevelUnavailableError(
            f"the source's data directory {path} is not readable here ({exc.strerror})",
            fix="run the backup on the database host as a user that can read the data directory (root or the "
                "PostgreSQL OS user), or use base_backup_method pg_basebackup") from None
    if found != sysid:
        raise LowLevelUnavailableError(
            f"{path} here holds the cluster with system identifier {found}, not the source's {sysid}: another "
            "cluster sits at that path on this host",
            fix="run the backup on the source's own host, or use base_backup_method pg_basebackup")
    postmaster = _postmaster_pid(path)
    if postmaster is None or _parent_pid(backend) != postmaster:
        raise LowLevelUnavailableError(
            f"{path} here is not the data directory of the server drp is connected to (its postmaster {postmaster} "
            f"did not start our backend {backend}: a copy or standby of the cluster, or another host or container)",
            fix="run the backup on the source's own host, or use base_backup_method pg_basebackup")
    return path


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid on the first line of postmaster.pid (None without one: no server runs there)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # after "(comm)": state, then ppid
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class LowLevelResult:
    entry: ObjectEntry
    files: dict[str, bytes]  # backup_label and backup_manifest, as stored


def take_lowlevel(conn: psycopg.Connection, data_dir: Path, storage: Storage, key: str, recipients: list, *,
                  label: str, level: int, threads: int, progress: Progress | None, expected: int | None,
                  segment_bytes: int, tap: Callable[[bytes], None] | None = None,
                  frame_table: list | None = None) -> LowLevelResult:
    """One backup session on ``conn`` (autocommit): pg_backup_start, the tar streamed to ``key``, pg_backup_stop,
    then the wait until PostgreSQL has archived the stop segment (``wait_for_archive``).

    pg_backup_stop runs once the last data file is read (inside the stream: backup_label comes
    from it). On any failure the session's backup is ended and the object deleted; a killed
    process ends it by closing the session.
    """
    try:
        conn.execute("SELECT pg_backup_start(%s, fast => true)", (label,))
    except psycopg.Error as exc:
        raise BackupError(f"pg_backup_start failed: {exc.diag.message_primary or exc}", fix=GRANT_FIX) from None
    tar = DataDirTar(data_dir, lambda: _stop(conn))
    try:
        entry = stream_reader(CountingReader(tar, tap=tap), storage, key, "base", "tar", recipients,  # type: ignore[arg-type]
                              level=level, threads=threads, progress=progress, expected=expected,
                              frame_table=frame_table)
    except BaseException as exc:
        if tar.stopped is None:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_backup_stop(wait_for_archive => false)")
        if tar.failure is not None and tar.failure is not exc:
            raise tar.failure from None
        raise
    assert tar.stopped is not None
    try:
        wait_for_archive(data_dir, archived_before_done(tar.members["backup_label"].decode(), tar.stopped,
                                                        segment_bytes))
    except BaseException:
        with contextlib.suppress(StorageError):
            storage.delete(key)
        raise
    return LowLevelResult(entry, tar.members)


def _stop(conn: psycopg.Connection) -> tuple[str, str, str]:
    """pg_backup_stop without the server's wait for the archive: ``wait_for_archive`` does it, faster."""
    try:
        lsn, label, spcmap = conn.execute(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)").fetchone()
    except psycopg.Error as exc:
        raise BackupError(f"pg_backup_stop failed: {exc.diag.message_primary or exc}", fix=GRANT_FIX) from None
    return lsn, label, spcmap or ""


def archived_before_done(label: str, stop_lsn: str, segment_bytes: int) -> list[str]:
    """What pg_backup_stop(wait_for_archive => true) waits for: the segment holding the stop point's
    last byte and the backup history file (``<start segment>.<start offset>.backup``)."""
    tli, start = label_start(label)
    start_lsn = parse_lsn(start)
    stop_segment = Segment.of_lsn(tli, parse_lsn(stop_lsn) - 1, segment_bytes).name  # XLByteToPrevSeg
    history = f"{Segment.of_lsn(tli, start_lsn, segment_bytes).name}.{start_lsn % segment_bytes:08X}.backup"
    return [stop_segment, history]


def label_start(label: str) -> tuple[int, str]:
    """(start timeline, start LSN) from the backup_label pg_backup_stop returned."""
    start = re.search(r"^START WAL LOCATION: (\S+)", label, re.M)
    timeline = re.search(r"^START TIMELINE: (\d+)", label, re.M)
    if not (start and timeline):
        raise BackupError("pg_backup_stop returned a backup_label without its start LSN or timeline",
                          fix="report this with the PostgreSQL version")
    return int(timeline.group(1)), start.group(1)


def wait_for_archive(data_dir: Path, names: list[str], *, poll: float = ARCHIVE_POLL_S,
                     notice_after: float = ARCHIVE_NOTICE_S) -> None:
    """Return once PostgreSQL has archived every WAL file in ``names``; like the server, wait as long as it takes.

    pg_backup_stop(wait_for_archive => true) does this itself, but its loop sleeps a whole second
    between looks and the archiver's success does not wake it: every backup paid ~1 s there while
    the segment had been archived within milliseconds (docs/benchmarks.md, "Base backups"). The
    test is the server's own (XLogArchiveIsBusy), on the data directory this method reads anyway.
    """
    wal = data_dir / "pg_wal"
    started = time.monotonic()
    noticed = False
    while busy := _still_busy(wal, names):
        if not noticed and time.monotonic() - started >= notice_after:
            noticed = True
            log.warning("base backup: still waiting for PostgreSQL to archive %s (%d s): check the WAL archiver "
                        "(`drp wal status`, pg_stat_archiver.last_failed_wal); the backup is not restorable "
                        "without its WAL", ", ".join(busy), notice_after)
        time.sleep(poll)


def _still_busy(wal: Path, names: list[str]) -> list[str]:
    try:
        return [name for name in names if _archive_busy(wal, name)]
    except OSError as exc:  # not ENOENT (a missing file is an answer): e.g. pg_wal links to a directory we cannot read
        raise BackupError(f"cannot see whether PostgreSQL archived {', '.join(names)}: {exc.strerror} "
                          f"({wal / 'archive_status'})",
                          fix="run the backup as root or as the PostgreSQL OS user (it must read pg_wal as well as "
                              "the data directory), or use base_backup_method pg_basebackup") from None


def _archive_busy(wal: Path, name: str) -> bool:
    """XLogArchiveIsBusy(): not yet archived unless ``.done`` exists or the file is already gone from pg_wal."""
    status = wal / "archive_status"
    if (status / f"{name}.done").exists():
        return False
    if (status / f"{name}.ready").exists():
        return True
    if (status / f"{name}.done").exists():  # renamed between our two looks
        return False
    return (wal / name).exists()


class DataDirTar:
    """A file-like ``read(n)`` over a tar of a data directory, built while it is read (nothing staged).

    Members as pg_basebackup writes them (relative names, directories with their modes), file
    contents in READ_SIZE reads, each file's CRC-32C into the manifest on the way. After the
    walk and pg_control, ``stop()`` ends the backup; its backup_label (and tablespace_map), then
    the backup_manifest, close the archive.
    """

    def __init__(self, root: Path, stop: Callable[[], tuple[str, str, str]]) -> None:
        self.root = root
        self._stop = stop
        self.manifest = BackupManifestWriter()
        self.members: dict[str, bytes] = {}
        self.stopped: str | None = None
        self.failure: BaseException | None = None
        self._pieces = self._archive()
        self._pending = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        while not self._pending:
            try:
                piece = next(self._pieces, None)
            except BaseException as exc:
                self.failure = exc  # the compressor and pyrage wrap it; take_lowlevel raises it as it was
                raise
            if piece is None:
                return b""
            self._pending = memoryview(piece)
        if n < 0 or n >= len(self._pending):
            out, self._pending = self._pending, memoryview(b"")
        else:
            out, self._pending = self._pending[:n], self._pending[n:]
        return out.tobytes() if len(out) != len(out.obj) else out.obj  # type: ignore[return-value]

    def _archive(self) -> Iterator[bytes]:
        yield from self._dir(self.root, "")
        control = self.root / CONTROL_FILE
        yield from self._file(control, CONTROL_FILE, control.lstat())
        checkpoints.reached("base-backup-before-stop")
        stop_lsn, label, spcmap = self._stop()
        self.stopped = stop_lsn
        yield from self._content("backup_label", label.encode())
        if spcmap:
            yield from self._content("tablespace_map", spcmap.encode())
        timeline, start = label_start(label)
        manifest = self.manifest.render(timeline, start, stop_lsn)
        self.members.update({"backup_label": label.encode(), "backup_manifest": manifest})
        yield _header("backup_manifest", len(manifest), time.time(), FILE_MODE)
        yield manifest + _padding(len(manifest))
        yield bytes(2 * tarfile.BLOCKSIZE)

    def _dir(self, path: Path, rel: str) -> Iterator[bytes]:
        """sendDir(): one directory's members, recursively, with basebackup.c's exclusions."""
        db_dir = _DB_DIR.fullmatch(rel) is not None
        try:
            with os.scandir(path) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            return  # dropped (a database) since its header was written: WAL replay drops it again
        for name in names:
            if name.startswith(TEMP_PREFIX) or _excluded_file(name):
                continue
            if db_dir and (_temp_relation(name) or _unlogged_non_init(path, name)):
                continue
            member = f"{rel}{name}"
            if member == CONTROL_FILE:
                continue  # sent last
            full = path / name
            try:
                st = full.lstat()
            except FileNotFoundError:
                continue  # went away while scanning
            if name in EXCLUDE_DIR_CONTENTS or member == "pg_wal":
                st_mode = _as_dir_mode(full, st)
                yield _header(member, 0, st.st_mtime, st_mode, directory=True)
                if member == "pg_wal":
                    yield _header("pg_wal/archive_status", 0, st.st_mtime, st_mode, directory=True)
                continue
            if stat.S_ISDIR(st.st_mode):
                yield _header(member, 0, st.st_mtime, stat.S_IMODE(st.st_mode), directory=True)
                yield from self._dir(full, member + "/")
            elif stat.S_ISREG(st.st_mode):
                yield from self._file(full, member, st)
            # else: a socket, or a symbolic link outside pg_tblspc (none: tablespaces are refused): skipped

    def _file(self, path: Path, member: str, st: os.stat_result) -> Iterator[bytes]:
        """sendFile(): the size in the header is the size seen by lstat; shrunk files are padded with zeros."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # dropped while we walked: replay of the WAL from the start recreates what is needed
        except PermissionError:
            raise BackupError(f"cannot read {self.root / member}: permission denied",
                              fix="run the backup as root or as the PostgreSQL OS user") from None
        size, done, crc = st.st_size, 0, 0
        try:
            yield _header(member, size, st.st_mtime, stat.S_IMODE(st.st_mode))
            while done < size:
                data = os.read(fd, min(READ_SIZE, size - done))
                if not data:
                    break
                crc = crc32c.crc32c(data, crc)
                done += len(data)
                yield data
        finally:
            os.close(fd)
        while done < size:  # truncated while read
            zeros = bytes(min(READ_SIZE, size - done))
            crc = crc32c.crc32c(zeros, crc)
            done += len(zeros)
            yield zeros
        self.manifest.add(member, size, st.st_mtime, crc)
        if size % tarfile.BLOCKSIZE:
            yield _padding(size)

    def _content(self, member: str, data: bytes) -> Iterator[bytes]:
        """sendFileWithContent(): a file we write (backup_label), in the manifest like the others."""
        now = time.time()
        self.manifest.add(member, len(data), now, crc32c.crc32c(data))
        yield _header(member, len(data), now, FILE_MODE)
        yield data + _padding(len(data))


def _header(name: str, size: int, mtime: float, mode: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), mode
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = "postgres"
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return bytes(-size % tarfile.BLOCKSIZE)


def _as_dir_mode(path: Path, st: os.stat_result) -> int:
    """convert_link_to_directory(): a symlinked pg_wal is written as a plain 0700 directory."""
    return DIR_MODE if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)


def _excluded_file(name: str) -> bool:
    return any(name.startswith(n) if prefix else name == n for n, prefix in EXCLUDE_FILES)


def _temp_relation(name: str) -> bool:
    """looks_like_temp_rel_name(): t<backend>_<relfilenode>[_fork][.segment]."""
    return _TEMP_RELATION.fullmatch(name) is not None


def _unlogged_non_init(directory: Path, name: str) -> bool:
    """A fork other than _init of a relation that has an _init fork (an unlogged relation: reset at startup)."""
    match = _RELATION.fullmatch(name)
    if match is None or match.group(2) == "init":
        return False
    try:
        os.lstat(directory / f"{match.group(1)}_init")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    return True
