"""A safe untar of a base backup's tar, fed the verified plaintext chunk by chunk.

``SafeUntar`` is the ``out`` of ``read_verified``: the decompressed chunks (~128 KiB) are parsed as they
come and file data goes to disk with ``os.write`` straight from them. Python's ``tarfile`` in stream
mode copied every byte through 16 KiB reads, joins and slices behind a pipe and a second thread; on a
1 GB base backup that made the extraction slower than pgBackRest's whole restore (docs/benchmarks.md).

What it accepts is what ``pg_basebackup -Ft`` (and GNU or Python tar) writes for a data directory:
regular files and directories, with ustar, GNU long-name and pax headers. Safety, as the stdlib's
``data`` filter and stricter:

- a name must be relative, without ``..`` or NUL: nothing outside the directory can be reached;
- only regular files and directories are made: a symlink, hard link, device or FIFO is refused (a
  data directory without tablespaces has none; the ``data`` filter refused every link that pointed
  outside, which a tablespace link does), so no path inside can lead outside either;
- files are created with ``O_EXCL | O_NOFOLLOW`` (nothing existing is overwritten or followed);
- modes keep the owner's and group's bits from the tar (owner read/write always), never others': WAL
  and table files are health data. Owners and times are not restored (the caller hands the tree to
  the PostgreSQL OS user; PostgreSQL does not read file times).

A refused or malformed member raises ``TarFormatError`` at once; the caller removes what was written.
``leave_out`` names regular files created empty, their bytes read past (a partial restore of index files a
reader never uses, core/restore/partial.py): every safety check above still applies to them.

Written data is sent to the disk while the extraction goes on (``_Flusher``, in a thread: each file's
writeback started when it is complete, and every 64 MiB of a large one). PostgreSQL syncs the whole data
directory when it starts from a base backup (syncfs, or an fsync per file; core/restore/recovery.py,
``_start_sync``): that sync is what makes the restore durable, and every caller starts the server before
the directory is used. Without writes in flight, all of it was still dirty in the page cache then, and
that start waited for 1 GB of writes after a 3 s extraction (docs/benchmarks.md, "Restore and WAL
replay"). On Linux the flusher only starts the writeback (``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
which waits for no device flush or journal commit); an fdatasync per file there held file creation
behind the journal (open() was 0.38 s of a 1,000-file extraction) and the whole restore measured
2.27-2.29 s against 2.13-2.23 s (medians of 3-5, 1.1 GB, docs/benchmarks.md). Elsewhere it fdatasyncs.
A throwaway cluster that runs with ``fsync`` off (a tenant restore's past database) is never
crash-recovered and PostgreSQL does not sync it at start: ``durable=False`` skips the flusher.
"""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from dr_pipelines.core.tarformat import (
    BLOCK,
    DIR_TYPE,
    FILE_TYPES,
    GNU_LONGNAME,
    MAX_META,
    PAX,
    PAX_GLOBAL,
    TarFormatError,
    check_sum,
    header_name,
    long_name,
    number,
    pax_records,
)

OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FLUSH_EVERY = 64 << 20  # bytes of one file written between two flushes of it
FLUSH_QUEUE = 32  # files (or 64 MiB parts) waiting for their flush: bounds the open descriptors


SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the range's dirty pages, wait for nothing


