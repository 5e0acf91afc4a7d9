"""Fetch one backup object to a private file through the one verified read (core/verified_read.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from dr_pipelines.core.manifest import ObjectEntry
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import decrypt_decompress
from dr_pipelines.core.verified_read import CorruptObjectError, read_verified

__all__ = ["CorruptObjectError", "decrypt_file", "fetch_object"]


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
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # plaintext health data: ours only
        with os.fdopen(fd, "wb") as out:
            read_verified(storage, key, out, size=entry.bytes, sha256=entry.sha256, decrypt=decrypt,
                          identities=identities, progress=progress)
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
