"""Framed base backups: each large file of the tar in zstd frames of its own, and a table of where frames start.

Why: a tenant restore leaves most index files of its past database empty (core/restore/partial.py). In one
zstd stream their bytes had to be decrypted and decompressed anyway, ~40% of the demo's extraction. With a
frame boundary at the start and end of each file of ``FRAME_ALONE`` or more, and the table of frames in
the manifest (``manifest.extra["frames"]``: ``[plain offset, compressed offset, file name or None]`` per
frame, then ``[plain size, compressed size, None]``), a reader passes over a left-out file's frames without
decrypting a chunk of them (core/age_chunks.py) and the untar is told to skip that many bytes of the file's
body (``SafeUntar.skip``, which refuses unless it is inside a left-out file with that much of it to come).

The stored object is still one age stream of plain zstd: concatenated frames are one valid zstd stream, so
``age -d | zstd -d | tar -x`` reads it as before, and a reader that ignores the table reads all of it.
Every stored byte is still read and hashed: ``read_verified`` checks the whole object's size and SHA-256.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise
from typing import BinaryIO

import zstandard

from dr_pipelines.core.age_chunks import CHUNK, AgeChunks
from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.tarformat import FILE_TYPES, TarWalk

KEY = "frames"  # manifest.extra key
FRAME_ALONE = 1 << 20  # a regular file this large gets frames of its own
FRAME_MAX = 4 << 20  # plain bytes per frame at most
IN_FLIGHT = 4  # frames being compressed or waiting to be read
ONE_SHOT_MAX = 64 << 20  # frames up to this size are decompressed in one call
WRITE_SIZE = 1 << 20  # a decompressed frame goes to the untar in pieces of this size
READ_SIZE = 1 << 20


class FrameCuts(TarWalk):
    """Walks the plain tar as it is compressed; ``pending`` maps each stream offset where a frame must start
    to the name of the file whose body that frame is (None: a frame of whatever follows a large file)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, str | None] = {}

    def member(self, name: str, size: int, kind: bytes) -> None:
        if kind in FILE_TYPES and size >= FRAME_ALONE:
            self.pending[self.offset] = name
            self.pending.setdefault(self.offset + size, None)


class FramedCompression:
    """A file-like ``read`` of zstd(``source``) as a sequence of independent frames (what pyrage.encrypt_io reads
    from); ``table`` is complete once ``read`` has returned b"".

    Frames end where ``FrameCuts`` says and after ``FRAME_MAX`` plain bytes, and ``threads`` of them are
    compressed at once, each by one-threaded zstd (the GIL released). zstd's own threads, given frames this
    small, waited at every frame's end: one core, 3.0 s for the demo's 1.1 GB tar against 1.9-2.1 s unframed.
    At most ``IN_FLIGHT`` frames are held, so memory stays flat whatever the size.
    """

    def __init__(self, source: BinaryIO, *, level: int, threads: int) -> None:
        self._source = source
        self._level = level
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="drp-frame-zstd")
        self._cuts = FrameCuts()
        self._frame: list[memoryview] = []  # the current frame's pieces, views of the source's chunks (no copy)
        self._frame_bytes = 0
        self._frame_start, self._frame_name = 0, None
        self._pending: deque[tuple[Future[bytes], int, str | None]] = deque()
        self._out = bytearray()
        self._plain = 0  # plain bytes read from the source
        self._compressed = 0
        self._source_done = self._done = False
        self.table: list[list] = []

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n is None or n < 0 or len(self._out) < n):
            if self._pending and (len(self._pending) >= IN_FLIGHT or self._source_done):
                future, start, name = self._pending.popleft()
                data = future.result()
                self.table.append([start, self._compressed, name])
                self._out += data
                self._compressed += len(data)
            elif not self._source_done:
                self._pump()
            else:
                self.table.append([self._plain, self._compressed, None])
                self._done = True
        n = len(self._out) if n is None or n < 0 else n
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def close(self) -> None:
        """Stop the compressing threads (after a failure: frames not yet compressed are dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _pump(self) -> None:
        data = self._source.read(READ_SIZE)
        if not data:
            self._submit()
            self._source_done = True
            return
        self._cuts.walk(data)
        view, start, pos = memoryview(data), self._plain, 0
        for cut in sorted(c for c in self._cuts.pending if c <= start + len(data)):
            self._add(view[pos:cut - start])
            pos = cut - start
            self._submit()
            self._frame_name = self._cuts.pending.pop(cut)
        self._add(view[pos:])
        self._plain = start + len(data)

    def _add(self, piece: memoryview) -> None:
        """Append to the current frame, ending it (a large file's frames keep its name) each FRAME_MAX bytes."""
        while self._frame_bytes + len(piece) >= FRAME_MAX:
            take = FRAME_MAX - self._frame_bytes
            self._frame.append(piece[:take])
            self._frame_bytes += take
            piece = piece[take:]
            self._submit()
        if piece:
            self._frame.append(piece)
            self._frame_bytes += len(piece)

    def _submit(self) -> None:
        if self._frame_bytes:
            self._pending.append((self._pool.submit(self._compress, self._frame, self._frame_bytes), self._frame_start,
                                  self._frame_name))
            self._frame_start += self._frame_bytes
            self._frame, self._frame_bytes = [], 0

    def _compress(self, pieces: list[memoryview], size: int) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self._level)
        frame = compressor.compressobj(size=size)
        return b"".join([*(frame.compress(p) for p in pieces), frame.flush()])


