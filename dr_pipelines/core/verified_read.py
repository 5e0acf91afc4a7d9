"""The one verified read: stream a stored object, check its size and SHA-256, optionally decrypt and decompress.

Restore (core/restore/fetch.py, also behind verification restores), archive read-back
(core/retention/segment.py ``fetched``, used by verify, delete and rehydrate) and export
bundling (core/export/bundle.py) all read objects back through ``read_verified``, as
pgBackRest builds one read chain (decrypt → decompress → hash → size) for backup, restore
and verify. The check is of the *stored* bytes, against what the manifest recorded when
they were written; trailing bytes after a complete age stream count too. A damaged object
is named as damaged, not as a key problem: when decryption fails, the rest is still read
and checked, and a mismatch wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.frames import FramedRead
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import READ_SIZE, CountingReader, decrypt_decompress, writer_chunks

# Builds the error for a mismatch from (where, bytes read, sha256 read); each artifact names its own remedy.
Mismatch = Callable[[str, int, str], Exception]


class CorruptObjectError(DrpError):
    """A stored object's bytes differ from what its manifest recorded."""


def corrupt_object(expected_bytes: int, expected_sha256: str) -> Mismatch:
    """The restore's mismatch error: the object is corrupted; restore another backup."""

    def build(where: str, got_bytes: int, got_sha256: str) -> Exception:
        return CorruptObjectError(
            f"object {where} is corrupted: {got_bytes} bytes with sha256 {got_sha256[:16]}…, "
            f"the manifest says {expected_bytes} bytes with sha256 {expected_sha256[:16]}…",
            fix="restore from another backup (`drp backup list`) and investigate the storage",
        )

    return build


class _ProgressReader(CountingReader):
    """Hashes and counts; reports the bytes read at most twice a second."""

    def __init__(self, raw: BinaryIO, report: Callable[[int], None] | None) -> None:
        super().__init__(raw, hash_it=True)
        self._report = report
        self._last = 0.0

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if self._report and time.monotonic() - self._last > 0.5:
            self._last = time.monotonic()
            self._report(self.bytes)
        return data


def read_verified(
    storage: Storage,
    key: str,
    out: BinaryIO,
    *,
    size: int,
    sha256: str,
    mismatch: Mismatch | None = None,
    decrypt: bool = False,
    identities: Sequence[object] = (),
    progress: Callable[[int], None] | None = None,
    framed: FramedRead | None = None,
) -> None:
    """Write ``key``'s content to ``out`` (decrypted and decompressed if ``decrypt``), checking size and SHA-256.

    Streams in constant memory. Raises ``mismatch(where, bytes, sha256)`` (default:
    CorruptObjectError) if the stored bytes are not the recorded ones; ``out`` may then
    hold part of the content, and the caller discards it.
    """
    where = f"{storage.url}/{key}"
    mismatch = mismatch or corrupt_object(size, sha256)

    def check(reader: CountingReader) -> None:
        if reader.bytes != size or reader.sha256 != sha256:
            raise mismatch(where, reader.bytes, reader.sha256)

    with storage.open(key) as raw:
        reader = _ProgressReader(raw, progress)
        try:
            if decrypt:
                decrypt_decompress(reader, out, identities, what=where, size=size, framed=framed)
        except DecryptionError:
            reader.drain()
            check(reader)  # a damaged object is named as such, not as a key problem
            raise
        while data := reader.read(READ_SIZE):  # trailing bytes count towards the checksum too
            if not decrypt:
                out.write(data)
        if progress:
            progress(reader.bytes)  # the throttled reports may have missed the end
        check(reader)


def verified_chunks(storage: Storage, key: str, *, size: int, sha256: str,
                    mismatch: Mismatch | None = None) -> Iterator[bytes]:
    """``read_verified`` as a generator of the stored bytes (the export portal's downloads).

    The last chunk is held back until the size and SHA-256 have been checked, so a consumer
    that forwards chunks as they come (an HTTP response) never delivers a damaged object
    whole: on a mismatch the error is raised instead of the final chunk.
    """
    held: bytes | None = None
    for chunk in writer_chunks(lambda out: read_verified(storage, key, out, size=size, sha256=sha256,
                                                         mismatch=mismatch), name="verified-read"):
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held
