"""Fetch one stored object, check its SHA-256 against the manifest, decrypt and decompress it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.manifest import ObjectEntry
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import READ_SIZE, CountingReader, decrypt_decompress


class CorruptObjectError(DrpError):
    """A stored object's bytes differ from what its manifest recorded."""


class _ProgressReader(CountingReader):
    def __init__(self, raw, report: Callable[[int], None] | None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(raw, hash_it=True)
        self._report = report
        self._last = 0.0

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if self._report and time.monotonic() - self._last > 0.5:
            self._last = time.monotonic()
            self._report(self.bytes)
        return data


def fetch_object(
    storage: Storage,
    key: str,
    entry: ObjectEntry,
    identities: Sequence[object],
    dest: Path,
    *,
    progress: Callable[[int], None] | None = None,
    decrypt: bool = True,
) -> None:
    """Write the plain content of `key` to `dest` (mode 0600), or raise naming the object; dest never survives a failure.

    With ``decrypt=False`` dest gets the stored ciphertext, checked the same way: nothing in
    clear on disk, for a caller that decrypts it as a stream later (decrypt_file).
    """
    where = f"{storage.url}/{key}"
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # plaintext health data: ours only
        with storage.open(key) as raw, os.fdopen(fd, "wb") as out:
            reader = _ProgressReader(raw, progress)
            try:
                if decrypt:
                    decrypt_decompress(reader, out, identities, what=where)
            except DecryptionError:
                reader.drain()
                _check(reader, entry, where)  # a damaged object is named as such, not as a key problem
                raise
            while data := reader.read(READ_SIZE):  # trailing bytes count towards the checksum too
                if not decrypt:
                    out.write(data)
            if progress:
                progress(reader.bytes)  # the throttled reports may have missed the end
            _check(reader, entry, where)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


class _PipeWriter:
    """Counts what goes into a pipe; once the reader has stopped (pg_restore --list reads only the TOC), discards."""

    def __init__(self, pipe: BinaryIO) -> None:
        self.pipe = pipe
        self.bytes = 0
        self.closed_by_reader = False

    def write(self, data: bytes) -> int:
        if not self.closed_by_reader:
            try:
                self.pipe.write(data)
            except BrokenPipeError:
                self.closed_by_reader = True
        self.bytes += len(data)
        return len(data)


def decrypt_file(src: Path, pipe: BinaryIO, identities: Sequence[object], *, what: str) -> int:
    """Decrypt and decompress a fetched ciphertext (fetch_object(decrypt=False)) into a pipe; the plain byte count.

    The pipe is closed at the end. A reader that stops early is not an error.
    """
    sink = _PipeWriter(pipe)
    try:
        with open(src, "rb") as raw:
            decrypt_decompress(raw, sink, identities, what=what)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(OSError):
            pipe.close()
    return sink.bytes


def _check(reader: CountingReader, entry: ObjectEntry, where: str) -> None:
    if reader.bytes != entry.bytes or reader.sha256 != entry.sha256:
        raise CorruptObjectError(
            f"object {where} is corrupted: {reader.bytes} bytes with sha256 {reader.sha256[:16]}…, "
            f"the manifest says {entry.bytes} bytes with sha256 {entry.sha256[:16]}…",
            fix="restore from another backup (`drp backup list`) and investigate the storage",
        )
