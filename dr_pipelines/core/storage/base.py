"""The storage interface every backup artefact goes through, and the rules all backends share.

Backends store opaque objects under ``/``-separated keys. The contract that matters for
disaster recovery: an object is either complete under its final name or absent, never half
written, so a crash mid-upload can never be mistaken for a good backup.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from dr_pipelines.core.errors import ConfigError, ObjectNotFoundError, StorageError

# Suffix of the local backend's in-flight files. Refused in keys on every backend so that
# a key can never be confused with (or hidden as) a partial upload, and keys stay portable.
TEMP_SUFFIX = ".partial"

# A partial upload with no write for this long has lost its writer: a live writer moves a
# local temp file's mtime with every write and adds an S3 part every few MiB.
STALE_UPLOAD = timedelta(hours=1)


class InvalidKeyError(StorageError, ValueError):
    """A key or prefix breaks the key rules; a programming error rather than an outage."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about one complete object."""

    key: str
    size: int
    modified: datetime  # timezone-aware UTC


@dataclass(frozen=True)
class PutResult:
    """What was stored, so callers can record a checksum without re-reading the object."""

    key: str
    size: int
    sha256: str  # hex of the bytes stored, computed while streaming


@dataclass(frozen=True)
class StorageProperties:
    """What a backend can do beyond the contract, declared rather than probed (restic's ``Properties()``).

    Callers ask ``storage.properties`` instead of poking at a backend's attributes, so a new
    backend states its abilities in one place and every feature that needs one fails clearly.
    """

    presign: bool = False  # can hand out time-limited GET URLs (presign_get)
    server_side_encryption: bool = False  # objects can be encrypted at rest by the service
    atomic_rename: bool = False  # an object can be renamed in place (local rename(2); S3 cannot)


def _key_problem(key: str, *, allow_empty_last: bool) -> str | None:
    if "\\" in key:
        return "contains a backslash"
    if "\x00" in key:
        return "contains a NUL character"
    if key.startswith("/"):
        return "starts with '/'"
    segments = key.split("/")
    if allow_empty_last:
        segments = segments[:-1]
    for segment in segments:
        if segment in ("", ".", ".."):
            return f"has an empty, '.' or '..' segment ({segment!r})"
    return None


def close_chunks(chunks: Iterable[bytes]) -> None:
    """Close a failed upload's chunk generator so its producer (a worker thread, a COPY) stops now.

    Left open, a producer thread blocked inside native code (zstd, pyrage) outlives the error
    and is killed at interpreter exit, which aborts the process instead of exiting cleanly.
    """
    close = getattr(chunks, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # the upload's own error is what the caller needs
            close()


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe, portable object key, else raise InvalidKeyError.

    The same rules on every backend keep a repository movable between local disk and S3
    and rule out path traversal out of the local root.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"invalid storage key {key!r}: it is empty", fix="use a non-empty key")
    problem = _key_problem(key, allow_empty_last=False)
    if problem is None and key.endswith(TEMP_SUFFIX):
        problem = f"ends with {TEMP_SUFFIX!r}, reserved for partial uploads"
    if problem:
        raise InvalidKeyError(
            f"invalid storage key {key!r}: it {problem}",
            fix="use '/'-separated relative segments without '.', '..', backslashes or NUL",
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but "" and a trailing '/' (or partial last segment) are allowed."""
    problem = _key_problem(prefix, allow_empty_last=True) if prefix else None
    if problem:
        raise InvalidKeyError(
            f"invalid storage prefix {prefix!r}: it {problem}",
            fix="use '/'-separated relative segments without '.', '..', backslashes or NUL",
        )
    return prefix


class Storage(ABC):
    """A place to keep backup objects: a local directory or an S3 bucket (with prefix)."""

    url: str  # e.g. "file:///abs/path" or "s3://bucket/prefix"; never carries credentials
    properties: StorageProperties = StorageProperties()

    @property
    def encrypts_at_rest(self) -> bool:
        """Whether every object this instance writes is encrypted at rest, as configured (``properties``
        says what the backend *can* do; this says what it *will*): health data may require it."""
        return False

    @abstractmethod
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        """Store the concatenated chunks atomically, hashing while streaming (constant memory).

        If the iterator or the backend fails, nothing becomes visible under ``key``, any
        previous object under ``key`` is left intact, and the iterator is closed (close_chunks).
        """

    def put_bytes(self, key: str, data: bytes) -> PutResult:
        """Store a small object held in memory."""
        return self.put_stream(key, [data])

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Return a streaming reader (context manager, ``read(n)``); ObjectNotFoundError if absent."""

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the object's bytes in chunks of at most ``chunk_size`` without loading it whole."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        with self.open(key) as reader:
            while chunk := reader.read(chunk_size):
                yield chunk

    def get_bytes(self, key: str) -> bytes:
        """Read a whole (small) object into memory."""
        with self.open(key) as reader:
            return reader.read()

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield complete objects whose key starts with ``prefix``, recursively, sorted by key.

        ``prefix`` is a plain string prefix: "a/" matches "a/x" but not "ab".
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Describe one object; ObjectNotFoundError if absent."""

    def exists(self, key: str) -> bool:
        """Whether a complete object is stored under ``key``."""
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; deleting an absent key succeeds so retries are safe."""

    @abstractmethod
    def check(self) -> None:
        """Fail early, with a fix, if the backend is unreachable or not writable."""

    @abstractmethod
    def cleanup_incomplete(
        self, prefix: str, older_than: timedelta = STALE_UPLOAD, *, dead: Callable[[str], bool] | None = None
    ) -> int:
        """Remove partial uploads under ``prefix`` whose writer is gone; return how many.

        A writer is gone when its upload saw no write for ``older_than`` (local: the temp
        file's mtime; S3: the newest part, else the start), or when ``dead(key)`` says so for
        the key being written: a caller holding the lock every writer of those keys holds
        knows they are dead. The prefix keeps one writer's cleanup out of other writers'
        areas (a backup's out of a running export's).
        """

    def presign_get(self, key: str, expires_in: int) -> str:
        """A URL that lets anyone holding it GET ``key`` for ``expires_in`` seconds.

        Only backends whose ``properties.presign`` is true implement it; the rest refuse clearly.
        """
        raise self.presign_unsupported()

    def presign_unsupported(self) -> ConfigError:
        """The error for asking this storage for presigned URLs it cannot give (checked up front by callers)."""
        return ConfigError(
            f"presigned URLs need S3 storage; {self.url} cannot hand them out",
            fix="export to s3://bucket[/prefix] or leave out presigning",
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
