"""`drp wal verify`: is every segment from the start point to now archived, readable and committed?

Modelled on WAL-G's wal-verify. The timeline path comes from the newest timeline's history file
(its sidecar records the switch points, so no private key is needed). Absent segments are grouped
into gaps and classified: ``in-flight`` (after what PostgreSQL reports archived: still to come),
``lost`` (PostgreSQL reported it archived but storage lacks it) or ``missing`` (no server to ask).
A stored object whose SHA-256 differs from its sidecar is ``corrupt``; an object without its
sidecar is ``uncommitted`` (a push killed midway: PostgreSQL retries it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import Sidecar, read_sidecar, stored_intact
from dr_pipelines.core.wal.names import (
    DEFAULT_SEGMENT_BYTES,
    PREFIX,
    SIDECAR_SUFFIX,
    Segment,
    WalNameError,
    name_of_key,
    parse_lsn,
    segments_per_log,
)
from dr_pipelines.core.wal.status import PgWalState


@dataclass(frozen=True)
class Gap:
    timeline: int
    first: str
    last: str
    count: int
    status: str  # in-flight | lost | missing


@dataclass
class WalReport:
    start: str | None
    end: str | None
    found: int = 0
    gaps: list[Gap] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # {"name", "status", "detail"}

    @property
    def ok(self) -> bool:
        return all(item.status == "in-flight" for item in self.gaps) and all(
            p["status"] == "in-flight" for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "start": self.start, "end": self.end, "found": self.found,
                "gaps": [asdict(g) for g in self.gaps], "problems": self.problems}


@dataclass
class ArchiveScan:
    """One listing of the archive and one read of every sidecar in it: what verify and prune both need."""

    objects: dict[str, datetime]  # WAL file name -> its object's modification time
    sidecars: dict[str, Sidecar | None]  # listed sidecars as read (None: gone or unreadable since the listing)
    stored_bytes: dict[str, int]  # name -> object plus sidecar bytes

    @classmethod
    def read(cls, storage: Storage) -> ArchiveScan:
        objects: dict[str, datetime] = {}
        listed: set[str] = set()
        sizes: dict[str, int] = {}
        for info in storage.list(PREFIX + "/"):
            name = name_of_key(info.key)
            if name is None:
                continue
            sizes[name] = sizes.get(name, 0) + info.size
            if info.key.endswith(SIDECAR_SUFFIX):
                listed.add(name)
            else:
                objects[name] = info.modified
        return cls(objects, {name: read_sidecar(storage, name) for name in sorted(listed)}, sizes)


def verify_archive(storage: Storage, *, start: str | None = None, pg: PgWalState | None = None,
                   read: bool = True, grace_s: float = 300, read_only: Callable[[str], bool] | None = None,
                   scan: ArchiveScan | None = None, timeline: int | None = None) -> WalReport:
    """Check continuity (and, with ``read``, every stored object's checksum) of the WAL archive.

    ``read_only``: re-hash only the files it accepts (a PITR needs the segments up to its target, not all).
    ``scan``: the archive as already listed and read by the caller (prune plans from the same one).
    ``timeline``: follow this timeline's path (a PITR along an older timeline) instead of the newest one's;
    its end is then its own newest segment (without ``pg``).

    An object without its sidecar is a push in progress (``in-flight``, not an error) when the server has
    not reported it archived yet, or, with no server to ask, when it is younger than ``grace_s``.
    """
    scan = scan or ArchiveScan.read(storage)
    objects = scan.objects
    report = WalReport(start=start, end=None)
    committed: dict[str, Sidecar] = {}
    corrupt: set[str] = set()  # present but unusable: a problem of its own, not also a gap
    now = datetime.now(UTC)
    for name in sorted(set(objects) | set(scan.sidecars)):
        sidecar = scan.sidecars.get(name)
        if sidecar is None:
            pushing = (pg.last_archived_wal or "") < name if pg else (now - objects[name]).total_seconds() < grace_s
            report.problems.append({"name": name, "status": "in-flight" if pushing else "uncommitted",
                                    "detail": "object without sidecar: a push did not finish"})
            continue
        if name not in objects:
            report.problems.append({"name": name, "status": "lost", "detail": "sidecar without object"})
            continue
        if read and (read_only is None or read_only(name)) and not stored_intact(storage, name, sidecar):
            report.problems.append({"name": name, "status": "corrupt", "detail": "stored SHA-256 differs from the sidecar"})
            corrupt.add(name)
            continue
        committed[name] = sidecar
    segments = sorted(Segment.parse(n) for n in committed if len(n) == 24)
    report.found = len(segments)
    if not segments and pg is None:
        return report
    seg_bytes = next((committed[s.name].plain_bytes for s in segments), DEFAULT_SEGMENT_BYTES)
    first = _start_segment(start, segments, seg_bytes) if start else (segments[0] if segments else None)
    last_tl = timeline or max([s.timeline for s in segments] + ([Segment.parse(pg.current_wal).timeline] if pg else []))
    switches = _switches(committed, last_tl, report)
    if timeline is not None:
        segments = [s for s in segments if on_path(s, switches, timeline, seg_bytes)]
    if pg is not None:
        end = Segment.parse(pg.current_wal)  # being written: exclusive
        end_number = end.number(seg_bytes)
    elif not segments:
        return report
    else:
        end = max(segments, key=lambda s: (s.timeline, s.number(seg_bytes)))
        end_number = end.number(seg_bytes) + 1
    if first is None:
        return report
    report.start, report.end = first.name, end.name
    archived_upto = Segment.parse(pg.last_archived_wal) if pg and pg.last_archived_wal and len(pg.last_archived_wal) == 24 else None
    have = {(s.timeline, s.number(seg_bytes)) for s in segments}
    have |= {(c.timeline, c.number(seg_bytes)) for c in (Segment.parse(n) for n in corrupt if len(n) == 24)}
    per_log = segments_per_log(seg_bytes)
    missing: list[tuple[int, int, str]] = []
    for tl, lo, hi in _path(switches, last_tl, first.number(seg_bytes), end_number, seg_bytes):
        for n in range(lo, hi):
            if (tl, n) not in have:
                missing.append((tl, n, _classify(tl, n, pg, archived_upto, seg_bytes)))
    report.gaps = _group(missing, per_log)
    return report


def _start_segment(start: str, segments: list[Segment], seg_bytes: int) -> Segment:
    """A segment name, or an LSN like 0/3000028 (on the oldest archived timeline): where a base backup starts."""
    if "/" not in start:
        return Segment.parse(start)
    try:
        lsn = parse_lsn(start)
    except ConfigError:
        raise WalNameError(f"{start!r} is neither a WAL segment name nor an LSN",
                           fix="pass e.g. 000000010000000000000003 or 0/3000028") from None
    return Segment.of_lsn(segments[0].timeline if segments else 1, lsn, seg_bytes)


def _switches(committed: dict[str, Sidecar], timeline: int, report: WalReport) -> list[list[int]]:
    """[[timeline, switch LSN], …] leading to ``timeline``; a missing history file is a problem."""
    if timeline == 1:
        return []
    history = committed.get(f"{timeline:08X}.history")
    if history is None:
        report.problems.append({"name": f"{timeline:08X}.history", "status": "missing-history",
                                "detail": f"timeline {timeline} has no history file: its branch point is unknown"})
        return []
    return history.switches or []


def on_path(segment: Segment, switches: list[list[int]], timeline: int, seg_bytes: int) -> bool:
    """Whether recovery along ``timeline`` (its history's ``switches``) reads this segment: on an ancestor
    before the branch point's segment, or on ``timeline`` itself."""
    for tl, lsn in switches:
        if segment.timeline == tl:
            return segment.number(seg_bytes) < lsn // seg_bytes
    return segment.timeline == timeline


def _path(switches: list[list[int]], last_tl: int, lo: int, hi: int, seg_bytes: int) -> list[tuple[int, int, int]]:
    """(timeline, first segment number, end exclusive) ranges the archive must hold, oldest first."""
    ranges = []
    for tl, lsn in switches:
        switch = lsn // seg_bytes  # the segment holding the switch point continues on the next timeline
        if switch > lo:
            ranges.append((tl, lo, min(switch, hi)))
            lo = max(lo, switch)
    if hi > lo:
        ranges.append((last_tl, lo, hi))
    return ranges


def _classify(tl: int, n: int, pg: PgWalState | None, archived_upto: Segment | None, seg_bytes: int) -> str:
    if pg is None:
        return "missing"
    if archived_upto is None:
        return "in-flight"
    mark = (archived_upto.timeline, archived_upto.number(seg_bytes))
    return "lost" if (tl, n) <= mark else "in-flight"


def _group(missing: list[tuple[int, int, str]], per_log: int) -> list[Gap]:
    gaps: list[Gap] = []
    for tl, n, status in missing:
        name = Segment(tl, n // per_log, n % per_log).name
        prev = gaps[-1] if gaps else None
        if prev and prev.timeline == tl and prev.status == status and _number(prev.last, per_log) + 1 == n:
            gaps[-1] = Gap(tl, prev.first, name, prev.count + 1, status)
        else:
            gaps.append(Gap(tl, name, name, 1, status))
    return gaps


def _number(name: str, per_log: int) -> int:
    segment = Segment.parse(name)
    return segment.log * per_log + segment.seg
