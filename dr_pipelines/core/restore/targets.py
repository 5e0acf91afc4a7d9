"""Point-in-time restore, before anything starts: the target, the base backup, and whether the WAL is there.

The peers' worst PITR failures happen before PostgreSQL starts: a base backup chosen that is
*newer* than the target (recovery then silently overshoots, pgBackRest's FAQ), or a WAL gap
found hours into replay. So the target is parsed strictly, the base backup chosen is the newest
one that stopped before the target (never after), and every segment from the base's start to
the target is checked in storage first (core/wal/verify.py, timeline-aware) — a gap, a
corrupt segment or a target past the newest archived WAL is refused naming it. Running the
recovery is core/restore/recovery.py; core/restore/pitr.py puts the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import read_sidecar
from dr_pipelines.core.wal.names import (
    DEFAULT_SEGMENT_BYTES,
    PREFIX,
    SIDECAR_SUFFIX,
    Segment,
    WalNameError,
    format_lsn,
    is_history,
    name_of_key,
    parse_lsn,
    timeline_of,
)
from dr_pipelines.core.wal.restore_points import find_restore_point
from dr_pipelines.core.wal.verify import ArchiveScan, Gap, verify_archive

KINDS = ("time", "lsn", "xid", "name", "latest")


class PitrError(DrpError):
    """A point-in-time restore was refused or failed; nothing half-restored is left."""


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops. ``inclusive``: stop just after (True, PostgreSQL's default) or just before it."""

    kind: str  # time | lsn | xid | name | latest | immediate (the base backup's consistent point: verification)
    time: datetime | None = None
    lsn: int | None = None
    xid: int | None = None
    name: str | None = None
    inclusive: bool = True

    @classmethod
    def parse(cls, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
              name: str | None = None, latest: bool = False, inclusive: bool = True) -> RecoveryTarget:
        """Exactly one target from the CLI's strings, or a ConfigError saying what is wrong with it."""
        given = [k for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name), ("latest", latest)) if v]
        if len(given) != 1:
            raise ConfigError(f"a point-in-time restore needs exactly one target ({'given: ' + ', '.join(given) if given else 'none given'})",
                              fix="pass one of --time, --lsn, --xid, --restore-point or --latest")
        if time:
            return cls("time", time=_parse_time(time), inclusive=inclusive)
        if lsn:
            return cls("lsn", lsn=parse_lsn(lsn), inclusive=inclusive)
        if xid:
            if not xid.strip().isdigit() or int(xid) < 3:
                raise ConfigError(f"{xid!r} is not a transaction id", fix="pass a number ≥ 3, e.g. from txid_current()")
            return cls("xid", xid=int(xid), inclusive=inclusive)
        if name:
            return cls("name", name=name)
        return cls("latest")

    def describe(self) -> str:
        value = {"time": self.time.isoformat() if self.time else None, "lsn": format_lsn(self.lsn or 0),
                 "xid": str(self.xid), "name": self.name, "latest": "end of the archive",
                 "immediate": "the base backup's stop point"}[self.kind]
        edge = "" if self.kind in ("name", "latest", "immediate") else (" (inclusive)" if self.inclusive else " (exclusive)")
        return f"{self.kind} {value}{edge}"

    def settings(self) -> dict[str, str]:
        """The recovery_target_* parameters (plain values; the caller quotes them for the config file)."""
        if self.kind == "latest":
            return {}
        if self.kind == "immediate":
            return {"recovery_target": "immediate"}
        value = {"time": self.time.isoformat() if self.time else "", "lsn": format_lsn(self.lsn or 0),
                 "xid": str(self.xid), "name": self.name or ""}[self.kind]
        out = {f"recovery_target_{self.kind}": value}
        if self.kind != "name":
            out["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        return out


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not a time", fix="write e.g. '2026-12-01 02:10:00+00' (ISO 8601 with a UTC offset)") from None
    if value.tzinfo is None:
        raise ConfigError(f"time {text!r} has no UTC offset, so it names a different moment on every server",
                          fix="add the offset, e.g. '2026-12-01 02:10:00+00'")
    return value


@dataclass(frozen=True)
class BaseBackup:
    """What choosing and recovering need from a base backup's manifest (the contract's `extra`)."""

    id: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    wal_start: str
    stop_time: datetime
    next_xid: int
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    restorable: bool = True  # its own WAL (wal_start..wal_stop) archived
    entry: Any = None  # the catalog's BackupEntry, when it came from storage

    @classmethod
    def from_extra(cls, backup_id: str, extra: dict[str, Any], *, restorable: bool = True, entry: Any = None) -> BaseBackup:
        return cls(id=backup_id, timeline=int(extra["timeline"]), start_lsn=parse_lsn(extra["start_lsn"]),
                   stop_lsn=parse_lsn(extra["stop_lsn"]), wal_start=extra["wal_start"],
                   stop_time=datetime.fromisoformat(extra["stop_time"]), next_xid=int(extra["next_xid"]),
                   segment_bytes=int(extra.get("segment_bytes", DEFAULT_SEGMENT_BYTES)), restorable=restorable,
                   entry=entry)

    def describe(self) -> str:
        return f"base backup {self.id} (timeline {self.timeline}, stopped at {format_lsn(self.stop_lsn)}, {self.stop_time.isoformat()})"


def base_backups(entries: Sequence[Any]) -> list[BaseBackup]:
    """The complete base backups among catalog entries (BaseBackup records pass through); restorable only
    when the catalog found their own WAL (wal_start..wal_stop) archived."""
    found = []
    for entry in entries:
        if isinstance(entry, BaseBackup):
            found.append(entry)
            continue
        if entry.manifest is None or entry.kind != "base":
            continue
        found.append(BaseBackup.from_extra(entry.id, entry.manifest.extra, restorable=entry.wal_archived is True,
                                           entry=entry))
    return found


@dataclass(frozen=True)
class Lineage:
    """The timeline a recovery follows and its history: [[parent timeline, switch LSN], …] oldest first."""

    timeline: int
    switches: tuple[tuple[int, int], ...] = ()
    explicit: bool = False  # asked for by number (recovery_target_timeline = N), not "latest"

    def reaches(self, base: BaseBackup) -> bool:
        """Whether recovery from ``base`` can follow this timeline: the base is on it, or on an ancestor and
        consistent (stopped) before this timeline's history left that ancestor. PostgreSQL refuses the rest
        ("requested timeline is not a child of this server's history")."""
        if base.timeline == self.timeline:
            return True
        return any(tl == base.timeline and base.stop_lsn <= lsn for tl, lsn in self.switches)

    def setting(self) -> str:
        return str(self.timeline) if self.explicit else "latest"

    def timeline_at(self, lsn: int) -> int:
        """The timeline WAL at ``lsn`` belongs to along this history (PostgreSQL's tliOfPointInHistory: a
        timeline ends at its switch point, the record there is its child's)."""
        return next((tl for tl, switch in self.switches if lsn < switch), self.timeline)


def recovery_lineage(storage: Storage, timeline: int | None = None) -> Lineage:
    """``timeline`` (None: the newest one archived) with the switch points its history file records.

    A timeline the archive has neither segments nor a history file of is refused, naming the ones it has.
    """
    timelines = archived_timelines(storage)
    wanted = timeline if timeline is not None else max(timelines, default=1)
    if timeline is not None and timeline not in timelines:
        raise PitrError(f"timeline {timeline} is not in the WAL archive {storage.url} (archived: "
                        f"{', '.join(map(str, sorted(timelines))) or 'none'})",
                        fix="pass one of the archived timelines with --timeline, or leave it out for the newest")
    switches: tuple[tuple[int, int], ...] = ()
    if wanted > 1:
        history = read_sidecar(storage, f"{wanted:08X}.history")
        switches = tuple((int(tl), int(lsn)) for tl, lsn in (history.switches or [])) if history else ()
    return Lineage(wanted, switches, explicit=timeline is not None)


def archived_timelines(storage: Storage) -> set[int]:
    """Timelines with a committed file (segment or history) in the archive: one listing of the sidecars."""
    found = set()
    for info in storage.list(PREFIX + "/"):
        name = name_of_key(info.key)
        if name and info.key.endswith(SIDECAR_SUFFIX):
            found.add(timeline_of(name))
    return found


def choose_base_backup(entries: Sequence[Any], target: RecoveryTarget, *, target_lsn: int | None = None,
                       lineage: Lineage | None = None) -> BaseBackup:
    """The newest complete, restorable base backup whose stop point is at or before the target — never after it
    — and (with ``lineage``) from which recovery can follow the chosen timeline.

    ``target_lsn``: the LSN of a name target (its restore point's). A target before every base backup is
    an error naming the oldest restorable point.
    """
    bases = sorted((b for b in base_backups(entries) if b.restorable), key=lambda b: (b.stop_lsn, b.stop_time))
    if lineage is not None:
        off = [b for b in bases if not lineage.reaches(b)]
        bases = [b for b in bases if lineage.reaches(b)]
        if not bases and off:
            raise PitrError(f"no restorable base backup can recover along timeline {lineage.timeline}: "
                            f"{', '.join(f'{b.id} (timeline {b.timeline})' for b in off[-3:])} left its history",
                            fix="pass --timeline with the timeline of a base backup, or take a base backup on "
                                f"timeline {lineage.timeline}")
    if not bases:
        raise PitrError("there is no restorable base backup in storage (complete, with its WAL archived)",
                        fix="take one with `drp backup run --physical` and keep WAL archiving on")
    before = [b for b in bases if _stops_before(b, target, target_lsn)]
    if not before:
        oldest = bases[0]
        raise PitrError(f"target {target.describe()} is before the oldest restorable point: {oldest.describe()}",
                        fix=f"choose a target at or after {oldest.stop_time.isoformat()} (LSN {format_lsn(oldest.stop_lsn)}); "
                            "nothing older can be restored")
    return before[-1]


def _stops_before(base: BaseBackup, target: RecoveryTarget, target_lsn: int | None) -> bool:
    if target.kind == "time":
        assert target.time is not None
        return base.stop_time <= target.time
    if target.kind == "lsn":
        assert target.lsn is not None
        return base.stop_lsn <= target.lsn
    if target.kind == "xid":
        assert target.xid is not None
        return base.next_xid <= target.xid
    if target.kind == "name":
        assert target_lsn is not None
        return base.stop_lsn <= target_lsn
    return True


@dataclass(frozen=True)
class WalPlan:
    """The WAL a recovery needs, checked: from the base's first segment to the target's (or the archive's end)."""

    first: str
    last: str
    newest_archived: str
    newest_archived_at: str
    # A time target: gaps or corrupt segments after ``last`` (the first segment archived after the time), which
    # recovery reads only if no transaction committed between the time and them (then PostgreSQL stops there).
    beyond: tuple[str, ...] = ()


def target_lsn_of(storage: Storage, target: RecoveryTarget) -> int | None:
    """The LSN a target names when it names one (an LSN, or a restore point's recorded LSN)."""
    if target.kind == "name":
        assert target.name is not None
        return parse_lsn(find_restore_point(storage, target.name).lsn)
    return target.lsn if target.kind == "lsn" else None


def check_wal(storage: Storage, base: BaseBackup, target: RecoveryTarget, *, target_lsn: int | None = None,
              timeline: int | None = None) -> WalPlan:
    """Refuse before anything starts: a gap or corrupt segment between the base's start and the target,
    or a time/LSN target past the newest archived WAL (recovery would end short of it). ``timeline``: the
    path of that timeline is checked (default: the newest one's)."""
    first = Segment.parse(base.wal_start).number(base.segment_bytes)
    scan = ArchiveScan.read(storage)
    upper = target_lsn // base.segment_bytes if target_lsn is not None else None
    if upper is None and target.kind == "time" and target.time is not None:
        upper = _first_archived_after(scan, first, target.time, base.segment_bytes)
    report = verify_archive(storage, start=base.wal_start, pg=None, read=True, timeline=timeline, scan=scan,
                            read_only=lambda name: _needed(name, first, upper, base.segment_bytes))
    if report.end is None:
        raise PitrError(f"the WAL archive in {storage.url} holds nothing from {base.wal_start} on",
                        fix="check that WAL archiving runs (drp wal status) and that this is the right storage")
    newest = Segment.parse(report.end)
    if upper is None or upper >= newest.number(base.segment_bytes):
        limit = newest
    else:  # the target's segment (an LSN), or the first archived after a time
        limit = Segment.of_lsn(newest.timeline, upper * base.segment_bytes, base.segment_bytes)
    upper = limit.number(base.segment_bytes)
    problems = [p for p in report.problems if p["status"] in ("corrupt", "lost", "uncommitted", "missing-history")]
    bad = [g for g in report.gaps if _needed(g.first, first, upper, base.segment_bytes)]
    corrupt = [p for p in problems if _needed(p["name"], first, upper, base.segment_bytes)]
    beyond = tuple([_named_gap(g) for g in report.gaps if g not in bad]
                   + [f"{p['name']} ({p['status']})" for p in problems if p not in corrupt])
    if bad or corrupt:
        named = [_named_gap(g) for g in bad] + [f"{p['name']} ({p['status']})" for p in corrupt]
        raise PitrError(f"PITR past a gap refused: the WAL from {base.wal_start} to the target is not complete "
                        f"in {storage.url}: {', '.join(named)}",
                        fix="if the primary still has these segments in pg_wal, `drp wal push` them; otherwise choose a "
                            "target before the first one (or a base backup after it)")
    sidecar = scan.sidecars.get(newest.name)
    newest_at = sidecar.pushed_at if sidecar else ""
    _refuse_past_archive(target, target_lsn, newest, newest_at, base.segment_bytes)
    return WalPlan(first=base.wal_start, last=limit.name, newest_archived=newest.name, newest_archived_at=newest_at,
                   beyond=beyond)


def _first_archived_after(scan: ArchiveScan, first: int, time: datetime, seg_bytes: int) -> int | None:
    """For a time target: the number of the first segment (from ``first`` on) archived after ``time``, the
    last one recovery certainly reads; None when none was (the target is then past the archive).

    A segment archived at or before the time holds only commits made before it, so recovery (which stops at
    the first commit after the time) reads through it and on to this one; what comes after is read only if
    this one holds no later commit. Gaps and damage up to it are refused before anything starts; after it,
    PostgreSQL itself stops at a missing segment ("recovery ended before configured recovery target was
    reached") and the fetch refuses a corrupt one, so they are reported, not refused: a PITR to a time before
    a gap works. Clocks: an archiver behind the server's only widens this range (as before), one ahead
    narrows it to what PostgreSQL then enforces."""
    numbers = [Segment.parse(name).number(seg_bytes) for name, sidecar in scan.sidecars.items()
               if len(name) == 24 and name in scan.objects and sidecar is not None and sidecar.pushed_at
               and datetime.fromisoformat(sidecar.pushed_at).astimezone(UTC) > time]
    return min((n for n in numbers if n >= first), default=None)


def _named_gap(gap: Gap) -> str:
    return f"{gap.first}" + (f"..{gap.last}" if gap.last != gap.first else "") + f" ({gap.status})"


def _needed(name: str, first: int, upper: int | None, seg_bytes: int) -> bool:
    """Whether recovery from segment number ``first`` to ``upper`` (None: the end) reads this file: history
    files always; segments by number (along one timeline path numbers only grow); .partial/.backup never."""
    if is_history(name):
        return True
    try:
        number = Segment.parse(name).number(seg_bytes)
    except WalNameError:
        return False
    return first <= number and (upper is None or number <= upper)


def _refuse_past_archive(target: RecoveryTarget, target_lsn: int | None, newest: Segment, newest_at: str,
                         seg_bytes: int) -> None:
    end_lsn = (newest.number(seg_bytes) + 1) * seg_bytes  # the archive holds WAL up to the end of this segment
    past = False
    if target_lsn is not None:
        past = target_lsn >= end_lsn
    elif target.kind == "time" and target.time is not None and newest_at:
        past = target.time > datetime.fromisoformat(newest_at).astimezone(UTC)
    if past:
        raise PitrError(f"target {target.describe()} is after the newest archived WAL: {newest.name} "
                        f"(ends at LSN {format_lsn(end_lsn)}, archived {newest_at or 'at an unknown time'}); "
                        "recovery would stop short of the target",
                        fix="wait for archiving to catch up (drp wal status), or restore to what is archived with --latest")
