"""WAL file names and the storage keys they map to.

Only names PostgreSQL itself archives are accepted (they become storage keys): segments,
partial segments, backup history files and timeline history files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.layout import RESTORE_POINTS, SEALED, WAL

PREFIX = WAL  # the WAL archive's part of the repository layout (core/layout.py)
SUFFIX = SEALED
SIDECAR_SUFFIX = ".json"
EVENTS_PREFIX = f"{PREFIX}/events/"
RESTORE_POINTS_PREFIX = f"{PREFIX}/{RESTORE_POINTS}/"
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_OTHER = re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}(\.partial|\.[0-9A-F]{8}\.backup)$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")


class WalNameError(DrpError):
    """A name is not one PostgreSQL archives."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment: timeline, then its position (log id * segments per id + seg)."""

    timeline: int
    log: int
    seg: int

    @classmethod
    def parse(cls, name: str) -> Segment:
        match = _SEGMENT.match(name)
        if not match:
            raise WalNameError(f"{name!r} is not a WAL segment name (24 upper-case hex digits)",
                               fix="pass a name like 000000010000000000000003")
        tl, log, seg = (int(g, 16) for g in match.groups())
        return cls(tl, log, seg)

    @classmethod
    def of_lsn(cls, timeline: int, lsn: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> Segment:
        number = lsn // segment_bytes
        per_log = segments_per_log(segment_bytes)
        return cls(timeline, number // per_log, number % per_log)

    @property
    def name(self) -> str:
        return f"{self.timeline:08X}{self.log:08X}{self.seg:08X}"

    def number(self, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> int:
        return self.log * segments_per_log(segment_bytes) + self.seg

    def following(self, count: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> list[Segment]:
        """The next ``count`` segments on the same timeline (what recovery asks for next)."""
        per_log = segments_per_log(segment_bytes)
        start = self.number(segment_bytes)
        return [Segment(self.timeline, n // per_log, n % per_log) for n in range(start + 1, start + 1 + count)]


def parse_lsn(text: str) -> int:
    """'16/B374D848' (as PostgreSQL prints an LSN) -> its 64-bit position."""
    try:
        hi, lo = text.strip().split("/")
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise ConfigError(f"{text!r} is not an LSN", fix="write it as PostgreSQL prints it, e.g. 0/3000060") from None


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_log(segment_bytes: int) -> int:
    return 0x100000000 // segment_bytes


def timeline_of(name: str) -> int:
    """The timeline a WAL file belongs to, or WalNameError if PostgreSQL never archives such a name."""
    for pattern in (_SEGMENT, _OTHER, _HISTORY):
        match = pattern.match(name)
        if match:
            return int(match.group(1), 16)
    raise WalNameError(
        f"{name!r} is not a WAL file name PostgreSQL archives",
        fix="archive_command must pass %p (and restore_command %f): a segment, .partial, .backup or .history file",
    )


def is_segment(name: str) -> bool:
    """A segment or a .partial one: a file whose first page carries the long segment header."""
    return bool(_SEGMENT.match(name.removesuffix(".partial")))


def is_history(name: str) -> bool:
    return bool(_HISTORY.match(name))


def object_key(name: str) -> str:
    """Where the encrypted file goes: wal/<tl>.history… for history files, wal/<tl>/<name>… otherwise."""
    tl = timeline_of(name)
    return f"{PREFIX}/{name}{SUFFIX}" if is_history(name) else f"{PREFIX}/{tl:08X}/{name}{SUFFIX}"


def sidecar_key(name: str) -> str:
    return object_key(name)[: -len(SUFFIX)] + SIDECAR_SUFFIX


def name_of_key(key: str) -> str | None:
    """The WAL file name a stored key belongs to (object or sidecar), or None for other keys."""
    if not key.startswith(PREFIX + "/") or key.startswith((EVENTS_PREFIX, RESTORE_POINTS_PREFIX)):
        return None
    base = key.rsplit("/", 1)[-1]
    for suffix in (SUFFIX, SIDECAR_SUFFIX):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            try:
                timeline_of(base)
            except WalNameError:
                return None
            return base
    return None
