"""Push one WAL file to storage and fetch it back, checking integrity both ways.

Push: the plaintext SHA-256 decides. Same content already committed (sidecar present, object
present) is a no-op; different content is a loud WalConflictError plus an event object, never an
overwrite. Fetch: the stored object's SHA-256 is checked before decrypting and the plaintext's
after, so a flipped byte is refused naming the file; the result appears atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dr_pipelines.core import checkpoints, stream
from dr_pipelines.core.errors import DrpError, ObjectNotFoundError, StorageError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.base import TEMP_SUFFIX
from dr_pipelines.core.stream import decrypt_decompress
from dr_pipelines.core.wal.binding import check_system
from dr_pipelines.core.wal.events import WalConflictError, record_event
from dr_pipelines.core.wal.header import read_segment_header
from dr_pipelines.core.wal.names import (
    PREFIX,
    SIDECAR_SUFFIX,
    is_segment,
    name_of_key,
    object_key,
    parse_lsn,
    sidecar_key,
    timeline_of,
)

if TYPE_CHECKING:
    from dr_pipelines.core.settings import Settings

FORMAT = "drp-wal-sidecar"
# zstd level 1: on real 16 MiB segments it is ~2.4x faster than level 3 for ~3 % more bytes (docs/wal.md);
# archive latency bounds throughput, since PostgreSQL waits for each archive_command in turn.
ZSTD_LEVEL = 1
# Level 1's hash table at 2^12 entries instead of 2^14: 16 KiB, it stays in the L1 cache that the archiver's
# threads share on a 2-core (SMT) machine. A/B on the quiet machine: archiver CPU per segment 102 -> 77-84 ms,
# 926-942 -> 1,102-1,205 segments/min, and 1.4 % fewer bytes stored on INSERT WAL (equal on pgbench -i WAL).
ZSTD_HASH_LOG = 12


class WalCorruptError(DrpError):
    """An archived WAL file does not match its recorded checksum."""


class WalNotArchivedError(DrpError):
    """The archive has no (committed) copy of this WAL file: recovery's normal 'end of archive'."""


@dataclass(frozen=True)
class Sidecar:
    """What is recorded about one archived WAL file; written after the object, so it is the commit."""

    name: str
    timeline: int
    plain_sha256: str
    plain_bytes: int
    stored_sha256: str
    stored_bytes: int
    pushed_at: str
    switches: list[list[int]] | None = None  # history files: [[parent timeline, switch LSN], ...]
    system_identifier: str | None = None  # segments: the cluster that wrote it (from its page header)

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes, *, where: str) -> Sidecar:
        try:
            data = json.loads(raw)
            if data.pop("format") != FORMAT:
                raise ValueError("wrong format")
            return cls(**data)
        except (ValueError, KeyError, TypeError):
            raise WalCorruptError(f"WAL sidecar {where} is malformed",
                                  fix="re-push the file from pg_wal if PostgreSQL still has it, else treat it as lost") from None


@dataclass(frozen=True)
class PushResult:
    name: str
    status: str  # "archived" or "exists"
    plain_bytes: int
    stored_bytes: int
    cpu_ms: dict[str, float] = field(default_factory=dict)  # this thread's CPU per phase (PHASES)


# The phases of a push whose CPU push_wal reports, in order. "check": the header, the archive's binding and
# the sidecar read; "write": the object's write, its stored SHA-256 and its fsyncs; "sidecar": the commit.
PHASES = ("read", "check", "hash", "compress", "encrypt", "write", "sidecar")


class _PhaseClock:
    """This thread's CPU time per phase (time.thread_time: the other workers' phases are not counted)."""

    def __init__(self) -> None:
        self.cpu_ms: dict[str, float] = {}
        self._last = time.thread_time()

    def mark(self, phase: str) -> None:
        now = time.thread_time()
        self.cpu_ms[phase] = round(self.cpu_ms.get(phase, 0.0) + 1000 * (now - self._last), 2)
        self._last = now



