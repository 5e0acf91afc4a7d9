"""Fetch one stored object, check its SHA-256 against the manifest, decrypt and decompress it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
) -> None:
    """Write the plain content of `key` to `dest` (mode 0600), or raise naming the object; dest never survives a failure."""
    where = f"{storage.url}/{key}"
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # plaintext health data: ours only
        with storage.open(key) as raw, os.fdopen(fd, "wb") as out:
            reader = _ProgressReader(raw, progress)
            try:
                decrypt_decompress(reader, out, identities, what=where)
            except DecryptionError:
                reader.drain()
                _check(reader, entry, where)  # a damaged object is named as such, not as a key problem
                raise
            while reader.read(READ_SIZE):  # trailing bytes count towards the checksum too
                pass
            if progress:
                progress(reader.bytes)  # the throttled reports may have missed the end
            _check(reader, entry, where)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


def _check(reader: CountingReader, entry: ObjectEntry, where: str) -> None:
    if reader.bytes != entry.bytes or reader.sha256 != entry.sha256:
        raise CorruptObjectError(
            f"object {where} is corrupted: {reader.bytes} bytes with sha256 {reader.sha256[:16]}…, "
            f"the manifest says {entry.bytes} bytes with sha256 {entry.sha256[:16]}…",
            fix="restore from another backup (`drp backup list`) and investigate the storage",
        )
