"""Local directory backend: for development, tests, and NAS mounts.

Atomicity comes from writing a temp file in the target directory and ``os.replace``-ing it,
which POSIX guarantees is atomic within one file system. Files are private (0o600) because
backups hold tenants' health data.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from dr_pipelines.core.errors import ObjectNotFoundError, StorageError
from dr_pipelines.core.storage.base import (
    STALE_UPLOAD,
    TEMP_SUFFIX,
    ObjectInfo,
    PutResult,
    Storage,
    StorageProperties,
    close_chunks,
    validate_key,
    validate_prefix,
)

FILE_MODE = 0o600
DIR_MODE = 0o700
# put_bytes writes payloads of at least DIRECT_MIN bytes (a WAL segment's object) with O_DIRECT, from a
# DIRECT_ALIGN-aligned buffer kept per thread (LocalStorage.put_bytes says why).
DIRECT_MIN = 1 << 20
DIRECT_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux and some BSDs; elsewhere always the buffered path
_direct_buffers = threading.local()
# put_stream's temp file for "<dir>/<name>" is "<dir>/.<name>.<uuid hex>.partial".
_TEMP_NAME = re.compile(r"\.(.+)\.[^.]+" + re.escape(TEMP_SUFFIX))


class LocalStorage(Storage):
    """Objects are files under ``root``; a key's segments are its relative path."""

    properties = StorageProperties(atomic_rename=True)  # no presigned URLs, no server-side encryption

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    # -- helpers -----------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot {action} '{key}' in {self.url}: {exc.strerror or exc}",
            fix=f"check that {self.root} is on a mounted, writable file system with free space",
        )

    def _makedirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents, each with DIR_MODE (os.makedirs would not)."""
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    # -- Storage -----------------------------------------------------------------------
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
        digest, size = hashlib.sha256(), 0
        try:
            self._makedirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except OSError as exc:
            raise self._error("write", key, exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:  # the iterator's own exceptions propagate unwrapped
                    digest.update(chunk)
                    size += len(chunk)
                    try:
                        f.write(chunk)
                    except OSError as exc:
                        raise self._error("write", key, exc) from exc
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as exc:
                    raise self._error("write", key, exc) from exc
            os.replace(tmp, path)
        except BaseException as exc:
            close_chunks(chunks)
            tmp.unlink(missing_ok=True)
            self._prune_empty(path.parent)  # a failed first upload leaves no empty directory behind
            if isinstance(exc, OSError):  # from close() or replace(): the backend failed
                raise self._error("write", key, exc) from exc
            raise
        try:
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise self._error("write", key, exc) from exc
        return PutResult(key, size, digest.hexdigest())

    def put_bytes(self, key: str, data: bytes) -> PutResult:
        """A payload of DIRECT_MIN bytes or more is written with O_DIRECT, past the page cache; smaller ones
        (and file systems that refuse O_DIRECT) go through put_stream. Same atomicity and durability
        (temp file, fsync, rename, directory fsync) and the same result.

        Why: the WAL archiver writes a ~6 MB object per segment and nothing reads it back soon. Through the
        page cache, each write allocated ~1,500 fresh pages and the fsync then waited for their writeback
        behind whatever else was dirty: on the loaded 2-core machine the write phase took 12-15 ms of CPU
        a push; with O_DIRECT 6-7 ms, and throughput rose 35-70 % (docs/benchmarks.md, "WAL archiving").
        It also keeps the archive from evicting PostgreSQL's own cached pages.
        """
        if len(data) < DIRECT_MIN or not _O_DIRECT:
            return super().put_bytes(key, data)
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
        try:
            self._makedirs(path.parent)
            if not _write_direct(tmp, data):
                return super().put_bytes(key, data)
            os.replace(tmp, path)
            self._fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._prune_empty(path.parent)
            raise self._error("write", key, exc) from exc
        return PutResult(key, len(data), hashlib.sha256(data).hexdigest())

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFoundError(
                f"object '{key}' not found in {self.url}", fix="check the key, e.g. with list()"
            ) from exc
        except OSError as exc:
            raise self._error("read", key, exc) from exc

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:
            raise self._error("stat", key, exc) from exc
        if st is None or not path.is_file():
            raise ObjectNotFoundError(
                f"object '{key}' not found in {self.url}", fix="check the key, e.g. with list()"
            )
        return self._info(key, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        base, _, tail = prefix.rpartition("/")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        yield from self._walk(start, f"{base}/" if base else "", tail)

    def _walk(self, directory: Path, key_prefix: str, name_prefix: str) -> Iterator[ObjectInfo]:
        """Yield files in key order: sorting a directory's entries by name, with '/' appended
        to sub-directories, orders them exactly as their full keys sort."""
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(name_prefix)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._error("list", key_prefix or "/", exc) from exc
        keyed = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                keyed.append((entry.name + "/", entry))
            elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(TEMP_SUFFIX):
                keyed.append((entry.name, entry))
        for name, entry in sorted(keyed, key=lambda pair: pair[0]):
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), key_prefix + name, "")
            else:
                try:
                    yield self._info(key_prefix + name, entry.stat(follow_symlinks=False))
                except FileNotFoundError:  # deleted while listing
                    continue

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._error("delete", key, exc) from exc
        # Prune now-empty parents so deleted tenants leave no directory names behind.
        self._prune_empty(path.parent)

    def _prune_empty(self, directory: Path) -> None:
        """Remove ``directory`` and its parents while they are empty, never the root."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break
            directory = directory.parent

    def check(self) -> None:
        probe = self.root / f".drp-check.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            self._makedirs(self.root)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"storage directory {self.root} is not usable: {exc.strerror or exc}",
                fix=f"create {self.root} writable by this user (uid {os.getuid()}) "
                "or correct DRP_STORAGE_URL",
            ) from exc

    def cleanup_incomplete(
        self, prefix: str, older_than: timedelta = STALE_UPLOAD, *, dead: Callable[[str], bool] | None = None
    ) -> int:
        validate_prefix(prefix)
        cutoff = time.time() - older_than.total_seconds()
        base = prefix.rpartition("/")[0]
        start = self.root.joinpath(*base.split("/")) if base else self.root
        removed = 0
        for dirpath, _dirs, files in os.walk(start):
            directory = Path(dirpath)
            for name in files:
                key = self._partial_key(directory, name)
                if key is None or not key.startswith(prefix):
                    continue
                path = directory / name
                try:
                    if path.stat().st_mtime <= cutoff or (dead is not None and dead(key)):
                        path.unlink()
                        removed += 1
                        self._prune_empty(directory)  # a crashed run's directory goes with its partial
                except FileNotFoundError:  # its writer finished or another cleaner won
                    continue
                except OSError as exc:
                    raise self._error("remove partial upload", name, exc) from exc
        return removed

    def _partial_key(self, directory: Path, name: str) -> str | None:
        """The key a temp file is being written for, or None if it is not one of ours."""
        match = _TEMP_NAME.fullmatch(name)
        if match is None:
            return None
        return "/".join((*directory.relative_to(self.root).parts, match.group(1)))


def _write_direct(path: Path, data: bytes) -> bool:
    """Create ``path`` (FILE_MODE) holding ``data``, written with O_DIRECT and fsync'd; False, leaving nothing,
    when the file system refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6, some FUSE and network mounts).

    O_DIRECT wants an aligned buffer and whole blocks: ``data`` is copied into this thread's page-aligned
    buffer (an anonymous mmap, kept for the next push), padded with zeros to a whole block, written,
    then the file is truncated to its real size before the fsync.
    """
    size = len(data)
    padded = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
    buffer = getattr(_direct_buffers, "buffer", None)
    if buffer is None or len(buffer) < padded:
        buffer = _direct_buffers.buffer = mmap.mmap(-1, padded)
    with memoryview(buffer) as view:
        view[:size] = data
        view[size:padded] = bytes(padded - size)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT, FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise
        try:
            written = 0
            while written < padded:
                written += os.write(fd, view[written:padded])
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if exc.errno == errno.EINVAL:  # alignment the device does not take
                return False
            raise
        os.close(fd)
    return True