def read_sidecar(storage: Storage, name: str) -> Sidecar | None:
    key = sidecar_key(name)
    try:
        raw = storage.get_bytes(key)
    except ObjectNotFoundError:
        return None
    return Sidecar.parse(raw, where=f"{storage.url}/{key}")


def newest_committed(storage: Storage, hint: str | None = None) -> Sidecar | None:
    """The newest committed (sidecar present) segment: ``hint`` (the server's last archived WAL) in one read
    when this archive holds it, else the highest segment name in a listing of the sidecars."""
    if hint and len(hint) == 24:
        sidecar = read_sidecar(storage, hint)
        if sidecar is not None:
            return sidecar
    names = [name_of_key(info.key) for info in storage.list(PREFIX + "/") if info.key.endswith(SIDECAR_SUFFIX)]
    segments = sorted(n for n in names if n and len(n) == 24)  # timeline first: a newer timeline sorts after
    return read_sidecar(storage, segments[-1]) if segments else None


def history_switches(text: bytes) -> list[list[int]]:
    """[[parent timeline, switch LSN], …] from a timeline history file (its reasons are left out)."""
    switches = []
    for line in text.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and "/" in fields[1]:
            switches.append([int(fields[0]), parse_lsn(fields[1])])
    return switches


def push_wal(storage: Storage, recipients: Sequence[object], path: Path | str, name: str | None = None) -> PushResult:
    """Archive the WAL file at ``path``; returns once the object and its sidecar are durably stored."""
    path = Path(path)
    name = name or path.name
    timeline = timeline_of(name)
    clock = _PhaseClock()
    data = _read_local(path)
    clock.mark("read")
    system_identifier = None
    if is_segment(name):  # a segment or .partial: its header proves what it is and whose it is
        system_identifier = read_segment_header(data, name).system_identifier
        check_system(storage, system_identifier, name)
    existing = read_sidecar(storage, name)
    clock.mark("check")
    plain_sha = hashlib.sha256(data).hexdigest()
    clock.mark("hash")
    if existing is not None and existing.plain_sha256 != plain_sha:
        _refuse_conflict(storage, name, existing, plain_sha, len(data))
    if existing is not None and storage.exists(object_key(name)):
        if stored_intact(storage, name, existing):
            return PushResult(name, "exists", existing.plain_bytes, existing.stored_bytes, clock.cpu_ms)
        record_event(storage, "repaired", name, {"plain_sha256": plain_sha})  # damaged copy: store it again
    compressed = stream.compress(data, level=ZSTD_LEVEL, hash_log=ZSTD_HASH_LOG)
    clock.mark("compress")
    sealed = stream.encrypt(compressed, recipients)
    del compressed
    clock.mark("encrypt")
    stored = storage.put_bytes(object_key(name), sealed)
    del sealed
    clock.mark("write")
    checkpoints.reached("wal-after-object")  # stored, not committed: a kill here leaves an uncommitted object
    sidecar = Sidecar(name=name, timeline=timeline, plain_sha256=plain_sha, plain_bytes=len(data),
                      stored_sha256=stored.sha256, stored_bytes=stored.size, pushed_at=_now(),
                      switches=history_switches(data) if name.endswith(".history") else None,
                      system_identifier=system_identifier)
    storage.put_bytes(sidecar_key(name), sidecar.to_bytes())
    clock.mark("sidecar")
    checkpoints.reached("wal-after-sidecar")  # committed, not yet acknowledged to PostgreSQL
    return PushResult(name, "archived", len(data), stored.size, clock.cpu_ms)


def _refuse_conflict(storage: Storage, name: str, existing: Sidecar, plain_sha: str, size: int) -> NoReturn:
    record_event(storage, "conflict", name, {"stored_sha256": existing.plain_sha256, "new_sha256": plain_sha,
                                             "stored_bytes": existing.plain_bytes, "new_bytes": size})
    raise WalConflictError(
        f"WAL file {name} is already archived in {storage.url} with different content "
        f"(stored sha256 {existing.plain_sha256[:16]}…, this one {plain_sha[:16]}…); refusing to overwrite",
        fix="two clusters may be archiving to the same place (give each its own storage prefix), or a cluster "
        "was restored without a new timeline; investigate before removing either copy (event under wal/events/)",
    )


