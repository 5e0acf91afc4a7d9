"""Streams, not files: compress + encrypt on the way out, decrypt + decompress on the way in.

Memory is bounded by a small queue of chunks whatever the payload size. The wire format is
plain `zstd` inside plain `age`, so `age -d -i key | zstd -d` undoes it with stock tools (a base
backup's zstd is a sequence of frames, core/frames.py: still one valid zstd stream).
Two ways in, one format: ``compress_encrypt`` for a stream of unknown size (backups),
``seal`` for a payload already in memory (a WAL segment).

Where the CPU goes (benchmarks/pipeline_cpu.py, docs/benchmarks.md "Where the CPU goes"): zstd
itself. The Python hand-offs (64 KiB age chunks through the queue, 8 KiB reads by pyrage) cost
no measurable CPU next to it, and coarser hand-offs, larger reads, hashing in another thread
and negative zstd levels were measured without a gain worth their code or bytes.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pyrage
import zstandard

from dr_pipelines.core.age_chunks import AgeChunks, plaintext, x25519_keys
from dr_pipelines.core.crypto import DecryptionError, WrongKeyError
from dr_pipelines.core.frames import FramedCompression, FramedRead, Skipped

READ_SIZE = 1 << 20
QUEUE_DEPTH = 32  # chunks of up to ~64 KiB from age: a few MiB in flight at most
_DONE = object()


class CountingReader:
    """Counts (and optionally hashes) the bytes read through it; ``tap`` sees each piece read."""

    def __init__(self, raw: BinaryIO, *, hash_it: bool = False, tap: Callable[[bytes], None] | None = None) -> None:
        self.raw = raw
        self.bytes = 0
        self._sha = hashlib.sha256() if hash_it else None
        self._tap = tap

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.bytes += len(data)
        if self._sha is not None:
            self._sha.update(data)
        if self._tap is not None and data:
            self._tap(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass

    @property
    def sha256(self) -> str:
        assert self._sha is not None
        return self._sha.hexdigest()


class _Cancelled(Exception):
    pass


class _QueueWriter:
    """A file-like sink for pyrage that hands chunks to the consumer thread, with backpressure."""

    def __init__(self, q: queue.Queue, cancel: threading.Event) -> None:
        self.q = q
        self.cancel = cancel

    def write(self, data: bytes) -> int:
        chunk = data if isinstance(data, Skipped) else bytes(data)
        while True:
            if self.cancel.is_set():
                raise _Cancelled()
            try:
                self.q.put(chunk, timeout=0.2)
                return 0 if isinstance(chunk, Skipped) else len(chunk)
            except queue.Full:
                continue

    def skip(self, n: int) -> None:
        """Hand the consumer a ``Skipped(n)`` instead of bytes (a framed read passing over a left-out file)."""
        self.write(Skipped(n))  # type: ignore[arg-type]

    def flush(self) -> None:
        pass


def writer_chunks(work: Callable[[BinaryIO], None], *, name: str) -> Iterator[bytes]:
    """Run ``work(sink)`` in a thread and yield what it writes to ``sink``, with backpressure.

    For producers that only know how to write to a file (pyrage, read_verified): the consumer
    gets a generator instead. If the consumer stops early, the worker is cancelled (its next
    write raises) and joined; an exception of the worker is raised here after its last chunk.
    """
    q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    cancel = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work(_QueueWriter(q, cancel))  # type: ignore[arg-type]
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            if "_Cancelled" in repr(exc):  # pyrage wraps exceptions raised by the writer
                return
            failure.append(exc)
        finally:
            put_until_cancelled(q, _DONE, cancel)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        cancel.set()
        worker.join(timeout=60)


def seal(data: bytes, recipients: Sequence[object], *, level: int, hash_log: int | None = None) -> bytes:
    """age(zstd(data)) in one call each: the format of ``compress_encrypt`` for a payload already in memory.

    One-shot calls skip the worker thread and the queue: that is what a 16 MiB WAL segment needs,
    since PostgreSQL waits for every push in turn (docs/wal.md). The two halves are ``compress`` and
    ``encrypt``, for a caller that times them apart (the WAL push reports CPU per phase).
    """
    return encrypt(compress(data, level=level, hash_log=hash_log), recipients)


def compress(data: bytes | memoryview, *, level: int, hash_log: int | None = None) -> bytes:
    """zstd(data) in one call; ``hash_log`` overrides the level's match-finder table size (the output
    stays plain zstd, any decoder reads it)."""
    tuned = {"hash_log": hash_log} if hash_log else {}
    params = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(data), **tuned)
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def encrypt(data: bytes, recipients: Sequence[object]) -> bytes:
    """age(data) in one call (pyrage holds the GIL meanwhile: ~5-10 ms for a compressed WAL segment)."""
    return pyrage.encrypt(data, list(recipients))


def compress_encrypt(source: BinaryIO, recipients: Sequence[object], *, level: int = 3, threads: int = 2,
                     frame_table: list | None = None) -> Iterator[bytes]:
    """Yield age(zstd(source)) chunks; the work runs in a thread so the consumer can upload meanwhile.

    ``frame_table`` (a tar source, an empty list): the zstd stream is cut into frames around each large
    file and the list gets the table of frames once the stream is complete (core/frames.py).
    If the consumer stops early (an upload failed), the worker is cancelled and joined.
    """

    def work(sink: BinaryIO) -> None:
        if frame_table is not None:
            framed = FramedCompression(source, level=level, threads=threads)
            try:
                pyrage.encrypt_io(framed, sink, list(recipients))
            finally:
                framed.close()
            frame_table[:] = framed.table
            return
        compressor = zstandard.ZstdCompressor(level=level, threads=threads)
        with compressor.stream_reader(source, read_size=READ_SIZE, closefd=False) as compressed:
            pyrage.encrypt_io(compressed, sink, list(recipients))

    return writer_chunks(work, name="compress-encrypt")


def put_until_cancelled(q: queue.Queue, item: object, cancel: threading.Event) -> None:
    """Put ``item`` on a bounded queue, giving up once ``cancel`` is set (the consumer has left)."""
    while not cancel.is_set():
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class _LargeReads:
    """Serves small reads from ``READ_SIZE`` reads of ``reader``.

    pyrage asks for 8 KiB at a time: each read of a CountingReader hashed 8 KiB and read a file, both
    releasing the GIL, 25,000 times for a 200 MB base backup, while the untar thread waited on it (77,000
    futex calls in strace). One read and one hash per MiB instead: extraction 0.1-0.3 s faster per GB.
    """

    def __init__(self, reader: BinaryIO) -> None:
        self._reader = reader
        self._block = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._block):
            self._block, self._pos = self._reader.read(READ_SIZE), 0
        end = len(self._block) if n is None or n < 0 else self._pos + n
        data = self._block[self._pos:end]
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def decrypt_decompress(reader: BinaryIO, dest: BinaryIO, identities: Sequence[object], *, what: str,
                       size: int | None = None, framed: FramedRead | None = None) -> None:
    """Write zstd-decompressed, age-decrypted `reader` into `dest`.

    With the object's ``size`` and X25519 identities (drp's keys), the age payload is decrypted chunk by
    chunk (core/age_chunks.py: 7x faster than pyrage here), and a ``framed`` object's left-out files are
    passed over (core/frames.py); otherwise pyrage decrypts the stream.
    A wrong identity or damaged ciphertext raises DecryptionError naming `what`.
    """
    decompressor = zstandard.ZstdDecompressor()
    keys = x25519_keys(identities) if size is not None else None
    if keys is not None:
        chunks = AgeChunks(reader, keys, size, what=what)  # type: ignore[arg-type]
        if framed is not None:
            framed.decode(chunks, dest, what=what)
            return
        try:
            with decompressor.stream_writer(dest, closefd=False) as plain:
                for data in plaintext(chunks):
                    plain.write(data)
        except zstandard.ZstdError as exc:
            raise DecryptionError(f"{what} decrypted but is not valid zstd data ({exc})", fix="the object is damaged") from None
        return
    try:
        with decompressor.stream_writer(dest, closefd=False) as plain:
            pyrage.decrypt_io(_LargeReads(reader), plain, list(identities))
    except pyrage.DecryptError as exc:
        raise (WrongKeyError if "No matching keys" in str(exc) else DecryptionError)(
            f"cannot decrypt {what}: {exc}",
            fix="use the age identity (private key) matching the backup's recipients; if it does match, the object is damaged",
        ) from None
    except OSError as exc:
        if "decryption error" not in str(exc):  # pyrage's word for a damaged payload chunk
            raise
        raise DecryptionError(
            f"cannot decrypt {what}: the ciphertext is damaged (authentication failed)",
            fix="the object is corrupted: use another backup",
        ) from None
    except zstandard.ZstdError as exc:
        raise DecryptionError(f"{what} decrypted but is not valid zstd data ({exc})", fix="the object is damaged") from None


def file_chunks(path: Path, chunk: int = READ_SIZE) -> Iterator[bytes]:
    """A local file as ~1 MiB chunks, for ``Storage.put_stream`` (exports, bundles, archives)."""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data


def remove_quietly(path: Path) -> None:
    """Remove a scratch file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