class Skipped:
    """What a framed read hands the untar instead of a left-out file's frame: the count of bytes it held."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class FramedRead:
    """How to read a framed object: its frame table (from the manifest) and which files to pass over."""

    def __init__(self, table: list[list], leave_out: Callable[[str], bool] | None) -> None:
        self.table = table
        self.leave_out = leave_out

    def decode(self, chunks: AgeChunks, dest: BinaryIO, *, what: str) -> None:
        """Write the plain tar to ``dest``, a left-out file's frames as ``dest.skip(n)`` (``Skipped``), each
        frame decompressed on its own and checked to end where the table says."""
        frames = _checked(self.table, chunks.plain_size, what)
        plain = _Plain(chunks)
        decompressor = zstandard.ZstdDecompressor()
        for (p0, c0, name), (p1, c1, _) in pairwise(frames):
            if name is not None and self.leave_out is not None and self.leave_out(name):
                plain.pass_to(c1)
                dest.skip(p1 - p0)  # type: ignore[attr-defined]
                continue
            if p1 - p0 > ONE_SHOT_MAX:  # a frame larger than any this drp writes: streamed (holds the GIL)
                _stream_frame(plain.between(c0, c1), p1 - p0, dest, what)
                continue
            try:  # one call, the GIL released: the untar's writes go on meanwhile (decompressobj held it)
                out = decompressor.decompress(b"".join(plain.between(c0, c1)), max_output_size=p1 - p0)
            except zstandard.ZstdError as exc:
                raise DecryptionError(f"{what}: frame {c0}..{c1} decrypted but is not the zstd frame of the table "
                                      f"({exc})", fix="the object or its manifest is damaged: use another backup") from None
            if len(out) != p1 - p0:
                raise _frame_mismatch(what, c0, c1, len(out), p1 - p0)
            view = memoryview(out)
            for at in range(0, len(out), WRITE_SIZE):
                dest.write(view[at:at + WRITE_SIZE])  # type: ignore[arg-type]
        plain.pass_to(chunks.plain_size)


def _stream_frame(pieces: Iterator[memoryview], size: int, dest: BinaryIO, what: str) -> None:
    frame, produced = zstandard.ZstdDecompressor().decompressobj(), 0
    try:
        for piece in pieces:
            if frame.eof:
                raise _frame_mismatch(what, 0, 0, produced, size)
            out = frame.decompress(piece)
            produced += len(out)
            if out:
                dest.write(out)
    except zstandard.ZstdError as exc:
        raise DecryptionError(f"{what} decrypted but is not valid zstd data ({exc})", fix="the object is damaged") from None
    if not frame.eof or frame.unused_data or produced != size:
        raise _frame_mismatch(what, 0, 0, produced, size)


def _frame_mismatch(what: str, c0: int, c1: int, produced: int, size: int) -> DecryptionError:
    return DecryptionError(f"{what}: a frame ({c0}..{c1}) holds {produced} bytes, not the {size} of the frame table",
                           fix="the object or its manifest is damaged: use another backup")


def _checked(table: list[list], compressed: int, what: str) -> list[tuple[int, int, str | None]]:
    """The table as tuples, refused unless it starts at 0, grows, and ends at the payload's size."""
    try:
        frames = [(int(p), int(c), None if name is None else str(name)) for p, c, name in table]
    except (TypeError, ValueError):
        frames = []
    ok = (len(frames) >= 2 and frames[0][:2] == (0, 0) and frames[-1][1] == compressed
          and all(a[0] < b[0] and a[1] < b[1] for a, b in pairwise(frames)))
    if not ok:
        raise DecryptionError(f"{what}: the manifest's frame table does not match the object",
                              fix="the manifest is damaged: use another backup")
    return frames


class _Plain:
    """The decrypted payload by compressed offset: chunks decrypted when a wanted frame needs them, read
    past otherwise. Offsets only move forward."""

    def __init__(self, chunks: AgeChunks) -> None:
        self._chunks = chunks
        self._data = b""
        self._start = 0  # offset of _data's first byte

    def between(self, start: int, end: int):
        pos = start
        while pos < end:
            if pos >= self._start + len(self._data):
                self._data, self._start = self._chunks.next_chunk(), self._chunks.next_index * CHUNK - CHUNK
                continue
            stop = min(end, self._start + len(self._data))
            yield memoryview(self._data)[pos - self._start:stop - self._start]
            pos = stop

    def pass_to(self, end: int) -> None:
        """Read past every chunk that ends at or before ``end`` without decrypting it."""
        while self._chunks.next_index < self._chunks.chunks and (self._chunks.next_index + 1) * CHUNK <= end:
            self._chunks.next_chunk(decrypt=False)
            self._data, self._start = b"", self._chunks.next_index * CHUNK
        if end >= self._chunks.plain_size:
            while self._chunks.next_index < self._chunks.chunks:
                self._chunks.next_chunk(decrypt=False)