def stored_intact(storage: Storage, name: str, sidecar: Sidecar) -> bool:
    """Whether the stored object still has the size and SHA-256 its sidecar recorded (no key needed)."""
    sha, size = hashlib.sha256(), 0
    try:
        for chunk in storage.iter_chunks(object_key(name)):
            sha.update(chunk)
            size += len(chunk)
    except DrpError:
        return False
    return size == sidecar.stored_bytes and sha.hexdigest() == sidecar.stored_sha256


def archive_storage(settings: Settings) -> Storage:
    """The storage for archive pushes: on S3, 2 attempts and a 5 s connect timeout instead of the defaults.

    PostgreSQL retries a failed archive_command by itself; a push sitting in tens of seconds of
    client back-off against a dead endpoint only delays noticing (and every segment behind it).
    """
    from dr_pipelines.core import context

    return context.storage(settings, s3_max_attempts=2, s3_connect_timeout=5)


def _read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read WAL file {path}: {exc.strerror or exc}",
                           fix="archive_command must run as the PostgreSQL OS user and pass %p") from None


def fetch_wal(storage: Storage, identities: Sequence[object], name: str, dest: Path | str) -> Sidecar:
    """Write the archived WAL file ``name`` to ``dest`` atomically (temp file 0600, fsync, rename).

    WalNotArchivedError when there is no committed copy; WalCorruptError when either checksum fails.
    """
    dest = Path(dest)
    sidecar = read_sidecar(storage, name)
    key = object_key(name)
    if sidecar is None:
        raise WalNotArchivedError(f"WAL file {name} is not in the archive {storage.url}",
                                  fix="normal at the end of the archive; otherwise run `drp wal verify`")
    try:
        with storage.open(key) as raw:
            stored = raw.read()
    except ObjectNotFoundError:
        raise WalCorruptError(f"WAL file {name}: its sidecar exists but its object {key} is missing",
                              fix="the archive lost this file: run `drp wal verify` and take a new base backup") from None
    if len(stored) != sidecar.stored_bytes or hashlib.sha256(stored).hexdigest() != sidecar.stored_sha256:
        raise WalCorruptError(f"archived WAL file {name} ({key}) is corrupted: its stored SHA-256 does not match the sidecar",
                              fix="do not replay it; restore from another copy of the archive or stop recovery before it")
    plain = io.BytesIO()
    decrypt_decompress(io.BytesIO(stored), plain, identities, what=f"WAL file {name}")
    if hashlib.sha256(plain.getbuffer()).hexdigest() != sidecar.plain_sha256:
        raise WalCorruptError(f"archived WAL file {name} decrypts to content whose SHA-256 does not match the sidecar",
                              fix="do not replay it; restore from another copy of the archive")
    write_atomically(dest, plain.getvalue())
    return sidecar


def write_atomically(dest: Path, data: bytes) -> None:
    """``dest`` appears whole (mode 0600) or not at all: a temp file beside it, renamed into place.

    Not fsync'd: every caller writes a file that recovery (or pg_verifybackup) reads right away, or a spool
    copy. PostgreSQL makes durable what it keeps: a restored segment or history file is renamed to its
    own name with durable_rename (KeepFileRestoredFromArchive), which fsyncs it; after a crash, recovery
    asks again and the file is fetched again. Two fsyncs of 16 MiB per segment (spool, then pg_wal) were
    most of a fetch's time on a busy disk (docs/benchmarks.md, "Restore and WAL replay").
    """
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write WAL file {dest}: {exc.strerror or exc}",
                           fix=f"check that {dest.parent} exists, is writable by this user and has free space") from None


def _now() -> str:
    return datetime.now(UTC).isoformat()