def _writeback_starter() -> Callable[[int], None]:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` from libc on Linux (Python has no binding),
    else ``os.fdatasync``. Its errors raise OSError like fdatasync's."""
    if not sys.platform.startswith("linux"):
        return os.fdatasync
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return os.fdatasync
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start_writeback(fd: int) -> None:
        if call(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sync_file_range: {os.strerror(err)}")
    return start_writeback


class _Flusher:
    """Start the writeback of (``_writeback_starter``), then close, the descriptors handed to it, in a thread:
    disk writes overlap the extraction; PostgreSQL's start-up sync waits for them (module docstring).

    The queue is bounded, so when the disk is slower than the stream the extraction waits for it
    instead of opening descriptors without limit. ``finish`` waits for the last flush and raises its error.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[int | None] = queue.Queue(FLUSH_QUEUE)
        self._error: OSError | None = None
        self._start = _writeback_starter()
        self._thread = threading.Thread(target=self._run, name="untar-flush", daemon=True)
        self._thread.start()

    def flush(self, fd: int) -> None:
        """Hand over ``fd`` (the flusher closes it)."""
        self._queue.put(fd)

    def finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (fd := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._start(fd)
            except OSError as exc:
                self._error = exc
            finally:
                os.close(fd)


class _NoFlusher:
    """``durable=False``: descriptors are closed as handed over; nothing is sent to the disk early."""

    def flush(self, fd: int) -> None:
        os.close(fd)

    def finish(self) -> None:
        pass


TYPE_NAMES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
              b"6": "FIFO", b"K": "GNU long link name", b"S": "sparse file"}


class SafeUntar:
    """A writable sink that unpacks the tar written into it under ``root`` (an existing, empty directory)."""

    def __init__(self, root: Path, on_member: Callable[[int], None] | None = None, *, durable: bool = True,
                 leave_out: Callable[[str], bool] | None = None) -> None:
        self.root = os.fspath(root)
        self.members = 0  # files and directories unpacked so far
        # True for a file (its name relative to the root, "/"-separated) to be created empty, its bytes dropped
        self._leave_out = leave_out
        self.left_out = 0  # bytes of the files left out
        self._dropping = False  # inside the body of a file left out
        self._on_member = on_member  # hears the count after each one (progress, crash-test checkpoints)
        self._header = bytearray()
        self._left = 0  # bytes of the current member's body still to come
        self._pad = 0  # zero bytes after it, up to the next 512-byte block
        self._fd: int | None = None  # the regular file being written
        self._unflushed = 0  # bytes written to it since it was last handed to the flusher
        self._flusher = _Flusher() if durable else _NoFlusher()  # a throwaway (fsync off) is never crash-recovered
        self._meta: bytearray | None = None  # a pax or long-name body being collected
        self._meta_type = b""
        self._next: dict[str, str] = {}  # path/size for the next member, from a pax or long-name header
        self._dirs: set[str] = {self.root}
        self.ended = False

    # -- the sink --------------------------------------------------------------------
    def write(self, chunk: bytes) -> int:
        view = memoryview(chunk)
        pos, end = 0, len(view)
        while pos < end and not self.ended:
            if self._left:
                take = min(self._left, end - pos)
                part = view[pos:pos + take]
                if self._fd is not None:
                    _write_all(self._fd, part)
                    self._unflushed += take
                    if self._unflushed >= FLUSH_EVERY:
                        self._flusher.flush(os.dup(self._fd))
                        self._unflushed = 0
                elif self._meta is not None:
                    self._meta += part
                pos += take
                self._left -= take
                if not self._left:
                    self._end_member()
            elif self._pad:
                take = min(self._pad, end - pos)
                pos += take
                self._pad -= take
            else:
                take = min(BLOCK - len(self._header), end - pos)
                self._header += view[pos:pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    header = bytes(self._header)
                    self._header.clear()
                    self._on_header(header)
        return len(chunk)  # bytes after the end-of-archive block (the record's zero padding) are ignored

    def flush(self) -> None:
        """Nothing is buffered beyond one header (a file-like ``out`` may be flushed)."""

    def finish(self) -> None:
        """After the whole stream: refuse a tar that stopped before its end-of-archive block; wait for the
        last flushes (an I/O error there fails the extraction)."""
        if not self.ended:
            raise TarFormatError("the tar ends before its end-of-archive block (truncated)")
        self._flusher.finish()

    def close(self) -> None:
        """Release every descriptor (after a failure too)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self._flusher.finish()
        except OSError:
            pass  # the extraction failed already; its own error is the one to report

    # -- members ---------------------------------------------------------------------
    def _on_header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self.ended = True  # the first of the two zero blocks that end an archive
            return
        check_sum(header)
        kind = header[156:157]
        size = int(self._next.pop("size", "")) if "size" in self._next else number(header[124:136])
        name = self._next.pop("path", None) or header_name(header)
        self._next.clear()
        self._left, self._pad = size, -size % BLOCK
        if kind in (PAX, PAX_GLOBAL, GNU_LONGNAME):
            if size > MAX_META:
                raise TarFormatError(f"a {kind.decode()!r} header of {size} bytes: not a base backup's tar")
            self._meta, self._meta_type = bytearray(), kind
        elif kind in FILE_TYPES:
            path = self._path(name)
            self._make_parents(path)
            try:
                self._fd = os.open(path, OPEN_FLAGS, (number(header[100:108]) & 0o640) | 0o600)
            except FileExistsError:
                raise TarFormatError(f"member {name!r} appears twice in the tar") from None
            if self._leave_out is not None and self._leave_out(os.path.relpath(path, self.root).replace(os.sep, "/")):
                os.close(self._fd)  # created empty; its body is read past (_fd None, no _meta) or skipped
                self._fd, self._dropping = None, True
                self.left_out += size
        elif kind == DIR_TYPE:
            self._make_dir(self._path(name), (number(header[100:108]) & 0o750) | 0o700)
        else:
            what = TYPE_NAMES.get(kind, f"type {kind!r}")
            raise TarFormatError(f"member {name!r} is a {what}: only regular files and directories are restored")
        if not self._left:
            self._end_member()

    def skip(self, n: int) -> None:
        """``n`` bytes of the current member's body that were never decrypted (core/frames.py: a left-out
        file's own frames). Refused unless the untar is inside the body of a file it leaves out, with at
        least ``n`` bytes of it to come: a frame table that disagrees with the tar cannot drop a wanted byte."""
        if not (self._dropping and 0 < n <= self._left and not self._header):
            raise TarFormatError(f"{n} bytes skipped outside the body of a left-out file: the base backup's frame "
                                 "table does not match its tar")
        self._left -= n
        if not self._left:
            self._end_member()

    def _end_member(self) -> None:
        self._dropping = False
        if self._meta is None:
            self.members += 1
            if self._on_member:
                self._on_member(self.members)
        if self._fd is not None:
            self._flusher.flush(self._fd)
            self._fd, self._unflushed = None, 0
        elif self._meta is not None:
            body, kind, self._meta = bytes(self._meta), self._meta_type, None
            if kind == PAX:
                self._next = pax_records(body)
            elif kind == GNU_LONGNAME:
                self._next = {"path": long_name(body)}

    def _path(self, name: str) -> str:
        """``name`` under the root, refused unless it is a plain relative path (``./`` prefixes allowed)."""
        if "\0" in name or name.startswith("/"):
            raise TarFormatError(f"member {name!r} has an absolute path or a NUL byte")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise TarFormatError(f"member {name!r} has a '..' component: it would leave the data directory")
        return os.path.join(self.root, *parts)

    def _make_parents(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            self._make_parents(parent)
            self._make_dir(parent, 0o700)

    def _make_dir(self, path: str, mode: int) -> None:
        if path in self._dirs:
            return
        self._make_parents(path)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path) or os.path.islink(path):
                raise TarFormatError(f"directory {os.path.relpath(path, self.root)!r} is already a file") from None
        self._dirs.add(path)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]
